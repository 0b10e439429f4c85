"""A loop's product by a weight shared by every step (``U @ h[t-1]``) multiplies the step's rows
by a contiguous copy of U's transpose, made before each pass and dropped after it
(``linalg.TransposedWeightStep``): the same values and gradients as the reference engine, a
weight changed between passes (as the optimiser does, in place) is read again, and no copy is
held between passes. The copy is used only where it pays (``transposed_copy_pays``)."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.ops import linalg
from nnspec.ops.linalg import TransposedWeightStep, WeightBlocksGradStep, transposed_copy_pays
from nnspec.runtime import ExecOptions, Executor

SPEC = ("input x[3] : seq\ntarget y[2] : seq\nparam U[6, 6]\n"
        "h = tanh(W @ x + U @ h[t-1] + b)\nloss mse(Z @ h + d, y)\n")
T, B = 10, 4
LENGTHS = np.array([10, 7, 1, 10])


def setup():
    plan = compile_text(SPEC).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    feeds = {"x": rng.normal(size=(T, B, 3)), "y": rng.normal(size=(T, B, 2))}
    return plan, params, feeds


def loss_and_grads(ex, plan, params, feeds):
    tape = ex.forward(params, feeds, lengths=LENGTHS)
    return tape.values[plan.loss], ex.backward(tape)


def transposed_steps(ex) -> list:
    return [f for loop in ex.fast_loops.values() for f in loop._run.steps if isinstance(f, TransposedWeightStep)]


def test_the_loop_multiplies_by_the_copy_and_agrees_with_the_reference():
    plan, params, feeds = setup()
    fast = Executor(plan, dtype=np.float64, options=ExecOptions(fused_loops=False))
    reference = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    for _ in range(2):      # the second pass runs the kept loop run
        lf, gf = loss_and_grads(fast, plan, params, feeds)
        lr, gr = loss_and_grads(reference, plan, params, feeds)
        np.testing.assert_allclose(lf, lr, rtol=1e-13)
        assert set(gf) == set(gr)
        for k in gf:
            np.testing.assert_allclose(gf[k], gr[k], rtol=1e-12, atol=1e-14, err_msg=k)
        params["U"] -= 0.1 * gf["U"]    # in place, as the optimiser updates a weight
    steps = transposed_steps(fast)
    assert len(steps) == 1
    assert steps[0].m is None, "the copy is dropped after the pass"


def test_padded_and_unpadded_batches_read_the_weight_of_this_pass():
    plan, params, feeds = setup()
    fast = Executor(plan, dtype=np.float64, options=ExecOptions(fused_loops=False))
    reference = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    for lengths in (LENGTHS, np.full(B, T), LENGTHS):
        params["U"] *= 0.9
        tf = fast.forward(params, feeds, lengths=lengths)
        tr = reference.forward(params, feeds, lengths=lengths)
        np.testing.assert_allclose(tf.values["h"], tr.values["h"], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("rows, pays", [
    (32, True),     # the benchmark LSTM's step: 1.2-1.6x faster products
    (4, True),      # a few rows: up to 7x
    (1, False),     # one row: a matrix-vector product, little to gain for the copy
    (1024, False),  # many rows: both run at full speed
])
def test_the_copy_is_made_only_where_it_pays_by_the_rows_alone(rows, pays):
    """Not by the steps: a kept loop run serves batches of other lengths, and the choice must not
    depend on which batch made it (the two products round differently)."""
    assert transposed_copy_pays(rows) is pays


# ---------------------------------------------------------------- products in column blocks

BLOCK_SPECS = {
    "forward in time": SPEC,
    "backward in time": SPEC.replace("h[t-1]", "h[t+1]"),
    # a product of a value of the same step: its input's gradient is added to the add's
    "same-step product": ("input x[3] : seq\ntarget y[2] : seq\nparam U[6, 6]\nparam V[6, 6]\n"
                          "a = tanh(W @ x + U @ h[t-1] + b)\nh = tanh(V @ a) + a\nloss mse(Z @ h + d, y)\n"),
}


def blocked_kernels(ex) -> list:
    out = []
    for loop in ex.fast_loops.values():
        run = loop._run
        out += [f for f in run.steps if isinstance(f, TransposedWeightStep) and f.blocks != (1, 1)]
        if run.backward is not None:
            out += [f for f in run.backward.prepared if isinstance(f, WeightBlocksGradStep) and f.blocks != (1, 1)]
    return out


@pytest.mark.parametrize("name", list(BLOCK_SPECS))
@pytest.mark.parametrize("blocks", [(1, 2), (1, 3), (2, 3), (3, 1)])    # (chunks of the inner axis, column blocks)
def test_products_in_column_blocks_agree_with_the_reference_and_read_the_weight_of_this_pass(
        name, blocks, monkeypatch):
    monkeypatch.setattr(linalg, "product_blocks", lambda rows, inner, cols, dtype: blocks)
    plan = compile_text(BLOCK_SPECS[name]).plan
    rng = np.random.default_rng(1)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    feeds = {"x": rng.normal(size=(T, B, 3)), "y": rng.normal(size=(T, B, 2))}
    fast = Executor(plan, dtype=np.float64, options=ExecOptions(fused_loops=False))
    reference = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    # (the third pass runs the kept run; the last one a shorter batch, which a kept run may serve)
    for steps, lengths in ((T, LENGTHS), (T, np.full(B, T)), (T, np.full(B, T)), (7, np.full(B, 7))):
        part = {k: v[:steps] for k, v in feeds.items()}
        tf, tr = fast.forward(params, part, lengths=lengths), reference.forward(params, part, lengths=lengths)
        np.testing.assert_allclose(tf.values[plan.loss], tr.values[plan.loss], rtol=1e-13)
        gf, gr = fast.backward(tf), reference.backward(tr)
        assert set(gf) == set(gr)
        for k in gf:
            np.testing.assert_allclose(gf[k], gr[k], rtol=1e-12, atol=1e-14, err_msg=k)
        for p in ("U", "V"):
            if p in params:
                params[p] -= 0.1 * gf[p]    # in place, as the optimiser updates a weight
    kernels = blocked_kernels(fast)
    assert {type(f) for f in kernels} == {TransposedWeightStep, WeightBlocksGradStep}
    assert all(f.blocks == blocks for f in kernels)
    assert all(f.m is None and f.parts is None for f in kernels), "the copies are dropped after the pass"
    if name == "same-step product":
        assert any(f.accumulate for f in kernels if isinstance(f, WeightBlocksGradStep))


def test_blocked_products_switch_off(monkeypatch):
    monkeypatch.setattr(linalg, "product_blocks", lambda rows, inner, cols, dtype: (2, 3))
    plan, params, feeds = setup()
    ex = Executor(plan, dtype=np.float64, options=ExecOptions(fused_loops=False, blocked_products=False))
    ex.backward(ex.forward(params, feeds, lengths=LENGTHS))
    assert blocked_kernels(ex) == [] and len(transposed_steps(ex)) == 1


@pytest.mark.parametrize("rows, inner, cols, blocks", [
    (32, 128, 512, (1, 4)),     # the LSTM H128's step: 51 us -> 39 in the loop (under the small-kernel limit)
    (32, 512, 128, (1, 4)),     # its backward
    (32, 128, 384, (1, 2)),     # the GRU's
    (64, 128, 512, (1, 8)),
    (32, 64, 256, (1, 1)),      # already a small product
    (4, 128, 512, (1, 1)),
    (1, 16, 64, (1, 1)),
    (32, 256, 1024, (1, 16)),
    (32, 512, 2048, (1, 64)),   # the LSTM H512's step: 1070 us -> 620 in the loop
    (16, 512, 2048, (1, 32)),
    (32, 2048, 512, (4, 16)),   # its backward: no blocks of 32 columns under the limit without cutting the inner axis
    (32, 1024, 256, (2, 8)),
    (512, 128, 512, (1, 1)),    # many rows: not even blocks of 32 columns fit
])
def test_product_blocks_by_shape_where_blas_has_small_kernels(rows, inner, cols, blocks, monkeypatch):
    monkeypatch.setattr(linalg, "_small_kernels", True)
    assert linalg.product_blocks(rows, inner, cols, np.float32) == blocks
    assert linalg.product_blocks(rows, inner, cols, np.float64) == (1, 1)     # measured in float32 only
    monkeypatch.setattr(linalg, "_small_kernels", False)
    assert linalg.product_blocks(rows, inner, cols, np.float32) == (1, 1)


@pytest.mark.skipif(not linalg.blas_small_kernels(), reason="BLAS without small-matrix kernels: no blocks chosen")
@pytest.mark.parametrize("H, blocks", [(128, [(1, 4), (1, 4)]), (512, [(1, 64), (4, 16)])])
def test_an_lstm_in_float32_runs_its_products_in_parts_and_agrees_with_the_reference(H, blocks):
    """The rule as it stands (no patching), forward and backward, within float32 rounding."""
    plan = compile_text(f"input x[16] : seq\ntarget y[2] : seq\nh = lstm(x, H = {H})\nloss mse(Z @ h + d, y)\n").plan
    rng = np.random.default_rng(2)
    params = {p.name: rng.normal(scale=0.3, size=p.shape).astype(np.float32) for p in plan.params}
    feeds = {"x": rng.normal(size=(9, 32, 16)).astype(np.float32),
             "y": rng.normal(size=(9, 32, 2)).astype(np.float32)}
    fast = Executor(plan, dtype=np.float32, options=ExecOptions(fused_loops=False))
    reference = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    for _ in range(2):
        tf = fast.forward(params, feeds)
        tr = reference.forward({k: v.astype(np.float64) for k, v in params.items()}, feeds)
        np.testing.assert_allclose(tf.values[plan.loss], tr.values[plan.loss], rtol=1e-5)
        gf, gr = fast.backward(tf), reference.backward(tr)
        for k in gr:    # (float32 sums of up to 2048 terms: errors of 1e-5 of the largest element, blocks or not)
            np.testing.assert_allclose(gf[k], gr[k], rtol=2e-4, atol=5e-5 * np.abs(gr[k]).max(), err_msg=k)
        for k in params:
            params[k] -= np.float32(0.1) * gf[k]
    assert [f.blocks for f in blocked_kernels(fast)] == blocks
