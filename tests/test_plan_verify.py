"""The plan is a verified contract: ``verify_plan`` checks what the runtime relies on, after
``build_plan`` and after every optimisation pass, and names the stage that broke it.

Each invariant has a plan broken on purpose that it must catch; every spec of specs/ and
generated specs verify after every pass.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from nnspec import compiler, optimize
from nnspec.optimize import PASSES, optimize_plan
from nnspec.plan import LoopStep, OpStep, PlanInvariantError, verify_plan

from tests.difftest.generator import generate

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.nn"))

ELMAN = """\
input x[3] : seq
target y : seq of class[2]
output p
h[4] = tanh(W @ x + U @ h[t-1] + b)
p = softmax(V @ h + c)
loss cross_entropy(p, y)
"""


def plan():
    """The unoptimised plan of a small Elman network: one loop, steps before and after it."""
    return compiler.compile_text(ELMAN, optimize=False).plan


def loop_of(p) -> LoopStep:
    return next(s for s in p.steps if isinstance(s, LoopStep))


def step(p, op: str) -> OpStep:
    return next(b for s in p.steps for b in (s.body if isinstance(s, LoopStep) else [s]) if b.op == op)


def caught(p, words: str, shape_rule: bool = False) -> None:
    problems = verify_plan(p)
    assert any(words in m for m in problems), problems
    if not shape_rule:   # the check after each optimisation pass (no shape rules) catches it too
        problems = verify_plan(p, shapes=False)
        assert any(words in m for m in problems), problems


def test_the_plan_of_a_valid_spec_has_no_problem():
    assert verify_plan(plan()) == []
    assert verify_plan(optimize_plan(plan())) == []


def test_a_read_of_a_value_nothing_defines():
    p = plan()
    step(p, "softmax").inputs[0] = ("nowhere", 0)
    caught(p, "reads 'nowhere', which is not defined before it")


def test_a_read_before_the_definition():
    p = plan()
    p.steps.reverse()   # the loss first, reading what comes later
    caught(p, "which is not defined before it")


def test_a_value_defined_twice():
    p = plan()
    p.steps.append(step(p, "softmax").model_copy())
    caught(p, "is defined twice")


def test_a_delayed_read_of_a_value_that_is_not_a_state():
    p = plan()
    loop_of(p).states = []
    caught(p, "at t-1, which is not a state of its loop")


def test_a_state_that_is_not_in_its_loop():
    p = plan()
    loop_of(p).states.append("p")
    caught(p, "state 'p' is not a value of its body")


def test_an_initial_state_defined_after_its_loop():
    p = plan()
    loop = loop_of(p)
    loop.initials = {loop.states[0]: "p"}
    caught(p, "is not defined before the loop")


def test_a_loop_with_no_direction():
    p = plan()
    loop_of(p).direction = 0
    caught(p, "direction 0 is neither +1 nor -1")


def test_a_step_whose_shape_its_op_does_not_give():
    p = plan()
    step(p, "tanh").shape = [5]
    caught(p, "tanh of shapes [[4]] does not give the step's shape [5]", shape_rule=True)


def test_a_step_whose_rank_its_op_does_not_give():
    p = plan()
    step(p, "softmax").shape = []
    caught(p, "does not give the step's shape []", shape_rule=True)


def test_an_unknown_op_and_a_wrong_number_of_inputs():
    p = plan()
    step(p, "tanh").op = "tanhh"
    step(p, "softmax").inputs.append(("x", 0))
    caught(p, "unknown op 'tanhh'")
    caught(p, "softmax takes 1 input(s), the step has 2")


def test_an_output_that_is_not_computed():
    p = plan()
    p.outputs.append("q")
    caught(p, "the output 'q' is not a value of the plan")


def test_a_loss_that_is_not_one_number():
    p = plan()
    p.loss = "p"
    caught(p, "the loss 'p' has shape [2], not one number")
    p.loss = "nothing"
    caught(p, "the loss 'nothing' is not computed by a step")


def test_a_pass_that_breaks_the_plan_is_named(monkeypatch):
    def broken_fuse_linear(w):
        w.steps = w.steps[1:]   # drops a step others read

    monkeypatch.setattr(optimize, "fuse_linear", broken_fuse_linear)
    with pytest.raises(PlanInvariantError) as e:
        optimize_plan(plan())
    assert e.value.stage == "the optimisation pass fuse_linear"
    assert "internal error: the plan after the optimisation pass fuse_linear is broken" in str(e.value)
    assert any("which is not defined" in m for m in e.value.problems)


def test_a_pass_that_breaks_a_shape_is_caught_before_the_runtime_gets_the_plan(monkeypatch):
    def broken_fuse_linear(w):
        next(s for s in w.steps if not isinstance(s, LoopStep) and s.op == "softmax").shape = [3]

    monkeypatch.setattr(optimize, "fuse_linear", broken_fuse_linear)
    with pytest.raises(PlanInvariantError, match="softmax of shapes") as e:
        optimize_plan(plan())
    assert e.value.stage.startswith("the optimisation passes fuse_losses")


def test_build_plan_checks_its_own_plan(monkeypatch):
    from nnspec import plan as plan_module
    real = plan_module._order_loops
    monkeypatch.setattr(plan_module, "_order_loops", lambda steps: list(reversed(real(steps))))
    with pytest.raises(PlanInvariantError, match="after build_plan"):
        compiler.compile_text(ELMAN, optimize=False)


def after_every_pass(compiled) -> None:
    """The plan verifies after each prefix of the passes (as optimize_plan also checks inside)."""
    assert verify_plan(compiled.plan) == []
    for k in range(1, len(PASSES) + 1):
        assert verify_plan(optimize_plan(compiled.plan, PASSES[:k])) == [], PASSES[:k]


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_spec_verifies_after_every_pass(path):
    after_every_pass(compiler.compile_file(path, optimize=False))


def generated(seeds):
    for seed in seeds:
        try:
            yield compiler.compile_text(generate(seed).text(), optimize=False)
        except compiler.SpecError:   # a generated spec the compiler rejects has no plan
            continue


def test_generated_specs_verify_after_every_pass():
    for c in generated(range(60)):
        after_every_pass(c)


@pytest.mark.slow
def test_500_generated_specs_verify_after_every_pass():
    for c in generated(range(500)):
        after_every_pass(c)


# ---- source spans ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_step_keeps_the_source_it_came_from(path):
    """Optimised or not, each step points at its equation (a weight concatenation of parameters,
    made once per pass, stands for no one expression); the span survives the plan's JSON form."""
    for optimized in (False, True):
        p = compiler.compile_file(path, optimize=optimized).plan
        steps = [b for s in p.steps for b in (s.body if isinstance(s, LoopStep) else [s])]
        assert all(b.span is not None and b.span.file.endswith(".nn") for b in steps if b.op != "concat_rows")
        assert type(p).model_validate_json(p.model_dump_json()) == p


