"""Compiler-grade correctness: random valid specs agree across independent oracles.

The way Csmith tests C compilers: ``tests/difftest/generator.py`` makes random valid specs
from a small typed model (seeded, so every run checks the same specs), and
``tests/difftest/oracles.py`` runs each through oracles that must agree in float64:
the fast runtime and the reference interpreter, the optimised and the unoptimised plan,
central finite differences, PyTorch (when its oracle is present), a padded batch and each
sequence alone, and a repeated pass and the first. A failure is shrunk to a small spec
(``tests/difftest/shrink.py``) and printed, ready to become a regression test below.

Known bugs (``tests/difftest/known.py``) are excused by name, each with its minimal spec,
which runs here as a non-strict xfail: when one XPASSes its fix is in, and its entry goes.

The default run checks 500 specs (~1-2 minutes on a loaded 2-core machine); ``--runslow``
checks 20,000, as does ``python -m tests.difftest --count 20000``.
"""
from __future__ import annotations

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.ops.activations import Tanh
from nnspec.ops.sequence import Last
from tests.difftest import campaign
from tests.difftest.generator import (ACTIVATIONS, ATTENTION, DECODER_CELLS, LOSSES, PREDICTIONS, REDUCTIONS, STDLIB,
                                      generate)
from tests.difftest.known import KNOWN
from tests.difftest.oracles import ORACLES, check
from tests.difftest.shrink import shrink_failure

DEFAULT_SEEDS = range(0, 500)
SLOW_SEEDS = range(500, 20500)


def assert_agree(summary: campaign.Summary) -> None:
    assert summary.compile_rate >= 0.99, summary.table()
    assert not summary.findings, "specs the oracles disagree on (shrunk):\n" + summary.table()


@pytest.fixture(scope="module")
def default_run() -> campaign.Summary:
    return campaign.run(DEFAULT_SEEDS)


def test_random_specs_agree_across_oracles(default_run, capsys):
    with capsys.disabled():
        print("\n" + default_run.line())
    assert_agree(default_run)
    for o in ORACLES:
        if o not in ("torch", "decode", "training"):
            assert default_run.checked[o] >= 400, (o, default_run.checked[o])   # most specs, every oracle
    assert default_run.checked["training"] >= 300, default_run.checked["training"]   # the ~70% with a loss
    assert default_run.checked["decode"] >= 15, default_run.checked["decode"]   # every encoder-decoder


@pytest.mark.slow
def test_twenty_thousand_random_specs_agree(capsys):
    summary = campaign.run(SLOW_SEEDS)
    with capsys.disabled():
        print("\n" + summary.table())
    assert_agree(summary)


# ---- the generator ---------------------------------------------------------------------------

def test_generator_covers_the_language(default_run):
    """Every construct the issue lists appears among the specs that compiled."""
    tags = default_run.tags
    wanted = ({"act:" + a for a in ACTIVATIONS} | {"reduce:" + r for r in REDUCTIONS}
              | {f"cell:{c}" for c in STDLIB}
              | {f"cell:{w}({c})" for c in STDLIB for w in ("reverse", "bidirectional", "stacked")}
              | {f"loss:{k}:{per}" for k in LOSSES for per in ("step", "example")}
              | {"loss:weighted", "loss:several", "op+", "op-", "op*", "op/", "concat", "const", "literal", "shift",
                 "embed", "scalar", "delay[t-1]", "delay[t-2]", "delay[t+1]", "two_states", "gated",
                 "delayed_outer", "delayed_inner", "init:learned", "init:const", "init:computed", "user_cell",
                 "cell:dense", "init:lstm_context", "user_cell:reverse", "user_cell:bidirectional",
                 "user_cell:stacked", "user_cell:two_inputs", "decode", "decode:start", "decode:no_start",
                 "decode:real_source", "decode:vector_source"}
              | {f"decode:attention:{a}" for a in ATTENTION} | {f"decode:cell:{c}" for c in DECODER_CELLS}
              | {f"decode:initial:{i}" for i in ("none", "last", "mean", "projected")}
              | {f"decode:loss:{k}" for k in PREDICTIONS}
              | {f"other_axis:{c}" for c in ("reduce", "initial", "attention", "attention:additive",
                                             "attention_in_loop", "attention_in_loop:additive", "by_hand", "dot",
                                             "sum_features", "two_axes_output", "encoder:plain", "encoder:reverse",
                                             "encoder:bidirectional", "encoder:hand", "encoder:initial")})
    assert not wanted - set(tags), sorted(wanted - set(tags))


def test_generator_is_deterministic():
    assert [generate(s).text() for s in range(20)] == [generate(s).text() for s in range(20)]
    assert len({generate(s).text() for s in range(20)}) == 20


# ---- the oracles can fail: bugs planted in the runtime are caught and shrunk ----------------------

