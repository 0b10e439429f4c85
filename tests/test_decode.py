"""Decoding an encoder-decoder with the spec it was trained with (nnspec/decoding.py, nnspec/decode.py).

The spec declares its decoder once, ``decode tgt from p, start "<s>", end "</s>", max N``: the
data layer frames every target between the symbols, training reads it by teacher forcing, and
decoding feeds the decoder its own predictions until the end symbol. Greedy decoding is checked
against forward passes fed its own tokens, beam search against greedy (beam 1), against the
score of greedy's sequence (beam k never does worse) and against exhaustive search over every
sequence of a tiny vocabulary, scored by one teacher-forced forward pass (an independent oracle).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.errors import SpecError
from nnspec.model import FeedError, Model

from test_axes import V_SRC, V_TGT, batch, spec
from conftest import run_cli as cli

START, END = 2, 3            # ids of the symbols in the hand-made target vocabulary (0 <pad>, 1 <unk>)
DECLARED = 'decode tgt from p, start "<s>", end "</s>", max 5\n'
BINDINGS = {"vocab(src)": V_SRC, "vocab(tgt)": V_TGT}


def decoder_model(kind: str = "in_loop", seed: int = 3, declaration: str = DECLARED) -> Model:
    m = Model.from_text(spec(kind) + declaration, bindings=BINDINGS, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    for k, v in m.params.items():
        m.params[k] = rng.normal(scale=1.0, size=v.shape)
    return m


def sources(seed: int = 0):
    return batch(seed)["src"]


# ---- the declaration -------------------------------------------------------------------------
def test_the_declaration_names_input_prediction_symbols_and_limit():
    d = compile_text(spec("dot") + DECLARED, bindings=BINDINGS).decoder
    assert (d.input, d.prediction, d.start, d.end, d.max_length, d.axis) == ("tgt", "p", "<s>", "</s>", 5, "out")
    assert compile_text(spec("dot"), bindings=BINDINGS).decoder is None
    # the start symbol is optional (step 0 then reads zeros for tgt[t-1]), the limit defaults to 100
    d = compile_text(spec("dot") + 'decode tgt from p, end "</s>"', bindings=BINDINGS).decoder
    assert (d.start, d.max_length) == (None, 100)


@pytest.mark.parametrize("declaration, message", [
    ('decode tgt from p, start "<s>"', 'decode needs an end symbol'),
    ('decode tgt from p, end "</s>", stop "x"', "unknown decode option 'stop'"),
    ('decode tgt from p, end "</s>", end "x"', "decode option 'end' is given twice"),
    ('decode tgt from p, end "</s>", max 0', "'max' (the longest output) must be at least 1"),
    ('decode tgt from p, end "</s>", max "ten"', "decode option 'max' takes a whole number"),
    ('decode tgt from p, end 3', "decode option 'end' takes a symbol in quotes"),
    ('decode tgt from p, start "<s>", end "<s>"', "the start and end symbols must differ"),
    ('decode tgt from p, end "<pad>"', "not empty, without spaces and not <pad> or <unk>"),
    ('decode tgt from p, end "a b"', "without spaces"),
    ('decode tgtt from p, end "</s>"', "'tgtt' is not an input; did you mean 'tgt'?"),
    ('decode tgt from q, end "</s>"', "'q' is not defined"),
    ('decode src from p, end "</s>"', "no loss compares 'p' with 'src'"),
    ('decode tgt from o, end "</s>"', "no loss compares 'o' with 'tgt'"),
])
def test_a_bad_declaration_is_a_located_error(declaration, message):
    text = spec("dot") + declaration + "\n"
    with pytest.raises(SpecError) as e:
        compile_text(text, bindings=BINDINGS)
    line = text.count("\n", 0, text.index(declaration)) + 1
    assert message in str(e.value)
    assert f"<string>:{line}:" in str(e.value)


def test_a_decoder_reading_the_token_it_predicts_cannot_be_declared():
    text = spec("dot").replace("dec = lstm(ye[t-1], H = 4)", "dec = lstm(ye, H = 4)") + DECLARED
    with pytest.raises(SpecError, match="must read 'tgt' only at earlier steps"):
        compile_text(text, bindings=BINDINGS)


def test_one_declaration_at_the_top_level():
    with pytest.raises(SpecError, match="only one decode declaration"):
        compile_text(spec("dot") + DECLARED + DECLARED, bindings=BINDINGS)
    cell = 'cell f(x) -> y { y = tanh(x); decode tgt from p, end "</s>" }\n'
    with pytest.raises(SpecError, match="'decode' belongs at the top level"):
        compile_text(cell + spec("dot").replace("tanh(Wc @", "f(Wc @"), bindings=BINDINGS)


def test_check_shows_the_decoder():
    code, out, _ = cli("check", str(SPEC))
    assert code == 0 and "decoder: tgt fed back from p over out, <s> first, until </s> or 20 tokens" in out
    code, out, _ = cli("check", str(SPEC), "--json")
    assert json_of(out)["decoder"] == {"input": "tgt", "prediction": "p", "axis": "out", "start": "<s>",
                                       "end": "</s>", "max": 20}


def test_a_statement_keyword_used_as_a_name_says_so():
    with pytest.raises(SpecError) as e:
        compile_text("input x[2]\noutput y\ndecode = tanh(x)\ny = decode\n")
    assert "<string>:3:" in str(e.value) and "'decode' begins a statement, so it cannot name a value" in str(e.value)
    assert compile_text("input x[2]\noutput decoded\ndecoded = tanh(x)\n").decoder is None


# ---- the data: targets framed by the declared symbols -----------------------------------------
def _data_spec(tmp_path, rows: list[str]):
    (tmp_path / "d.tsv").write_text("src\ttgt\n" + "\n".join(rows) + "\n")
    (tmp_path / "ed.nn").write_text(spec("dot") + DECLARED + 'data tsv("d.tsv")\ntrain { epochs 1; batch 2 }\n')
    return tmp_path / "ed.nn"


def test_the_data_layer_adds_the_symbols_to_each_target(tmp_path):
    from nnspec import open_session
    s = open_session(_data_spec(tmp_path, ["a b\tb a", "c\tc", "a b c\tc b a"]))
    vocab = s.data.vocabs["tgt"]
    assert "<s>" in vocab.stoi and "</s>" in vocab.stoi
    b = next(s.data.batches("train", 3))
    lengths = b.lengths["out"].tolist()
    assert sorted(lengths) == [3, 4, 5]           # two symbols more than the file's tokens
    for i, n in enumerate(lengths):
        words = vocab.decode(b.arrays["tgt"][:n, i].tolist())
        assert words[0] == "<s>" and words[-1] == "</s>" and "<s>" not in words[1:-1]
    assert "<s>" not in s.data.vocabs["src"].stoi  # only the decoded input is framed


def test_an_empty_target_of_a_decoder_is_an_error_at_its_line(tmp_path):
    from nnspec.cli import main
    path = _data_spec(tmp_path, ["a b\tb a", "a b c\t", "c\tc"])
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", str(path), "--no-save", "--quiet"]) != 0
    assert "d.tsv:3" in err.getvalue() and "empty" in err.getvalue() and "Traceback" not in err.getvalue()


# ---- greedy decoding -------------------------------------------------------------------------
def test_greedy_decoding_feeds_the_decoder_its_own_predictions_until_the_end_symbol():
    """Each written token is the argmax (among the tokens decoding may write) of a forward pass fed
    <s> and the tokens written before it; decoding stops at </s> or after max tokens."""
    from nnspec.decode import greedy
    m = decoder_model(seed=2)
    src = sources()
    hyps = greedy(m, {"src": src}, start=START, end=END)
    assert len(hyps) == len(src)
    for b, h in enumerate(hyps):
        assert len(h.tokens) <= 5 and (h.ended or len(h.tokens) == 5)
        written = h.tokens + ([END] if h.ended else [])
        fed = [START] + written
        p = m.forward({"src": [src[b]], "tgt": [np.array(fed)]})["p"][:, 0]
        allowed = p.copy()
        allowed[:, [0, 1, START]] = -1
        # step 0 predicts <s> itself (trained to, read by nothing); token i is written at step i + 1
        assert allowed[1:].argmax(-1).tolist() == written
        assert h.score == pytest.approx(sum(np.log(p[i + 1, w]) for i, w in enumerate(written)), abs=1e-9)
    assert any(h.ended for h in hyps) and any(not h.ended for h in hyps)   # seed 2 shows both stops
    short = greedy(m, {"src": src}, start=START, end=END, max_length=1)
    assert all(len(h.tokens) <= 1 for h in short)


def test_greedy_for_a_given_number_of_steps_needs_no_declaration():
    """greedy_steps (what the ONNX runner is compared with): step t is the argmax of a forward pass fed
    the tokens decoded before t, for as many steps as asked, declared decoder or not."""
    from nnspec.decode import greedy_steps
    lengths = [4, 2, 6, 1]
    for m in (decoder_model(seed=2), decoder_model(seed=2, declaration="")):
        src = sources()
        ids = greedy_steps(m, {"src": src}, lengths)["tgt"]
        assert ids.shape == (6, 4)
        for b, n in enumerate(lengths):
            fed = [int(i) for i in ids[:n, b]]
            assert m.forward({"src": [src[b]], "tgt": [np.array(fed)]})["p"][:, 0].argmax(-1).tolist() == fed
    with pytest.raises(FeedError, match="no decoder fed by its own predictions"):
        greedy_steps(Model.from_text("input x[2] : seq\noutput y\ny = tanh(x)"), {"x": np.ones((2, 1, 2))}, 2)


def test_decoding_needs_a_declaration_and_only_the_other_inputs():
    from nnspec.decode import greedy
    undeclared = Model.from_text(spec("dot"), bindings=BINDINGS)
    with pytest.raises(FeedError, match="declares no decoder"):
        greedy(undeclared, {"src": sources()}, start=START, end=END)
    with pytest.raises(FeedError, match="'tgt' is what decoding writes"):
        greedy(decoder_model(), {"src": sources(), "tgt": sources()}, start=START, end=END)


# ---- beam search -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dot", "in_loop"])
def test_beam_one_is_greedy(kind):
    from nnspec.decode import beam_search, greedy
    m = decoder_model(kind)
    g = greedy(m, {"src": sources()}, start=START, end=END)
    b = beam_search(m, {"src": sources()}, beam=1, start=START, end=END)
    assert [h[0].tokens for h in b] == [h.tokens for h in g]
    assert [h[0].score for h in b] == pytest.approx([h.score for h in g], abs=1e-12)
    assert [h[0].ended for h in b] == [h.ended for h in g]


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("kind", ["dot", "in_loop"])
def test_beam_one_is_greedy_whatever_the_length_penalty(kind, alpha):
    from nnspec.decode import beam_search, greedy
    lengths = set()
    for seed in range(4):
        m = decoder_model(kind, seed=seed)
        g = greedy(m, {"src": sources(seed)}, start=START, end=END)
        b = beam_search(m, {"src": sources(seed)}, beam=1, start=START, end=END, length_penalty=alpha)
        assert [(h[0].tokens, h[0].ended) for h in b] == [(h.tokens, h.ended) for h in g]
        assert [h[0].score for h in b] == pytest.approx([h.score for h in g], abs=1e-12)
        lengths |= {(len(h.tokens), h.ended) for h in g}
    assert len(lengths) > 2, "outputs of different lengths, ended and not"


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_wider_beam_never_scores_below_greedy_and_here_beats_it(alpha):
    """By the score beam search ranks by: log p over the length penalty (alpha 0: log p itself)."""
    from nnspec.decode import beam_search, greedy
    better = 0
    for seed in range(4):
        m = decoder_model("in_loop", seed=seed)
        g = greedy(m, {"src": sources(seed)}, start=START, end=END)
        for k in (2, 3):
            b = beam_search(m, {"src": sources(seed)}, beam=k, start=START, end=END, length_penalty=alpha)
            for gh, bh in zip(g, b):
                assert len(bh) <= k
                ranked = [h.normalized(alpha) for h in bh]
                assert ranked == sorted(ranked, reverse=True)
                assert bh[0].normalized(alpha) >= gh.normalized(alpha) - 1e-12
                better += bh[0].normalized(alpha) > gh.normalized(alpha) + 1e-9
    assert better > 0, "greedy was optimal everywhere: the test shows nothing"


def test_the_length_penalty_is_gnmts():
    from nnspec.decode import Hypothesis, gnmt_penalty
    assert gnmt_penalty(1, 0.6) == 1.0 and gnmt_penalty(7, 0.0) == 1.0
    assert gnmt_penalty(7, 1.0) == pytest.approx(2.0) and gnmt_penalty(7, 0.5) == pytest.approx(2 ** 0.5)
    h = Hypothesis([4, 5], -3.0, True, [-1.0, -1.5, -0.5])      # two tokens and </s>: three scored
    assert h.normalized(0.0) == -3.0 and h.normalized(1.0) == pytest.approx(-3.0 / (8 / 6))


# A decoder whose next token depends on the previous one only, with probabilities set by hand
# (ids: 0 <pad>, 1 <unk>, 2 <s>, 3 </s>, 4 a, 5 b): greedy's first choice, a, leads on to no likely end.
TRAP = """
network trap
input  src : seq(src) of token
input  tgt : seq(out) of token
output p
s = last(embed(src, 6))
ye = embed(tgt, 6)                  # its table: the identity, so ye[t-1] is the previous token, one-hot
p = softmax(L @ ye[t-1] + Z @ s)    # Z: zeros (the source does not matter); L: log-probabilities
loss cross_entropy(p, tgt)
decode tgt from p, start "<s>", end "</s>", max 3
"""
NEXT = {2: {4: 0.6, 5: 0.4},               # after <s>: a 0.6, b 0.4
        4: {4: 0.4, 5: 0.3, 3: 0.3},       # after a: a 0.4, b 0.3, </s> 0.3
        5: {3: 0.9, 4: 0.05, 5: 0.05}}     # after b: </s> 0.9


def bigram_model(following: dict, vocab: int, limit: int) -> Model:
    """TRAP's decoder with p(next | previous token) set by hand (1e-12 elsewhere)."""
    text = TRAP.replace("max 3", f"max {limit}").replace("embed(tgt, 6)", f"embed(tgt, {vocab})")
    m = Model.from_text(text, bindings={"vocab(src)": 3, "vocab(tgt)": vocab}, dtype=np.float64)
    m.params["ye.table"] = np.eye(vocab)
    m.params["Z"] = np.zeros((vocab, 6))
    table = np.full((vocab, vocab), 1e-12)
    for prev, nxt in following.items():
        for token, prob in nxt.items():
            table[token, prev] = prob
    m.params["L"] = np.log(table)
    return m


