"""Nested sequences: the characters of every word (``input c : seq of seq(char) of char = chars(w)``).

A nested value is on an outer and an inner axis, ``(time, char)``; a loop over the inner axis runs over
the characters of every word of the batch at once (each word a row of its batch, masked by its length),
and a reduction (``last``, ``first``, ...) gives one vector per word, on the outer axis. The character
BiLSTM tagger is checked against finite differences, the reference engine and PyTorch (same weights,
float64, loss and every gradient to 1e-9) on a padded batch of words of different lengths; padding on
either axis changes no example's result; bad specs and bad data are located errors.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from nnspec import compile_text
from nnspec.errors import SpecError
from nnspec.model import FeedError, Model
from nnspec.runtime import ExecOptions, Executor
from conftest import assert_model_gradients_match_finite_differences

V_W, V_C, K, E, HC, EW, H = 6, 9, 4, 3, 4, 3, 5

TAGGER = f"""
network char_tagger
input  w : seq of token
input  c : seq of seq(char) of char = chars(w)
target y : seq of class[{K}]
output p

e  = embed(c, {E})                       # on (time, char)
f  = lstm(e, H = {HC})                   # over each word's characters
r  = reverse(lstm)(e, H = {HC})
cw = concat(last(f), first(r))           # on (time): one vector per word
ew = embed(w, {EW})
h  = bidirectional(lstm)(concat(ew, cw), H = {H})
p  = softmax(V @ h + b)
loss cross_entropy(p, y)
"""

# three sentences of 3, 1 and 4 words; each word's number of characters
WORDS = [[3, 1, 5], [2], [4, 1, 6, 2]]


def model(seed: int = 3) -> Model:
    m = Model.from_text(TAGGER, bindings={"vocab(w)": V_W, "vocab(c)": V_C}, dtype=np.float64, seed=seed)
    rng = np.random.default_rng(seed)
    for k, v in m.params.items():      # away from the zero initial values of the biases
        m.params[k] = rng.normal(scale=0.5, size=v.shape)
    return m


def batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"w": [rng.integers(1, V_W, len(s)) for s in WORDS],
            "c": [[rng.integers(1, V_C, n) for n in s] for s in WORDS],
            "y": [rng.integers(0, K, len(s)) for s in WORDS]}


def padded(feeds: dict, extra_words: int = 0, extra_chars: int = 0):
    """The batch as arrays, with ``extra_words`` padding words after every sentence's last and
    ``extra_chars`` padding characters after every word's last: (arrays, lengths)."""
    B = len(feeds["w"])
    Tw = max(len(s) for s in feeds["w"]) + extra_words
    Tc = max(len(x) for s in feeds["c"] for x in s) + extra_chars
    w, y = np.zeros((Tw, B), np.int64), np.full((Tw, B), -1, np.int64)
    c, counts = np.zeros((Tc, Tw * B), np.int64), np.zeros(Tw * B, np.int64)
    for b in range(B):
        n = len(feeds["w"][b])
        w[:n, b], y[:n, b] = feeds["w"][b], feeds["y"][b]
        for t, chars in enumerate(feeds["c"][b]):
            c[:len(chars), t * B + b] = chars
            counts[t * B + b] = len(chars)
    lengths = {"time": np.array([len(s) for s in feeds["w"]]), "char": counts}
    return {"w": w, "c": c, "y": y}, lengths


# ---- the language ----------------------------------------------------------------------------
def test_a_nested_input_is_on_an_outer_and_an_inner_axis_and_a_reduction_gives_one_vector_per_word():
    g = compile_text(TAGGER, bindings={"vocab(w)": V_W, "vocab(c)": V_C}).graph
    assert g.info("c").axes == ("time", "char")
    assert g.info("e").axes == ("time", "char")
    assert g.info("f").axes == ("time", "char")
    assert g.info("cw").axes == ("time",)
    assert g.info("h").axes == ("time",)
    plan = compile_text(TAGGER, bindings={"vocab(w)": V_W, "vocab(c)": V_C}).plan
    loops = {s.states[0]: s.axis for s in plan.steps if hasattr(s, "body")}
    assert loops == {"f": "char", "r": "char", "h.fwd": "time", "h.bwd": "time"}


def test_nnspec_check_shows_the_axes_of_every_value(tmp_path, capsys):
    from nnspec.cli import main
    path = tmp_path / "t.nn"
    path.write_text(TAGGER)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(time, char)" in out
    assert "forward over char): f.f" in out and "backward over char): r.f" in out


