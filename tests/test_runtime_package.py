"""The runtime's pieces on their own: one definition of time (reads at t + d and their adjoints),
the reuse rule, the reference engine as the executor's other half, and what the model offers the
trainer (a training step that holds nothing afterwards, a diagnosis, the state of a stream)."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.chunks import Stream
from nnspec.model import Model
from nnspec.runtime import ExecOptions, Executor, RunContext, RuntimeFailure, TimeAxis
from nnspec.runtime.reuse import Reuse
from nnspec.runtime.rowgrad import TableGrads

LENGTHS = np.array([5, 3, 1, 4])


def axis_and_arrays(seed=0, T=5, tail=(2,)):
    rng = np.random.default_rng(seed)
    axis = TimeAxis("t", T, LENGTHS, np.float64)
    shape = (T, len(LENGTHS)) + tail
    return axis, rng.normal(size=shape), rng.normal(size=shape), rng.normal(size=shape[1:])


@pytest.mark.parametrize("d", [-3, -1, 1, 2, 7])
def test_a_whole_read_is_the_reads_of_each_step(d):
    axis, a, _, fill = axis_and_arrays()
    whole = axis.read(a, d, fill)
    for t in range(axis.steps):
        np.testing.assert_array_equal(whole[t], axis.read_step(a, t + d, fill))
        into = np.empty_like(fill)
        axis.read_step_into(into, a, t + d, fill)
        np.testing.assert_array_equal(into, whole[t])


@pytest.mark.parametrize("d", [-3, -1, 1, 2, 7])
def test_the_adjoints_are_the_adjoints_of_the_reads(d):
    """<read(a, f), g> = <a, read_adjoint(g)> + <f, fill_gradient(g)>, whole and step by step."""
    axis, a, g, fill = axis_and_arrays(seed=1)
    lhs = float((axis.read(a, d, fill) * g).sum())
    rhs = float((a * axis.read_adjoint(g, d)).sum() + (fill * axis.fill_gradient(g, d, False)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)
    ga, gfill = np.zeros_like(a), np.zeros_like(fill)
    ga2, gfill2 = np.zeros_like(a), np.zeros_like(fill)
    for t in range(axis.steps):
        axis.send_to_step(ga, g[t], t + d, gfill)
        axis.send_to_step_into(ga2, g[t].copy(), t + d, gfill2, np.empty_like(fill))
    np.testing.assert_allclose(ga, axis.read_adjoint(g, d), atol=1e-12)
    np.testing.assert_allclose(gfill, axis.fill_gradient(g, d, False), atol=1e-12)
    np.testing.assert_allclose(ga2, ga, atol=1e-12)
    np.testing.assert_allclose(gfill2, gfill, atol=1e-12)


def test_an_array_is_reused_only_when_nobody_else_holds_it():
    reuse = Reuse()
    reuse.track([np.zeros(8), np.zeros(4)])
    assert reuse.free() and reuse.free_at(0)
    view = reuse.arrays[0][:2]
    assert not reuse.free() and not reuse.free_at(0) and reuse.free_at(1)
    del view
    assert reuse.free()


SPEC = ("input x[3] : seq\ntarget y[2] : seq\nh[4] = tanh(W @ x + U @ h[t-1] + b)\n"
        "z = concat(h, h[t-2])\nloss mse(V @ z + c, y)\n")


def test_the_reference_options_run_every_step_by_the_reference_engine():
    plan = compile_text(SPEC).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    feeds = {"x": rng.normal(size=(5, 4, 3)), "y": rng.normal(size=(5, 4, 2))}
    results = []
    for options in (ExecOptions(), ExecOptions.reference()):
        ex = Executor(plan, dtype=np.float64, options=options)
        for _ in range(2):       # the second pass of the fast executor is a prepared one
            tape = ex.forward(params, feeds, lengths=LENGTHS)
        grads = ex.backward(tape)
        results.append((tape, grads))
    (fast, g_fast), (ref, g_ref) = results
    assert fast.loops and fast.prepared is not None
    assert not ref.loops and ref.prepared is None and ref.records[("h", 0)]
    assert set(g_fast) == set(g_ref)
    for k in g_ref:
        np.testing.assert_allclose(g_fast[k], g_ref[k], atol=1e-12)


def test_a_run_context_says_how_a_pass_runs():
    plan = compile_text("input x[2]\noutput y\ny[2] = log(W @ x)\n").plan
    ex = Executor(plan, dtype=np.float64)
    params = {"W": -np.eye(2)}
    with np.errstate(invalid="ignore"):
        ex.forward(params, {"x": np.ones((1, 2))})                     # unchecked: NaN passes
        with pytest.raises(RuntimeFailure, match="'y' produced NaN"):
            ex.forward(params, {"x": np.ones((1, 2))}, context=RunContext(check_finite=True))
    assert ex.check_finite is False


def lstm_model():
    return Model(compile_text("input x[3] : seq\ntarget y : seq of class\nh = lstm(x, H = 5)\n"
                              "z[4] = W @ h + b\nloss cross_entropy_logits(z, y)\n", bindings={"classes(y)": 4}), dtype=np.float64)


def test_a_training_step_holds_nothing_afterwards_so_the_next_reuses_its_loop():
    model = lstm_model()
    model.executor = Executor(model.plan, model.dtype, options=ExecOptions(fused_loops=False))   # the NumPy loop path
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(6, 2, 3)), "y": rng.integers(0, 4, size=(6, 2))}
    runs = []
    for _ in range(3):
        loss = model.train_step(feeds, then=lambda loss, grads, values: (loss, sorted(grads))[0])
        assert np.isfinite(loss)
        runs.append([fast._run for fast in model.executor.fast_loops.values()])
    assert runs[1] and all(r is not None for r in runs[1])
    assert all(a is b for a, b in zip(runs[2], runs[1]))   # kept, not rebuilt


def test_a_diagnosis_names_the_first_bad_value_and_leaves_the_executor_as_it_was():
    model = Model(compile_text("input x[2]\noutput y\ny[2] = log(W @ x)\n"), dtype=np.float64)
    model.params["W"] = -np.eye(2)
    failure = model.diagnose({"x": np.ones((1, 2))})
    assert isinstance(failure, RuntimeFailure) and failure.node == "y"
    assert model.executor.check_finite is False
    model.params["W"] = np.eye(2)
    assert model.diagnose({"x": np.ones((1, 2))}) is None


def test_a_stream_carries_the_last_chunks_states_into_the_next_chunk_only():
    model = lstm_model()
    stream = Stream(model.plan)
    assert stream.ahead >= 1 and stream.carry_into(True) is None
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(4, 2, 3)), "y": rng.integers(0, 4, size=(4, 2))}
    model.train_step(feeds, stream=stream, then=lambda *a: None)
    assert set(stream.carry) >= {"h", "h.c"} and stream.carry_into(False) is None
    carried = model.run(feeds, carry=stream.carry_into(True))
    fresh = model.run(feeds)
    assert not np.allclose(carried.values["h"][0], fresh.values["h"][0])


SWITCHES = ["defer_grads", "local_grads", "alias_grads", "scratch", "reuse_buffers", "row_grads", "prepared", "lend_dead",
            "share_dead", "ring_grads", "grads_in_views", "recompute"]
TAGGER = ("input w : seq of token\ntarget y : seq of class\ne = embed(w, 4)\nh = lstm(concat(e, e[t-1]), H = 3)\n"
          "z[3] = V @ concat(h, h[t-2]) + c\nloss cross_entropy_logits(z, y)\n")


@pytest.mark.parametrize("params_only", [False, True], ids=["all", "params"])
@pytest.mark.parametrize("switch", SWITCHES + [None])
def test_each_speed_feature_switched_off_gives_the_reference_numbers(switch, params_only):
    """All gradients kept, or the parameters' only (as in training: loops keep no body gradient)."""
    plan = compile_text(TAGGER, bindings={"vocab(w)": 6, "classes(y)": 3}).plan
    rng = np.random.default_rng(2)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    batches = [{"w": rng.integers(1, 6, size=(5, 4)), "y": rng.integers(0, 3, size=(5, 4))} for _ in range(3)]
    ref = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    ex = Executor(plan, dtype=np.float64, options=ExecOptions(**({switch: False} if switch else {})))
    for feeds in batches + batches:      # the second round reuses kept runs and prepared passes
        want_tape = ref.forward(params, feeds, lengths=LENGTHS)
        want = ref.backward(want_tape)
        tape = ex.forward(params, feeds, lengths=LENGTHS)
        got = ex.backward(tape, wrt=set(params) if params_only else None)
        assert float(tape.values[plan.loss]) == pytest.approx(float(want_tape.values[plan.loss]), rel=1e-12)
        for k in params:
            np.testing.assert_allclose(got[k], want[k], atol=1e-12, err_msg=f"{k} with {switch} off")
        del tape, got