def test_beam_search_escapes_the_trap_greedy_falls_into():
    """By hand: greedy writes a (0.6), then a (0.4), a (0.4) and meets the limit, log(0.096) and not
    ended; beam 2 keeps b (0.4), whose </s> (0.9) scores log(0.36), the best sequence there is."""
    from nnspec.decode import beam_search, greedy, sequence_score
    m = bigram_model(NEXT, vocab=6, limit=3)
    src = {"src": [np.array([1, 2])]}
    (g,) = greedy(m, src, start=START, end=END)
    assert (g.tokens, g.ended) == ([4, 4, 4], False)
    assert g.score == pytest.approx(np.log(0.6 * 0.4 * 0.4), abs=1e-9)
    (b,) = beam_search(m, src, beam=2, start=START, end=END)
    assert (b[0].tokens, b[0].ended) == ([5], True)
    assert b[0].score == pytest.approx(np.log(0.4 * 0.9), abs=1e-9)
    assert b[0].steps == pytest.approx([np.log(0.4), np.log(0.9)], abs=1e-9)
    # it stopped once two had ended (b </s> 0.36, a </s> 0.18), before a longer one could
    assert [(h.tokens, h.ended) for h in b] == [([5], True), ([4], True)]
    assert sequence_score(m, src, [4], start=START, end=END) == pytest.approx(np.log(0.6 * 0.3), abs=1e-9)


