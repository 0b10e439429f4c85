"""The plan optimiser (nnspec/optimize/) and the runtime's fast loop path.

Two kinds of checks:
  * shape: after each pass the plan has the expected form (one matmul for four
    gates, the softmax gone from the loss, the bias added outside the loop...);
  * equivalence: optimised and unoptimised plans, and the fast and reference
    runtimes, give the same outputs and gradients in float64 on padded batches
    (lengths 5, 3, 2), with every pass and every runtime switch on its own.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import random_feeds

from nnspec import compile_text
from nnspec.optimize import PASSES, optimize_plan
from nnspec.plan import LoopStep
from nnspec.runtime import ExecOptions, Executor

LSTM_LM = """
input w : seq of token
e = embed(w, 3)
h = lstm(e, H = 4)
p = softmax(V @ h + c)
loss cross_entropy(p, shift(w, 1))
"""

GATES = """
input x[3] : seq
target y : seq of class[3]
cell my_lstm(x) -> h[H] {
  f = sigmoid(Wf @ x + Uf @ h[t-1] + bf)
  i = sigmoid(Wi @ x + Ui @ h[t-1] + bi)
  o = sigmoid(Wo @ x + Uo @ h[t-1] + bo)
  g = tanh(Wg @ x + Ug @ h[t-1] + bg)
  c = f * c[t-1] + i * g
  h = o * tanh(c)
}
h = my_lstm(x, H = 4)
loss cross_entropy(softmax(V @ h + c), y)
"""

SPECS = {
    "lstm": "input x[3] : seq\ntarget y : seq of class[3]\nh = lstm(x, H = 4)\n"
            "p = softmax(V @ h + c)\nloss cross_entropy(p, y)\n",
    "lstm_gate_by_gate": GATES,
    "lstm_backward_in_time": "input x[3] : seq\noutput h\nh = reverse(lstm)(x, H = 4)\n",
    "gru_reset_after": "input x[3] : seq\ntarget y : class[3]\nh = gru_reset_after(x, H = 4)\n"
                       "loss cross_entropy(softmax(V @ last(h) + c), y)\n",
    "gru_reset_before": "input x[3] : seq\ntarget y : class[3]\nh = gru_reset_before(x, H = 4)\n"
                        "loss cross_entropy_logits(V @ max(h) + c, y)\n",
    "rnn_two_step_delay": "input x[3] : seq\ntarget y : seq of class[3]\n"
                          "h[4] = tanh(W @ x + U @ h[t-1] + R @ h[t-2] + b)\n"
                          "loss nll(log_softmax(V @ h + c), y)\n",
    "bidirectional_stacked": "input x[3] : seq\ntarget y : seq of class[3]\n"
                             "h1 = bidirectional(lstm)(x, H = 3)\nh2 = stacked(gru, 2)(h1, H = 2)\n"
                             "loss cross_entropy(softmax(dense(h2, N = 3)), y)\n",
    "learned_initial_states": "input x[3] : seq\ntarget y[2] : seq\nh = lstm(x, H = 4)\n"
                              "initial h = h0\ninitial h.c = c0\nloss mse(V @ h + c, y)\n",
    "sums_with_signs": "input x[3] : seq\ntarget y[4] : seq\n"
                       "h[4] = tanh(U @ h[t-1] - W @ x + b - a + x2 - Q @ h[t-1])\nx2[4] = K @ x\n"
                       "loss mse(h, y)\n",
    "outer_reads_with_delay": "input x[3] : seq\ntarget y[3] : seq\n"
                              "h[3] = tanh(W @ x[t-1] + b + U @ h[t-1] + x[t-1] * h[t-1] + x * h[t-2])\n"
                              "loss bce(sigmoid(V @ h + c), y)\n",
    "language_model": LSTM_LM,
    "mlp_two_heads": "input x[4]\ntarget y : class[3]\ntarget z[2]\nh[5] = relu(W @ x + b)\n"
                     "loss cross_entropy(softmax(A @ h + a), y) + bce(sigmoid(B @ h + bb), z)\n",
    "output_keeps_softmax": "input x[3] : seq\ntarget y : seq of class[3]\noutput p\n"
                            "h = rnn(x, H = 4)\np = softmax(V @ h + c)\nloss cross_entropy(p, y)\n",
    "dropout_inside_loop": "input x[3] : seq\ntarget y[2] : seq\n"
                           "h[4] = tanh(W @ x + U @ dropout(h[t-1], p = 0.3) + b)\nloss mse(V @ h + c, y)\n",
}
BINDINGS = {"vocab(w)": 6}
LENGTHS = np.array([5, 3, 2])


def run(plan, params, feeds, options=None, train=False, carry=None, lengths=LENGTHS, leaves=False):
    """Forward and backward; ``leaves``: ask only for the gradients of parameters and inputs
    (as training does), which lets the runtime keep per-step gradients for one step only."""
    ex = Executor(plan, dtype=np.float64, options=options)
    tape = ex.forward(params, feeds, lengths=lengths, train=train, rng=np.random.default_rng(3), carry=carry)
    seeds = None
    if plan.loss is None:
        seeds = {o: np.random.default_rng(4).normal(size=tape.values[o].shape) for o in plan.outputs}
    wrt = set(params) | {v.name for v in plan.inputs if not v.integer} if leaves else None
    grads = ex.backward(tape, seeds=seeds, wrt=wrt)
    return tape, grads


def setup(text, seed=0):
    base = compile_text(text, bindings=BINDINGS, optimize=False).plan
    rng = np.random.default_rng(seed)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in base.params}
    feeds = random_feeds(base, T=5, B=3, seed=seed)
    return base, params, feeds


def assert_same(base, other, params, feeds, options=None, train=False, tol=1e-10, leaves=False):
    t0, g0 = run(base, params, feeds, ExecOptions(fast_loops=False), train=train)
    t1, g1 = run(other, params, feeds, options, train=train, leaves=leaves)
    ends = list(base.outputs) + ([base.loss] if base.loss else [])
    for k in ends:
        np.testing.assert_allclose(t1.values[k], t0.values[k], rtol=tol, atol=tol, err_msg=k)
    for k in params:
        a, b = g0.get(k, np.zeros_like(params[k])), g1.get(k, np.zeros_like(params[k]))
        scale = max(np.abs(a).max(), 1e-3)
        assert np.abs(a - b).max() / scale < tol, k
    for v in base.inputs:
        if not v.integer:
            np.testing.assert_allclose(g1[v.name], g0[v.name], rtol=tol, atol=tol, err_msg=v.name)


# ---- equivalence ------------------------------------------------------------------------

@pytest.mark.parametrize("name", SPECS)
def test_optimised_plan_and_fast_runtime_match_the_reference(name):
    base, params, feeds = setup(SPECS[name])
    opt = optimize_plan(base)
    for plan in (base, opt):
        for leaves in (False, True):
            assert_same(base, plan, params, feeds, train=True, leaves=leaves)


@pytest.mark.parametrize("pass_name", PASSES)
@pytest.mark.parametrize("name", ["lstm", "gru_reset_after", "bidirectional_stacked", "sums_with_signs",
                                  "mlp_two_heads", "outer_reads_with_delay"])
def test_each_pass_alone_keeps_outputs_and_gradients(name, pass_name):
    base, params, feeds = setup(SPECS[name])
    assert_same(base, optimize_plan(base, passes=[pass_name]), params, feeds)


OPTION_SETS = [ExecOptions(defer_grads=False), ExecOptions(local_grads=False), ExecOptions(alias_grads=False),
               ExecOptions(scratch=False),
               ExecOptions(defer_grads=False, local_grads=False, alias_grads=False, scratch=False)]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(
    k for k, v in vars(o).items() if not v) + " off")
@pytest.mark.parametrize("name", ["lstm", "gru_reset_before", "rnn_two_step_delay", "learned_initial_states",
                                  "dropout_inside_loop", "outer_reads_with_delay"])
def test_each_runtime_switch_alone_keeps_outputs_and_gradients(name, options):
    base, params, feeds = setup(SPECS[name])
    assert_same(base, optimize_plan(base), params, feeds, options=options, train=True, leaves=True)


def test_truncated_bptt_carry_is_the_same():
    text = "input x[3] : seq\noutput h\nh = lstm(x, H = 4)\n"
    base, params, feeds = setup(text)
    opt = optimize_plan(base)
    first = [Executor(p, dtype=np.float64).forward(params, {"x": feeds["x"][:3]}) for p in (base, opt)]
    carry = [f.final_states for f in first]
    assert set(carry[0]) == set(carry[1]) == {"h", "h.c"}
    for k in carry[0]:
        np.testing.assert_allclose(carry[1][k], carry[0][k], rtol=1e-12, atol=1e-12)
    rest = {"x": feeds["x"][3:]}
    t0, g0 = run(base, params, rest, ExecOptions(fast_loops=False), carry=carry[0], lengths=None)
    t1, g1 = run(opt, params, rest, carry=carry[1], lengths=None)
    np.testing.assert_allclose(t1.values["h"], t0.values["h"], rtol=1e-12, atol=1e-12)
    for k in params:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_padding_is_invisible_in_the_optimised_plan():
    """A padded batch gives each sequence what it gets alone (fast runtime, optimised plan)."""
    base, params, feeds = setup(SPECS["lstm"], seed=2)
    plan = optimize_plan(base)
    feeds["y"][LENGTHS[None, :] <= np.arange(5)[:, None]] = -1
    ex = Executor(plan, dtype=np.float64)
    tape = ex.forward(params, feeds, lengths=LENGTHS)
    whole = ex.backward(tape)
    total = {k: np.zeros_like(v) for k, v in params.items()}
    for b, n in enumerate(LENGTHS):
        one = ex.forward(params, {k: v[:n, b:b + 1] for k, v in feeds.items()})
        g = ex.backward(one)
        for k in total:
            total[k] += g[k] * n / LENGTHS.sum()
    for k in params:
        np.testing.assert_allclose(total[k], whole[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_float32_plans_agree_closely():
    base, params, feeds = setup(SPECS["bidirectional_stacked"])
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    outs = []
    for plan in (base, optimize_plan(base)):
        ex = Executor(plan, dtype=np.float32)
        tape = ex.forward(p32, feeds, lengths=LENGTHS)
        outs.append((float(tape.values[plan.loss]), ex.backward(tape)))
    assert abs(outs[0][0] - outs[1][0]) < 1e-5
    for k in params:
        assert outs[1][1][k].dtype == np.float32
        np.testing.assert_allclose(outs[1][1][k], outs[0][1][k], rtol=1e-4, atol=1e-5, err_msg=k)


# ---- the shape of optimised plans ---------------------------------------------------------

def ops(steps):
    return [s.op for s in steps if not isinstance(s, LoopStep)]


def loop_of(plan):
    return next(s for s in plan.steps if isinstance(s, LoopStep))


def test_fuse_losses_uses_the_logits_and_drops_the_softmax():
    base, _, _ = setup(SPECS["lstm"])
    plan = optimize_plan(base, passes=["fuse_losses"])
    loss = next(s for s in plan.steps if not isinstance(s, LoopStep) and s.id == plan.loss)
    assert loss.op == "cross_entropy_logits" and loss.inputs[0][0] == "p#21"
    assert "softmax" not in ops(plan.steps)
    bce = optimize_plan(setup(SPECS["mlp_two_heads"])[0], passes=["fuse_losses"])
    assert {"cross_entropy_logits", "bce_logits"} <= set(ops(bce.steps))
    assert not {"softmax", "sigmoid", "cross_entropy", "bce"} & set(ops(bce.steps))
    nll = optimize_plan(setup(SPECS["rnn_two_step_delay"])[0], passes=["fuse_losses"])
    assert "cross_entropy_logits" in ops(nll.steps) and "log_softmax" not in ops(nll.steps)


def test_a_declared_output_keeps_its_softmax():
    base, params, feeds = setup(SPECS["output_keeps_softmax"])
    plan = optimize_plan(base)
    assert "softmax" in ops(plan.steps) and "cross_entropy_logits" in ops(plan.steps)
    t0, _ = run(base, params, feeds)
    t1, _ = run(plan, params, feeds)
    np.testing.assert_allclose(t1.values["p"], t0.values["p"], rtol=1e-12)


def test_hoist_sums_adds_the_bias_outside_the_loop():
    base, _, _ = setup("input x[3] : seq\noutput h\nh = rnn(x, H = 4)\n")
    plan = optimize_plan(base, passes=["hoist_sums"])
    loop = loop_of(plan)
    assert ops(loop.body) == ["matmul", "add", "tanh"]         # U @ h[t-1], one add, tanh
    outside = [s for s in plan.steps if not isinstance(s, LoopStep)]
    hoisted = next(s for s in outside if s.op == "add")
    assert {src for src, _ in hoisted.inputs} == {"h#1", "h.b"} and hoisted.seq   # (W @ x) + b, all steps


def test_fuse_linear_adds_the_bias_into_the_product():
    plan = optimize_plan(setup(SPECS["mlp_two_heads"])[0])
    assert ops(plan.steps).count("linear") == 2 and "matmul" not in ops(plan.steps)


def test_hoist_sums_keeps_signs():
    plan = optimize_plan(setup(SPECS["sums_with_signs"])[0], passes=["hoist_sums"])
    body = ops(loop_of(plan).body)
    assert body.count("add") + body.count("sub") == 2 and body.count("matmul") == 2


def test_four_gates_become_one_product_outside_and_one_inside():
    for text in (SPECS["lstm"], GATES):
        plan = optimize_plan(setup(text)[0])
        outside = [s for s in plan.steps if not isinstance(s, LoopStep)]
        products = [s for s in outside if s.op in ("matmul", "linear") and s.shape == [16]]
        assert len(products) == 1                                     # (T*B, 3) x (3, 16) (+ biases)
        cats = [s for s in outside if s.op == "concat_rows"]
        assert len(cats) == 3                                          # W, b and U, once per pass
        body = loop_of(plan).body
        assert ops(body).count("matmul") == 1                          # U{f,i,o,g} @ h[t-1]
        assert ops(body).count("sigmoid") == 1 and ops(body).count("tanh") == 2
        assert ops(body).count("add") == 2                             # gates + h[t-1] part, c
        assert not any(s.op == "concat_rows" for s in body)            # never concatenated per step


def test_gate_by_gate_lstm_gets_the_library_plan():
    lib = optimize_plan(setup(SPECS["lstm"])[0])
    mine = optimize_plan(setup(GATES)[0])

    def shape(plan):
        return [(s.op, s.shape) for s in plan.steps if not isinstance(s, LoopStep)] + \
               [(b.op, b.shape, b.attrs) for b in loop_of(plan).body]
    assert shape(lib) == shape(mine)


def test_gru_fuses_three_gates_and_two_sigmoids():
    plan = optimize_plan(setup(SPECS["gru_reset_after"])[0])
    body = loop_of(plan).body
    assert ops(body).count("matmul") == 1 and ops(body).count("sigmoid") == 1
    product = next(s for s in plan.steps if not isinstance(s, LoopStep) and s.op in ("matmul", "linear"))
    assert product.shape == [12]


def test_slices_line_up_with_the_input_projection():
    """The recurrent product's gate order is the input projection's, so one add serves all gates."""
    plan = optimize_plan(setup(SPECS["lstm"])[0])
    body = loop_of(plan).body
    gates = next(b for b in body if b.op == "add" and b.shape == [16])
    srcs = [src for src, _ in gates.inputs]
    assert any(s.startswith("h.U") for s in srcs)


def test_plans_stay_serialisable():
    plan = optimize_plan(setup(SPECS["bidirectional_stacked"])[0])
    again = type(plan).model_validate_json(plan.model_dump_json())
    assert again == plan


def test_compile_can_switch_the_optimiser_off():
    on = compile_text(SPECS["lstm"]).plan
    off = compile_text(SPECS["lstm"], optimize=False).plan
    assert "concat_rows" in ops(on.steps) and "concat_rows" not in ops(off.steps)


def test_unknown_pass_is_an_error():
    with pytest.raises(ValueError, match="unknown optimisation pass"):
        optimize_plan(setup(SPECS["lstm"])[0], passes=["fuse_everything"])


# ---- the runtime ------------------------------------------------------------------------

def test_the_fast_path_computes_weight_gradients_once_after_the_loop():
    """U's gradient is one product over all steps: its per-step backward touches only h."""
    plan = optimize_plan(setup(SPECS["lstm"])[0])
    ex = Executor(plan, dtype=np.float64)
    loop = loop_of(plan)
    prog = ex.program(loop)
    need = ex.facts.grad_needed(None)
    bp = prog.backward_plan(frozenset({"h"}), need, False, prog.scratch)
    per_step_sources = {prog.by_id[a.op_id].step.inputs[a.pos][0] for a in bp.actions}
    assert not any(s in ex.plan.params or s.startswith("h.U{") for s in per_step_sources)
    deferred = {prog.by_id[o].step.inputs[p][0] for o, p in bp.deferred}
    assert any(s.startswith("h.U{") for s in deferred)