@pytest.mark.parametrize("text, rings", [
    ("input x[3] : seq\ntarget y : seq of class[2]\n"
     "h[4] = tanh(W @ x + U @ h[t-1] + V @ h[t-2] + b)\nloss cross_entropy(softmax(O @ h + c), y)\n",
     [{"h": 3}]),
    ("input x[3] : seq\ntarget y : seq of class[2]\nh = bidirectional(lstm)(x, H = 4)\n"
     "loss cross_entropy(softmax(O @ h + c), y)\n", [{"h.fwd": 2, "h.fwd.c": 2}, {"h.bwd": 2, "h.bwd.c": 2}]),
], ids=["delay2", "bilstm"])
def test_a_states_gradient_lives_in_a_ring_of_its_farthest_delay_plus_one_steps(text, rings):
    plan = compile_text(text).plan
    rng = np.random.default_rng(4)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    ref = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    ex = Executor(plan, dtype=np.float64, options=ExecOptions(fused_loops=False))
    for T, lengths in [(6, [6, 4, 2]), (6, [6, 4, 2]), (5, None)]:
        feeds = {"x": rng.normal(size=(T, 3, 3)), "y": rng.integers(0, 2, size=(T, 3))}
        want = ref.backward(ref.forward(params, feeds, lengths=lengths), wrt=set(params))
        tape = ex.forward(params, feeds, lengths=lengths)
        got = ex.backward(tape, wrt=set(params))
        for k in params:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
        for run, ring in zip(tape.loops.values(), rings):
            assert run.backward.plan.ring == ring
            for state, slots in ring.items():
                assert run.backward.gbuf[state].shape[0] == slots      # not T steps
        del tape, got


