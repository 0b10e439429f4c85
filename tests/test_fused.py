"""Fused loops (runtime/fused.py): a small loop body run by two kernels numba compiles from each op's
fused form gives the reference engine's values and gradients, for the library cells and a cell of
odd ops, with padding, delays of two steps, initial states, both directions and chunks carrying
state; loops it cannot or should not fuse stay on the NumPy path. Skipped without numba (the
``fast`` extra)."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.ops import REGISTRY
from nnspec.ops.registry import ScalarForm
from nnspec.runtime import ExecOptions, Executor
from nnspec.runtime.fused import FusedRun, numba_available
from nnspec.runtime.fusedcode import attr_values

LENGTHS = np.array([5, 3, 1, 4])
HEAD = "input x[3] : seq\ntarget y[2] : seq\n"
TAIL = "loss mse(Z @ h + d, y)\n"

CELLS = {
    "lstm": "h = lstm(x, H = 4)\n",
    "gru": "h = gru(x, H = 4)\n",
    "elman": "h = rnn(x, H = 4)\n",
    "reversed gru": "h = reverse(gru)(x, H = 4)\n",
    # odd ops, a join inside the loop, a state read two steps back, a learned initial state
    "odd": ("a[4] = softplus(W @ x + U @ h[t-1] + b + P @ ((Q @ h[t-1]) / k[t-1]))\n"
            "g[4] = gelu(V @ concat(a, h[t-2]) + c) / (1 + exp(-abs(a)))\n"
            "h[4] = mish(a) - 0.5 * g * sigmoid(h[t-1]) + 0.5 * tanh(pow(elu(g), p = 3)) + sqrt(1 + square(h[t-2]))\n"
            "initial h = h0\n"
            # a sequence of another loop, read a step back (at the first step: its initial state)
            "k[3] = 3 + tanh(Wk @ x + Uk @ k[t-1])\ninitial k = k0\n"),
}


@pytest.fixture(autouse=True)
def fuse_from_the_first_pass(monkeypatch):
    monkeypatch.setattr("nnspec.runtime.fused.FUSE_AFTER_PASSES", 0)


needs_numba = pytest.mark.skipif(not numba_available(), reason="numba (the fast extra) is not installed")


def setup(cell: str, dtype, seed=0):
    plan = compile_text(HEAD + CELLS[cell] + TAIL).plan
    rng = np.random.default_rng(seed)
    params = {p.name: rng.normal(scale=0.5, size=p.shape).astype(dtype) for p in plan.params}
    if "k0" in params:      # what k[t-1] reads before the first step: the odd cell divides by it
        params["k0"] += 3
    feeds = {"x": rng.normal(size=(5, 4, 3)).astype(dtype), "y": rng.normal(size=(5, 4, 2)).astype(dtype)}
    return plan, params, feeds


def run(plan, params, feeds, dtype, options, carry=None, chunks=1):
    """Forward and backward over ``chunks`` consecutive chunks, each carrying the last one's states."""
    ex = Executor(plan, dtype=dtype, options=options)
    out = []
    for _ in range(chunks):
        tape = ex.forward(params, feeds, lengths=LENGTHS, carry=carry)
        out.append((tape, ex.backward(tape)))
        carry = tape.final_states
    return out


def assert_same(fused, reference, dtype, plan):
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for (tf, gf), (tr, gr) in zip(fused, reference):
        assert any(isinstance(r, FusedRun) for r in tf.loops.values()), "the loop did not run fused"
        assert np.isfinite(tr.values[plan.loss])
        for k, v in tr.values.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_allclose(tf.values[k], v, err_msg=k, **tol)
        assert set(gf) <= set(gr) and set(gr) - set(gf) <= set(plan.consts)   # (constants: only the reference)
        for k in gf:
            np.testing.assert_allclose(gf[k], gr[k], err_msg=k, **tol)


# each case compiles two kernels (seconds, once: they are cached on disk); the default run takes a few
FAST_CASES = {("lstm", np.float32), ("odd", np.float64), ("reversed gru", np.float64)}


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", list(CELLS))
def test_a_fused_loop_gives_the_reference_values_and_gradients(cell, dtype, request):
    if (cell, dtype) not in FAST_CASES and not request.config.getoption("--runslow"):
        pytest.skip("compiles more kernels: run with --runslow")
    plan, params, feeds = setup(cell, dtype)
    assert_same(run(plan, params, feeds, dtype, ExecOptions()),
                run(plan, params, feeds, dtype, ExecOptions.reference()), dtype, plan)