def test_values_handed_out_are_not_overwritten_by_the_next_pass():
    base, params, feeds = setup(SPECS["lstm"])
    ex = Executor(optimize_plan(base), dtype=np.float64)
    t1 = ex.forward(params, feeds, lengths=LENGTHS)
    h1 = t1.values["h"].copy()
    g1 = ex.backward(t1)
    w1 = {k: g1[k].copy() for k in params}
    other = random_feeds(base, T=5, B=3, seed=9)
    t2 = ex.forward(params, other, lengths=LENGTHS)
    ex.backward(t2)
    assert np.array_equal(t1.values["h"], h1)
    assert all(np.array_equal(g1[k], w1[k]) for k in params)


@pytest.mark.parametrize("name", ["lstm", "gru_reset_after", "gru_reset_before", "bidirectional_stacked",
                                  "learned_initial_states", "outer_reads_with_delay", "rnn_two_step_delay",
                                  "language_model"])
def test_a_loop_run_kept_for_the_next_batch_gives_what_a_fresh_executor_gives(name):
    """Batches of one shape reuse a loop's buffers and kernels: new data, new parameter arrays,
    other lengths (a new run), no padding (state reads as views of the state's buffer) and back;
    training-style (gradients of the leaves only) and not. The reference interpreter agrees."""
    base, params, _ = setup(SPECS[name])
    plan = optimize_plan(base)
    ex = Executor(plan, dtype=np.float64)
    rng = np.random.default_rng(5)
    for i, lengths in enumerate([LENGTHS, LENGTHS, np.array([4, 5, 1]), None, None, LENGTHS]):
        feeds = random_feeds(base, T=5, B=3, seed=10 + i)
        params = {k: v + 0.01 * rng.normal(size=v.shape) for k, v in params.items()}  # new arrays
        wrt = set(params) if i % 2 else None
        for carry in (None, {}):
            tape = ex.forward(params, feeds, lengths=lengths, carry=carry)
            grads = ex.backward(tape, wrt=wrt)
            ref = Executor(plan, dtype=np.float64, options=ExecOptions(fast_loops=False))
            t0 = ref.forward(params, feeds, lengths=lengths, carry=carry)
            g0 = ref.backward(t0, wrt=wrt)
            for k in list(plan.outputs) + ([plan.loss] if plan.loss else []):
                np.testing.assert_allclose(tape.values[k], t0.values[k], rtol=1e-10, atol=1e-12, err_msg=k)
            wanted = set(params) | ({v.name for v in plan.inputs} if wrt is None else set())
            for k in set(g0) & wanted:
                np.testing.assert_allclose(grads[k], g0[k], rtol=1e-10, atol=1e-12, err_msg=k)
            del tape, grads


