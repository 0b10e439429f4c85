"""Silent wrong answers and crashes on valid specs, each pinned against an independent oracle.

Oracles: central differences in float64 (``gradcheck_spec``), the reference interpreter
(``ExecOptions(fast_loops=False)``), closed-form values and, where it helps, PyTorch. Sequences
run in a padded batch (lengths 5, 3, 2), so padding is exercised too; the fast path is checked
with and without its optimisations (``PLAIN_FAST``).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import gradcheck_spec, random_feeds

from nnspec import compile_text
from nnspec.cli import main
from nnspec.errors import SpecError
from nnspec.ops import REGISTRY
from nnspec.runtime import ExecOptions, Executor

TOL = 1e-6
LENGTHS = np.array([5, 3, 2])
PLAIN_FAST = ExecOptions(defer_grads=False, local_grads=False, alias_grads=False, scratch=False, prepared=False)


def run_both(text: str, lengths=LENGTHS, T=5, B=3, seed=0, options=(ExecOptions(), ExecOptions(fast_loops=False))):
    """Outputs and gradients (of the loss, or of a fixed random weighting of the outputs) by the
    fast path and by the reference interpreter, in float64."""
    plan = compile_text(text).plan
    rng = np.random.default_rng(seed)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    feeds = random_feeds(plan, T, B, seed)
    results = []
    for opts in options:
        ex = Executor(plan, dtype=np.float64, options=opts)
        tape = ex.forward(params, feeds, lengths=lengths)
        seeds = None
        if plan.loss is None:
            seeds = {o: np.random.default_rng(seed + 1).normal(size=tape.values[o].shape) for o in plan.outputs}
        grads = ex.backward(tape, seeds=seeds)
        names = plan.outputs + ([plan.loss] if plan.loss else [])
        results.append(({o: tape.values[o] for o in names}, {p: grads.get(p) for p in params}))
    return results


def assert_paths_agree(text: str, lengths=LENGTHS):
    """The fast path (with its optimisations, and without them: per-step gradients leaving the
    loop, no whole-sequence derivatives, no aliasing) agrees with the reference interpreter."""
    fast, plain, reference = run_both(text, lengths, options=(ExecOptions(), PLAIN_FAST, ExecOptions(fast_loops=False)))
    for (fast_vals, fast_grads), (ref_vals, ref_grads) in ((fast, reference), (plain, reference)):
        _assert_same(fast_vals, fast_grads, ref_vals, ref_grads)


def _assert_same(fast_vals, fast_grads, ref_vals, ref_grads):
    for k in ref_vals:
        np.testing.assert_allclose(fast_vals[k], ref_vals[k], rtol=1e-10, atol=1e-12, err_msg=k)
    for k in ref_grads:
        if ref_grads[k] is None:
            assert fast_grads[k] is None or not np.any(fast_grads[k]), k
        else:
            np.testing.assert_allclose(fast_grads[k], ref_grads[k], rtol=1e-10, atol=1e-12, err_msg=k)


def check(text: str):
    """Both runtime paths agree, and their gradients agree with central differences."""
    assert_paths_agree(text)
    assert gradcheck_spec(text) < TOL


# ---- sequences computed before a loop, read at another step ----------------------------
# Values were given their time facts in an order that ignored delayed reads, so a value read as
# c[t-1] could be looked at before c was known to be a sequence: it was treated as one value per
# example and broadcast over every step (a ValueError (5,3,2) into (3,2) in both paths).
DELAYED_READS = {
    "computed_sequence_at_t-1_in_a_loop": """
        c[2] = sigmoid(W @ x)
        p[2] = tanh(U @ p[t-1] + V @ c[t-1])""",
    "computed_sequence_two_steps_back": """
        c[3] = tanh(W0 @ x)
        p[4] = tanh(W @ c[t-2] + U @ p[t-1])""",
    "look_ahead_into_a_backward_loop": """
        h0[3] = tanh(W0 @ x)
        h1[3] = W1 @ h0[t+2]
        p[4] = tanh(W3 @ h1 + p[t+1])""",
    "look_ahead_read_by_a_forward_loop": """
        c[3] = tanh(W0 @ x)
        p[4] = tanh(W @ c[t+1] + U @ p[t-1])""",
    "look_back_read_by_a_backward_loop": """
        c[3] = tanh(W0 @ x)
        p[4] = tanh(W @ c[t-1] + U @ p[t+1])""",
    "delayed_reads_in_a_concat_before_the_loop": """
        c[2] = sigmoid(W @ x)
        d = concat(c, c[t-1], c[t+1])
        p[2] = tanh(U @ p[t-1] + V @ d)""",
    "backward_loop_reading_a_forward_loop_ahead": """
        h[3] = tanh(W @ x + U @ h[t-1])
        g[3] = tanh(V @ h[t+1] + R @ g[t+1])
        p = concat(h, g)""",
    "loop_output_read_back_outside_loops": """
        h[3] = tanh(W @ x + U @ h[t-1])
        g[3] = tanh(V @ h[t-1] + R @ g[t+1])
        p = concat(h, g[t-1])""",
}


@pytest.mark.parametrize("name", DELAYED_READS)
def test_sequences_read_at_another_step_run_and_differentiate(name):
    check("input x[3] : seq\noutput p\n" + DELAYED_READS[name])


def test_a_delayed_read_of_a_computed_sequence_is_a_sequence_in_the_plan():
    plan = compile_text("input x[3] : seq\noutput h\nc[2] = sigmoid(W @ x)\n"
                        "h[2] = tanh(U @ h[t-1] + V @ c[t-1])").plan
    steps = {s.id: s for s in plan.steps if hasattr(s, "op")}
    assert steps["h#3"].seq, "V @ c[t-1] has a value per step"
    assert plan.value_ids().index("c") < plan.value_ids().index("h#3")


# ---- activations of a state inside a loop ---------------------------------------------
# The fast backward pass computes an activation's derivative for all steps at once; its array was
# the shape of the op's own buffer, which is one step's scratch when the op's VJP reads only its
# input (relu): a ValueError in Relu.local_grad. Every activation, at a state read and not.
ACTIVATIONS = ["relu", "leaky_relu", "elu", "abs", "sigmoid", "tanh", "exp", "softplus", "gelu",
               "hard_tanh", "square", "identity", "neg"]


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_an_activation_of_a_state_read_in_a_loop(act):
    check(f"input x[2] : seq\noutput h\nh[2] = tanh(x + 0.5 * {act}(h[t-1]))")


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "abs", "hard_tanh"])
def test_an_activation_read_only_within_its_step(act):
    check(f"input x[2] : seq\noutput h\nh[2] = tanh({act}(x + U @ h[t-1]))")


# ---- a state scaled by a number --------------------------------------------------------
# Shape inference gave a state read before its equation the shape of the value beside it, even a
# scalar's: 'h has size [2], but where it is used it must have size []'. The declared size decides.
SCALED = ["2 * h[t-1]", "h[t-1] / 2", "g * h[t-1]", "h[t-1] - 3", "3 - h[t-1]", "h[t-1] * 0.5",
          "(1 - h[t-1])", "-h[t-1]"]


@pytest.mark.parametrize("form", SCALED)
def test_a_state_combined_with_a_number_keeps_its_declared_size(form):
    text = f"input x[3] : seq\noutput h\nh[2] = tanh({form} + W @ x)"
    compiled = compile_text(text)
    assert compiled.graph.info("h").shape == (2,)
    check(text)


def test_an_undeclared_state_scaled_by_a_number_takes_its_size_from_the_rest():
    compiled = compile_text("input x[3] : seq\noutput h\nh = tanh(2 * h[t-1] + x)")
    assert compiled.graph.info("h").shape == (3,)


def test_an_undeclared_state_nothing_sizes_is_still_reported():
    with pytest.raises(SpecError, match="cannot infer the size of 'W'"):
        compile_text("input x[3] : seq\noutput h\nh = tanh(W @ x + 2 * h[t-1])")


# ---- a state read at another step from outside its loop --------------------------------
# Outside its loop, h[t-1] at the first step read zeros instead of the initial state, and the
# gradient of those reads was dropped instead of reaching the initial state.
def test_a_state_read_outside_its_loop_starts_from_its_initial_state():
    text = """
        input x[3] : seq
        output d
        h[2] = tanh(W @ x + U @ h[t-1])
        initial h = [0.5, -1]
        d[4] = concat(h, h[t-1])"""
    plan = compile_text(text).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(size=p.shape) for p in plan.params}
    feeds = random_feeds(plan, 5, 3, 0)
    for options in (ExecOptions(), ExecOptions(fast_loops=False)):
        tape = Executor(plan, dtype=np.float64, options=options).forward(params, feeds, lengths=LENGTHS)
        d, h = tape.values["d"], tape.values["h"]
        np.testing.assert_allclose(d[0, :, 2:], [[0.5, -1]] * 3)          # before the first step
        for b, n in enumerate(LENGTHS):                                    # then the step before
            np.testing.assert_allclose(d[1:n, b, 2:], h[:n - 1, b])
            np.testing.assert_allclose(d[:n, b, :2], h[:n, b])


INITIAL_READS = {
    "learned_initial_read_back_outside": """
        h[2] = tanh(W @ x + U @ h[t-1])
        initial h = h0
        p[4] = concat(h, h[t-1])""",
    "two_steps_back_outside": """
        h[2] = tanh(W @ x + U @ h[t-1])
        initial h = h0
        p[4] = concat(h, h[t-2])""",
    "backward_loop_read_ahead_outside": """
        h[2] = tanh(W @ x + U @ h[t+1])
        initial h = h0
        p[4] = concat(h, h[t+1])""",
    "read_by_a_loop_running_the_other_way": """
        h[2] = tanh(W @ x + U @ h[t-1])
        initial h = h0
        g[2] = tanh(V @ h[t-1] + R @ g[t+1])
        p = concat(g, h)""",
    "read_through_an_activation_in_another_loop": """
        h[2] = tanh(W @ x + U @ h[t-1])
        initial h = h0
        g[2] = tanh(V @ relu(h[t-1]) + R @ g[t-1])
        p = concat(g, h)""",
    "computed_initial_state": """
        h[2] = tanh(W @ x + U @ h[t-1])
        initial h = tanh(Q @ z + R @ first(x))
        p[4] = concat(h, h[t-1])""",
}


def test_a_computed_initial_state_takes_the_declared_size_of_its_state():
    """Nothing else sizes Q's and R's rows: the state's declared size does (it was an error)."""
    graph = compile_text("input x[3] : seq\ninput z[5]\noutput h\nh[2] = tanh(W @ x + U @ h[t-1])\n"
                         "initial h = tanh(Q @ z + R @ first(x))").graph
    assert graph.info("Q").shape == (2, 5) and graph.info("R").shape == (2, 3)