# Plain log-probability against the length penalty, by hand (ids 4 a, 5 b, 6 c, 7 d): "a" is the
# most probable output (0.6 * 0.6 = 0.36), but "b c d" (0.38 * 0.95^3 = 0.326) has the better score
# per token, and GNMT's penalty with alpha 1 ranks it first: log(0.326) / (9/6) > log(0.36) / (7/6).
SHORT_OR_LONG = {2: {4: 0.6, 5: 0.38, 6: 0.02},
                 4: {3: 0.6, 4: 0.2, 5: 0.2},
                 5: {6: 0.95, 3: 0.05},
                 6: {7: 0.95, 3: 0.05},
                 7: {3: 0.95, 4: 0.05}}


def test_the_length_penalty_lets_beam_search_prefer_a_longer_output():
    from nnspec.decode import beam_search, greedy
    m = bigram_model(SHORT_OR_LONG, vocab=8, limit=5)
    src = {"src": [np.array([1, 2])]}
    (g,) = greedy(m, src, start=START, end=END)
    assert g.tokens == [4] and g.score == pytest.approx(np.log(0.36), abs=1e-9)
    (plain,) = beam_search(m, src, beam=3, start=START, end=END, length_penalty=0.0)
    assert plain[0].tokens == [4] and plain[0].score == pytest.approx(np.log(0.36), abs=1e-9)
    (normalized,) = beam_search(m, src, beam=3, start=START, end=END, length_penalty=1.0)
    best = normalized[0]
    assert (best.tokens, best.ended) == ([5, 6, 7], True)
    assert best.score == pytest.approx(np.log(0.38 * 0.95 ** 3), abs=1e-9)
    assert best.normalized(1.0) == pytest.approx(np.log(0.38 * 0.95 ** 3) / (9 / 6), abs=1e-9)
    assert [4] in [h.tokens for h in normalized]           # found, and ranked below
    assert best.normalized(1.0) > g.normalized(1.0)