def test_a_loop_run_is_not_reused_while_its_values_are_held():
    base, params, feeds = setup(SPECS["lstm"])
    ex = Executor(optimize_plan(base), dtype=np.float64)
    t1 = ex.forward(params, feeds, lengths=LENGTHS)
    h = t1.values["h"]
    h1 = h.copy()
    del t1
    t2 = ex.forward(params, random_feeds(base, T=5, B=3, seed=9), lengths=LENGTHS)
    assert t2.values["h"] is not h and np.array_equal(h, h1)


def test_an_embedding_table_gradient_names_its_rows_and_is_zero_elsewhere():
    from nnspec.runtime import RowGrad
    base, params, _ = setup(LSTM_LM)
    plan = optimize_plan(base)
    ex, ref = Executor(plan, dtype=np.float64), Executor(plan, dtype=np.float64,
                                                          options=ExecOptions(row_grads=False))
    held = []
    for seed in (1, 2, 3, 3):
        feeds = random_feeds(base, T=5, B=3, seed=seed)
        grads = ex.backward(ex.forward(params, feeds, lengths=LENGTHS), wrt=set(params))
        want = ref.backward(ref.forward(params, feeds, lengths=LENGTHS), wrt=set(params))
        g = grads["e.table"]
        assert isinstance(g, RowGrad) and not isinstance(want["e.table"], RowGrad)
        np.testing.assert_allclose(g, want["e.table"], rtol=1e-12, atol=1e-15)
        real = np.concatenate([feeds["w"][:n, b] for b, n in enumerate(LENGTHS)])
        assert set(real.tolist()) <= set(g.rows.tolist()) <= set(feeds["w"].ravel().tolist())
        assert not np.delete(np.asarray(g), g.rows, axis=0).any()
        assert not (g * 2).rows and (g * 2).rows is None      # derived arrays promise nothing
        if seed == 2:
            held.append((g, g.copy()))                         # held: the next pass must not touch it
    assert all(np.array_equal(a, b) for a, b in held)