@pytest.mark.parametrize("name", INITIAL_READS)
def test_reads_of_an_initial_state_outside_the_loop_are_differentiated(name):
    check("input x[3] : seq\ninput z[3]\noutput p\n" + INITIAL_READS[name]
          if "z" in INITIAL_READS[name] else "input x[3] : seq\noutput p\n" + INITIAL_READS[name])


# ---- losses inside arithmetic ------------------------------------------------------------
# A loss is one number for the whole batch. Arithmetic around it (a weight, a sum of losses) made
# the runtime give it a batch axis: a (B, 1) loss whose gradients were B times too large, and
# `nnspec run` crashed converting it to a number.
WEIGHTED = """
input x[2]
target r[1]
loss 0.5 * mse(W @ x + c, r)
"""


def test_a_weighted_loss_is_one_number_with_the_closed_form_gradient():
    plan = compile_text(WEIGHTED).plan
    rng = np.random.default_rng(3)
    W, c = rng.normal(size=(1, 2)), rng.normal(size=1)
    x, r = rng.normal(size=(3, 2)), rng.normal(size=(3, 1))
    err = x @ W.T + c - r                                   # (B, 1)
    for options in (ExecOptions(), ExecOptions(prepared=False)):
        ex = Executor(plan, dtype=np.float64, options=options)
        for _ in range(2):                                   # the second pass is a prepared one
            tape = ex.forward({"W": W, "c": c}, {"x": x, "r": r})
            loss = tape.values[plan.loss]
            assert np.shape(loss) == ()
            np.testing.assert_allclose(loss, 0.5 * np.mean(err ** 2))
            grads = ex.backward(tape)
            np.testing.assert_allclose(grads["c"], np.mean(err, axis=0))  # the mean, not B times it
            np.testing.assert_allclose(grads["W"], np.mean(err * x, axis=0, keepdims=True))
    assert gradcheck_spec(WEIGHTED) < TOL