# A sure output, "a b c" (0.96 * 0.97^3 = 0.876), beside unlikely ones that end at once (x, y: 0.018 each):
# by the second step three sequences have finished, none of them likely, while "a b" is still being written.
SURE_BESIDE_SHORT_ONES = {2: {4: 0.96, 7: 0.02, 8: 0.02},
                          4: {5: 0.97, 3: 0.01, 7: 0.01, 8: 0.01},
                          5: {6: 0.97, 3: 0.01, 7: 0.01, 8: 0.01},
                          6: {3: 0.97, 7: 0.01, 8: 0.02},
                          7: {3: 0.9, 7: 0.05, 8: 0.05},
                          8: {3: 0.9, 7: 0.05, 8: 0.05}}


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_unlikely_sequences_that_end_early_do_not_stop_the_search(alpha):
    """Beam 3 has three finished sequences after two steps (x, y and a), all far less likely than the
    live "a b": it goes on to "a b c", as greedy does, instead of returning the best of those three."""
    from nnspec.decode import beam_search, greedy
    m = bigram_model(SURE_BESIDE_SHORT_ONES, vocab=9, limit=6)
    src = {"src": [np.array([1, 2])]}
    (g,) = greedy(m, src, start=START, end=END)
    (b,) = beam_search(m, src, beam=3, start=START, end=END, length_penalty=alpha)
    assert g.tokens == b[0].tokens == [4, 5, 6] and b[0].ended
    assert b[0].score == pytest.approx(np.log(0.96 * 0.97 ** 3), abs=1e-9)
    assert len(b) == 3 and all(h.normalized(alpha) < b[0].normalized(alpha) for h in b[1:])


