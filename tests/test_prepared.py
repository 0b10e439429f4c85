"""The prepared pass (steps outside loops as a flat list of bound kernels, kept per batch
geometry) and updates that may overwrite the executor's gradients."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import random_feeds
from test_optimize import BINDINGS, LENGTHS, SPECS

from nnspec import compile_text
from nnspec.ops import REGISTRY
from nnspec.runtime import ExecOptions, Executor
from nnspec.train.clip import clip_global_norm, clip_scale
from nnspec.train.optim import make_optimizer

MLP = "input x[5]\ntarget y : class[3]\nh[6] = relu(W @ x + b)\nloss cross_entropy(softmax(V @ h + c), y)\n"


def _setup(text, T=5, B=3):
    plan = compile_text(text, bindings=BINDINGS).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    batches = [random_feeds(plan, T=T, B=B, seed=s) for s in range(4)]
    return plan, params, batches


def _pass(ex, params, feeds, lengths):
    tape = ex.forward(params, feeds, lengths=lengths, train=True, rng=np.random.default_rng(1))
    grads = ex.backward(tape, wrt=set(params))
    return tape, grads


@pytest.mark.parametrize("name", ["mlp", "lstm", "lstm_gate_by_gate", "bidirectional_stacked",
                                  "learned_initial_states"])
def test_a_prepared_pass_reused_across_batches_equals_a_fresh_executor(name):
    text = MLP if name == "mlp" else SPECS[name]
    plan, params, batches = _setup(text)
    lengths = None if name == "mlp" else LENGTHS
    kept = Executor(plan, dtype=np.float64)
    seen = []
    for feeds in batches + batches:
        tape, grads = _pass(kept, params, feeds, lengths)
        seen.append(tape.prepared)
        loss = float(tape.values[plan.loss])
        got = {k: np.array(v) for k, v in grads.items()}
        del tape, grads
        ref_tape, ref = _pass(Executor(plan, dtype=np.float64, options=ExecOptions(prepared=False)),
                              params, feeds, lengths)
        assert ref_tape.prepared is None
        assert loss == pytest.approx(float(ref_tape.values[plan.loss]), rel=1e-12)
        assert set(got) == set(ref)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)
    assert seen[0] is None and seen[1] is not None and all(r is seen[1] for r in seen[1:])


def test_a_prepared_pass_is_not_reused_while_its_tape_or_gradients_are_held():
    plan, params, batches = _setup(MLP)
    ex = Executor(plan, dtype=np.float64)
    _pass(ex, params, batches[0], None)                 # builds the prepared pass
    t1, g1 = _pass(ex, params, batches[1], None)
    assert t1.prepared is not None
    snapshot = {k: v.copy() for k, v in t1.values.items()}, {k: v.copy() for k, v in g1.items()}
    t2, g2 = _pass(ex, params, batches[2], None)        # t1 and g1 still held: a new pass
    assert t2.prepared is not t1.prepared
    for k, v in snapshot[0].items():
        np.testing.assert_array_equal(t1.values[k], v)
    for k, v in snapshot[1].items():
        np.testing.assert_array_equal(g1[k], v)
    held = g2["W"]                                      # a gradient alone keeps it too
    del t1, g1, t2, g2
    t3, _ = _pass(ex, params, batches[3], None)
    assert not np.shares_memory(t3.values[plan.loss], held) and t3.prepared is not None


def test_a_new_batch_shape_gets_a_new_prepared_pass():
    plan, params, _ = _setup(MLP)
    ex = Executor(plan, dtype=np.float64)
    runs = []
    for B in (3, 3, 4, 4, 3):
        feeds = random_feeds(plan, T=1, B=B, seed=B)
        tape, grads = _pass(ex, params, feeds, None)
        runs.append(tape.prepared)
        assert grads["W"].shape == params["W"].shape
        del tape, grads
    assert runs[0] is None and runs[1] is not None and runs[2] is None and runs[3] is not None
    assert runs[4] is None                              # one geometry kept at a time


def test_sgd_may_overwrite_gradients_it_is_given_but_not_shared_ones():
    rng = np.random.default_rng(0)
    p0 = {k: rng.normal(size=(70, 300)).astype(np.float32) for k in "ab"}
    g = rng.normal(size=(70, 300)).astype(np.float32)
    ref = {k: v.copy() for k, v in p0.items()}
    make_optimizer("sgd", lr=0.1).step(ref, {"a": g.copy(), "b": g.copy()})
    p = {k: v.copy() for k, v in p0.items()}
    shared = g.copy()                                    # one array, two parameters' gradient
    make_optimizer("sgd", lr=0.1).step(p, {"a": shared, "b": shared}, consume=True)
    for k in p:
        np.testing.assert_array_equal(p[k], ref[k])
    np.testing.assert_array_equal(shared, g)
    p = {k: v.copy() for k, v in p0.items()}
    own = {"a": g.copy(), "b": g.copy()}
    make_optimizer("sgd", lr=0.1).step(p, own, consume=True)
    for k in p:
        np.testing.assert_array_equal(p[k], ref[k])     # the same update, bit for bit


def test_sgd_row_update_of_a_table_equals_the_dense_one():
    from nnspec.runtime.rowgrad import RowGrad
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=(5000, 7)).astype(np.float32)
    rows = np.sort(rng.choice(5000, size=3000, replace=False))   # more rows than one chunk
    dense = np.zeros_like(p0)
    dense[rows] = rng.normal(size=(3000, 7))
    a, b = p0.copy(), p0.copy()
    make_optimizer("sgd", lr=0.1).step({"t": a}, {"t": RowGrad.of(dense.copy(), rows)}, scale=0.5)
    make_optimizer("sgd", lr=0.1).step({"t": b}, {"t": dense.copy()}, scale=0.5)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_clipping_folded_into_the_update_equals_clipping_first(kind, wd):
    rng = np.random.default_rng(1)
    p0 = {"w": rng.normal(size=(8, 5)), "b": rng.normal(size=5)}
    grads = lambda: {"w": 10 * rng.normal(size=(8, 5)), "b": rng.normal(size=5)}  # noqa: E731
    a, b = ({k: v.copy() for k, v in p0.items()} for _ in range(2))
    oa, ob = make_optimizer(kind, lr=0.1, weight_decay=wd), make_optimizer(kind, lr=0.1, weight_decay=wd)
    for _ in range(3):
        g = grads()
        g2 = {k: v.copy() for k, v in g.items()}
        clip_global_norm(g, 1.0)
        oa.step(a, g)
        norm, scale = clip_scale(g2, 1.0)
        assert scale < 1 and norm > 1
        ob.step(b, g2, scale=scale, consume=True)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-14)


def test_a_single_use_tape_spends_the_logits_and_refuses_a_second_backward():
    text = ("input w : seq of token\ntarget y : seq of class\ne = embed(w, 3)\nh = lstm(e, H = 4)\n"
            "loss cross_entropy(softmax(V @ h + c), y)\n")
    plan = compile_text(text, bindings={"vocab(w)": 7, "classes(y)": 40}).plan
    logits = next(s.inputs[0][0] for s in plan.steps if getattr(s, "op", "") == "cross_entropy_logits")
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    feeds = random_feeds(plan, T=5, B=3, seed=0)
    ex = Executor(plan, dtype=np.float64)
    assert ex.facts.spendable                                 # the loss may work in the logits' array
    for _ in range(3):                                  # generic pass, then prepared ones
        full = ex.forward(params, feeds, lengths=LENGTHS)
        z = full.values[logits].copy()
        ref = ex.backward(full, wrt=set(params))
        ref = {k: v.copy() for k, v in ref.items()}
        again = ex.backward(full, wrt=set(params))      # a full tape: a second backward is fine
        for k in ref:
            np.testing.assert_allclose(again[k], ref[k], rtol=1e-12)
        del full, again
        tape = ex.forward(params, feeds, lengths=LENGTHS, single_use=True)
        assert not np.allclose(tape.values[logits], z)  # overwritten by the exponentials
        grads = ex.backward(tape, wrt=set(params))
        for k in ref:
            np.testing.assert_allclose(grads[k], ref[k], rtol=1e-12, err_msg=k)
        with pytest.raises(RuntimeError, match="one backward pass"):
            ex.backward(tape, wrt=set(params))
        del tape, grads


def test_nothing_read_elsewhere_is_spent():
    # the logits are an output too: they stay
    text = "input x[4]\ntarget y : class[3]\nz = W @ x + b\noutput z\nloss cross_entropy(softmax(z), y)\n"
    plan = compile_text(text).plan
    assert not Executor(plan).facts.spendable


def test_two_backward_passes_over_one_prepared_tape_give_separate_gradients():
    plan, params, batches = _setup(MLP)
    ex = Executor(plan, dtype=np.float64)
    _pass(ex, params, batches[0], None)
    tape = ex.forward(params, batches[1])
    assert tape.prepared is not None
    g1 = ex.backward(tape, wrt=set(params))
    keep = {k: v.copy() for k, v in g1.items()}
    g2 = ex.backward(tape, wrt=set(params))
    for k in g1:
        assert not np.shares_memory(g1[k], g2[k])
        g2[k] *= 0                                       # the second result is the caller's own
        np.testing.assert_array_equal(g1[k], keep[k])


def test_training_steps_run_the_prepared_backward_pass(monkeypatch):
    plan, params, batches = _setup(SPECS["lstm"])
    ex = Executor(plan, dtype=np.float64)
    calls = []
    from nnspec.runtime import prepared
    orig = prepared.backward
    monkeypatch.setattr(prepared, "backward", lambda *a, **k: (calls.append(1), orig(*a, **k))[1])
    for feeds in batches * 2:
        tape, grads = _pass(ex, params, feeds, LENGTHS)
        del tape, grads
    assert len(calls) == 2 * len(batches) - 1          # every pass but the first


@pytest.mark.parametrize("name", sorted(k for k, text in SPECS.items() if "loss" in text))
def test_single_use_passes_that_lend_dead_values_to_their_gradients_equal_the_reference(name):
    plan, params, batches = _setup(SPECS[name])
    lengths = LENGTHS if any(v.seq for v in plan.inputs) else None
    ex = Executor(plan, dtype=np.float64)
    ref = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    for feeds in batches + batches:                     # prepared passes from the second on
        want_tape = ref.forward(params, feeds, lengths=lengths, train=True, rng=np.random.default_rng(1))
        want = ref.backward(want_tape, wrt=set(params))
        tape = ex.forward(params, feeds, lengths=lengths, train=True, rng=np.random.default_rng(1),
                          single_use=True)
        got = ex.backward(tape, wrt=set(params))
        for k in params:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
        del tape, got


def test_the_hoisted_input_projection_lends_its_array_to_its_gradient(monkeypatch):
    # both directions' loops compute the gates' gradient straight into their half of the
    # projection's own array, which then is the projection's gradient: no buffer, no copy
    plan, params, batches = _setup(SPECS["bidirectional_stacked"])
    ex = Executor(plan, dtype=np.float64)
    hoisted = {s.id for s in plan.steps if getattr(s, "op", "") == "linear" and s.id.endswith(".hoisted")}
    assert hoisted and hoisted <= ex.facts.dead_in_backward
    assert not ex.facts.dead_in_backward & set(plan.outputs)
    lenders = {v for v, _, _ in ex.facts.lent_to_loops.values()}
    assert hoisted < lenders <= ex.facts.dead_in_backward       # the GRUs' projections lend theirs too
    lent = []
    from nnspec.runtime import gradsum
    orig = gradsum.GradSum.lend_part
    monkeypatch.setattr(gradsum.GradSum, "lend_part",
                        lambda self, key, lo, hi: lent.append((key, orig(self, key, lo, hi))) or lent[-1][1])
    assert ex.options.lend_dead
    for feeds in batches[:3]:                            # general pass and prepared ones alike
        lent.clear()
        tape = ex.forward(params, feeds, lengths=LENGTHS, single_use=True)
        values = dict(tape.values)
        ex.backward(tape, wrt=set(params))
        # every part once, into its own value's array
        assert sorted(k for k, _ in lent) == sorted(v for v, _, _ in ex.facts.lent_to_loops.values())
        for key, part in lent:
            assert part is not None and np.shares_memory(part, values[key])
        del tape, values, lent[:]
    tape = ex.forward(params, batches[0], lengths=LENGTHS)           # a tape kept: nothing lent
    ex.backward(tape, wrt=set(params))
    assert not lent


def test_a_lent_gradient_array_every_step_writes_whole_is_not_zeroed_first():
    # the loops write the gates' gradient at every step over the whole gates (the sigmoids' part and
    # the tanh's, adding to nothing), so the projection's array they write it into needs no zeroing:
    # the projection's own values (here poisoned with NaN) are overwritten before anything reads them.
    # A state's gradient (added to by the next step's send) is zeroed as before.
    plan, params, batches = _setup(SPECS["bidirectional_stacked"])
    ex = Executor(plan, dtype=np.float64)
    ref = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    lenders = {v for v, _, _ in ex.facts.lent_to_loops.values()}
    for feeds in batches + batches[:2]:
        want = ref.backward(ref.forward(params, feeds, lengths=LENGTHS), wrt=set(params))
        tape = ex.forward(params, feeds, lengths=LENGTHS, single_use=True)
        for v in lenders:
            tape.values[v][...] = np.nan          # (dead in the backward pass: nothing reads it there)
        got = ex.backward(tape, wrt=set(params))
        for k in params:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
        del tape, got
    runs = [fast._run for fast in ex.fast_loops.values()]
    lstms = [run.backward for run in runs if any(s.endswith(".c") for s in run.backward.plan.ring or ())]
    assert lstms
    for bw in lstms:
        assert set(bw.lent) <= bw.plan.overwritten
        assert not set(bw.plan.ring) & bw.plan.overwritten


@pytest.mark.parametrize("spend", [True, False])
def test_a_relu_computes_in_its_inputs_array_in_a_single_use_pass(spend):
    # nothing but the relu reads the linear step's result, and the relu's derivative comes from its
    # output: a single-use pass computes the relu in that array (as a hand-written step does), a
    # kept tape keeps both values; the gradients are the reference's either way
    text = "input x[5]\ntarget y : class[3]\nh[6] = relu(W @ x + b)\nloss cross_entropy(softmax(V @ h + c), y)\n"
    plan, params, batches = _setup(text, B=4)
    ex = Executor(plan, dtype=np.float64, options=ExecOptions(spend_inputs=spend))
    ref = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    pre = next(s.id for s in plan.steps if getattr(s, "op", "") == "linear" and s.id.startswith("h"))
    relu = next(s.id for s in plan.steps if getattr(s, "op", "") == "relu")
    assert relu in ex.facts.spendable and pre not in ex.facts.dead_in_backward
    for single_use in (True, True, True, False, False, False):
        feeds = batches[0]
        want = ref.backward(ref.forward(params, feeds, train=True), wrt=set(params))
        tape = ex.forward(params, feeds, train=True, single_use=single_use)
        shared = tape.values[pre] is tape.values[relu]
        assert shared == (spend and single_use)        # the general pass (the first) and prepared ones
        if not shared:
            np.testing.assert_array_equal(tape.values[relu], np.maximum(tape.values[pre], 0))
        got = ex.backward(tape, wrt=set(params))
        for k in params:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)
        del tape, got
    assert ex._pass_run is not None


def test_a_relus_vjp_writes_over_its_gradient_when_only_it_reads_that_in_a_single_use_pass(monkeypatch):
    # two relu layers: each relu's gradient comes from the one product reading it, into an array of
    # the runtime's own; the relu's VJP then writes its input's gradient over it (d *= h > 0), on
    # the general pass and prepared ones alike; a kept tape's backward pass never does
    text = ("input x[5]\ntarget y : class[3]\nh1[6] = relu(W1 @ x + b1)\nh2[6] = relu(W2 @ h1 + b2)\n"
            "loss cross_entropy(softmax(V @ h2 + c), y)\n")
    plan, params, batches = _setup(text, B=4)
    ref = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    relu = type(REGISTRY["relu"])
    calls = []
    orig = relu.vjp_into
    monkeypatch.setattr(relu, "vjp_into", lambda op, i, g, xs, out, attrs, dest, acc:
                        calls.append(dest is g) or orig(op, i, g, xs, out, attrs, dest, acc))
    for spend in (True, False):
        ex = Executor(plan, dtype=np.float64, options=ExecOptions(spend_inputs=spend))
        kinds = set()
        for single_use in (True, True, True, False, False):
            for feeds in batches[:2]:
                want = ref.backward(ref.forward(params, feeds, train=True), wrt=set(params))
                calls.clear()
                tape = ex.forward(params, feeds, train=True, single_use=single_use)
                kinds.add((single_use, tape.prepared is not None))
                got = ex.backward(tape, wrt=set(params))
                assert calls == [spend and single_use] * 2
                for k in params:
                    np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-14, err_msg=k)
                del tape, got
        assert kinds >= {(True, False), (True, True), (False, True)}    # general and prepared passes


def test_an_activations_forward_into_its_own_input_equals_its_forward():
    rng = np.random.default_rng(0)
    for name, op in REGISTRY.items():
        if not op.spends_input or op.needs_ctx:
            continue
        assert op.elementwise and op.arity == 1 and tuple(op.vjp_reads) == ("out",), name
        x = rng.normal(scale=3, size=(4, 7))
        want = op.forward([x.copy()], {}, None)
        op.forward_into([x], x, {})
        np.testing.assert_array_equal(x, want, err_msg=name)


def test_a_value_read_by_a_backward_pass_is_not_lent():
    text = ("input x[3] : seq\ntarget y[2] : seq\nu[4] = W @ x\na = slice(u, start = 0, stop = 2)\n"
            "b = slice(u, start = 2, stop = 4)\nloss mse(a * a + b, y)\n")
    plan = compile_text(text, optimize=False).plan
    assert "u" not in Executor(plan).facts.dead_in_backward     # its slice a is read by the product's VJP
    text2 = text.replace("a * a", "tanh(a)")                   # tanh's VJP reads its output only
    assert "u" in Executor(compile_text(text2, optimize=False).plan).facts.dead_in_backward


def test_a_value_read_through_an_alias_is_not_lent():
    # identity hands out its input's array: u is read by the product's VJP through it
    text = "input x[3] : seq\ntarget y[4] : seq\nu[4] = W @ x\nv = identity(u)\nloss mse(v * v, y)\n"
    plan = compile_text(text, optimize=False).plan
    assert "u" not in Executor(plan).facts.dead_in_backward


@pytest.mark.parametrize("seed", range(700100, 700140))
def test_single_use_passes_of_generated_specs_equal_the_reference(seed):
    # lent arrays (dead values, loops writing into them) on the differential tester's random specs
    from difftest.generator import generate
    from difftest.oracles import BINDINGS as DT_BINDINGS
    from difftest.oracles import make_batch, output_seeds, random_params

    from nnspec import SpecError
    try:
        plan = compile_text(generate(seed).text(), bindings=DT_BINDINGS).plan
    except SpecError:
        pytest.skip("the generator's spec is rejected")
    params, batch = random_params(plan, seed), make_batch(plan, seed)
    ref = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    seeds = output_seeds(plan, ref.forward(params, batch.feeds, lengths=batch.run_lengths).values, batch, seed)
    want = ref.backward(ref.forward(params, batch.feeds, lengths=batch.run_lengths), seeds=dict(seeds),
                        wrt=set(params))
    ex = Executor(plan, dtype=np.float64)
    for _ in range(3):                                 # general pass, then kept runs
        tape = ex.forward(params, batch.feeds, lengths=batch.run_lengths, single_use=True)
        got = ex.backward(tape, seeds=dict(seeds), wrt=set(params))
        for k in params:
            np.testing.assert_allclose(got.get(k, 0.0), want.get(k, 0.0), rtol=1e-9, atol=1e-11, err_msg=k)
        del tape, got


@pytest.mark.parametrize("alias", [True, False])
def test_the_parts_of_a_concatenation_get_views_of_its_gradient(alias):
    text = ("input x[3]\ntarget y : class[4]\na[2] = relu(A @ x)\nb[5] = tanh(B @ x)\nh = concat(a, b)\n"
            "loss cross_entropy(softmax(V @ h + c), y)\n")
    plan, params, batches = _setup(text)
    ex = Executor(plan, dtype=np.float64, options=ExecOptions(alias_grads=alias))
    ref = Executor(plan, dtype=np.float64, options=ExecOptions.reference())
    for feeds in batches[:3]:                            # general pass, then prepared ones
        tape = ex.forward(params, feeds)
        grads = ex.backward(tape)
        want = ref.backward(ref.forward(params, feeds))
        for k in ("a", "b"):
            assert np.shares_memory(grads[k], grads["h"]) == alias
            np.testing.assert_allclose(grads[k], want[k], rtol=1e-12)
        for k in params:
            np.testing.assert_allclose(grads[k], want[k], rtol=1e-12)
        del tape, grads


def test_stacked_gate_weights_are_blocks_of_one_array_and_their_stack_a_view():
    from test_optimize import GATES

    from nnspec.model import Model
    compiled = compile_text(GATES)
    model = Model(compiled, dtype=np.float64, seed=3)
    stacks = [s for s in compiled.plan.steps if getattr(s, "op", "") == "concat_rows"]
    assert stacks
    params = {k: v.copy() for k, v in model.params.items()}
    ref = Executor(compiled.plan, dtype=np.float64, options=ExecOptions.reference())
    feeds = random_feeds(compiled.plan, T=5, B=3, seed=0)
    for replaced in (False, True):
        if replaced:        # a parameter given another array: the stack is a copy again, as right
            model.set("h.Wf", params["h.Wf"] * 0.5)
            params["h.Wf"] = params["h.Wf"] * 0.5
        for _ in range(3):
            want_tape = ref.forward(params, feeds, lengths=LENGTHS)
            want = ref.backward(want_tape, wrt=set(params))
            tape = model.run(feeds, lengths=LENGTHS, single_use=True)
            for s in stacks:
                parts = [model.params[src] for src, _ in s.inputs]
                assert np.shares_memory(tape.values[s.id], parts[0]) == (not replaced or "h.Wf" not in
                                                                          [src for src, _ in s.inputs])
            got = model.executor.backward(tape, wrt=set(params))
            assert float(tape.values[compiled.plan.loss]) == pytest.approx(float(want_tape.values[compiled.plan.loss]))
            for k in params:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)
            del tape, got


def test_parameters_stay_apart_with_param_blocks_off():
    from test_optimize import GATES

    from nnspec.model import Model
    from nnspec.runtime.paramblocks import join_blocks, stacked_view
    compiled = compile_text(GATES)
    model = Model(compiled, dtype=np.float64)
    assert model.params["h.Wf"].base is not None             # joined by default
    apart = {k: v.copy() for k, v in model.params.items()}
    assert stacked_view([apart["h.Wf"], apart["h.Wi"]]) is None
    join_blocks(compiled.plan, apart)
    stacks = [s for s in compiled.plan.steps if getattr(s, "op", "") == "concat_rows"]
    for s in stacks:
        xs = [apart[src] for src, _ in s.inputs]
        np.testing.assert_array_equal(stacked_view(xs), np.concatenate(xs))
        assert stacked_view(xs[::-1]) is None                 # out of order: no view


LM = ("input w : seq of token\ntarget y : seq of class\ne = embed(w, 8)\nh = lstm(e, H = 4)\n"
      "p = softmax(W_out @ h + b_out)\nloss cross_entropy(p, y)\n")


def _lm_passes(options, passes=4):
    """Single-use training passes of a small LSTM language model, everything pooled: per pass,
    (the gradients, the names of the parameters whose gradient lies in a value's array)."""
    plan = compile_text(LM, bindings={"vocab(w)": 7, "classes(y)": 40}).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    feeds = random_feeds(plan, T=5, B=3, seed=1)
    ex = Executor(plan, dtype=np.float64, options=options)
    ex.pool.MIN_BYTES = 0                                # pool everything, to see it at this size
    out = []
    for _ in range(passes):                              # the general pass, then prepared ones
        tape = ex.forward(params, feeds, lengths=LENGTHS, train=True, single_use=True)
        values = [a for k, a in tape.values.items() if k not in params and isinstance(a, np.ndarray)]
        grads = ex.backward(tape, wrt=set(params))
        inside = {k for k, g in grads.items() if any(np.shares_memory(g, a) for a in values)}
        out.append(({k: np.array(g) for k, g in grads.items()}, inside))
        del tape, values, grads
    return out


def test_gradients_made_after_an_arrays_last_use_are_written_into_it_with_the_same_results():
    # the logits (15 x 40) are read no more once their step's VJPs have run: the input projection's
    # weight gradients, made after, are parts of their array, in the general pass and the prepared ones
    shared, apart = _lm_passes(ExecOptions()), _lm_passes(ExecOptions(share_dead=False))
    for (got, inside), (want, outside) in zip(shared, apart):
        assert inside >= {"h.Wf", "h.Wi", "h.Wo", "h.Wg"} and not outside
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)     # bit for bit