LOSS_ARITHMETIC = {
    "weighted": WEIGHTED,
    "two_loss_statements": """
        input x[10]
        target y : class[3]
        target r[1]
        output p
        h[32] = relu(W @ x + b)
        p = softmax(V @ h + c)
        loss cross_entropy(p, y)
        loss 0.1 * mse(Q @ h + d, r)""",
    "sum_difference_and_quotient_of_losses": """
        input x[2]
        target r[1]
        target s[1]
        loss (mse(W @ x, r) + 2 * mse(V @ x, s)) / 3 - 0.25 * mse(W @ x, s)""",
    "a_learned_weight": """
        input x[2]
        target r[1]
        loss g * mse(W @ x, r) + mse(V @ x, r)
        param g = 0.7""",
    "a_loss_per_step_and_one_per_example": """
        input x[3] : seq
        target y : seq of class[3]
        target z : class[3]
        h = rnn(x, H = 4)
        loss cross_entropy_logits(V @ h + c, y) + 0.5 * cross_entropy_logits(U @ last(h) + d, z)""",
    "a_loss_per_step_weighted_in_a_second_statement": """
        input x[3] : seq
        target y : seq of class[3]
        target r[2]
        h = rnn(x, H = 4)
        loss cross_entropy_logits(V @ h + c, y)
        loss 0.3 * mse(U @ mean(h), r)""",
}


