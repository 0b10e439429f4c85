"""Fused elementwise segments (runtime/segments.py, ``ExecOptions.fused_segments``): on the NumPy loop
path, each run of consecutive elementwise steps of a float32 loop (forward ops, backward VJPs) is
one call of a compiled, vectorised kernel. It gives the values and every gradient of the op-by-op
NumPy path to float32 rounding, for every op with a scalar form (taken from the registry, so a new
op is covered at once), the library cells, a cell written gate by gate, both directions, padded
batches and a state read two steps back; float64 is untouched, nothing is compiled before the pass
threshold, and a kept loop run is used again with its kernels. Skipped without numba (the ``fast``
extra)."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.ops import REGISTRY
from nnspec.ops.registry import ScalarForm
from nnspec.runtime import ExecOptions, Executor, segments
from nnspec.runtime.kernelcache import numba_available

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba (the fast extra) is not installed")

HEAD = "input x[3] : seq\ntarget y[2] : seq\n"
TAIL = "loss mse(Z @ h + d, y)\n"
LENGTHS = np.array([5, 3, 1, 4])          # a padded batch
FULL = np.array([5, 5, 5, 5])
# float32 rounding, relative to each array's largest entry: the kernels' exp and tanh are within a
# few 1e-7 of NumPy's. Measured worst after one step: 1.9e-7 in values, 8.9e-7 in gradients; after
# five (the recurrence carries the differences on): 1.2e-6 in values, 5.8e-6 in gradients (pow's
# recurrent weight, a sum over steps and examples), 7e-7 for the library cells
ONE_STEP, STEPS = 2e-6, 1e-5
BATCHES = {"padded": (5, LENGTHS), "full": (5, FULL), "one step": (1, np.array([1, 1, 1, 1]))}

CELLS = {
    "lstm": "h = lstm(x, H = 8)\n",
    "gru": "h = gru(x, H = 8)\n",
    "elman": "h = rnn(x, H = 8)\n",
    "bidirectional lstm": "h = bidirectional(lstm)(x, H = 8)\n",
    "lstm gate by gate": ("f[8] = sigmoid(Wf @ x + Uf @ h[t-1] + bf)\ni[8] = sigmoid(Wi @ x + Ui @ h[t-1] + bi)\n"
                          "o[8] = sigmoid(Wo @ x + Uo @ h[t-1] + bo)\ng[8] = tanh(Wg @ x + Ug @ h[t-1] + bg)\n"
                          "c[8] = f * c[t-1] + i * g\nh[8] = o * tanh(c)\n"),
    # a state read two steps back, a learned initial state, a scalar per example broadcast
    "two steps back": ("param v[8]\ns = sigmoid(dot(v, h[t-1]))\na[8] = tanh(W @ x + U @ h[t-2] + b)\n"
                       "h[8] = a * s + 0.5 * h[t-1]\ninitial h = h0\n"),
}

POSITIVE = {"log", "sqrt"}       # ops read on (1, 3)


def every_scalar_op() -> str:
    """One loop body with every op of the registry that has a scalar form, each on its own
    projection of the input and the state (so each one's gradient reaches a weight of its own)."""
    ops = sorted(n for n, op in REGISTRY.items() if isinstance(op.fused, ScalarForm))
    lines, terms = ["p[4] = 2 + tanh(P @ x + Q @ h[t-1] + e)"], []
    for n in ops:
        z = f"z_{n}"
        lines.append(f"{z}[4] = W_{n} @ x + U_{n} @ h[t-1] + b_{n}")
        arg = f"2 + tanh({z})" if n in POSITIVE else z
        call = f"{n}({arg}, p)" if REGISTRY[n].arity == 2 else f"{n}({arg})"
        lines.append(f"a_{n}[4] = {call}")
        terms.append(f"a_{n}")
    lines.append(f"h[4] = tanh(0.2 * ({' + '.join(terms)}))")
    return "\n".join(lines) + "\n"


CELLS["every scalar op"] = every_scalar_op()


@pytest.fixture
def kernels_used(monkeypatch):
    """How many steps of segments ran their kernel, and how many their NumPy steps."""
    seen = {"kernel": 0, "numpy": 0}
    call = segments.Segment.__call__

    def counting(self, t):
        seen["kernel" if self.args is not None else "numpy"] += 1
        call(self, t)
    monkeypatch.setattr(segments.Segment, "__call__", counting)
    return seen


def setup(cell: str, dtype, seed=0):
    plan = compile_text(HEAD + CELLS[cell] + TAIL).plan
    rng = np.random.default_rng(seed)
    params = {p.name: rng.normal(scale=0.5, size=p.shape).astype(dtype) for p in plan.params}
    feeds = {"x": rng.normal(size=(5, 4, 3)).astype(dtype), "y": rng.normal(size=(5, 4, 2)).astype(dtype)}
    return plan, params, feeds


def passes(plan, params, feeds, dtype, segmented: bool, lengths=LENGTHS, n=2, leaves=None, check=False):
    """n forward and backward passes (the later ones on the kept loop run), the last one's tape
    and gradients; every value kept (``check``) or the training's single-use pass."""
    ex = Executor(plan, dtype=dtype, check_finite=check,
                  options=ExecOptions(fused_loops=False, fused_segments=segmented))
    if ex.segments_after is not None:
        ex.segments_after = 0
    for _ in range(n):
        tape = ex.forward(params, feeds, lengths=lengths, single_use=leaves is not None)
        grads = ex.backward(tape, wrt=leaves)
    return ex, tape, grads


def worst(a, b) -> float:
    """Largest difference relative to the array's largest entry."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)) if b.size else 0.0


def assert_same(tape_s, grads_s, tape_n, grads_n, tolerance=STEPS):
    for k, v in tape_n.values.items():
        if isinstance(v, np.ndarray) and v.dtype == np.float32:
            assert worst(tape_s.values[k], v) <= tolerance, k
    assert set(grads_s) == set(grads_n)
    for k in grads_n:
        assert worst(grads_s[k], grads_n[k]) <= tolerance, k


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_segments_give_the_numpy_paths_values_and_gradients(cell, batch, kernels_used):
    plan, params, feeds = setup(cell, np.float32)
    T, lengths = BATCHES[batch]
    feeds = {k: v[:T] for k, v in feeds.items()}
    # every value kept and every gradient asked for (nnspec grad), then a training pass (ring
    # gradients, lent arrays, values held one step)
    for check, leaves in [(True, None), (False, [p.name for p in plan.params])]:
        ex, ts, gs = passes(plan, params, feeds, np.float32, True, lengths, leaves=leaves, check=check)
        _, tn, gn = passes(plan, params, feeds, np.float32, False, lengths, leaves=leaves, check=check)
        # an Elman net's step has two elementwise ops and one such backward action: as fast by NumPy
        # (segments.MIN_RUN); every other cell has a segment each way
        small = cell == "elman"
        assert all(bool(loop._run.segments) != small for loop in ex.fast_loops.values())
        assert all(bool(loop._run.backward.segments) != small for loop in ex.fast_loops.values())
        assert_same(ts, gs, tn, gn, ONE_STEP if T == 1 else STEPS)
    assert bool(kernels_used["kernel"]) != small and not kernels_used["numpy"]


def test_every_scalar_op_is_in_the_test_body():
    body = CELLS["every scalar op"]
    for name, op in REGISTRY.items():
        if isinstance(op.fused, ScalarForm):
            assert f"a_{name}[4] = {name}(" in body


def test_ops_with_no_vectorised_float32_form_end_a_segment():
    plan = compile_text(HEAD + "h[4] = tanh(0.5 * (tanh(W @ x + U @ h[t-1]) + log(2 + sigmoid(V @ h[t-1]))))\n" + TAIL).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape).astype(np.float32) for p in plan.params}
    feeds = {"x": rng.normal(size=(5, 4, 3)).astype(np.float32), "y": rng.normal(size=(5, 4, 2)).astype(np.float32)}
    ex, ts, gs = passes(plan, params, feeds, np.float32, True)
    _, tn, gn = passes(plan, params, feeds, np.float32, False)
    run = next(iter(ex.fast_loops.values()))._run
    logs = [b for b in ex.fast_loops[0].program.body if b.op.name == "log"]
    assert logs and not segments.forward_form(logs[0])
    assert len(run.segments) >= 2        # (before and after the log)
    assert_same(ts, gs, tn, gn)


def test_float32_expressions():
    assert segments.float32_expr("1.0 / (1.0 + exp(-x0))") == "f32(1.0) / (f32(1.0) + exp(-x0))"
    assert segments.float32_expr("x0 ** 3.0") == "x0 * x0 * x0"
    assert segments.float32_expr("2.0 * x0 ** (3.0 - 1.0)") == "f32(2.0) * (x0 * x0)"
    for text in ("log(x0)", "x0 ** 0.5", "expm1(x0)", "x0 ** x1"):
        with pytest.raises(segments.NotVectorised):
            segments.float32_expr(text)


def test_float64_is_untouched():
    plan, params, feeds = setup("lstm", np.float64)
    ex, t1, g1 = passes(plan, params, feeds, np.float64, True)
    _, t2, g2 = passes(plan, params, feeds, np.float64, False)
    assert not any(loop._run.segments for loop in ex.fast_loops.values())
    assert t1.values[plan.loss] == t2.values[plan.loss]
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)


def test_nothing_is_compiled_before_the_pass_threshold(monkeypatch):
    def not_yet(source):
        raise AssertionError("compiled before the threshold")
    monkeypatch.setattr(segments, "compiled", not_yet)
    plan, params, feeds = setup("lstm", np.float32)
    ex = Executor(plan, dtype=np.float32, options=ExecOptions(fused_loops=False))
    ex.segments_after = 3
    for _ in range(3):
        ex.backward(ex.forward(params, feeds, lengths=LENGTHS))
    with pytest.raises(AssertionError, match="before the threshold"):
        ex.backward(ex.forward(params, feeds, lengths=LENGTHS))


def test_a_loop_run_with_segments_is_kept_and_holds_no_array_after_a_pass():
    # the lanes a segment keeps are the run's own references; those of arrays bound again at every
    # pass (the input projection, lent gradient arrays) are let go of, so the pool reuses their blocks
    plan, params, feeds = setup("lstm", np.float32)
    ex = Executor(plan, dtype=np.float32, options=ExecOptions(fused_loops=False))
    ex.segments_after = 0
    runs, blocks = [], []
    leaves = [p.name for p in plan.params]
    for _ in range(4):
        tape = ex.forward(params, feeds, lengths=FULL, single_use=True)
        ex.backward(tape, wrt=leaves)
        runs.append(next(iter(ex.fast_loops.values()))._run)
        blocks.append(ex.pool.block_count())
        del tape
    assert runs[1] is runs[2] is runs[3] and runs[1].segments and runs[1].backward.segments
    assert blocks[1] == blocks[2] == blocks[3]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_pass_whose_arrays_a_kernel_cannot_take_runs_the_numpy_steps(cell, monkeypatch, kernels_used):
    # the arrays bound again at every pass (the input projection, lent gradient arrays) are made
    # lanes again at every pass; when one cannot be, that pass runs the NumPy steps, which compute
    # the derivatives a kernel would have computed itself from the op's VJP
    plan, params, feeds = setup(cell, np.float32)
    leaves = [p.name for p in plan.params]
    refuse, lane = [False], segments.lane
    monkeypatch.setattr(segments, "lane", lambda *a: None if refuse[0] else lane(*a))
    ex = Executor(plan, dtype=np.float32, options=ExecOptions(fused_loops=False))
    ex.segments_after = 0
    ex.backward(ex.forward(params, feeds, lengths=LENGTHS, single_use=True), wrt=leaves)
    assert kernels_used["kernel"] and not kernels_used["numpy"]
    refuse[0] = True
    kernels_used.update(kernel=0, numpy=0)
    tape = ex.forward(params, feeds, lengths=LENGTHS, single_use=True)
    grads = ex.backward(tape, wrt=leaves)
    assert kernels_used["numpy"] and not kernels_used["kernel"]
    _, tn, gn = passes(plan, params, feeds, np.float32, False, leaves=leaves)
    assert_same(tape, grads, tn, gn, ONE_STEP)


def test_chunks_of_a_stream_carry_their_states_through_segments():
    # the previous chunk's last states are what the first steps read (copied into the state reads)
    plan, params, feeds = setup("lstm", np.float32)
    results = []
    for segmented in (True, False):
        ex = Executor(plan, dtype=np.float32, options=ExecOptions(fused_loops=False, fused_segments=segmented))
        if ex.segments_after is not None:
            ex.segments_after = 0
        carry, out = None, []
        for _ in range(3):
            tape = ex.forward(params, feeds, lengths=FULL, carry=carry)
            out.append((tape, ex.backward(tape)))
            carry = tape.final_states
        results.append(out)
        assert all(loop._run.segments for loop in ex.fast_loops.values()) == segmented
    for (ts, gs), (tn, gn) in zip(*results):
        assert_same(ts, gs, tn, gn)


def test_the_difftesters_segments_oracle_checks_a_loop():
    # (python -m tests.difftest --oracles segments: random specs; opt-in, each body compiles a kernel)
    from tests.difftest.oracles import TOLERANCES, check
    out = check(HEAD + CELLS["gru"] + TAIL, seed=3, oracles=["segments"])
    assert "segments" not in out.skipped and not out.failures
    assert out.errors["segments"] <= TOLERANCES["segments"]
    assert check(HEAD + "h[4] = tanh(W @ x)\n" + TAIL, seed=3,
                 oracles=["segments"]).skipped["segments"] == "no loop"
