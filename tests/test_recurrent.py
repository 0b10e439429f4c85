"""Recurrent networks: loops, BPTT, padding, truncated BPTT, the standard cells.

Every construct is checked against central differences in float64 on a batch
of sequences of different lengths (5, 3 and 2 steps), so padding is exercised
in every check.
"""
import numpy as np
import pytest
from conftest import gradcheck_spec, random_feeds

from nnspec import compile_text
from nnspec.runtime import Executor

TOL = 1e-6

RECURRENT_SPECS = {
    "elman": """
        input x[3] : seq
        target y[2] : seq
        h[4] = tanh(W @ x + U @ h[t-1] + b)
        loss mse(V @ h + c, y)""",
    "elman_backward_in_time": """
        input x[3] : seq
        target y[2] : seq
        h[4] = tanh(W @ x + U @ h[t+1] + b)
        loss mse(V @ h + c, y)""",
    "two_step_delay": """
        input x[3] : seq
        target y : seq of class[3]
        h[4] = tanh(W @ x + U @ h[t-1] + R @ h[t-2] + b)
        loss cross_entropy(softmax(V @ h + c), y)""",
    "learned_initial_state": """
        input x[3] : seq
        target y[2] : seq
        h[4] = tanh(W @ x + U @ h[t-1] + b)
        initial h = h0
        loss mse(V @ h + c, y)""",
    "two_loops_one_net": """
        input x[3] : seq
        target y : seq of class[3]
        f[4] = tanh(Wf @ x + Uf @ f[t-1] + bf)
        g[2] = sigmoid(Wg @ f + Ug @ g[t-1] + bg)
        loss cross_entropy_logits(V @ concat(f, g) + c, y)""",
    "lstm": """
        input x[3] : seq
        target y : class[3]
        h = lstm(x, H = 4)
        loss cross_entropy_logits(V @ last(h) + c, y)""",
    "gru_reset_after": """
        input x[3] : seq
        target y : class[3]
        h = gru_reset_after(x, H = 4)
        loss cross_entropy_logits(V @ mean(h) + c, y)""",
    "gru_reset_before": """
        input x[3] : seq
        target y : class[3]
        h = gru_reset_before(x, H = 4)
        loss cross_entropy_logits(V @ max(h) + c, y)""",
    "bidirectional_stacked": """
        input x[3] : seq
        target y : seq of class[3]
        h1 = bidirectional(rnn)(x, H = 3)
        h2 = stacked(gru, 2)(h1, H = 2)
        loss cross_entropy_logits(dense(h2, N = 3), y)""",
    "embedding_language_model": """
        input w : seq of token
        e = embed(w, 4)
        h = rnn(e, H = 5)
        loss cross_entropy_logits(V @ h + c, shift(w, 1))""",
    "sentence_vector_beside_every_step": """
        input x[3] : seq
        target y : seq of class[3]
        h = rnn(x, H = 4)
        s = first(h)
        loss cross_entropy_logits(V @ (h + s) + c, y)""",
}


@pytest.mark.parametrize("name", RECURRENT_SPECS)
def test_backprop_through_time_matches_finite_differences(name):
    assert gradcheck_spec(RECURRENT_SPECS[name], bindings={"vocab(w)": 6}) < TOL


def test_an_lstm_is_found_as_one_forward_loop_with_its_input_projections_hoisted():
    # the loop analysis itself, before the optimiser fuses the four products into one
    c = compile_text("input x[3] : seq\noutput h\nh = lstm(x, H = 4)\n", optimize=False)
    assert c.kind == "recurrent"
    loops = [s for s in c.plan.steps if s.kind == "loop"]
    assert len(loops) == 1 and loops[0].direction == +1
    body = {b.id for b in loops[0].body}
    assert {"h", "h.c", "h.f", "h.i", "h.o", "h.g"} <= body
    # W @ x does not depend on the recurrence: it runs once over all steps, outside the loop
    outside = [s for s in c.plan.steps if s.kind == "op" and s.op == "matmul"]
    assert {s.inputs[0][0] for s in outside} == {"h.Wf", "h.Wi", "h.Wo", "h.Wg"}
    assert {s.states[0] for s in loops} <= {"h", "h.c"}


def test_reverse_makes_a_backward_loop():
    c = compile_text("input x[3] : seq\noutput h\nh = reverse(rnn)(x, H = 4)\n")
    loop = next(s for s in c.plan.steps if s.kind == "loop")
    assert loop.direction == -1


def run_outputs(text, feeds, lengths, params=None):
    plan = compile_text(text).plan
    ex = Executor(plan, dtype=np.float64)
    rng = np.random.default_rng(0)
    params = params or {p.name: rng.normal(size=p.shape) for p in plan.params}
    tape = ex.forward(params, feeds, lengths=lengths)
    return plan, ex, params, tape


BIDI = """
input x[3] : seq
target y : seq of class[2]
output p
h = bidirectional(lstm)(x, H = 4)
p = softmax(V @ h + c)
loss cross_entropy(p, y)
"""


def test_padding_changes_neither_outputs_nor_gradients():
    """A padded batch gives each sequence what it gets alone."""
    plan = compile_text(BIDI).plan
    lengths = np.array([5, 2, 4])
    feeds = random_feeds(plan, T=5, B=3, seed=3)
    feeds["y"][lengths[None, :] <= np.arange(5)[:, None]] = -1   # padding targets
    _, ex, params, tape = run_outputs(BIDI, feeds, lengths)
    batch_grads = ex.backward(tape)
    total = {k: np.zeros_like(v) for k, v in params.items()}
    for b, n in enumerate(lengths):
        one = {k: v[:n, b:b + 1] for k, v in feeds.items()}
        t1 = ex.forward(params, one)
        assert np.allclose(t1.values["p"][:, 0], tape.values["p"][:n, b], atol=1e-12)
        g1 = ex.backward(t1)
        for k in total:  # the batch loss is the mean over all real steps: weight each sequence by its length
            total[k] += g1[k] * n / lengths.sum()
    for k in params:
        assert np.allclose(total[k], batch_grads[k], atol=1e-10), k


def test_truncated_bptt_carries_the_state_across_chunks():
    text = "input x[3] : seq\noutput h\nh = lstm(x, H = 4)\n"
    plan = compile_text(text).plan
    feeds = random_feeds(plan, T=8, B=2, seed=5)
    _, ex, params, whole = run_outputs(text, feeds, None)
    first = ex.forward(params, {"x": feeds["x"][:3]})
    second = ex.forward(params, {"x": feeds["x"][3:]}, carry=first.final_states)
    chunked = np.concatenate([first.values["h"], second.values["h"]])
    assert np.allclose(chunked, whole.values["h"], atol=1e-12)


def test_closed_form_computation_graph():
    c = compile_text("input a; input b; input c\noutput L\nL = c * (a + 2 * b)\n")
    ex = Executor(c.plan, dtype=np.float64)
    tape = ex.forward({}, {"a": np.array([3.0]), "b": np.array([1.0]), "c": np.array([-2.0])})
    grads = ex.backward(tape, seeds={"L": np.ones((1, 1))})
    assert tape.values["L"].item() == -10
    assert (grads["a"].item(), grads["b"].item(), grads["c"].item()) == (-2, -4, 5)