def test_a_bad_length_penalty_is_a_feed_error():
    from nnspec.decode import beam_search
    m = decoder_model()
    for alpha in (-0.5, float("nan"), "1", True):
        with pytest.raises(FeedError, match="length_penalty"):
            beam_search(m, {"src": sources()}, beam=2, start=START, end=END, length_penalty=alpha)


def _teacher_forced_score(m: Model, src, tokens: list[int], ended: bool) -> float:
    """log p of the tokens (and </s>) by one forward pass fed the whole sequence: the oracle."""
    written = tokens + ([END] if ended else [])
    p = m.forward({"src": [src], "tgt": [np.array([START] + written)]})["p"][:, 0]
    return float(sum(np.log(p[i + 1, w]) for i, w in enumerate(written)))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_a_wide_beam_finds_the_best_sequence_of_exhaustive_search(alpha):
    """Every sequence over the two tokens of a tiny vocabulary: ended ones shorter than max, and the
    unended ones of max tokens; a beam as wide as their number finds the best one, by log p over
    the length penalty of its scored tokens (alpha 0: the most probable one)."""
    from nnspec.decode import beam_search, gnmt_penalty
    limit = 3
    declaration = DECLARED.replace("max 5", f"max {limit}")
    for seed in range(3):
        m = decoder_model("dot", seed=seed, declaration=declaration)
        src = sources(seed)[:3]
        beams = beam_search(m, {"src": src}, beam=2 ** limit, start=START, end=END, length_penalty=alpha)
        for s, found in zip(src, beams):
            words = [4, 5]         # the vocabulary less <pad>, <unk>, <s> and </s>
            every = [(list(w), True) for n in range(limit) for w in itertools.product(words, repeat=n)]
            every += [(list(w), False) for w in itertools.product(words, repeat=limit)]
            scored = sorted(((_teacher_forced_score(m, s, w, e) / gnmt_penalty(len(w) + e, alpha), w, e)
                             for w, e in every), key=lambda x: -x[0])
            best_score, best, ended = scored[0]
            assert (found[0].tokens, found[0].ended) == (best, ended)
            assert found[0].normalized(alpha) == pytest.approx(best_score, abs=1e-9)
            # the others it returns (it stops once no live one can beat the best) are scored right too
            for h in found:
                assert h.score == pytest.approx(_teacher_forced_score(m, s, h.tokens, h.ended), abs=1e-9)


