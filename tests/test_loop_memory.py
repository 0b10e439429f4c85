"""What a loop keeps for its backward pass, and that keeping less changes no number.

Two rules of the NumPy loop path (``runtime/loopprogram.py``), each behind its own switch:
``grads_in_views``: a value whose op passes its gradient unchanged to a slice read by nothing else
(the GRU's ``U h[t-1]`` part plus ``b_hn``) keeps its gradient in that slice's part of its source's
gradient, with no (T, B, H) array of its own; ``recompute``: a value only backward steps read, made
by one exactly rounded operation from values kept anyway (the GRU's ``1 - z``), is held for one step
and made again in the backward pass."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.ops import REGISTRY
from nnspec.runtime import ExecOptions, Executor
from nnspec.runtime.loopprogram import one_rounding

GRU = "input x[3] : seq\ntarget y : seq of class[4]\nh = {cell}(x, H = 5)\nloss cross_entropy(softmax(O @ h + c), y)\n"
CELLS = {"forward": "gru", "reversed": "reverse(gru)"}
LENGTHS = {"full": None, "padded": np.array([6, 4, 2, 1])}
OFF = {"grads_in_views": False, "recompute": False}


def gru(direction: str):
    plan = compile_text(GRU.format(cell=CELLS[direction])).plan
    rng = np.random.default_rng(3)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    batches = [{"x": rng.normal(size=(6, 4, 3)), "y": rng.integers(0, 4, size=(6, 4))} for _ in range(3)]
    return plan, params, batches


def training_passes(plan, params, batches, dtype, options: ExecOptions, lengths):
    """A training's single-use passes over the batches, twice (the second round on kept runs, with the
    compiled kernels from the first pass where they are on): each pass's loss and gradients."""
    ex = Executor(plan, dtype=dtype, options=options)
    if ex.segments_after is not None:
        ex.segments_after = 0
    ps = {k: v.astype(dtype) for k, v in params.items()}
    out = []
    for feeds in batches + batches:
        feeds = {"x": feeds["x"].astype(dtype), "y": feeds["y"]}
        tape = ex.forward(ps, feeds, lengths=lengths, single_use=True)
        loss = float(tape.values[plan.loss])
        out.append((loss, {k: g.copy() for k, g in ex.backward(tape, wrt=set(params)).items()}))
        del tape
    return ex, out


def body_op(plan, op: str, reads=lambda src: True):
    """The loop body's one step of that op (one of whose operands ``reads`` tells)."""
    loop = next(s for s in plan.steps if hasattr(s, "body"))
    found = [b.id for b in loop.body if b.op == op and any(reads(src) for src, _ in b.inputs)]
    assert len(found) == 1, found
    return found[0]


def test_the_gru_keeps_one_minus_z_for_one_step_and_no_gradient_array_for_its_reset_gate_product():
    plan, params, batches = gru("forward")
    ex, _ = training_passes(plan, params, batches[:1], np.float64, ExecOptions(fused_loops=False), None)
    (fast,) = ex.fast_loops.values()
    run, prog = fast._run, fast.program
    one_minus_z = body_op(plan, "sub")
    assert prog.recomputed == {one_minus_z}
    assert run.bufs[one_minus_z].shape == (4, 5)                   # one step's, not (T, B, H)
    with_bias = body_op(plan, "add", reads=lambda src: src in params)     # U_n h[t-1] + b_hn
    product = body_op(plan, "matmul")                                      # U h[t-1], all three gates
    bw = run.backward.plan
    assert bw.region[with_bias] == product
    assert np.shares_memory(run.backward.gbuf[with_bias], run.backward.gbuf[product])
    # the reset and update gates' sum keeps its own: a part of the hoisted projection's array, lent
    (gates,) = [b.id for b in prog.body if b.op.name == "add" and b.trail == (10,)]   # W x + b + U h[t-1], 2H
    assert bw.region[gates] == gates and gates in run.backward.lent
    # switched off: its own buffer and its own gradient region, as before
    ex, _ = training_passes(plan, params, batches[:1], np.float64, ExecOptions(fused_loops=False, **OFF), None)
    (fast,) = ex.fast_loops.values()
    assert not fast.program.recomputed and fast._run.bufs[one_minus_z].shape == (6, 4, 5)
    assert fast._run.backward.plan.region[with_bias] == with_bias