def test_a_wrong_derivative_fails_finite_differences_and_shrinks(monkeypatch):
    monkeypatch.setattr(Tanh, "vjp", lambda self, g, xs, out, attrs, ctx: [g * (1.0 - out * out) * 1.01])
    seed = next(s for s in range(100) if "act:tanh" in generate(s).tags)
    spec = generate(seed)
    assert any(f.oracle == "fd" for f in check(spec.text(), seed).failures)
    small, outcome = shrink_failure(spec, seed, "fd")
    assert any(f.oracle == "fd" for f in outcome.failures)
    assert len(small.text().splitlines()) <= 4 and "tanh" in small.text(), small.text()


def test_a_spec_whose_reference_run_overflows_is_skipped_not_reported():
    # seed 4404794 (found in a 20,000-spec run): log(sigmoid(-3210)) is -inf in every engine, so
    # the loss is NaN everywhere and there is nothing to compare; a NaN of one engine alone still fails
    text = ("input x1[2]\ninput x2[4]\ntarget y12[4]\nv3[3] = W4 @ x1\nv5[4] = (x2 + x2)\n"
            "v7[4] = square(concat(W8 @ v3, pow([[-0.72, -0.68, 0.0, -0.91]] @ v5, p = 3)))\n"
            "v9[2] = log(sigmoid(W10 @ v7))\nparam W8[3, 3]\nloss bce_logits(W13 @ v9, y12)\n")
    outcome = check(text, 4404794)
    assert outcome.failures == [] and set(outcome.skipped) == set(ORACLES)
    assert set(outcome.skipped.values()) == {"the reference run is not finite"}


def test_a_wrong_fast_loop_kernel_fails_the_fast_oracle(monkeypatch):
    def local_grad(self, xs, out, attrs, into=None):
        d = np.square(out, out=into)
        np.subtract(1.01, d, out=d)
        return d
    monkeypatch.setattr(Tanh, "local_grad", local_grad)
    failures = check("input x[2] : seq\noutput h\nh = rnn(x, H = 3)\n", 0).failures
    assert {f.oracle for f in failures} == {"fast"}


def test_a_decoder_fed_the_wrong_step_fails_the_decode_oracle(monkeypatch):
    """Greedy decoding that reads the prediction at the last token fed (the start symbol's, then each
    written token's), not at the step after it, disagrees with decoding one example at a time."""
    from nnspec import decode
    fed = decode._fed
    monkeypatch.setattr(decode, "_fed", lambda start, written: fed(start, written)[:-1])
    seed = next(s for s in range(1000) if "decode:start" in generate(s).tags)
    failures = check(generate(seed).text(), seed, oracles=["decode"]).failures
    assert [f.oracle for f in failures] == ["decode"], failures


def test_a_beam_of_one_that_is_not_greedy_fails_the_decode_oracle(monkeypatch):
    from nnspec import decode
    search = decode.beam_search

    def longer(*args, **kw):
        found = search(*args, **kw)
        for hyps in found:
            hyps[0].score -= 1e-3
        return found
    monkeypatch.setattr(decode, "beam_search", longer)
    seed = next(s for s in range(1000) if "decode" in generate(s).tags)
    failures = check(generate(seed).text(), seed, oracles=["decode"]).failures
    assert failures and "beam 1" in failures[0].message, failures


def test_a_wide_beam_scored_wrong_fails_the_decode_oracle(monkeypatch):
    """Beam 3's ended sequences are rescored token by token: a score that lost its last step is caught."""
    from nnspec import decode
    search = decode.beam_search

    def forgetful(*args, **kw):
        found = search(*args, **kw)
        for hyps in found if kw.get("beam") == 3 else ():
            for h in hyps:
                h.score -= h.steps[-1] if h.ended else 0.0
        return found
    monkeypatch.setattr(decode, "beam_search", forgetful)
    seeds = [s for s in range(1000) if "decode" in generate(s).tags][:5]
    messages = [f.message for s in seeds for f in check(generate(s).text(), s, oracles=["decode"]).failures]
    assert any("beam 3" in m for m in messages), messages


def test_padding_that_leaks_fails_the_batch_oracle(monkeypatch):
    monkeypatch.setattr(Last, "forward", lambda self, xs, attrs, ctx: xs[0][-1])
    text = "input x[2] : seq\noutput y\ny[2] = last(W @ x)\n"
    assert "batch" in {f.oracle for f in check(text, 0).failures}


def test_a_pass_that_differs_from_the_first_fails_the_repeat_oracle(monkeypatch):
    from nnspec.runtime import prepared
    run_prepared = prepared.forward

    def drifting(ex, run, tape):
        run_prepared(ex, run, tape)
        for o in ex.plan.outputs:
            tape.values[o] = tape.values[o] + 1e-3
    monkeypatch.setattr(prepared, "forward", drifting)
    assert "repeat" in {f.oracle for f in check("input x[2]\noutput y\ny[3] = tanh(W @ x)\n", 0).failures}