def test_bad_beam_and_limit_are_feed_errors():
    from nnspec.decode import beam_search, greedy
    m = decoder_model()
    for beam in (0, 1.5, True):
        with pytest.raises(FeedError, match="beam"):
            beam_search(m, {"src": sources()}, beam=beam, start=START, end=END)
    with pytest.raises(FeedError, match="max_length"):
        greedy(m, {"src": sources()}, start=START, end=END, max_length=0)


# ---- the first task, specs/reverse_copy.nn: trained once, decoded by nnspec predict ----------------
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "reverse_copy.nn"


@pytest.fixture(scope="module")
def reverse_copy(tmp_path_factory) -> str:
    """specs/reverse_copy.nn trained by nnspec run, as it is (about 15 s): its run directory."""
    runs = tmp_path_factory.mktemp("runs")
    code, _, err = cli("run", str(SPEC), "--runs", str(runs), "--quiet")
    assert code == 0, err
    return str(next(runs.iterdir()))


def test_reverse_copy_writes_its_test_sources_backwards(reverse_copy, tmp_path):
    """nnspec predict, greedy: >= 99% of the test sequences exactly reversed; beam 5 no fewer. A sequence
    comes out of greedy decoding right exactly when teacher forcing gets every step of it right (by
    induction over its steps), so nnspec evaluate's sequence_accuracy is the greedy figure."""
    rows = [line.split("\t") for line in (ROOT / "data/reverse-copy/test.tsv").read_text().splitlines()[1:]]
    (tmp_path / "src.txt").write_text("".join(s + "\n" for s, _ in rows))
    right = {}
    for beam in (1, 5):
        code, out, err = cli("predict", str(SPEC), "--checkpoint", reverse_copy, "--input", str(tmp_path / "src.txt"),
                             "--beam", str(beam))
        assert code == 0, err
        written = out.splitlines()
        assert len(written) == len(rows) == 300
        right[beam] = sum(w == t for w, (_, t) in zip(written, rows))
    assert right[1] / 300 >= 0.99, f"{right[1]}/300 test sequences exactly right"
    assert right[5] >= right[1]
    code, out, _ = cli("evaluate", str(SPEC), "--checkpoint", reverse_copy, "--json")
    assert json_of(out)["metrics"]["sequence_accuracy"] == pytest.approx(right[1] / 300)