@pytest.mark.parametrize("options", [ExecOptions(), ExecOptions.reference()], ids=["fast", "reference"])
def test_the_runtime_reads_a_values_time_axis_by_its_name(options):
    """Put every sequence on an axis named 'words' (lengths given by axis name): the same numbers
    as on the default axis, so nothing in the runtime assumes the one axis TIME."""
    plan = compile_text(TAGGER, bindings={"vocab(w)": 6, "classes(y)": 3}).plan
    rng = np.random.default_rng(3)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    feeds = {"w": rng.integers(1, 6, size=(5, 4)), "y": rng.integers(0, 3, size=(5, 4))}
    default = Executor(plan, dtype=np.float64, options=options)
    named = Executor(plan, dtype=np.float64, options=options)
    named.facts.axis_of = {v: "words" for v in named.facts.axis_of}
    named.facts.loop_axis = {i: "words" for i in named.facts.loop_axis}
    for _ in range(2):
        want_tape = default.forward(params, feeds, lengths=LENGTHS)
        want = default.backward(want_tape)
        tape = named.forward(params, feeds, lengths={"words": LENGTHS})
        got = named.backward(tape)
    assert set(tape.axes) == {"words"} and tape.axis("h").lengths is LENGTHS
    assert float(tape.values[plan.loss]) == pytest.approx(float(want_tape.values[plan.loss]), rel=1e-12)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], atol=1e-12)