@pytest.mark.parametrize("name", LOSS_ARITHMETIC)
def test_arithmetic_on_losses_differentiates_like_finite_differences(name):
    text = LOSS_ARITHMETIC[name]
    assert gradcheck_spec(text) < TOL
    assert_paths_agree(text)
    (values, _), _ = run_both(text)
    assert np.shape(values[compile_text(text).plan.loss]) == ()


def test_several_losses_sum_to_their_closed_forms():
    text = LOSS_ARITHMETIC["two_loss_statements"].replace(
        "loss 0.1 * mse(Q @ h + d, r)", "output q\nq = Q @ h + d\nloss 0.1 * mse(q, r)")
    plan = compile_text(text).plan
    (values, _), _ = run_both(text)
    feeds = random_feeds(plan, 5, 3, 0)
    p, q, y, r = values["p"], values["q"], feeds["y"], feeds["r"]
    cross_entropy = -np.mean(np.log(p[np.arange(3), y]))
    np.testing.assert_allclose(values[plan.loss], cross_entropy + 0.1 * np.mean((q - r) ** 2), rtol=1e-12)


def test_a_weighted_loss_matches_pytorch():
    torch = pytest.importorskip("torch")
    text = LOSS_ARITHMETIC["a_loss_per_step_and_one_per_example"]
    plan = compile_text(text).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    feeds = random_feeds(plan, 5, 3, 0)
    ex = Executor(plan, dtype=np.float64)
    tape = ex.forward(params, feeds, lengths=LENGTHS)
    grads = ex.backward(tape)
    # the same network in PyTorch, on the values nnspec computed for h (checked elsewhere)
    h = torch.tensor(tape.values["h"], requires_grad=True)
    V, c, U, d = (torch.tensor(params[k], requires_grad=True) for k in ("V", "c", "U", "d"))
    y = torch.tensor(feeds["y"]).masked_fill(torch.tensor(np.arange(5)[:, None] >= LENGTHS), -100)
    per_step = torch.nn.functional.cross_entropy((h @ V.T + c).reshape(-1, 3), y.reshape(-1), ignore_index=-100)
    last = h[torch.tensor(LENGTHS - 1), torch.arange(3)]
    per_example = torch.nn.functional.cross_entropy(last @ U.T + d, torch.tensor(feeds["z"]))
    total = per_step + 0.5 * per_example
    total.backward()
    np.testing.assert_allclose(tape.values[plan.loss], total.item(), rtol=1e-10)
    for k, t in (("V", V), ("c", c), ("U", U), ("d", d)):
        np.testing.assert_allclose(grads[k], t.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("text, message", [
    ("input x[2]\ntarget r\nloss square(w @ x - r)\nparam w[1, 2]",
     "a loss must be one number for the whole batch, but 'square(w @ x - r)' has a value for each example"),
    ("input x[2]\ntarget r[1]\nloss x * mse(W @ x, r)",
     "'mse(W @ x, r)' is a loss, one number for the whole batch (the mean over its examples), "
     "but 'x' has a value for each example"),
    ("input x[2]\ntarget r[2]\nloss [1, 2] * mse(x, r)", "a loss must be one number, but"),
    ("input x[2]\ntarget r[2]\noutput L\nL = mse(x, r)\nloss L", "output 'L' is a loss"),
    ("input x[2]\ntarget r[2]\nloss mse(mse(x, r) + x, r)", "is a loss, one number for the whole batch"),
    ("input x[2] : seq\ntarget r[2] : seq\nL = mse(x, r)\nloss L + L[t-1]",
     "'L' is a loss, one number for the whole batch; it has no earlier or later steps to read at [t-1]"),
    ("input x[2] : seq\ntarget r[2] : seq\noutput h\nh[2] = tanh(x + mse(h[t-1], r) * h[t-1])",
     "'mse(h[t-1], r)' is a loss, one number for the whole batch (the mean over its examples), but 'h[t-1]' has a "
     "value for each example and each step"),
])
def test_what_has_no_meaning_as_a_loss_is_a_located_error(text, message):
    with pytest.raises(SpecError) as e:
        compile_text(text)
    assert message in str(e.value)
    assert "<string>:" in str(e.value)


def test_training_and_grad_on_a_weighted_loss(tmp_path):
    spec = tmp_path / "weighted.nn"
    spec.write_text(WEIGHTED + "param W = [[0.3, -0.2]]\nparam c = [0.1]\n"
                    "data inline {\n  x = [[1, 2], [0.5, -1], [2, 0]]\n  r = [[1], [0], [0.5]]\n}\n"
                    "train { epochs 3; batch 3; optimizer sgd(lr = 0.1) }\n")
    assert main(["run", str(spec), "--no-save", "--quiet"]) == 0
    assert main(["grad", str(spec), "--at", "x=[1,2]", "r=[1]"]) == 0


# ---- reductions never cross the batch ----------------------------------------------------
# In a decoder-style loop, sum(score * enc) was accepted and, at run time, summed the examples of
# the batch (one step's array is (B, ...)): an example's outputs depended on its batch-mates.
DECODER = """
input enc[3] : seq
output h
score[3] = exp(V @ tanh(W @ enc + U @ h[t-1]))
ctx = sum(score * enc) / sum(score)
h[3] = tanh(A @ ctx + B @ h[t-1])
param W[4, 3]
"""


def test_a_reduction_over_time_inside_a_loop_is_a_located_error():
    with pytest.raises(SpecError) as e:
        compile_text(DECODER)
    text = str(e.value)
    assert "<string>:5:7: error: sum(...) reduces over the time axis of 'score * enc', which is computed inside " \
           "the recurrent loop through" in text
    assert "within a step it has no time axis (only the batch's, which a reduction never crosses)" in text
    assert "<string>:5:26: error: sum(...) reduces over the time axis of 'score'" in text


@pytest.mark.parametrize("op", ["sum", "mean", "max", "last", "first", "shift"])
def test_every_time_op_of_a_value_inside_its_loop_is_an_error(op):
    with pytest.raises(SpecError, match=rf"{op}\(\.\.\.\) (reduces over|moves along) the time axis of 'h\[t-1\]'"):
        compile_text(f"input x[3] : seq\noutput h\nh[3] = tanh(x + {op}(h[t-1]))")


@pytest.mark.parametrize("text, message", [
    ("input m[2, 3]\ninput x[3]\noutput y\ny = m @ x",
     "the left of '@' is a weight shared by every example (a parameter, a constant, or computed from them "
     "alone), but 'm' has a value for each example"),
    ("input x[3]\noutput y\ny = concat_rows(x, x)", "argument 1 of concat_rows is a weight shared by every example"),
    ("input x[3] : seq\noutput y\ny[2] = (W @ x) @ x", "but 'W @ x' has a value for each example and each step"),
])
def test_a_per_example_value_where_a_weight_belongs_is_a_located_error(text, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        compile_text(text)


# Every op, in three places (on one example's vector, on a sequence outside loops, inside a
# loop), on a padded batch: each example's outputs are the same when it runs alone, and when the
# batch is permuted. A reduction that touched the batch axis would fail this.
def _op_uses(v: str) -> dict[str, str]:
    """An expression per op giving a [3]-vector per example from the [3]-vector ``v``."""
    activations = [n for n, op in REGISTRY.items() if type(op).__module__.endswith(".activations")]  # any real x
    unary = sorted(activations) + ["abs", "exp", "square", "neg", "dropout"]
    uses = {op: f"{op}({v})" for op in unary}
    uses |= {
        "add": f"{v} + 2 * {v}", "sub": f"{v} - M @ {v}", "mul": f"{v} * (M @ {v})", "div": f"{v} / (2 + square({v}))",
        "log": f"log(1 + square({v}))", "sqrt": f"sqrt(1 + square({v}))", "pow": f"pow({v}, p = 3)",
        "matmul": f"M @ {v}", "linear": f"M @ {v} + bias", "concat": f"slice(concat({v}, {v}), start = 1, stop = 4)",
        "slice": f"concat(slice({v}, stop = 1), slice({v}, start = 1))",
        "concat_rows": f"slice(concat_rows(M, N) @ {v}, start = 2, stop = 5)",
        "dot": f"{v} * dot({v}, M @ {v})", "sum_features": f"{v} * sum_features(M @ {v})",
    }
    return uses


PARAMS = "\nparam M[3, 3]\nparam N[3, 3]\nparam U[3, 3]\nparam bias[3]"


PER_EXAMPLE_OPS = sorted(_op_uses("v"))
TIME_OPS = ["sum", "mean", "max", "last", "first", "shift"]
PLACES = {
    "one_vector": "input a[3]\noutput y\ny = {use}",
    "a_sequence": "input x[3] : seq\noutput y\ny = {use}",
    "inside_a_loop": "input x[3] : seq\noutput h\nh[3] = tanh(x + 0.5 * {use})",
}


def _per_example_cases():
    cases = []
    for op in PER_EXAMPLE_OPS:
        cases.append((op, "one_vector", PLACES["one_vector"].format(use=_op_uses("a")[op])))
        cases.append((op, "a_sequence", PLACES["a_sequence"].format(use=_op_uses("x")[op])))
        cases.append((op, "inside_a_loop", PLACES["inside_a_loop"].format(use=_op_uses("h[t-1]")[op])))
    for op in TIME_OPS:
        use = f"{op}(x)" if op == "shift" else f"tanh(x + {op}(x))"
        cases.append((op, "a_sequence", f"input x[3] : seq\noutput y\ny = {use}"))
        cases.append((op, "read_inside_a_loop", f"input x[3] : seq\noutput h\nh[3] = tanh(U @ h[t-1] + {op}(x))"))
        cases.append((op, "after_a_loop",
                      f"input x[3] : seq\noutput y\nh[3] = tanh(x + U @ h[t-1])\ny = {op}(h)"))
    cases.append(("argmax", "a_sequence", "input x[3] : seq\noutput y\ny = argmax(x)"))
    cases.append(("softmax_steps", "a_sequence", "input x[3] : seq\noutput y\ny = sum(softmax_steps(dot(x, x)) * x)"))
    cases.append(("along", "a_sequence", "input x[3] : seq\ninput a[3]\noutput y\ny = tanh(x + along(a, x))"))
    cases.append(("embed", "a_sequence", "input w : seq of token\noutput y\ny = tanh(embed(w, 3))"))
    cases.append(("word_dropout", "a_sequence", "input w : seq of token\noutput y\ny = embed(word_dropout(w), 3)"))
    return [pytest.param(_with_params(text), id=f"{op}-{place}") for op, place, text in cases]


def _with_params(text: str) -> str:
    """The spec with a size for each of M, N, U, bias it uses."""
    used = set(re.findall(r"\b(M|N|U|bias)\b", text))
    return text + "".join(f"\n{line}" for line in PARAMS.split("\n") if line and line.split()[1].split("[")[0] in used)


def _run_examples(plan, params, feeds, lengths, options):
    ex = Executor(plan, dtype=np.float64, options=options)
    tape = ex.forward(params, feeds, lengths=lengths)
    return {o: tape.values[o] for o in plan.outputs}


@pytest.mark.parametrize("text", _per_example_cases())
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_an_examples_outputs_do_not_depend_on_its_batch(text, fast):
    plan = compile_text(text, bindings={"vocab(w)": 6}).plan
    rng = np.random.default_rng(1)
    params = {p.name: rng.normal(scale=0.7, size=p.shape) for p in plan.params}
    lengths = np.array([5, 2, 4, 3])
    feeds = random_feeds(plan, T=5, B=4, seed=2)
    seq = {v.name for v in plan.inputs if v.seq}
    options = ExecOptions(fast_loops=fast)
    full = _run_examples(plan, params, feeds, lengths if seq else None, options)
    order = np.array([2, 0, 3, 1])
    permuted = _run_examples(plan, params, {k: (a[:, order] if k in seq else a[order]) for k, a in feeds.items()},
                             lengths[order] if seq else None, options)
    seq_out = {s.id for s in plan.steps for s in (s.body if hasattr(s, "body") else [s]) if s.seq}
    for o in plan.outputs:
        axis = 1 if o in seq_out else 0
        np.testing.assert_allclose(np.take(permuted[o], np.argsort(order), axis=axis), full[o], rtol=1e-12,
                                   atol=1e-12, err_msg=f"{o}: permuting the batch changed it")
    for b in range(4):
        n = int(lengths[b])
        alone = _run_examples(plan, params, {k: (a[:n, b:b + 1] if k in seq else a[b:b + 1]) for k, a in feeds.items()},
                              np.array([n]) if seq else None, options)
        for o in plan.outputs:
            want = full[o][:n, b] if o in seq_out else full[o][b]
            got = alone[o][:, 0] if o in seq_out else alone[o][0]
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"{o}: example {b} alone")


# ---- nnspec grad --at on sequences --------------------------------------------------------
# `--at x=[[...], [...]]` for a sequence input was read as a batch of one-step examples: the
# recurrent weights' gradients came out exactly 0. A sequence is given as the list of its steps.
ELMAN = """
input x[2] : seq
target y[1] : seq
h[2] = tanh(W @ x + U @ h[t-1] + b)
loss mse(V @ h, y)
param W = [[1, 0], [0, 1]]
param U = [[0.5, -0.3], [0.2, 0.4]]
param b = [0.1, -0.1]
param V = [[1, -1]]
"""
X_STEPS = [[1, 0], [0, 1], [1, 1]]
Y_STEPS = [[1], [0], [0.5]]


def _grad_json(capsys, spec, *at, of=()):
    assert main(["grad", str(spec), "--json", *of, "--at", *at]) == 0
    return json.loads(capsys.readouterr().out)


def test_grad_at_takes_a_sequence_as_the_list_of_its_steps(tmp_path, capsys):
    spec = tmp_path / "elman.nn"
    spec.write_text(ELMAN)
    result = _grad_json(capsys, spec, f"x={X_STEPS}", f"y={Y_STEPS}")
    # oracle: central differences of the loss of this one example, a sequence of 3 steps
    plan = compile_text(ELMAN).plan
    ex = Executor(plan, dtype=np.float64)
    params = {p.name: np.array(p.value, dtype=np.float64) for p in plan.params}
    feeds = {"x": np.array(X_STEPS, float)[:, None], "y": np.array(Y_STEPS, float)[:, None]}

    def loss():
        return float(ex.forward(params, feeds).values[plan.loss])

    assert result["value"] == pytest.approx(loss(), rel=1e-12)
    for name in ("U", "W", "b"):
        numeric = np.zeros_like(params[name])
        for i in np.ndindex(numeric.shape):
            old = params[name][i]
            params[name][i] = old + 1e-6
            up = loss()
            params[name][i] = old - 1e-6
            down = loss()
            params[name][i] = old
            numeric[i] = (up - down) / 2e-6
        assert np.abs(numeric).max() > 1e-3, name
        np.testing.assert_allclose(result["gradients"][name], numeric, rtol=1e-6, atol=1e-9, err_msg=name)
    assert np.shape(result["gradients"]["x"]) == (3, 2)   # one gradient per step
    assert np.shape(result["gradients"]["y"]) == (3,)


def test_grad_of_a_sequence_value_shows_its_steps(tmp_path, capsys):
    spec = tmp_path / "elman.nn"
    spec.write_text(ELMAN)
    result = _grad_json(capsys, spec, f"x={X_STEPS}", f"y={Y_STEPS}", of=("--of", "h"))
    h = np.array(result["value"])
    assert h.shape == (3, 2)
    W, U, b = np.eye(2), np.array([[0.5, -0.3], [0.2, 0.4]]), np.array([0.1, -0.1])
    state = np.zeros(2)
    for t, x in enumerate(np.array(X_STEPS, float)):
        state = np.tanh(W @ x + U @ state + b)
        np.testing.assert_allclose(h[t], state, rtol=1e-12)


@pytest.mark.parametrize("at, message", [
    (("x=[[1,0],[0,1],[1,1]]", "y=[[1],[0]]"),
     "--at: the sequences of one example have the same number of steps; x has 3, y has 2"),
    (("x=[1,0]", "y=[[1],[0]]"), "--at x: expected a sequence: a list of its steps, each a list of 2 numbers"),
    (("x=[[1,0,2]]", "y=[[1]]"), "--at x: expected a sequence: a list of its steps, each a list of 2 numbers"),
])
def test_grad_at_refuses_a_malformed_sequence_clearly(tmp_path, capsys, at, message):
    spec = tmp_path / "elman.nn"
    spec.write_text(ELMAN)
    assert main(["grad", str(spec), "--at", *at]) == 1
    captured = capsys.readouterr()
    assert message in captured.err + captured.out
    assert "Traceback" not in captured.err


# ---- perplexity of a weighted language-model loss -------------------------------------------
def test_perplexity_is_of_the_token_loss_not_of_the_weighted_total():
    from test_stream_chunks import SPECS, V, bound, stream

    from nnspec.model import Model
    from nnspec.settings import TrainSettings
    from nnspec.train.loop import evaluate

    plain = SPECS["lstm"]
    weighted = plain.replace("loss cross_entropy(p, shift(w, 1))", "loss 0.5 * cross_entropy(p, shift(w, 1)) + 0.1")
    ids, settings = stream(), TrainSettings(batch=2, bptt=7)
    results = [evaluate(Model.from_text(t, bindings={"vocab(w)": V}, dtype=np.float64, seed=3), bound(ids), "test",
                        settings) for t in (plain, weighted)]
    assert results[1].loss == pytest.approx(0.5 * results[0].loss + 0.1, rel=1e-12)
    assert results[1].metrics["perplexity"] == pytest.approx(results[0].metrics["perplexity"], rel=1e-12)


def test_outputs_without_targets_skip_everything_only_the_loss_needs():
    """A pass without targets (prediction) computed the loss functions inside a weighted loss and
    failed on the missing target."""
    from nnspec.model import Model
    model = Model.from_text("input x[2]\ntarget r[1]\noutput y\ny = W @ x + c\n"
                            "loss 0.5 * mse(y, r) + mse(2 * y, r)", dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(3, 2))
    want = x @ model.params["W"].T + model.params["c"]
    for _ in range(3):   # the general pass, then prepared ones
        np.testing.assert_allclose(model.forward({"x": x})["y"], want)


# the same class: other places where a state is read before its equation sizes it
STATE_FORMS = {
    "a_scalar_parameter": "h[4] = tanh(W @ x + g * h[t-1])\nparam g = 0.5",
    "a_scalar_input": "h[4] = tanh(W @ x + a * h[t-1] * 2)",
    "two_steps_back_beside_a_number": "h[4] = tanh(W @ x) + 0.5 * h[t-2]",
    "in_a_concat": "h[4] = tanh(W @ concat(x, h[t-1]))",
    "a_slice_from_a_start": "h[4] = tanh(W @ x + concat(slice(h[t-1], start = 1), slice(h[t-1], stop = 1)))",
    "a_slice_of_a_concat": "h[4] = tanh(W @ x + slice(concat(h[t-1], h[t-1]), start = 4))",
    "through_softmax": "h[4] = tanh(W @ x + softmax(h[t-1]))",
}


@pytest.mark.parametrize("name", STATE_FORMS)
def test_a_state_read_before_its_equation_in_any_form(name):
    body = STATE_FORMS[name]
    text = "input x[3] : seq\n" + ("input a\n" if " a " in body else "") + "output h\n" + body
    assert compile_text(text).graph.info("h").shape == (4,)
    check(text)


def test_every_op_is_checked_for_batch_independence():
    covered = (set(PER_EXAMPLE_OPS) | set(TIME_OPS) | {"argmax", "embed", "word_dropout", "softmax_steps", "along"}
               | set(LOSS_USES))
    assert set(REGISTRY) - covered == set()


# A loss is the mean over the batch: the same number whatever the order of the examples.
LOSS_USES = {
    "mse": "mse(tanh(M @ x), r)", "bce": "bce(sigmoid(M @ x), s)", "bce_logits": "bce_logits(M @ x, s)",
    "perceptron": "perceptron(M @ x, s)", "hinge": "hinge(M @ x, s)", "cross_entropy": "cross_entropy(softmax(M @ x), y)",
    "cross_entropy_logits": "cross_entropy_logits(M @ x, y)", "nll": "nll(log_softmax(M @ x), y)",
}


@pytest.mark.parametrize("op", sorted(LOSS_USES))
@pytest.mark.parametrize("seq", [False, True], ids=["examples", "sequences"])
def test_a_loss_does_not_depend_on_the_order_of_the_batch(op, seq):
    kind = " : seq" if seq else ""
    # every target is read (weighted 0) so that one set of declarations serves every loss
    text = (f"input x[3]{kind}\ntarget r[3]{kind}\ntarget s[3]{kind}\ntarget y : {'seq of ' if seq else ''}class[3]\n"
            f"loss {LOSS_USES[op]} + 0 * (mse(x, r) + mse(x, s) + cross_entropy_logits(x, y))\nparam M[3, 3]")
    plan = compile_text(text).plan
    params = {"M": np.random.default_rng(1).normal(size=(3, 3))}
    feeds = random_feeds(plan, T=5, B=4, seed=2)
    feeds["s"] = (feeds["s"] > 0).astype(float)
    lengths = np.array([5, 2, 4, 3]) if seq else None
    order = np.array([2, 0, 3, 1])
    ex = Executor(plan, dtype=np.float64)
    full = ex.forward(params, feeds, lengths=lengths).values[plan.loss]
    permuted = ex.forward(params, {k: (a[:, order] if seq else a[order]) for k, a in feeds.items()},
                          lengths=None if lengths is None else lengths[order]).values[plan.loss]
    assert np.shape(full) == ()
    assert permuted == pytest.approx(float(full), rel=1e-12)


# regularisers: terms of parameters alone are one number for the batch too
REGULARISED = {
    "a_square_in_the_sum": "input x[2]\ntarget r[1]\nloss mse(W @ x + c, r) + 0.1 * square(g) * mse(W @ x, r)\n"
                           "param g = 0.5",
    "its_own_statement": "input x[2]\ntarget r[1]\nloss mse(W @ x + c, r)\nloss 0.1 * square(g) + 0.01 * mse(W, 0 * W)\n"
                         "param g = 0.5",
}


@pytest.mark.parametrize("name", REGULARISED)
def test_a_regulariser_of_parameters_is_a_loss_term(name):
    text = REGULARISED[name]
    (values, _), _ = run_both(text)
    assert np.shape(values[compile_text(text).plan.loss]) == ()
    assert gradcheck_spec(text) < TOL