@pytest.mark.parametrize("text, message", [
    ("input c : seq of seq(char) of char = chars(w)\noutput x\nx = concat(embed(w, 4), embed(c, 4))",
     "is on the axes (time) and 'embed(c, 4)' on (time, char)"),
    ("input c : seq of seq of char\noutput x\nx = last(embed(c, 4))",
     "derive it from a token input's words, e.g. 'input c : seq of seq of char = chars(w)'"),
    ("input c : seq of char = chars(w)\noutput x\nx = last(embed(c, 4))",
     "gives each word's characters, a sequence of sequences"),
    ("input c : seq of seq of token = chars(w)\noutput x\nx = last(embed(c, 4))",
     "a sequence of sequences holds the characters of each word"),
    ("input c : seq of seq(time) of char = chars(w)\noutput x\nx = last(embed(c, 4))",
     "its inner axis needs a name of its own"),
    ("input c : seq of seq(char) of char = chars(w, 1)\noutput x\nx = last(embed(c, 4))",
     "would keep fewer than 2 characters"),
    ("input c : seq of seq(char) of char = chars(w)\noutput x\nx = along(embed(w, 4), embed(c, 4))",
     "repeating a value along them is not supported"),
    # the rows of a nested value are words, so a value per example has no row to go to
    ("input c : seq of seq(char) of char = chars(w)\ninput u : bag of token\noutput x\n"
     "x = last(tanh(embed(c, 3) + U @ u))",
     "'U @ u' is one value per example and 'embed(c, 3)' is on (time, char), the characters of each word"),
    ("input c : seq of seq(char) of char = chars(w)\ninput u : bag of token\noutput x\n"
     "s[4] = tanh(W @ embed(c, 3) + R @ s[t-1])\ninitial s = tanh(Q @ u)\nx = last(s)",
     "the initial state of 's' is 'tanh(Q @ u)', one value per example, but 's' runs over the characters"),
])
def test_mistakes_with_nested_sequences_are_located_errors(text, message):
    with pytest.raises(SpecError) as err:
        compile_text("network n\ninput w : seq of token\n" + text + "\n", file="n.nn")
    shown = err.value.render() if hasattr(err.value, "render") else str(err.value)
    assert message in shown
    assert "n.nn:" in shown


# ---- correctness: finite differences, the reference engine, PyTorch, padding -------------------
def test_gradients_through_the_character_encoder_match_finite_differences():
    m = model()
    feeds = batch(1)
    assert_model_gradients_match_finite_differences(m, feeds)


def test_the_fast_path_agrees_with_the_reference_engine():
    m = model()
    arrays, lengths = padded(batch(2), extra_words=1, extra_chars=2)
    runs = []
    for options in (ExecOptions.reference(), ExecOptions()):
        ex = Executor(m.plan, dtype=np.float64, options=options)
        for _ in range(2):   # the second pass of the fast path reuses its kept runs and prepared pass
            tape = ex.forward(m.params, arrays, lengths=lengths)
            grads = ex.backward(tape)
        runs.append((float(tape.values[m.plan.loss]), tape.values["p"].copy(), grads))
    (l1, p1, g1), (l2, p2, g2) = runs
    assert l1 == pytest.approx(l2, abs=1e-13)
    np.testing.assert_allclose(p1, p2, rtol=1e-12, atol=1e-14)
    for k in m.params:
        np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g2[k]), rtol=1e-10, atol=1e-13, err_msg=k)


def test_padding_on_either_axis_changes_no_result():
    m = model()
    feeds = batch(3)
    ex = Executor(m.plan, dtype=np.float64)
    results = []
    for extra_words, extra_chars in [(0, 0), (2, 0), (0, 3), (1, 4)]:
        arrays, lengths = padded(feeds, extra_words, extra_chars)
        tape = ex.forward(m.params, arrays, lengths=lengths)
        grads = ex.backward(tape)
        results.append((float(tape.values[m.plan.loss]), tape.values["p"], {k: np.asarray(v) for k, v in grads.items()
                                                                           if k in m.params}))
    loss0, p0, g0 = results[0]
    real = [(t, b) for b, s in enumerate(WORDS) for t in range(len(s))]
    for loss, p, g in results[1:]:
        assert loss == pytest.approx(loss0, abs=1e-13)
        for t, b in real:
            np.testing.assert_allclose(p[t, b], p0[t, b], rtol=0, atol=1e-13)
        for k in g0:
            np.testing.assert_allclose(g[k], g0[k], rtol=0, atol=1e-13, err_msg=k)
    # and each sentence alone gives what it gets in the batch
    for b in range(len(WORDS)):
        alone = m.forward({k: [v[b]] for k, v in feeds.items() if k != "y"})["p"]
        np.testing.assert_allclose(alone[:, 0], p0[:len(WORDS[b]), b], rtol=0, atol=1e-13)