@needs_numba
@pytest.mark.parametrize("cell, dtype", [("lstm", np.float32), ("odd", np.float64)])
def test_a_kernels_products_summed_a_few_rows_at_a_time_give_the_numbers_of_one_at_a_time(cell, dtype, monkeypatch):
    """``fusedcode.ROWS`` outputs of a product at a time, each in its own sum kept in order: the same
    numbers, bit for bit, as one output at a time (widths 16 and 4, and the odd cell's 3: rows left over)."""
    plan, params, feeds = setup(cell, dtype)
    grouped = run(plan, params, feeds, dtype, ExecOptions())
    monkeypatch.setattr("nnspec.runtime.fusedcode.ROWS", 1)
    single = run(plan, params, feeds, dtype, ExecOptions())
    for (tg, gg), (ts, gs) in zip(grouped, single):
        assert any(isinstance(r, FusedRun) for r in tg.loops.values())
        for k, v in ts.values.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(tg.values[k], v, err_msg=k)
        assert set(gg) == set(gs)
        for k in gs:
            np.testing.assert_array_equal(gg[k], gs[k], err_msg=k)


def leaf_run(plan, params, feeds, dtype, options, chunks=1, seeds=None):
    """As ``run``, asking for the parameters' gradients only (a training step's pass: a loop's body
    values' gradients are not kept), or for ``seeds``' gradients."""
    ex, carry, out = Executor(plan, dtype=dtype, options=options), None, []
    for _ in range(chunks):
        tape = ex.forward(params, feeds, lengths=LENGTHS, carry=carry)
        seeded = {k: np.ones_like(tape.values[k]) for k in seeds} if seeds else None
        out.append((tape, ex.backward(tape, seeds=seeded, wrt=None if seeds else list(params))))
        carry = tape.final_states
    return ex, out


@needs_numba
@pytest.mark.parametrize("cell, dtype, chunks", [("lstm", np.float32, 1), ("odd", np.float64, 2),
                                                 ("reversed gru", np.float64, 1)])
def test_the_backward_kernels_gradients_read_only_inside_it_are_rings_with_the_numbers_of_all_steps(cell, dtype, chunks):
    """A gradient nothing reads after the backward kernel is a ring of as many steps as its value
    is read back (``ExecOptions.ring_grads``; the odd cell's h[t-2]: three): the numbers of all T
    steps, bit for bit, in a smaller block; with seeds on such a value, all T steps."""
    plan, params, feeds = setup(cell, dtype, seed=1)
    ex, rings = leaf_run(plan, params, feeds, dtype, ExecOptions(), chunks)
    ex_off, whole = leaf_run(plan, params, feeds, dtype, ExecOptions(ring_grads=False), chunks)
    for (tr, gr), (tw, gw) in zip(rings, whole):
        assert any(isinstance(r, FusedRun) for r in tr.loops.values())
        assert set(gr) == set(gw) and gr
        for k in gw:
            np.testing.assert_array_equal(gr[k], gw[k], err_msg=k)
    arrays, arrays_off = [[a for _, kept in sorted(f.kept.items()) for a in kept.values()] for f in (ex.fused, ex_off.fused)]
    assert all(a.gblock.size < off.gblock.size for a, off in zip(arrays, arrays_off) if a.layout.slots)
    ring_value = next(k for a in arrays for kind, k in a.layout.slots if kind == "grad")
    _, (seeded,) = leaf_run(plan, params, feeds, dtype, ExecOptions(), seeds=[ring_value])
    _, (seeded_off,) = leaf_run(plan, params, feeds, dtype, ExecOptions(ring_grads=False), seeds=[ring_value])
    assert set(seeded[1]) == set(seeded_off[1])
    for k in seeded_off[1]:
        np.testing.assert_array_equal(seeded[1][k], seeded_off[1][k], err_msg=k)


@needs_numba
@pytest.mark.parametrize("cell", ["odd"])
def test_chunks_carrying_state_run_fused_as_the_reference_runs_them(cell):
    """Truncated BPTT: the second chunk starts from the first one's final states (and, for h[t-2],
    its last two steps), and sends no gradient back into them."""
    plan, params, feeds = setup(cell, np.float64, seed=1)
    assert_same(run(plan, params, feeds, np.float64, ExecOptions(), chunks=2),
                run(plan, params, feeds, np.float64, ExecOptions.reference(), chunks=2), np.float64, plan)


@needs_numba
def test_a_loop_too_big_to_pay_or_with_an_op_without_a_fused_form_stays_on_numpy():
    plan, params, feeds = setup("lstm", np.float64)
    ex = Executor(plan, dtype=np.float64)
    ex.fused.max_work_per_call = 10
    assert not any(isinstance(r, FusedRun) for r in ex.forward(params, feeds, lengths=LENGTHS).loops.values())
    plan = compile_text(HEAD + "h[4] = tanh(W @ x + U @ dropout(h[t-1], 0.5))\n" + TAIL).plan
    ex = Executor(plan, dtype=np.float64)
    params = {p.name: np.ones(p.shape) for p in plan.params}
    assert not any(isinstance(r, FusedRun) for r in ex.forward(params, feeds, lengths=LENGTHS).loops.values())


