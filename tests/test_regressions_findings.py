"""Findings of the random-spec tester, the PyTorch oracle and the text fuzzer (issue 9), each pinned:
a spec the checker used to pass and the runtime then crashed on is now a located error, a message
names the author's own text (never an internal id such as ``loss#3``), and a documented meaning
holds on both runtime paths."""
from __future__ import annotations

import re

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.errors import SpecError

INTERNAL_ID = re.compile(r"[\w.]+#\d+")


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as e:
        compile_text(text, file="f.nn")
    return str(e.value)


def test_a_value_reduced_over_time_cannot_be_read_at_another_step():
    msg = error_of("input x[2] : seq\noutput q\np[3] = V @ first(x)\nq = p[t-1]\n")
    assert "f.nn:4:1" in msg and "'p' is read at [t-1] but it is not a sequence" in msg


def test_a_sequence_read_at_another_step_is_still_allowed():
    compile_text("input x[2] : seq\noutput q\np[3] = V @ x\nq = p[t-1]\n")


def test_a_prediction_per_step_against_one_class_per_example_is_a_located_error():
    msg = error_of("input x[2] : seq\ntarget y : class[2]\noutput p\np = softmax(x)\nloss cross_entropy(p, y)\n")
    assert "f.nn:5:6" in msg
    assert "'p' is a sequence, one per step" in msg and "'y' is one per example" in msg


def test_a_prediction_per_example_against_a_class_per_step_is_a_located_error():
    msg = error_of("input x[2]\ntarget y : seq of class[2]\noutput p\np = softmax(x)\nloss cross_entropy(p, y)\n")
    assert "'p' is one per example" in msg and "'y' is a sequence, one per step" in msg


def test_a_class_per_step_with_a_prediction_per_step_compiles():
    compile_text("input x[2] : seq\ntarget y : seq of class[2]\noutput p\np = softmax(x)\nloss cross_entropy(p, y)\n")


@pytest.mark.parametrize("text, says", [
    ("input w : seq of token\noutput p\np[3] = softmax(V @ embed(w, 3))\nloss cross_entropy(p, shift(w, 1))\n",
     "the target 'shift(w, 1)'"),
    ("input z : seq\noutput y\ny[2] = V @ embed(argmax(W @ z), 3)\n",
     "the table of 'embed(argmax(W @ z), 3)'"),
])
def test_messages_name_source_text_not_internal_ids(text, says):
    msg = error_of(text)
    assert says in msg
    assert not INTERNAL_ID.search(msg), msg


@pytest.mark.parametrize("text", [
    "input x[2] : seq\noutput y\ny[3] = tanh(W @ x[t-1])\ninitial x = [1, 2]\n",
    "input x[2] : seq\noutput y\ng = tanh(x)\ny[3] = W @ g[t-1]\ninitial g = [1, 2]\n",
])
def test_initial_of_a_value_that_is_not_a_recurrent_state_is_a_located_error(text):
    msg = error_of(text)
    assert re.search(r"f\.nn:\d+:\d+: error: 'initial (x|g)'", msg)
    assert "'initial' sets the state a recurrent value reads" in msg


def _run(text: str, feeds: dict, lengths, fast: bool) -> dict:
    from nnspec.runtime import ExecOptions, Executor
    plan = compile_text(text, bindings={"vocab(w)": 4}).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(size=p.shape) for p in plan.params}
    ex = Executor(plan, dtype=np.float64, options=ExecOptions(fast_loops=fast))
    tape = ex.forward(params, feeds, lengths=np.array(lengths))
    return {o: tape.values[o] for o in plan.outputs}, params


@pytest.mark.parametrize("fast", [True, False])
def test_tokens_read_before_the_first_step_are_no_token(fast):
    """``w[t-1]`` at the first step embeds to zeros (no token, as ``shift`` pads), not to the row
    of id 0 (<pad>, a learned row); later steps read the previous token's row."""
    text = "input w : seq of token\noutput a\na = embed(w[t-1], 3)\n"
    w = np.array([[1, 2], [3, 0], [2, 0]])          # (T, B): lengths 3 and 1
    out, params = _run(text, {"w": w}, [3, 1], fast)
    (table,) = params.values()
    np.testing.assert_array_equal(out["a"][0], 0.0)
    np.testing.assert_allclose(out["a"][1:, 0], table[w[:-1, 0]])