def torch_loss(P: dict, feeds: dict):
    """The same tagger in PyTorch: nn.LSTM over the packed characters of every word (both directions'
    final states), a bidirectional nn.LSTM over the words; the loss and the parameters as leaves."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from nnspec.torch_weights import from_torch, to_torch
    T = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in P.items()}
    chars = torch.nn.LSTM(E, HC, bidirectional=True).double()
    words = torch.nn.LSTM(EW + 2 * HC, H, bidirectional=True).double()
    with torch.no_grad():   # nnspec's weights into the torch modules
        for module, kind, inst in ((chars, "lstm", [["f", "r"]]), (words, "lstm", [["h.fwd", "h.bwd"]])):
            for k, v in to_torch(P, kind, inst).items():
                getattr(module, k).copy_(torch.tensor(v))
    assert from_torch(to_torch(P, "lstm", [["f", "r"]]), "lstm", [["f", "r"]])["f.Wi"].shape == P["f.Wi"].shape
    B = len(feeds["w"])
    # every real word, sentence by sentence
    word_chars = [torch.tensor(x) for s in feeds["c"] for x in s]
    n_chars = torch.tensor([len(x) for x in word_chars])
    padded_chars = torch.nn.utils.rnn.pad_sequence(word_chars)                     # (L, N)
    _, (h_n, _) = chars(pack_padded_sequence(T["e.table"][padded_chars], n_chars, enforce_sorted=False))
    cw_real = torch.cat([h_n[0], h_n[1]], -1)                                       # (N, 2HC)
    Tw = max(len(s) for s in feeds["w"])
    lens = torch.tensor([len(s) for s in feeds["w"]])
    rows, i = [], 0
    for b in range(B):
        n = len(feeds["w"][b])
        rows.append(torch.cat([cw_real[i:i + n], torch.zeros(Tw - n, 2 * HC, dtype=torch.float64)]))
        i += n
    cw = torch.stack(rows, 1)                                                       # (Tw, B, 2HC)
    w = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in feeds["w"]])
    x = torch.cat([T["ew.table"][w], cw], -1)
    out, _ = words(pack_padded_sequence(x, lens, enforce_sorted=False))
    h, _ = pad_packed_sequence(out, total_length=Tw)
    logp = torch.log_softmax(h @ T["V"].T + T["b"], -1)
    y = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in feeds["y"]], padding_value=-1)
    real = y >= 0
    nll = -logp.gather(-1, y.clamp(min=0)[..., None])[..., 0]
    loss = (nll * real).sum() / real.sum()
    return loss, T, chars, words


@pytest.mark.torch
def test_the_character_bilstm_tagger_matches_pytorch():
    pytest.importorskip("torch")
    from nnspec.torch_weights import bias_gradients, to_torch
    m = model()
    feeds = batch(4)
    loss, grads, _ = m.loss_and_grads(feeds, train=False)
    tl, leaves, chars, words = torch_loss(m.params, feeds)
    tl.backward()
    assert float(loss) == pytest.approx(tl.item(), abs=1e-9)
    for k in ("e.table", "ew.table", "V", "b"):
        np.testing.assert_allclose(np.asarray(grads[k]), leaves[k].grad.numpy(), atol=1e-9, rtol=0, err_msg=k)
    dense = {k: np.asarray(v) for k, v in grads.items()}
    for module, inst in ((chars, [["f", "r"]]), (words, [["h.fwd", "h.bwd"]])):
        ours = {**to_torch(dense, "lstm", inst), **bias_gradients(dense, "lstm", inst)}
        for name, p in module.named_parameters():
            np.testing.assert_allclose(ours[name], p.grad.numpy(), atol=1e-9, rtol=0, err_msg=name)


# ---- feeds and data --------------------------------------------------------------------------
def test_a_feed_with_a_word_of_no_characters_is_refused():
    m = model()
    feeds = batch(0)
    feeds["c"][1] = [np.array([], dtype=np.int64)]
    with pytest.raises(FeedError, match="every word a character"):
        m.forward({k: v for k, v in feeds.items() if k != "y"})


def conllu(words: list[str]) -> str:
    return "".join(f"{i}\t{w}\t_\tNOUN\t_\t_\t0\t_\t_\t_\n" for i, w in enumerate(words, 1)) + "\n"


def _run(tmp_path, train: str, spec_line: str = "chars(w)") -> tuple[int, str]:
    from nnspec.cli import main
    (tmp_path / "train.conllu").write_text(train)
    (tmp_path / "t.nn").write_text(TAGGER.replace(f"target y : seq of class[{K}]", "target y : seq of class")
                                   .replace("chars(w)", spec_line)
                                   + '\ndata conllu(train = "train.conllu", dev = "train.conllu")\n'
                                   + "train { epochs 1; batch 2 }\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", str(tmp_path / "t.nn"), "--no-save", "--quiet"])
    return code, err.getvalue()


def test_a_tagger_with_a_character_encoder_trains_from_conllu(tmp_path):
    code, err = _run(tmp_path, conllu(["the", "dogs", "run"]) + conllu(["a", "cat"]) * 3)
    assert code == 0, err


def test_a_word_with_no_characters_is_a_data_error_at_its_line(tmp_path):
    code, err = _run(tmp_path, conllu(["the", "dogs"]) + conllu(["a", "", "cat"]))
    assert code != 0 and "Traceback" not in err
    assert "train.conllu:4" in err and "word 2 has no characters" in err


def test_a_word_longer_than_the_limit_is_a_data_error_and_chars_with_k_clips_it(tmp_path):
    from nnspec.data.encode import MAX_WORD_CHARS
    long = "x" * (MAX_WORD_CHARS + 1)
    code, err = _run(tmp_path, conllu(["the", "dogs"]) + conllu(["a", long]))
    assert code != 0 and "Traceback" not in err
    assert "train.conllu:4" in err and f"more than {MAX_WORD_CHARS}" in err
    code, err = _run(tmp_path, conllu(["the", "dogs"]) + conllu(["a", long]), "chars(w, 20)")
    assert code == 0, err


def test_chars_with_k_keeps_the_first_and_last_characters_of_a_long_word():
    from nnspec.data.views import apply_view
    assert apply_view("chars", ["international", "ox"], 6) == [list("intnal"), list("ox")]
    assert apply_view("chars", ["international"], None) == [list("international")]


def test_the_batch_holds_every_word_of_every_sentence_as_a_column():
    from nnspec.data.batching import _pad_words
    ids, counts = _pad_words([[np.array([1, 2]), np.array([3])], [np.array([4, 5, 6])]])
    # word t of example b is column t * B + b; the second sentence's second word is padding
    assert ids.T.tolist() == [[1, 2, 0], [4, 5, 6], [3, 0, 0], [0, 0, 0]]
    assert counts.tolist() == [2, 3, 1, 0]


def test_a_trained_character_tagger_loads_and_tags_new_text(tmp_path):
    from conftest import train_tiny_tagger

    import nnspec
    run = train_tiny_tagger(tmp_path, TAGGER.replace(f"target y : seq of class[{K}]", "target y : seq of class")
                            + '\ndata conllu(train = "train.conllu", dev = "dev.conllu")\n'
                            + "train { epochs 3; batch 2 }\n")
    tagged = nnspec.load(run).predict("the cat runs")
    assert tagged.tokens == ["the", "cat", "runs"]
    assert len(tagged.labels["y"]) == 3 and set(tagged.labels["y"]) <= {"DET", "NOUN", "VERB"}


def test_a_word_that_occurs_many_times_in_a_batch_runs_through_the_character_loops_once():
    m = model()
    feeds = batch(5)
    feeds["c"][2] = [feeds["c"][0][0]] * 4     # the first sentence's first word, four times more
    arrays, lengths = padded(feeds, extra_words=1)
    results = []
    for distinct in (False, True):
        ex = Executor(m.plan, dtype=np.float64, options=ExecOptions(distinct_words=distinct))
        tape = ex.forward(m.params, arrays, lengths=lengths)
        results.append((tape.axes["char"].batch, tape.values["p"], ex.backward(tape)))
    (rows_all, p1, g1), (rows_distinct, p2, g2) = results
    assert rows_all == 5 * 3                   # every place of the (4 + 1) x 3 words, padding ones too
    assert rows_distinct == 3 + 1 + 1          # the first two sentences' words (one of them 5 times), and no characters
    np.testing.assert_allclose(p1, p2, rtol=0, atol=1e-14)
    for k in m.params:
        np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g2[k]), rtol=0, atol=1e-13, err_msg=k)


def test_a_character_loop_may_start_from_a_learned_initial_state():
    spec = f"""
network learned_start
input  w : seq of token
input  c : seq of seq(char) of char = chars(w)
target y : seq of class[{K}]
output p
s[{HC}] = tanh(W @ embed(c, {E}) + R @ s[t-1])
initial s = s0
p = softmax(V @ concat(embed(w, {EW}), last(s)) + b)
loss cross_entropy(p, y)
"""
    m = Model.from_text(spec, bindings={"vocab(w)": V_W, "vocab(c)": V_C}, dtype=np.float64, seed=2)
    feeds = batch()
    base = m.forward(feeds)["p"]
    m.params["s0"] = m.params["s0"] + 0.5           # every word's character loop starts there
    assert not np.allclose(m.forward(feeds)["p"], base)
    assert_model_gradients_match_finite_differences(m, feeds)
