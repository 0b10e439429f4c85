"""What every op says about itself (its facts, nnspec.ops.registry.FACTS) is declared and true.

The optimiser, shape inference, the runtime, the trainer's heads, ``sample`` and the docs read
these facts instead of lists of op names, so a new op is one class in nnspec/ops plus its case in
tests/test_ops_gradcheck.py; here each fact is checked against the op's own maths.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import random_feeds
from test_ops_gradcheck import CASES, K, classes, normal, probs

from nnspec import compile_text
from nnspec.ops import REGISTRY, Ctx, Op, register
from nnspec.ops.registry import FACTS, LOSS_FACTS, NO_CTX, PREDICTIONS, SCORES_AS, TARGETS, NotALoss, scores_from
from nnspec.runtime import Executor

OPS = sorted(REGISTRY)


def declared_by(cls: type, fact: str) -> type | None:
    """The class (the op's or a family's, never Op's) that states the fact."""
    return next((c for c in cls.__mro__ if c is not Op and fact in vars(c)), None)


@pytest.mark.parametrize("name", OPS)
def test_every_op_declares_every_fact(name):
    cls = type(REGISTRY[name])
    missing = [f for f in FACTS if declared_by(cls, f) is None]
    assert not missing, f"op {name!r} does not declare {missing}"


def test_registering_an_op_that_leaves_out_a_fact_fails():
    class Incomplete(NotALoss, Op):
        name = "incomplete"
        elementwise, operator, args, saves_state = True, None, ("x",), False

    with pytest.raises(TypeError, match="does not declare last_axis_view"):
        register(Incomplete)
    assert "incomplete" not in REGISTRY


@pytest.mark.parametrize("name", OPS)
def test_loss_facts_are_given_for_losses_and_only_for_them(name):
    op = REGISTRY[name]
    if not op.scalar_output:
        assert all(getattr(op, f) is None for f in LOSS_FACTS), f"{name} is not a loss"
        return
    assert op.prediction in PREDICTIONS and op.target in TARGETS
    assert (op.threshold is not None) == (op.target == "binary"), "a binary decision needs a threshold"
    assert (op.target == "class") == (1 in op.integer_inputs), "class targets are int classes"
    if op.logits_form is not None:
        activation, fused = op.logits_form
        assert op.prediction in ("probabilities", "log_probabilities")
        assert REGISTRY[activation].arity == 1 and not REGISTRY[activation].scalar_output
        assert REGISTRY[fused].prediction == "logits" and REGISTRY[fused].target == op.target


@pytest.mark.parametrize("name", sorted(n for n, op in REGISTRY.items() if op.logits_form))
def test_a_loss_of_an_activation_equals_its_logits_form(name):
    activation, fused = REGISTRY[name].logits_form
    target = REGISTRY[name].target
    z = normal(6, K) * 2
    y = classes(6) if target == "class" else probs(6, K)
    loss = REGISTRY[name].forward([REGISTRY[activation].forward([z], {}, Ctx()), y], {}, Ctx())
    np.testing.assert_allclose(REGISTRY[fused].forward([z.copy(), y], {}, Ctx()), loss, rtol=1e-9)


def test_a_binary_threshold_is_where_the_prediction_says_one_half():
    for name, op in REGISTRY.items():
        if op.target == "binary" and op.prediction == "probabilities":
            assert op.threshold == 0.5, name
        elif op.target == "binary":
            assert op.threshold == 0.0, name  # sigmoid(0) = 1/2, the step unit fires above 0


def test_operators_are_unique_and_elementwise_ones_broadcast():
    ops = [(op.operator, op.arity) for op in REGISTRY.values() if op.operator]
    assert len(ops) == len(set(ops))


@pytest.mark.parametrize("case", [c for c in CASES if REGISTRY[c.op].elementwise],
                         ids=lambda c: f"{c.op}-{c.tag}" if c.tag else c.op)
def test_an_elementwise_op_commutes_with_slicing_the_last_axis(case):
    op = REGISTRY[case.op]
    xs = [np.asarray(x, dtype=float) for x in case.xs]
    whole = op.forward(xs, case.attrs, case.make_ctx())
    n = whole.shape[-1]
    part = [x[..., :1] if x.ndim and x.shape[-1] == n else x for x in xs]
    np.testing.assert_allclose(op.forward(part, case.attrs, case.make_ctx()), whole[..., :1])


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.op}-{c.tag}" if c.tag else c.op)
def test_an_op_saves_state_for_its_vjp_exactly_when_it_says_so(case):
    op = REGISTRY[case.op]
    ctx = case.make_ctx()
    op.forward([np.array(x, copy=True) for x in case.xs], case.attrs, ctx)
    if op.saves_state:
        assert op.needs_ctx, f"{case.op} saves state in the context, so it needs one"
    else:
        assert ctx.saved == {}, f"{case.op} saves {sorted(ctx.saved)} but says saves_state = False"


