"""A loop's kept run (buffers, per-step views, kernels: runtime/loops.py) serves later batches of as
many rows and no more steps, whatever their lengths: batches cut by length have a different T almost
every time, and building a run for each cost the tagger a fifth of its step. Every pass must agree
with the reference engine, whichever run it used and whatever that run served before."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import random_feeds
from test_optimize import BINDINGS, SPECS

from nnspec import compile_text
from nnspec.runtime import ExecOptions, Executor

LOOPED = [name for name in SPECS if name not in ("mlp_two_heads",)]

# (T, lengths): shorter and longer than before, padded and not, a batch longer than any before
BATCHES = [(6, [6, 4, 2]), (4, [4, 4, 1]), (6, [6, 6, 6]), (3, [3, 2, 1]), (8, [8, 5, 3]),
           (5, [5, 1, 2]), (2, [2, 2, 2]), (8, [2, 8, 7]), (1, [1, 1, 1])]


def _pass(ex, params, feeds, lengths, single_use):
    """A training pass; a network with no loss takes the gradient of sum(output * G), G fixed."""
    tape = ex.forward(params, feeds, lengths=lengths, train=True, rng=np.random.default_rng(1),
                      single_use=single_use)
    seeds = None
    if ex.plan.loss is None:
        out = ex.plan.outputs[0]
        seeds = {out: np.random.default_rng(2).normal(size=tape.values[out].shape)}
    grads = ex.backward(tape, seeds=seeds, wrt=set(params))
    return tape, grads


@pytest.mark.parametrize("single_use", [True, False], ids=["single_use", "kept_tape"])
@pytest.mark.parametrize("name", LOOPED)
def test_a_kept_run_serving_batches_of_other_lengths_agrees_with_the_reference(name, single_use):
    plan = compile_text(SPECS[name], bindings=BINDINGS).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    kept = Executor(plan, dtype=np.float64)
    for i, (T, lengths) in enumerate(BATCHES):
        feeds = random_feeds(plan, T=T, B=3, seed=i)
        lengths = np.array(lengths)
        tape, grads = _pass(kept, params, feeds, lengths, single_use)
        loss = float(tape.values[plan.loss]) if plan.loss else None
        got = {k: np.array(v) for k, v in grads.items()}
        outputs = {k: np.array(tape.values[k]) for k in plan.outputs}
        del tape, grads
        ref_tape, ref = _pass(Executor(plan, dtype=np.float64, options=ExecOptions.reference()),
                              params, feeds, lengths, False)
        where = f"batch {i} (T={T}, lengths={list(lengths)})"
        _, fresh = _pass(Executor(plan, dtype=np.float64), params, feeds, lengths, single_use)
        for k in params:    # bit for bit: what the run served before changes nothing
            np.testing.assert_array_equal(got[k], fresh[k], err_msg=f"{k}, {where}")
        if plan.loss:
            assert loss == pytest.approx(float(ref_tape.values[plan.loss]), rel=1e-12), where
        for k, v in outputs.items():
            np.testing.assert_allclose(v, ref_tape.values[k], rtol=1e-10, atol=1e-12, err_msg=f"{k}, {where}")
        for k in params:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=f"{k}, {where}")


LSTM = SPECS["lstm"]


def _run_of(ex, params, plan, T, lengths):
    tape, _ = _pass(ex, params, random_feeds(plan, T=T, B=3, seed=T), np.array(lengths), True)
    (run,) = tape.loops.values()
    return run


def test_a_run_made_with_padding_serves_shorter_batches_and_unpadded_ones_and_a_longer_batch_gets_a_new_one():
    plan = compile_text(LSTM).plan
    params = {p.name: np.full(p.shape, 0.1) for p in plan.params}
    ex = Executor(plan, dtype=np.float64)
    first = _run_of(ex, params, plan, 6, [6, 3, 2])
    assert first.cap == 6 and not first.extended
    assert _run_of(ex, params, plan, 4, [4, 2, 1]) is first
    assert _run_of(ex, params, plan, 5, [5, 5, 5]) is first       # unpadded: the padded run's reads work too
    longer = _run_of(ex, params, plan, 7, [7, 1, 1])
    assert longer is not first and longer.cap == 7


def test_a_run_made_without_padding_serves_only_unpadded_batches_of_its_own_steps():
    """Its state reads are views of the state's buffer with the initial state in front: padding needs
    the masked copies, and another T another offset."""
    plan = compile_text(LSTM).plan
    params = {p.name: np.full(p.shape, 0.1) for p in plan.params}
    ex = Executor(plan, dtype=np.float64)
    unpadded = _run_of(ex, params, plan, 5, [5, 5, 5])
    assert unpadded.extended
    assert _run_of(ex, params, plan, 5, [5, 5, 5]) is unpadded
    padded = _run_of(ex, params, plan, 5, [5, 4, 5])
    assert padded is not unpadded and not padded.extended
    assert _run_of(ex, params, plan, 3, [3, 3, 3]) is padded


def test_a_run_is_not_reused_while_the_tape_of_its_last_pass_is_held():
    plan = compile_text(LSTM).plan
    params = {p.name: np.full(p.shape, 0.1) for p in plan.params}
    ex = Executor(plan, dtype=np.float64)
    feeds = random_feeds(plan, T=6, B=3, seed=0)
    held, _ = _pass(ex, params, feeds, np.array([6, 3, 2]), False)
    h = np.array(held.values["h"])
    later, _ = _pass(ex, params, random_feeds(plan, T=4, B=3, seed=1), np.array([4, 4, 1]), False)
    assert later.loops[0] is not held.loops[0]
    np.testing.assert_array_equal(held.values["h"], h)


@pytest.mark.parametrize("cell", ["lstm", "gru", "bidirectional lstm", "two steps back", "every scalar op"])
def test_a_kept_run_with_fused_segments_serves_other_lengths_as_the_numpy_path_does(cell, monkeypatch):
    """float32, the loops' elementwise runs as compiled kernels (whose lanes span the run's steps): each
    pass of a kept run gives a fresh executor's gradients bit for bit (``test_segments`` compares
    those with the NumPy path's)."""
    segs = pytest.importorskip("test_segments")
    if not segs.numba_available():
        pytest.skip("numba (the fast extra) is not installed")
    plan = compile_text(segs.HEAD + segs.CELLS[cell] + segs.TAIL).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape).astype(np.float32) for p in plan.params}
    leaves = [p.name for p in plan.params]
    kept = Executor(plan, dtype=np.float32, options=ExecOptions(fused_loops=False))
    kept.segments_after = 0
    ran = {"kernel": 0}
    call = segs.segments.Segment.__call__

    def counting(self, t):
        ran["kernel"] += self.args is not None
        call(self, t)
    monkeypatch.setattr(segs.segments.Segment, "__call__", counting)
    for i, (T, lengths) in enumerate(BATCHES):
        lengths = np.array(lengths + [T])     # four rows, one of them full
        feeds = {"x": rng.normal(size=(T, 4, 3)).astype(np.float32), "y": rng.normal(size=(T, 4, 2)).astype(np.float32)}
        tape = kept.forward(params, feeds, lengths=lengths, single_use=True)
        got = {k: np.array(v) for k, v in kept.backward(tape, wrt=leaves).items()}
        del tape
        fresh = Executor(plan, dtype=np.float32, options=ExecOptions(fused_loops=False))
        fresh.segments_after = 0
        ref = fresh.backward(fresh.forward(params, feeds, lengths=lengths, single_use=True), wrt=leaves)
        for k in leaves:    # bit for bit: what a run served before changes nothing
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{k}, batch {i} (T={T}, lengths={list(lengths)})")
    assert ran["kernel"] > 0