def test_a_single_use_pass_that_overlaps_its_spare_arrays_fails_the_training_oracle(monkeypatch):
    """The training path's memory sharing (dead arrays holding later gradients) runs only in
    single-use passes, which no other oracle makes."""
    from nnspec.runtime import reuse
    take = reuse.Spare.take

    def overlapping(self, shape, dtype):
        a = take(self, shape, dtype)
        for entry in self.free:         # forget what was handed out: the next part overlaps it
            entry[1] = 0
        return a
    monkeypatch.setattr(reuse.Spare, "take", overlapping)
    text = ("input x[3]\ntarget y : class[2]\nh[4] = tanh(W @ x + b)\ng[4] = tanh(U @ h + c)\n"
            "loss cross_entropy(softmax(V @ g + d), y)\n")
    assert "training" in {f.oracle for f in check(text, 0, oracles=["training"]).failures}


# ---- known bugs: each minimal spec still fails (XPASS: the fix is in; delete its entry) ------------

@pytest.mark.parametrize("bug", KNOWN, ids=[b.name for b in KNOWN])
@pytest.mark.xfail(strict=False, reason="a known bug (tests/difftest/known.py)")
def test_known_bug_is_fixed(bug):
    if bug.probe is not None:
        assert not bug.probe(), bug.description
    outcome = check(bug.spec, bug.seed)
    assert outcome.compiled, outcome.rejected
    assert not outcome.failures, [f"{f.oracle}: {f.message}" for f in outcome.failures]


# ---- regressions found by the random tester ---------------------------------------------------------

REGRESSIONS = {
    # a value read at another step outside any loop was typed before what it reads, so it was
    # not a sequence: its padding went unmasked, a second pass crashed, and mean(y) was rejected
    "delayed_copy_of_a_sequence": "input x[2] : seq\noutput y\ng[2] = W @ x\ny[2] = g[t-1]\n",
    "reduction_of_a_delayed_copy": "input x[2] : seq\noutput m\ng[2] = W @ x\ny[2] = g[t-1]\nm = mean(y)\n",
    "loop_reading_a_sequence_at_t_minus_1": "input x[2] : seq\noutput h\nc[2] = sigmoid(W @ x)\n"
                                            "h[2] = tanh(U @ h[t-1] + V @ c[t-1])\n",
    "chain_of_reads_ahead_in_a_padded_batch": "input x[2] : seq\ninput z[2] : seq\noutput p\nh0[2] = W0 @ x + z\n"
                                              "h1[3] = W1 @ h0[t+2]\np[4] = tanh(W3 @ h1 + p[t+1])\n",
}


@pytest.mark.parametrize("name", REGRESSIONS)
@pytest.mark.parametrize("seed", range(4))
def test_regression_agrees_across_oracles(name, seed):
    outcome = check(REGRESSIONS[name], seed)
    assert outcome.compiled, outcome.rejected
    assert not outcome.failures, [f"{f.oracle}: {f.message}" for f in outcome.failures]


def test_a_delayed_copy_of_a_sequence_is_a_sequence():
    plan = compile_text(REGRESSIONS["delayed_copy_of_a_sequence"]).plan
    assert next(s for s in plan.steps if s.id == "y").seq


def test_a_flat_gradient_written_wrong_fails_the_training_oracle(monkeypatch):
    """A model's parameters' gradients come out as views of one flat array (paramblocks), the gates'
    stacked blocks copied into it in one piece (GradSum.add_stacked): only the training oracle's
    model passes make them."""
    from nnspec.runtime.gradsum import GradSum
    add_stacked = GradSum.add_stacked

    def scaled(self, keys, g):
        return add_stacked(self, keys, g * 1.001)
    monkeypatch.setattr(GradSum, "add_stacked", scaled)
    text = ("input x[3] : seq\ntarget y : seq of class[2]\nh = lstm(x, H = 4)\n"
            "loss cross_entropy(softmax(V @ h + d), y)\n")
    failures = check(text, 0, oracles=["training"]).failures
    assert any(f.oracle == "training" and "model's" in f.message for f in failures)


def test_a_fused_loop_whose_backward_is_wrong_fails_the_fused_oracle(monkeypatch):
    """Small loops run as compiled kernels (runtime/fused.py) only after many passes, which no default
    oracle makes: the opt-in ``fused`` oracle runs them from the first."""
    pytest.importorskip("numba")
    from nnspec.runtime import fused
    edges = fused._edges_out

    def scaled_edges(ex, loop, ids, need):   # every gradient leaving the loop scaled (by its op's vjp_one)
        return [(b, _Scaled(op), pos, src, d, None) for b, op, pos, src, d, _ in edges(ex, loop, ids, need)]
    monkeypatch.setattr(fused, "_edges_out", scaled_edges)
    text = "input x[3] : seq\noutput h\nh[4] = tanh(W @ x + U @ h[t-1] + b)\n"
    outcome = check(text, 0, oracles=["fused"])
    assert "fused" in {f.oracle for f in outcome.failures}, outcome.skipped


class _Scaled:
    def __init__(self, op):
        self.op = op

    def vjp_one(self, *args):
        g = self.op.vjp_one(*args)
        return None if g is None else g * 1.001