@pytest.mark.parametrize("case", [c for c in CASES if REGISTRY[c.op].passes_gradient],
                         ids=lambda c: f"{c.op}-{c.tag}" if c.tag else c.op)
def test_passed_gradients_are_the_outputs_gradient(case):
    op = REGISTRY[case.op]
    xs = [np.asarray(x, dtype=float) for x in case.xs]
    out = op.forward(xs, case.attrs, case.make_ctx())
    g = np.random.default_rng(2).standard_normal(out.shape)
    grads = op.vjp(g, xs, out, case.attrs, case.make_ctx())
    for i in op.passes_gradient:
        if xs[i].shape == out.shape:
            np.testing.assert_array_equal(grads[i], g)
    for i in set(range(len(xs))) - set(op.passes_gradient):
        assert not np.array_equal(grads[i], g), f"{case.op}: input {i} gets g unchanged too"


def test_views_row_gradients_and_chunk_reads_are_where_the_runtime_expects_them():
    for name, op in REGISTRY.items():
        if op.last_axis_view:
            assert {"start", "stop"} <= set(op.attrs), name
        if op.row_gradient_input is not None:
            assert op.row_gradient_input in op.shared_inputs and 0 in op.integer_inputs, name
        if op.reads_across_chunks:
            assert op.over_time and "k" in op.attrs, name


def test_forward_defaults_to_forward_into():
    # ops that write their maths once, in forward_into, get forward from Op
    once = [n for n, op in REGISTRY.items() if type(op).forward is Op.forward]
    assert {"sigmoid", "tanh", "relu", "gelu", "add", "mul"} <= set(once)
    x = normal(3, 4)
    np.testing.assert_allclose(REGISTRY["sigmoid"].forward([x], {}, Ctx()), 1 / (1 + np.exp(-x)))


@pytest.mark.parametrize("activation", sorted(n for n, op in REGISTRY.items() if op.elementwise and
                                              type(op).__module__.endswith(".activations")))
def test_a_loop_of_any_elementwise_activation_stays_on_the_fast_path(activation):
    """Its loop keeps its prepared run (gelu, which saved its tanh in the context, did not)."""
    text = (f"input x[3] : seq\ntarget y[2] : seq\nh[4] = {activation}(W @ x + U @ h[t-1] + b)\n"
            "loss mse(V @ h + c, y)\n")
    plan = compile_text(text).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    ex = Executor(plan, dtype=np.float64)
    tape = ex.forward(params, random_feeds(plan, T=4, B=2, seed=0), lengths=np.array([4, 3]), train=True)
    ex.backward(tape, wrt=set(params))
    progs = [fast.program for fast in ex.fast_loops.values()]
    assert progs and all(p.ok and p.reusable for p in progs), f"a loop of {activation} left the fast path"


@pytest.mark.parametrize("name", sorted(n for n, op in REGISTRY.items() if op.scores_as is not None))
def test_an_output_made_of_scores_gives_them_back(name):
    # what an exported model's reader and the greedy decoder rely on (registry.scores_from)
    op = REGISTRY[name]
    assert op.scores_as in SCORES_AS and op.arity == 1
    z = np.random.default_rng(0).normal(size=(3, 5))
    back = scores_from(op.scores_as, op.forward([z], {}, NO_CTX))
    shift = (back - z)[..., :1] if op.scores_as in ("probabilities", "log_probabilities") else 0
    np.testing.assert_allclose(back, z + shift, atol=1e-12)


@pytest.mark.parametrize("name", sorted(n for n, op in REGISTRY.items() if op.logits_form))
def test_a_loss_on_an_activation_names_one_that_makes_its_prediction(name):
    op = REGISTRY[name]
    made = REGISTRY[op.logits_form[0]].scores_as
    assert made == (op.prediction if op.target == "class" else "binary_probabilities")