def json_of(text: str):
    import json
    return json.loads(text)


def test_predict_json_lists_the_beam_with_scores(reverse_copy):
    code, out, err = cli("predict", str(SPEC), "--checkpoint", reverse_copy, "--beam", "3", "--json",
                         stdin="a b c d\nj i\n")
    assert code == 0, err
    first, second = json_of(out)
    assert (first["input"], first["output"], first["tokens"]) == ("a b c d", "d c b a", ["d", "c", "b", "a"])
    assert second["output"] == "i j" and first["ended"] is True
    assert len(first["beam"]) == 3 and first["beam"][0]["output"] == first["output"]
    scores = [b["score"] for b in first["beam"]]
    assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    assert scores[0] == first["score"] > -0.1          # the model is sure of the right answer


def test_predict_stops_at_the_maximum_length(reverse_copy):
    code, out, _ = cli("predict", str(SPEC), "--checkpoint", reverse_copy, "--max-length", "2", "--json",
                       stdin="a b c d e\n")
    (line,) = json_of(out)
    assert (line["output"], line["ended"]) == ("e d", False)


def test_predict_draws_the_attention_of_each_line(reverse_copy, tmp_path):
    code, out, err = cli("predict", str(SPEC), "--checkpoint", reverse_copy, "--attention", str(tmp_path / "att"),
                         stdin="a b c\nd e f g\n")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "att").iterdir()) == ["0001.png", "0002.png"]
    assert (tmp_path / "att" / "0001.png").read_bytes()[:4] == b"\x89PNG"


def test_attention_weights_are_rows_of_output_steps_over_the_source(reverse_copy):
    """The weights each output step (and </s>) gave the source: rows sum to 1; reversing, output
    token i looks at source token n-1-i, and at the one after it (the band the PNG shows)."""
    from nnspec.decode import attention_weights, decode_texts
    from nnspec.trained import load
    model = load(reverse_copy, spec=SPEC)
    (d,) = decode_texts(model, ["a b c d e"])
    (w,) = attention_weights(model, d).values()
    assert w.shape == (6, 5)                       # e d c b a </s>, over a b c d e
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-5)
    for i in range(5):
        assert w[i, 4 - i] + (w[i, 5 - i] if i else 0) > 0.6, w.round(2)
    assert w[5, 0] > 0.5                           # </s> once the first letter is written


@pytest.mark.parametrize("stdin, message", [
    ("a b\n\nc\n", "<stdin>:2: error: an empty source"),
    ("a b c d e f g h i j a b c\n", "<stdin>:1: error: a source of 13 tokens, longer than max_length 12"),
])
def test_predict_refuses_an_empty_or_too_long_source_at_its_line(reverse_copy, stdin, message):
    code, out, err = cli("predict", str(SPEC), "--checkpoint", reverse_copy, stdin=stdin)
    assert code != 0 and out == ""
    assert message in err and "Traceback" not in err


def test_decoding_options_are_for_an_encoder_decoder(reverse_copy):
    code, _, err = cli("predict", str(ROOT / "specs" / "xor_train.nn"), "--checkpoint", reverse_copy, "--beam", "2")
    assert code != 0 and "Traceback" not in err
    with pytest.raises(SystemExit):
        cli("predict", str(SPEC), "--checkpoint", reverse_copy, "--beam", "0")


def test_sample_draws_an_output_for_a_source(reverse_copy):
    runs = [cli("sample", str(SPEC), "--checkpoint", reverse_copy, "--prompt", "a b c", "--temperature", "5",
                "--seed", str(seed), "--json") for seed in range(6)]
    texts = [json_of(out)["text"] for _, out, _ in runs]
    assert all(set(t.split()) <= set("abcdefghij") for t in texts)
    assert len(set(texts)) > 1                     # drawn, not the argmax (hot: temperature 5)
    _, again, _ = cli("sample", str(SPEC), "--checkpoint", reverse_copy, "--prompt", "a b c", "--temperature", "5",
                      "--seed", "0", "--json")
    assert json_of(again)["text"] == texts[0]
    _, cold, _ = cli("sample", str(SPEC), "--checkpoint", reverse_copy, "--prompt", "a b c", "--temperature", "0.01")
    assert cold.strip() == "c b a"


