"""The float32 loop-step sigmoid (runtime/fastact.py, ``ExecOptions.fast_sigmoid``): one compiled,
vectorised kernel gives the exact sigmoid to float32 rounding (NaN stays NaN), a network's loss and
gradients agree with the reference engine, float64 is untouched, and nothing is compiled before
the pass threshold. Skipped without numba (the ``fast`` extra)."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.ops import REGISTRY
from nnspec.ops.activations import _sigmoid
from nnspec.runtime import ExecOptions, Executor, fastact
from nnspec.runtime.kernelcache import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba (the fast extra) is not installed")

SPEC = "input x[3] : seq\ntarget y[2] : seq\nh = lstm(x, H = 8)\nloss mse(Z @ h + d, y)\n"
LENGTHS = np.array([5, 3, 1, 4])
SIGMOID = REGISTRY["sigmoid"]
TINY = 5e-39   # the kernel clamps e^-x at e^88.38: below float32's normal range it gives ~4e-39, not 0


def test_kernel_is_the_exact_sigmoid_to_float32_rounding():
    rng = np.random.default_rng(0)
    z = (8 * rng.normal(size=(40, 500))).astype(np.float32)
    z[0, 10:410] = np.linspace(-100, 100, 400)
    z[1, 10:14] = [np.nan, np.inf, -np.inf, -88.5]
    x = z[:, 10:410]                   # rows apart in memory, as the gates' part of a loop's product
    out = np.empty(x.shape, np.float32)
    fastact.vectorised_step(SIGMOID, [x], [out], {})(0)
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    finite = ~np.isnan(x)
    # NumPy's own float32 sigmoid is within 1.9e-7 relative; the kernel's bound is 1.2e-7
    assert np.all(np.abs(out - exact)[finite] <= 2.5e-7 * exact[finite] + TINY)
    assert np.isnan(out[1, 0]) and out[1, 1] == 1 and 0 <= out[1, 2] <= TINY


def test_rows_it_cannot_take_go_to_numpy():
    x = np.random.default_rng(1).normal(size=(4, 20)).astype(np.float32)[:, ::2]   # elements apart
    out, want = np.empty(x.shape, np.float32), np.empty(x.shape, np.float32)
    fastact.vectorised_step(SIGMOID, [x], [out], {})(0)
    np.testing.assert_array_equal(out, _sigmoid(x, want))


def setup(dtype):
    plan = compile_text(SPEC).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape).astype(dtype) for p in plan.params}
    feeds = {"x": rng.normal(size=(5, 4, 3)).astype(dtype), "y": rng.normal(size=(5, 4, 2)).astype(dtype)}
    return plan, params, feeds


def passes(plan, params, feeds, dtype, options, after=0, n=2):
    ex = Executor(plan, dtype=dtype, options=options)
    if ex.fast_sigmoid_after is not None:
        ex.fast_sigmoid_after = after
    for _ in range(n):      # the second pass reuses the kept loop run and its kernel's views
        tape = ex.forward(params, feeds, lengths=LENGTHS)
        grads = ex.backward(tape)
    return tape, grads


def test_network_agrees_with_the_reference_engine_in_float32(monkeypatch):
    used = []
    step = fastact.vectorised_step
    monkeypatch.setattr(fastact, "vectorised_step", lambda *a: used.append(1) or step(*a))
    plan, params, feeds = setup(np.float32)
    tf, gf = passes(plan, params, feeds, np.float32, ExecOptions(fused_loops=False))
    tr, gr = passes(plan, params, feeds, np.float32, ExecOptions.reference())
    assert used, "the loop did not use the kernel"
    # the kernel differs from NumPy's sigmoid by float32 rounding; the tolerance the fused loops'
    # float32 tests use (T = 5 steps of rounding through the recurrence, in values and gradients)
    tol = dict(rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(tf.values[plan.loss], tr.values[plan.loss], **tol)
    assert set(gf) == set(gr)
    for k in gf:
        np.testing.assert_allclose(gf[k], gr[k], err_msg=k, **tol)


def test_a_loop_run_with_the_kernel_is_kept_for_the_next_batch():
    # the kernel's views are the run's own references: they must not make it look in use
    plan, params, feeds = setup(np.float32)
    ex = Executor(plan, dtype=np.float32, options=ExecOptions(fused_loops=False))
    ex.fast_sigmoid_after = 0
    runs = []
    for _ in range(3):
        tape = ex.forward(params, feeds, lengths=LENGTHS)
        ex.backward(tape)
        runs.append(next(iter(ex.fast_loops.values()))._run)
        del tape
    assert runs[0] is not None and runs[0] is runs[1] is runs[2]


def test_float64_is_untouched():
    plan, params, feeds = setup(np.float64)
    t1, g1 = passes(plan, params, feeds, np.float64, ExecOptions(fused_loops=False))
    t2, g2 = passes(plan, params, feeds, np.float64, ExecOptions(fused_loops=False, fast_sigmoid=False))
    assert t1.values[plan.loss] == t2.values[plan.loss]
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)


def test_nothing_is_compiled_before_the_pass_threshold(monkeypatch):
    class NotYet:
        def get(self):
            raise AssertionError("compiled before the threshold")
    monkeypatch.setattr(fastact, "ROW_KERNELS", NotYet())
    plan, params, feeds = setup(np.float32)
    passes(plan, params, feeds, np.float32, ExecOptions(fused_loops=False), after=3, n=3)
    with pytest.raises(AssertionError, match="before the threshold"):
        passes(plan, params, feeds, np.float32, ExecOptions(fused_loops=False), after=3, n=4)