@pytest.mark.parametrize("text, feeds, loss", [
    # the losing class: log-probability -80 (logit gap 2 * 40); the clip would stop at 27.6
    ("input x[2]\ntarget y : class[2]\nloss cross_entropy(softmax(40 * W @ x), y)\n",
     {"x": np.array([[2.0, 0.0]]), "y": np.array([1])}, 80.0),
    ("input x[2]\ntarget y : class[2]\np = softmax(40 * W @ x)\nloss cross_entropy(p, y)\n",
     {"x": np.array([[2.0, 0.0]]), "y": np.array([1])}, 80.0),
    ("input x[2]\ntarget r[2]\nloss bce(sigmoid(40 * W @ x), r)\n",
     {"x": np.array([[2.0, 0.0]]), "r": np.array([[0.0, 0.0]])}, (80.0 + np.log(2.0)) / 2),
])
@pytest.mark.parametrize("optimize", [False, True])
@pytest.mark.parametrize("fast", [True, False])
def test_a_loss_of_its_activation_is_the_exact_loss_of_the_logits(text, feeds, loss, optimize, fast):
    """Optimised or not, on either path: no clip at 1e-12, and a gradient that does not vanish."""
    from nnspec.runtime import ExecOptions, Executor
    plan = compile_text(text, optimize=optimize).plan
    ex = Executor(plan, dtype=np.float64, options=ExecOptions(fast_loops=fast))
    tape = ex.forward({"W": np.eye(2)}, feeds)
    assert float(tape.values[plan.loss]) == pytest.approx(loss, rel=1e-12)
    assert np.abs(ex.backward(tape)["W"]).max() > 1.0


def test_an_initial_state_needed_only_through_another_loops_initial_state_is_planned():
    # difftest seed 213739: h4 is needed only because h10's initial state reads it, and h4's own
    # initial state came earlier in the list of initial states: it was left out of the plan
    plan = compile_text("input x[3] : seq\ntarget y[3] : seq\nh4[4] = W5 @ x + h4[t-1]\nv[2] = W8 @ first(h4)\n"
                        "h10[3] = g * h10[t-1] + (1 - g) * tanh(W13 @ x)\ninitial h4 = [0.03, 0.69, 0.04, 0.8]\n"
                        "initial h10 = tanh(W14 @ v)\nloss bce_logits(h10, y)\n").plan
    loops = [s for s in plan.steps if hasattr(s, "initials")]
    assert {state for loop in loops for state in loop.initials} == {"h4", "h10"}



@pytest.mark.parametrize("text, via", [
    # tests.fuzz_text seed 7500000's run: the initial state read the loop through a concatenation of it
    ("input w : seq of token\ne = embed(w, 3)\nh1[3] = tanh(W1 @ e + U1 @ h1[t-2])\ninitial h1 = p\n"
     "h2 = concat(h1, h1)\noutput p\np = softmax(V @ first(h2) + c)\n", " through 'h2'"),
    ("input x[2] : seq\nh[3] = tanh(W @ x + U @ h[t-1])\ninitial h = tanh(V @ last(h))\noutput h\n", " through 'last(h)'"),
    # through another loop's initial state, which reads this one
    ("input x[2] : seq\na[3] = tanh(W @ x + U @ a[t-1])\nb[3] = tanh(V @ x + Q @ b[t-1])\n"
     "initial a = last(b)\ninitial b = last(a)\noutput a\noutput b\n", ""),
])
def test_an_initial_state_computed_from_its_own_loop_is_a_located_error(text, via):
    msg = error_of(text)
    assert re.search(r"f\.nn:\d+:1: error: the initial state of '(h1|h|a|b)' is computed from the values of its own "
                     r"loop", msg), msg
    assert via in msg and "Traceback" not in msg


def test_an_initial_state_from_another_loop_that_does_not_read_this_one_compiles():
    compile_text("input x[2] : seq\nenc[3] = tanh(W @ x + U @ enc[t-1])\ndec[3] = tanh(V @ x + Q @ dec[t-1])\n"
                 "initial dec = last(enc)\noutput dec\n")



@pytest.mark.parametrize("loss", ["loss 0.0", "loss 1 + 2", "loss mse(y, t)\nloss 0.5"])
def test_a_constant_loss_is_a_located_error(loss):
    # tests.fuzz_text seed 8100000: 'loss 0.0' reached build_plan's verifier (no step computes the loss)
    msg = error_of(f"input x[2]\ntarget t[2]\noutput y\ny[2] = W @ x\n{loss}\n")
    assert re.search(r"f\.nn:\d+:6: error: this loss is a constant: it reads no input, target or parameter", msg), msg


def test_a_loss_of_data_alone_still_compiles():
    compile_text("input x[2]\ntarget t[2]\noutput y\ny[2] = W @ x\nloss mse(y, t)\nloss mse(x, t)\n")


