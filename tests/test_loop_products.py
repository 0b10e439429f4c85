"""A loop's product by a weight shared by every step (``U @ h[t-1]``) multiplies the step's rows
by a contiguous copy of U's transpose, made before each pass and dropped after it
(``linalg.TransposedWeightStep``): the same values and gradients as the reference engine, a
weight changed between passes (as the optimiser does, in place) is read again, and no copy is
held between passes. The copy is used only where it pays (``transposed_copy_pays``)."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.ops.linalg import TransposedWeightStep, transposed_copy_pays
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
    assert steps[0].wt is None, "the copy is dropped after the pass"


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