# ---- step-by-step decoding: the encoder once, each decoder step once ---------------------------
@pytest.mark.parametrize("kind", ["dot", "additive", "in_loop"])
@pytest.mark.parametrize("how", ["greedy", "beam", "sample"])
def test_step_by_step_decoding_computes_what_recomputing_the_whole_network_does(kind, how):
    """Each step of incremental decoding runs the decoder over two steps, from carried states and a
    given encoder; the oracle reruns the whole network over every prefix (the training computation)."""
    from nnspec.decode import beam_search, greedy, sample, stepwise
    m = decoder_model(kind, declaration=DECLARED.replace("max 5", "max 7"))
    m.params["b"][END] -= 30.0 if how == "beam" else 6.0           # longer outputs: more steps carried
    assert stepwise(m) is not None and "enc" in stepwise(m).independent
    run = {"greedy": lambda **kw: [[h] for h in greedy(m, {"src": sources(1)}, start=START, end=END, **kw)],
           "beam": lambda **kw: beam_search(m, {"src": sources(1)}, beam=3, start=START, end=END, **kw),
           "sample": lambda **kw: [[h] for h in sample(m, {"src": sources(1)}, start=START, end=END,
                                                       rng=np.random.default_rng(5), **kw)]}[how]
    fast, full = run(incremental=True), run(incremental=False)
    assert [[h.tokens for h in hs] for hs in fast] == [[h.tokens for h in hs] for hs in full]
    assert [[h.ended for h in hs] for hs in fast] == [[h.ended for h in hs] for hs in full]
    for hs, gs in zip(fast, full):
        for h, g in zip(hs, gs):
            assert h.steps == pytest.approx(g.steps, abs=1e-9)
    assert max(len(h.tokens) for hs in fast for h in hs) >= 3      # several steps were carried


def test_step_by_step_decoding_without_a_start_symbol():
    from nnspec.decode import greedy
    m = decoder_model("dot", declaration='decode tgt from p, end "</s>", max 6\n')
    fast = greedy(m, {"src": sources(2)}, start=None, end=END)
    full = greedy(m, {"src": sources(2)}, start=None, end=END, incremental=False)
    assert [h.tokens for h in fast] == [h.tokens for h in full]
    assert [h.score for h in fast] == pytest.approx([h.score for h in full], abs=1e-9)


def test_a_decoder_reading_two_steps_back_is_decoded_by_recomputing():
    from nnspec.decode import greedy, stepwise
    text = spec("dot").replace("lstm(ye[t-1], H", "lstm(ye[t-1] + ye[t-2], H") + DECLARED
    assert "ye[t-2]" in text
    m = Model.from_text(text, bindings=BINDINGS, dtype=np.float64, seed=1)
    assert stepwise(m) is None
    assert [h.tokens for h in greedy(m, {"src": sources()}, start=START, end=END)] == \
        [h.tokens for h in greedy(m, {"src": sources()}, start=START, end=END, incremental=False)]


@pytest.mark.parametrize("beam", [1, 5])
def test_trained_reverse_copy_decodes_step_by_step_as_by_full_recomputation(reverse_copy, beam):
    from nnspec.decode import decode_texts
    from nnspec.trained import load
    model = load(reverse_copy)
    lines = [line.split("\t")[0] for line in (ROOT / "data/reverse-copy/test.tsv").read_text().splitlines()[1:65]]
    fast = decode_texts(model, lines, beam=beam)
    full = decode_texts(model, lines, beam=beam, incremental=False)
    assert [[o[0] for o in d.outputs] for d in fast] == [[o[0] for o in d.outputs] for d in full]
    assert [o[1] for d in fast for o in d.outputs] == pytest.approx([o[1] for d in full for o in d.outputs], abs=1e-4)