@pytest.mark.parametrize("decl", ["target y : class[3]", "input y : token"])
def test_token_or_class_ids_as_an_initial_state_are_a_located_error(decl):
    # tests.fuzz_text seed 8100000: 'initial h1 = y' of class ids crashed training with a broadcast error
    msg = error_of(f"input x[1] : seq\n{decl}\nh1[3] = tanh(W1 @ x + U1 @ h1[t-2])\ninitial h1 = y\n"
                   "p = softmax(V @ last(h1) + c)\noutput p\n" + ("loss cross_entropy(p, y)\n" if "target" in decl else ""))
    assert "f.nn:4:1: error: the initial state of 'h1' is 'y', which holds token or class ids" in msg, msg



def test_a_value_named_as_a_loss_the_compiler_adds_keeps_its_own_meaning():
    # tests.fuzz_text seed 8300000 found 'target loss': the loss's node took the id 'loss' and read itself
    # (a bogus algebraic loop naming an internal id). With two losses the first one's node is 'loss1': a
    # value the spec names 'loss1' was replaced by it, silently, and 'loss loss1' read the first loss
    from nnspec.model import Model
    feeds = {"x": np.array([[1.0, 2.0]]), "y": np.array([[0.5, -1.0]])}
    model = Model(compile_text("input x[2]\ntarget y[2]\noutput p\np[2] = W @ x\nloss1 = 3 * mse(p, y)\n"
                               "loss mse(p, y)\nloss loss1\n"), dtype=np.float64)
    loss, _, tape = model.loss_and_grads(feeds)
    assert loss == pytest.approx(4 * np.mean((tape.values["p"] - feeds["y"]) ** 2), rel=1e-12)
    named = Model(compile_text("input x[2]\ntarget loss[2]\noutput p\np[2] = W @ x\nloss 2 * mse(p, loss)\n"),
                  dtype=np.float64)
    loss, _, tape = named.loss_and_grads({"x": feeds["x"], "loss": feeds["y"]})
    assert loss == pytest.approx(2 * np.mean((tape.values["p"] - feeds["y"]) ** 2), rel=1e-12)
    assert named.plan.loss != "loss" and "loss" in {t.name for t in named.plan.targets}   # two values, two ids



def test_the_outputs_printed_after_training_run_in_batches_the_memory_check_allowed_for(tmp_path):
    # tests.fuzz_text seed 8400000: an output of ten million classes over a small data set at once (batches
    # of 256) took 2.6 GB where the memory check had allowed for the training batch
    from nnspec.cli.forward import outputs_for
    from nnspec.session import open_session
    spec = tmp_path / "s.nn"
    spec.write_text("input x[2]\ntarget y : class[3]\noutput p\np = softmax(W @ x)\nloss cross_entropy(p, y)\n"
                    "train { epochs 1; batch 2 }\n"
                    "data inline { x = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]; y = [0, 1, 2, 0, 1] }\n")
    session = open_session(spec)
    seen = []
    batches = session.data.batches
    session.data.batches = lambda split, size, **kw: (seen.append(size), batches(split, size, **kw))[1]
    outputs = outputs_for(session, "train")
    assert seen == [2] and len(outputs["p"]) == 5
    x = np.array([[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]], np.float32)
    np.testing.assert_allclose(outputs["p"], session.model.forward({"x": x})["p"], rtol=1e-6)


STATIC_OUTPUTS = """input x[2]
target t[1]
output y
output v
z = w @ x + b
y = step(c - 3)
v = tanh(u)
loss mse(z, t)
param u[3]
data inline {
  x = [[0, 0], [0, 1], [1, 0], [1, 1]]
  t = [[0], [1], [1], [0]]
}
train { epochs 1 }
"""


def test_an_output_made_from_parameters_alone_is_every_examples_value(tmp_path, capsys):
    # found by the text fuzzer (seed 6600000): `y = step(z1e-3)` made `y` of a parameter alone, and
    # printing the outputs after training crashed on its 0-d value ('float' object is not iterable)
    from nnspec.cli import main
    from nnspec.model import Model

    path = tmp_path / "static.nn"
    path.write_text(STATIC_OUTPUTS)
    out = Model.from_file(path).forward({"x": np.zeros((4, 2))})
    assert out["y"].shape == (4,) and out["v"].shape == (4, 3)
    assert (out["v"] == out["v"][0]).all()
    assert main(["run", str(path), "--no-save"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("│ [")]
    assert len(rows) == 4 and len({tuple(r.split("│")[2:]) for r in rows}) == 1   # (y and v alike)