@pytest.mark.parametrize("fast_loops", [True, False], ids=["fast path", "reference"])
def test_a_nan_at_run_time_renders_as_a_spec_error(fast_loops):
    import numpy as np
    from nnspec.runtime import ExecOptions, Executor, RuntimeFailure
    text = "input x[3] : seq\noutput h\nh[2] = sqrt(W @ x + U @ h[t-1] + b)\n"
    p = compiler.compile_text(text, file="spec.nn").plan
    ex = Executor(p, dtype=np.float64, check_finite=True, options=ExecOptions(fast_loops=fast_loops))
    params = {"W": np.ones((2, 3)), "U": np.ones((2, 2)), "b": np.full(2, -5.0)}
    x = np.ones((4, 1, 3)) * np.array([3.0, 3.0, 0.0, 0.0])[:, None, None]  # fine at t = 0, NaN at t = 2
    with np.errstate(all="ignore"), pytest.raises(RuntimeFailure) as err:
        ex.forward(params, {"x": x})
    from nnspec.errors import Sources
    sources = Sources()
    sources.add("spec.nn", text)
    err.value.sources = sources
    assert err.value.span is not None   # a named value: its whole equation
    assert err.value.render() == ("spec.nn:3:1: error: 'h' produced NaN\n"
                                  "    h[2] = sqrt(W @ x + U @ h[t-1] + b)\n"
                                  "    ^~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~")