def test_check_finite_names_the_value_inside_a_loop():
    from nnspec.runtime import RuntimeFailure
    plan = compile_text("input x[3] : seq\noutput h\nh[2] = sqrt(W @ x + U @ h[t-1] + b)\n").plan
    ex = Executor(plan, dtype=np.float64, check_finite=True)
    params = {"W": np.ones((2, 3)), "U": np.ones((2, 2)), "b": np.full(2, -5.0)}
    x = np.ones((4, 1, 3)) * np.array([3.0, 3.0, 0.0, 0.0])[:, None, None]  # fine at t = 0, NaN at t = 2
    with np.errstate(all="ignore"):
        with pytest.raises(RuntimeFailure) as err:
            ex.forward(params, {"x": x})
    assert "NaN" in str(err.value) and err.value.node in {s.id for s in loop_of(plan).body}


def test_a_dropped_tape_frees_its_buffers_at_once():
    """No reference cycles: buffers go when the tape, the gradients and the executor (which keeps
    a loop's buffers for the next batch of the same shape) go, without the cyclic GC (a cycle
    kept every step's buffers alive until a full collection: gigabytes in training)."""
    import gc
    import weakref
    base, params, feeds = setup(SPECS["lstm"])
    ex = Executor(optimize_plan(base), dtype=np.float64)
    gc.disable()
    try:
        tape = ex.forward(params, feeds, lengths=LENGTHS, train=True, rng=np.random.default_rng(0))
        grads = ex.backward(tape)
        refs = [weakref.ref(tape.values["h"]), weakref.ref(grads["h.c"]), weakref.ref(grads["h.Uf"])]
        refs += [weakref.ref(a) for a in tape.loops[loop_of(ex.plan).index].bufs.values() if a.base is None]
        del tape, grads, ex
        assert all(r() is None for r in refs)
    finally:
        gc.enable()