@pytest.mark.parametrize("options", [ExecOptions(), ExecOptions.reference()], ids=["fast", "reference"])
def test_a_chunk_that_carries_its_states_sends_no_gradient_to_the_initial_value(options):
    """Truncated BPTT: a chunk that continues a stream starts from the last chunk's states, not from
    h0, so h0 gets no gradient from it (it did get one, read where it never was)."""
    plan = compile_text("input x[2] : seq\ntarget y[3] : seq\ninitial h = h0\nh[3] = tanh(W @ x + U @ h[t-1])\n"
                        "z = concat(h, h[t-1])\nloss mse(V @ z, y)\n").plan
    rng = np.random.default_rng(4)
    params = {p.name: rng.normal(size=p.shape) for p in plan.params}
    feeds = {"x": rng.normal(size=(4, 2, 2)), "y": rng.normal(size=(4, 2, 3))}
    ex = Executor(plan, dtype=np.float64, options=options)
    first = ex.forward(params, feeds)
    assert np.abs(ex.backward(first)["h0"]).sum() > 0
    carry = dict(first.final_states)
    grads = ex.backward(ex.forward(params, feeds, carry=carry))
    assert np.abs(grads.get("h0", 0)).sum() == 0
    assert np.abs(grads["U"]).sum() > 0


@pytest.mark.parametrize("ids", [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5], [7, 7, 7], [0, 2, 4], [],
                                 [-1, 3, -1, 3, 0, -1], [-1, -1]])   # (-1: padding, left out)
def test_a_table_gradient_sums_repeated_ids_as_add_at_does_and_names_its_rows(ids):
    rng = np.random.default_rng(0)
    ids = np.array(ids, dtype=np.int64)
    g = rng.normal(size=(len(ids), 3))
    want = np.zeros((10, 3))
    np.add.at(want, ids[ids >= 0], g[ids >= 0])
    tables = TableGrads({"T": (10, 3)})
    for _ in range(2):       # the second pass re-zeroes the rows the first touched
        got = tables.gradient("T", ids, g)
        np.testing.assert_array_equal(got, want)    # the same sums in the same order: bit for bit
        np.testing.assert_array_equal(got.rows, np.unique(ids[ids >= 0]))
        del got


def test_a_table_gradient_gathered_in_chunks_sums_as_add_at_does(monkeypatch):
    from nnspec.runtime import rowgrad
    monkeypatch.setattr(rowgrad, "CHUNK_BYTES", 4 * 8)    # 4 rows of 2 float64 at a time
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 6, 41)                          # first occurrences and repeats over many chunks
    g = rng.normal(size=(41, 2))
    want = np.zeros((6, 2))
    np.add.at(want, ids, g)
    got = TableGrads({"T": (6, 2)}).gradient("T", ids, g)
    np.testing.assert_array_equal(got, want)              # repeats still summed in the ids' order
    np.testing.assert_array_equal(got.rows, np.unique(ids))


def test_a_table_gradient_does_not_copy_all_the_rows_of_its_incoming_gradient():
    import tracemalloc
    from nnspec.runtime.rowgrad import CHUNK_BYTES
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 1000, 20000)                    # (a batch of 20000 ids: 8 MB of float32 g)
    g = rng.normal(size=(20000, 100)).astype(np.float32)
    tables = TableGrads({"T": (1000, 100)})
    tables.gradient("T", ids, g)                          # the table's own array, kept from pass to pass
    tracemalloc.start()
    try:
        tables.gradient("T", ids, g)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the ids' sort and masks (8 bytes an id, a few times) and a chunk of rows; a copy of g would be 8 MB
    assert peak < 6 * 8 * len(ids) + 2 * CHUNK_BYTES < g.nbytes / 4


@pytest.mark.parametrize("ids", [[3, 1, 4, 0, 5, 9, 2, 6], [3, 1, 4, 1], [2, -1, 5], [7]])
def test_a_table_gradient_of_a_few_ids_takes_the_plain_path_with_the_numbers_and_rows_of_the_general_one(ids):
    from nnspec.runtime.rowgrad import FEW_IDS
    rng = np.random.default_rng(3)
    ids = np.array(ids, dtype=np.int64)
    g = rng.normal(size=(len(ids), 4)).astype(np.float32)
    few, general = TableGrads({"T": (10, 4)}), TableGrads({"T": (10, 4)}, few_ids=0)
    assert len(ids) <= few.few_ids == FEW_IDS
    for _ in range(2):
        got, want = few.gradient("T", ids, g), general.gradient("T", ids, g)
        assert got.tobytes() == want.tobytes()                   # bit for bit
        np.testing.assert_array_equal(got.rows, want.rows)
        assert got.rows.dtype == want.rows.dtype
        del got, want