def test_a_kept_tape_keeps_its_values_through_the_backward_pass():
    plan = compile_text(LM, bindings={"vocab(w)": 7, "classes(y)": 40}).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.5, size=p.shape) for p in plan.params}
    feeds = random_feeds(plan, T=5, B=3, seed=1)
    ex = Executor(plan, dtype=np.float64)
    ex.pool.MIN_BYTES = 0
    for _ in range(3):
        tape = ex.forward(params, feeds, lengths=LENGTHS, train=True)      # not single-use
        before = {k: np.array(a) for k, a in tape.values.items() if isinstance(a, np.ndarray)}
        ex.backward(tape, wrt=set(params))
        for k, a in before.items():
            np.testing.assert_array_equal(tape.values[k], a, err_msg=k)
        del tape


def test_spare_arrays_are_handed_out_in_parts_that_never_overlap():
    from nnspec.runtime.reuse import Spare
    spare = Spare()
    big, small = np.zeros(100, np.float32), np.zeros(40, np.float32)
    spare.add(big)
    spare.add(small)
    assert spare.take((50,), np.float64) is None                    # another dtype: none
    a = spare.take((3, 10), np.float32)                              # the least room that holds it
    assert np.shares_memory(a, small)
    b = spare.take((5,), np.float32)                                 # the rest of small, from 64 bytes on
    assert np.shares_memory(b, small) and b.__array_interface__["data"][0] - \
        small.__array_interface__["data"][0] == 32 * 4
    c = spare.take((48,), np.float32)
    d = spare.take((40,), np.float32)
    assert np.shares_memory(c, big) and np.shares_memory(d, big) and not np.shares_memory(c, d)
    assert spare.take((5,), np.float32) is None                      # 48 + 40 -> 96 of 100 given out


def test_the_time_axis_of_a_batch_without_lengths_is_kept_read_only_and_one_with_lengths_is_its_own():
    plan, params, batches = _setup(SPECS["lstm"])
    ex = Executor(plan, dtype=np.float64)
    first = ex.forward(params, batches[0]).axes["time"]
    assert ex.forward(params, batches[1]).axes["time"] is first            # same T and B: the same axis
    assert first.lengths.tolist() == [5, 5, 5] and not first.mask.flags.writeable
    given = ex.forward(params, batches[0], lengths=[5, 5, 5]).axes["time"]
    assert given is not first and given.lengths.tolist() == [5, 5, 5]
    off = Executor(plan, dtype=np.float64, options=ExecOptions(prepared=False))
    assert off.forward(params, batches[0]).axes["time"] is not off.forward(params, batches[0]).axes["time"]