# ---- the ops' fast-path kernels agree with their forward and vjp ----------------------------

def _kernel_cases():
    from test_ops_gradcheck import CASES
    from nnspec.ops import get
    from nnspec.ops.registry import Op
    out = []
    for c in CASES:
        op = get(c.op)
        if op.needs_ctx or any(np.issubdtype(np.asarray(x).dtype, np.integer) for x in c.xs[:1]) and c.op != "embed":
            continue
        if any(getattr(type(op), m) is not getattr(Op, m)
               for m in ("forward_into", "vjp_into", "step_forward", "step_vjp")) or op.local_grad is not None:
            out.append(pytest.param(c, id=f"{c.op}-{c.tag}" if c.tag else c.op))
    return out


@pytest.mark.parametrize("case", _kernel_cases())
def test_kernels_agree_with_forward_and_vjp(case):
    from nnspec.ops import get
    from nnspec.ops.registry import NO_CTX
    op = get(case.op)
    xs = [np.array(x, copy=True) for x in case.xs]
    out = op.forward(xs, case.attrs, NO_CTX)
    g = np.random.default_rng(1).standard_normal(np.shape(out))
    want = op.vjp(g, xs, out, case.attrs, NO_CTX)
    into = np.empty_like(out)
    op.forward_into(xs, into, case.attrs)
    np.testing.assert_allclose(into, out, rtol=1e-12, atol=1e-12)
    if op.local_grad is not None:
        np.testing.assert_allclose(g * op.local_grad(xs, out, case.attrs), want[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g * op.local_grad(xs, out, case.attrs, np.empty_like(out)), want[0],
                                   rtol=1e-12, atol=1e-12)
    for i, x in enumerate(xs):
        if want[i] is None:
            continue
        np.testing.assert_allclose(op.vjp_one(i, g, xs, out, case.attrs, NO_CTX), want[i], rtol=1e-12, atol=1e-12)
        dest = np.empty_like(x)
        op.vjp_into(i, g, xs, out, case.attrs, dest, False)
        np.testing.assert_allclose(dest, want[i], rtol=1e-12, atol=1e-12)
        op.vjp_into(i, g, xs, out, case.attrs, dest, True)
        np.testing.assert_allclose(dest, 2 * want[i], rtol=1e-12, atol=1e-12)
    # step kernels over a 'sequence' of three steps of the same arrays
    T = 3
    seqs = [[x] * T for x in xs]
    outs = [np.empty_like(out) for _ in range(T)]
    f = op.step_forward(seqs, outs, case.attrs)
    if hasattr(f, "before_pass"):       # (a kernel that prepares something once a pass: its protocol)
        f.before_pass()
    for t in range(T):
        f(t)
        np.testing.assert_allclose(outs[t], out, rtol=1e-12, atol=1e-12)
    if hasattr(f, "after_pass"):
        f.after_pass()
    for i, x in enumerate(xs):
        if want[i] is None:
            continue
        for accumulate in (False, True):
            dests = [np.ones_like(x) for _ in range(T)]
            k = op.step_vjp(i, [g] * T, seqs, [out] * T, case.attrs, dests, accumulate)
            for t in range(T):
                k(t)
                np.testing.assert_allclose(dests[t], want[i] + (1 if accumulate else 0), rtol=1e-12, atol=1e-12)


def test_buffer_pool_reuses_what_nobody_holds_and_never_what_somebody_does():
    from nnspec.runtime import BufferPool
    pool = BufferPool()
    a = pool.empty((64, 300), np.float32)
    a[...] = 1.0
    b = pool.empty((64, 300), np.float32)          # a is held: a new block
    assert not np.shares_memory(a, b)
    view = a[3]
    del a
    c = pool.empty((64, 300), np.float32)          # a view of a is still held: not reused
    assert not np.shares_memory(c, view) and (view == 1).all()
    del view, c
    d = pool.zeros((60, 310), np.float32)          # same size class, nobody holds it: reused, zeroed
    assert (d == 0).all() and len(pool.blocks) == 1
    small = pool.empty((3, 4), np.float32)         # small arrays are not pooled
    assert small.base is None


def test_buffer_pool_blocks_are_near_the_size_asked_and_reused_only_within_a_fit():
    from nnspec.runtime import BufferPool
    pool = BufferPool()

    def block(a):       # (the block's address and size: a name holding the block would keep it taken)
        return a.base.__array_interface__["data"][0], a.base.size

    a = pool.empty((35, 32, 1000), np.float32)
    big = block(a)
    assert a.size <= big[1] < a.size + BufferPool.PAGE // 4   # its size, to a whole page: nothing more
    del a
    b = pool.empty((34, 32, 1000), np.float32)       # smaller, within the fit: the same block
    assert block(b) == big
    del b
    c = pool.empty((20, 32, 1000), np.float32)       # far smaller: a block of its own, the big one stays free
    assert block(c) != big and block(c)[1] < big[1]
    d = pool.empty((36, 32, 1000), np.float32)       # larger than any block: a new one
    assert block(d) != big and block(d)[1] >= d.size
    del c, d
    e = pool.empty((35, 32, 1000), np.float32)       # the smallest free block that holds it
    assert block(e) == big


def test_training_steps_reuse_buffers_and_memory_stays_flat():
    base, params, feeds = setup(SPECS["lstm"])
    ex = Executor(optimize_plan(base), dtype=np.float64)
    ex.pool.MIN_BYTES = 0                            # pool everything, to see it at this size
    sizes, runs = [], []
    for i in range(9):
        tape = ex.forward(params, feeds, lengths=LENGTHS, train=True, rng=np.random.default_rng(i))
        grads = ex.backward(tape, wrt=set(params))
        runs.append(tape.prepared)
        del tape, grads
        sizes.append(ex.pool.block_count())
    # nothing new after two passes; the blocks the first pass took before the prepared pass
    # existed are let go after BufferPool.KEEP_PASSES
    assert sizes[-1] == sizes[5] <= sizes[2]
    assert runs[0] is None and all(r is runs[1] for r in runs[1:])   # one prepared pass, kept


def test_blas_threads_are_limited_inside_and_restored_after():
    from nnspec.runtime import _blas_libs, blas_threads
    libs = _blas_libs()
    if not libs:
        pytest.skip("threadpoolctl not installed")
    before = [lib.get_num_threads() for lib in libs]
    with blas_threads(1):
        assert all(lib.get_num_threads() == 1 for lib in libs)
    assert [lib.get_num_threads() for lib in libs] == before


def test_blas_threads_inside_the_same_count_changes_nothing_and_a_different_one_is_restored():
    from nnspec.runtime import _blas_libs, blas_threads
    libs = _blas_libs()
    if not libs:
        pytest.skip("threadpoolctl not installed")
    before = [lib.get_num_threads() for lib in libs]
    with blas_threads(1):
        with blas_threads(1) as inner:          # the trainer's epoch holds 1; each pass asks for 1 again
            assert inner.saved == []
        assert all(lib.get_num_threads() == 1 for lib in libs)
        with blas_threads(2):                    # a loop's own count is set, then the held one is back
            assert all(lib.get_num_threads() == 2 for lib in libs)
        assert all(lib.get_num_threads() == 1 for lib in libs)
        with blas_threads(1) as again:
            assert again.saved == []
    assert [lib.get_num_threads() for lib in libs] == before