@needs_numba
def test_a_body_numba_rejects_stays_on_numpy_before_anything_ran(monkeypatch):
    monkeypatch.setattr(type(REGISTRY["tanh"]), "fused", ScalarForm("no_such_function({x0})", ("1.0",)))
    plan, params, feeds = setup("elman", np.float64)
    tape = Executor(plan, dtype=np.float64).forward(params, feeds, lengths=LENGTHS)
    assert not any(isinstance(r, FusedRun) for r in tape.loops.values())
    reference = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    reference = reference.forward(params, feeds, lengths=LENGTHS)
    np.testing.assert_allclose(tape.values["h"], reference.values["h"], rtol=1e-12)


@needs_numba
def test_fusion_can_be_switched_off_and_is_off_where_numba_is_missing(monkeypatch):
    plan, params, feeds = setup("elman", np.float64)
    off = Executor(plan, dtype=np.float64, options=ExecOptions(fused_loops=False))
    assert off.fused is None and not any(isinstance(r, FusedRun) for r in off.forward(params, feeds).loops.values())
    monkeypatch.setattr("nnspec.runtime.fused.numba_available", lambda: False)
    missing = Executor(plan, dtype=np.float64)
    assert not any(isinstance(r, FusedRun) for r in missing.forward(params, feeds).loops.values())