@pytest.mark.parametrize("segments", [True, False], ids=["segments", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("direction", list(CELLS))
def test_keeping_less_gives_the_reference_numbers_and_the_same_as_keeping_all(direction, lengths, dtype, segments):
    plan, params, batches = gru(direction)
    lens = LENGTHS[lengths]
    _, ref = training_passes(plan, params, batches, dtype, ExecOptions.reference(), lens)
    _, new = training_passes(plan, params, batches, dtype, ExecOptions(fused_loops=False, fused_segments=segments), lens)
    _, old = training_passes(plan, params, batches, dtype,
                             ExecOptions(fused_loops=False, fused_segments=segments, **OFF), lens)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for (loss_r, g_r), (loss_n, g_n), (loss_o, g_o) in zip(ref, new, old):
        assert loss_n == loss_o and loss_n == pytest.approx(loss_r, rel=tol)
        assert set(g_n) == set(g_o) and set(g_n) <= set(g_r)
        for k in g_n:
            scale = max(float(np.abs(g_r[k]).max()), 1e-30)
            assert float(np.abs(g_n[k] - g_r[k]).max()) / scale <= tol, k
            np.testing.assert_array_equal(g_n[k], g_o[k], err_msg=k)    # the same arithmetic either way


SPEC = ("input x[3] : seq\ntarget y[4] : seq\nh[4] = tanh(W @ x + U @ h[t-1] + b + e[t-1])\n"
        "d = h - h[t-1]\nq = d * {other}\ne[4] = tanh(q)\nloss mse(V @ e + c, y)\n")


@pytest.mark.parametrize("other, recomputed", [("h", {"d"}), ("p", set())], ids=["body", "weight"])
def test_a_value_is_made_again_only_where_every_read_of_it_is_a_step_of_the_backward_pass(other, recomputed):
    """d = h - h[t-1] read by d * h: made again at each backward step. Read by d * p for a weight p, p's
    gradient is one product over the whole sequence after the loop, which reads d whole: kept."""
    plan = compile_text(SPEC.format(other=other)).plan
    rng = np.random.default_rng(5)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    feeds = {"x": rng.normal(size=(5, 4, 3)), "y": rng.normal(size=(5, 4, 4))}
    results = []
    for options in (ExecOptions(fused_loops=False), ExecOptions.reference()):
        ex = Executor(plan, dtype=np.float64, options=options)
        for lengths in (None, np.array([5, 3, 1, 4])):
            tape = ex.forward(params, feeds, lengths=lengths, single_use=True)
            results.append(ex.backward(tape, wrt=set(params)))
        if options.fast_loops:
            (fast,) = ex.fast_loops.values()
            assert fast.program.recomputed == recomputed
    for fast, ref in zip(results[:2], results[2:]):
        for k in params:
            np.testing.assert_allclose(fast[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_the_ops_made_again_are_those_whose_value_is_one_rounding_of_their_inputs():
    """Told by the registry's scalar forms, not by name: a + b, a - b, a * b are one IEEE operation,
    the same number whoever computes it; a quotient (a compiled kernel may take a reciprocal), an
    activation (a compiled kernel's own maths) is not."""
    ones = {name for name, op in REGISTRY.items() if one_rounding(op)}
    assert {"add", "sub", "mul"} <= ones
    assert not ones & {"div", "sigmoid", "tanh", "exp", "slice", "matmul"}


@pytest.mark.parametrize("direction", list(CELLS))
def test_every_gradient_kept_as_nnspec_grad_asks_gives_the_reference_numbers(direction):
    """A full tape, every value's gradient kept (the body's too: read from the slice's part)."""
    plan, params, batches = gru(direction)
    results = []
    for options in (ExecOptions(fused_loops=False), ExecOptions.reference()):
        ex = Executor(plan, dtype=np.float64, options=options)
        for feeds in batches[:2]:
            tape = ex.forward(params, feeds, lengths=LENGTHS["padded"])
            results.append(ex.backward(tape))
    for fast, ref in zip(results[:2], results[2:]):
        assert set(fast) <= set(ref)
        for k in fast:
            np.testing.assert_allclose(fast[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)