@needs_numba
def test_a_loop_runs_fused_after_a_fixed_number_of_passes_and_its_kernels_are_kept_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("NNSPEC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("nnspec.runtime.fused._modules", {})
    monkeypatch.setattr("nnspec.runtime.fused.FUSE_AFTER_PASSES", 2)
    plan, params, feeds = setup("elman", np.float64)
    ex = Executor(plan, dtype=np.float64)
    fused = []
    for _ in range(3):
        ex.forward(params, feeds)
        fused.append(bool(ex.fused.last))
    assert fused == [False, False, True]       # short runs never wait for the compiler
    assert list((tmp_path / "kernels").glob("nnspec_fused_*.py"))
    monkeypatch.setattr("nnspec.runtime.fused._modules", {})     # as in a new process
    monkeypatch.setattr("nnspec.runtime.fused.FUSE_AFTER_PASSES", 0)
    again = Executor(plan, dtype=np.float64)
    tape = again.forward(params, feeds)
    kernels = next(iter(tape.loops.values())).kernels
    assert sum(kernels.forward.stats.cache_hits.values()) == 1   # numba's machine code, read from disk
    assert not sum(kernels.forward.stats.cache_misses.values())


@needs_numba
def test_a_fused_loop_uses_its_arrays_again_only_once_nobody_holds_them():
    """A pass whose tape and gradients are gone leaves its arrays to the next pass of that geometry
    (no allocation per pass); a tape or a gradient still held keeps its arrays: a later pass, or a
    second backward pass over the same tape, leaves their numbers as they were."""
    plan, params, feeds = setup("lstm", np.float64)
    ex = Executor(plan, dtype=np.float64)
    first = ex.forward(params, feeds, lengths=LENGTHS)
    h, grads = first.values["h"].copy(), ex.backward(first)
    kept = {k: g.copy() for k, g in grads.items()}
    again = ex.forward(params, feeds, lengths=LENGTHS)      # the first tape and gradients held
    assert not np.shares_memory(again.values["h"], first.values["h"])
    twice = ex.backward(first)                               # a second backward over the first tape
    for k in kept:
        np.testing.assert_array_equal(grads[k], kept[k], err_msg=k)
        np.testing.assert_array_equal(twice[k], kept[k], err_msg=k)
    np.testing.assert_array_equal(first.values["h"], h)
    ex.backward(again)
    arrays = again.loops[0].arrays
    del first, grads, twice, again
    third = ex.forward(params, feeds, lengths=LENGTHS)       # nobody holds the last pass's arrays
    assert third.loops[0].arrays is arrays and np.shares_memory(third.values["h"], arrays.block)
    np.testing.assert_array_equal(third.values["h"], h)
    for k, g in ex.backward(third).items():
        np.testing.assert_array_equal(g, kept[k], err_msg=k)
    off = Executor(plan, dtype=np.float64, options=ExecOptions(reuse_buffers=False))   # the switch
    one = off.forward(params, feeds, lengths=LENGTHS).loops[0].arrays
    assert off.forward(params, feeds, lengths=LENGTHS).loops[0].arrays is not one


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_fused_loop_using_its_arrays_again_over_batches_of_other_lengths_gives_the_reference_numbers(dtype):
    """One executor's passes over batches of other lengths and sizes (its arrays kept and used
    again where the geometry repeats) give what the reference engine gives for each batch."""
    plan, params, feeds = setup("lstm", dtype)
    ex, reference = Executor(plan, dtype=dtype), Executor(plan, dtype=dtype, options=ExecOptions.reference())
    tol = dict(rtol=2e-4, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    shorter = {k: v[:3] for k, v in feeds.items()}
    for batch, lengths in [(feeds, LENGTHS), (feeds, [2, 5, 5, 1]), (shorter, [3, 1, 2, 3]), (feeds, None),
                           (feeds, LENGTHS)]:
        tape = ex.forward(params, batch, lengths=lengths)
        assert isinstance(tape.loops[0], FusedRun)
        grads = ex.backward(tape)
        want_tape = reference.forward(params, batch, lengths=lengths)
        want = reference.backward(want_tape)
        np.testing.assert_allclose(tape.values["h"], want_tape.values["h"], **tol)
        for k in params:
            np.testing.assert_allclose(grads[k], want[k], err_msg=k, **tol)
        del tape, grads


@needs_numba
def test_a_fused_loop_keeps_the_arrays_of_a_few_batch_geometries_only():
    from nnspec.runtime.fused import KEPT_GEOMETRIES
    plan, params, feeds = setup("elman", np.float64)
    ex = Executor(plan, dtype=np.float64)
    assert KEPT_GEOMETRIES < 5
    for T in range(1, 6):          # batches of five lengths (the feeds' T is 5)
        ex.backward(ex.forward(params, {k: v[:T] for k, v in feeds.items()}))
    assert len(ex.fused.kept[0]) == KEPT_GEOMETRIES


@pytest.mark.parametrize("name", sorted(n for n, op in REGISTRY.items() if isinstance(op.fused, ScalarForm)))
def test_every_scalar_form_is_its_ops_forward_and_derivative(name):
    """An op's fused form says what its forward and vjp say, at points away from kinks."""
    op = REGISTRY[name]
    form = op.fused
    rng = np.random.default_rng(3)
    xs = [rng.uniform(0.2, 2.0, size=7) * rng.choice([-1, 1], size=7) for _ in range(len(form.partials))]
    if name in ("log", "sqrt", "div", "pow"):
        xs = [np.abs(x) for x in xs]
    attrs = attr_values(op, {})
    scope = {"exp": np.exp, "log": np.log, "tanh": np.tanh, "sqrt": np.sqrt, "expm1": np.expm1,
             "log1p": np.log1p, "abs": abs, "max": max, "min": min}
    names = {f"x{i}": f"x{i}" for i in range(len(xs))}
    for k in range(7):
        point = {f"x{i}": float(x[k]) for i, x in enumerate(xs)}
        out = eval(form.value.format(**names, **attrs), scope, dict(point))
        want = op.forward([np.array([x[k]]) for x in xs], {}, None)
        assert out == pytest.approx(float(want[0]), rel=1e-12, abs=1e-12)
        grads = op.vjp(np.ones(1), [np.array([x[k]]) for x in xs], np.asarray(want), {}, None)
        for i, partial in enumerate(form.partials):
            d = eval(partial.format(**names, out="out", **attrs), scope, dict(point, out=out))
            assert d == pytest.approx(float(np.asarray(grads[i]).reshape(-1)[0]), rel=1e-9, abs=1e-12), (name, i)


@needs_numba
@pytest.mark.parametrize("cell", ["lstm", "odd"])
def test_parts_kept_in_their_sources_arrays_give_the_same_numbers_bit_for_bit(cell, monkeypatch):
    """An LSTM's gates are parts of one product's array: the fused kernel keeps them there (views, no
    copy, no gradient arrays of their own), and its readers add straight into the source's gradient,
    in the order they added into the part's: the numbers are those of parts with arrays of their own."""
    plan, params, feeds = setup(cell, np.float32)
    shared = run(plan, params, feeds, np.float32, ExecOptions())
    runs = [r for r in shared[0][0].loops.values() if isinstance(r, FusedRun)]
    parts = {k for r in runs for k in r.layout.aliases}
    if cell == "lstm":
        assert parts and all(np.shares_memory(runs[0].bufs[k], runs[0].bufs[r[0]])
                             for k, r in runs[0].layout.aliases.items())
    monkeypatch.setattr("nnspec.runtime.fusedcode.part_aliases", lambda loop, read_outside: {})
    own = run(plan, params, feeds, np.float32, ExecOptions())
    assert not any(r.layout.aliases for r in own[0][0].loops.values() if isinstance(r, FusedRun))
    (ts, gs), (to, go) = shared[0], own[0]
    assert set(gs) == set(go) and set(ts.values) == set(to.values)
    for k in go:
        np.testing.assert_array_equal(gs[k], go[k], err_msg=k)
    for k, v in to.values.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(ts.values[k], v, err_msg=k)
