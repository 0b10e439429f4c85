"""specs/lemmatizer.nn as it is, on a few hundred words of UD English-EWT: the per-word CoNLL-U
source feeds a character encoder-decoder, training lowers its loss, and decoding it step by step
(the encoder once, each decoder step once) writes what recomputing the whole network writes."""
import json
from pathlib import Path

import numpy as np
import pytest

from nnspec.cli import main
from nnspec.decode import beam_search, greedy, stepwise, symbol_ids
from nnspec.trained import load
from conftest import run_cli as cli

SPEC = Path(__file__).resolve().parent.parent / "specs" / "lemmatizer.nn"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert main(["run", str(SPEC), "--runs", str(runs), "--quiet", "--set", "limit=300",
                 "--set", "epochs=3", "--set", "batch=32"]) == 0
    return next(runs.iterdir())


def test_training_on_a_few_hundred_words_lowers_the_loss(trained):
    epochs = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    losses = [e["train_loss"] for e in epochs]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0]
    assert epochs[-1]["dev_loss"] < 0.85 * epochs[0]["dev_loss"]
    assert "dev_sequence_accuracy" in epochs[-1]      # whole lemmas right: what decoding gets right


def feeds_of(model, words):
    tags = model.vocabs["upos"]
    onehot = np.zeros((len(words), len(tags)), dtype=np.float32)
    for i, (_, tag) in enumerate(words):
        onehot[i, tags.encode([tag])] += 1
    return {"form": [model.vocabs["form"].encode(form) for form, _ in words], "upos": onehot}


WORDS = [("Walked", "VERB"), ("cats", "NOUN"), ("was", "AUX"), ("I", "PRON"), ("Google", "PROPN"),
         ("better", "ADJ"), ("running", "VERB"), ("n't", "PART"), ("geese", "NOUN"), ("2006", "NUM")]


@pytest.mark.parametrize("beam", [1, 3])
def test_step_by_step_decoding_of_the_lemmatizer_is_full_recomputation(trained, beam):
    model = load(trained)
    parts = stepwise(model)
    assert parts is not None and "enc" in parts.independent      # the encoder runs once per word
    start, end = symbol_ids(model.compiled.decoder, model.vocabs["lemma"])
    feeds = feeds_of(model, WORDS)
    if beam == 1:
        fast = [[h] for h in greedy(model, feeds, start=start, end=end)]
        full = [[h] for h in greedy(model, feeds, start=start, end=end, incremental=False)]
    else:
        fast = beam_search(model, feeds, beam=beam, start=start, end=end)
        full = beam_search(model, feeds, beam=beam, start=start, end=end, incremental=False)
    assert [[h.tokens for h in hs] for hs in fast] == [[h.tokens for h in hs] for hs in full]
    for hs, gs in zip(fast, full):
        for h, g in zip(hs, gs):
            assert h.steps == pytest.approx(g.steps, abs=1e-4)     # float32: the same sums, other shapes
    # not only empty or one-letter lemmas (beam search's plain scores favour short ones: any hypothesis)
    assert max(len(h.tokens) for hs in fast for h in hs) >= 3


# ---- decoding text with two sources: the form's characters and the tag, a column each ------------

def test_decode_texts_reads_a_column_for_each_source_in_the_specs_order(trained):
    from nnspec.decode import decode_texts, source_inputs
    model = load(trained)
    assert [v.name for v in source_inputs(model)] == ["form", "upos"]
    texts = [f"{form}\t{tag}" for form, tag in WORDS[:4]]
    decoded = decode_texts(model, texts[:2] + [list(w) for w in WORDS[2:4]], beam=1)
    assert decoded[0].sources == {"form": list("Walked"), "upos": ["VERB"]}
    start, end = symbol_ids(model.compiled.decoder, model.vocabs["lemma"])
    by_hand = greedy(model, feeds_of(model, WORDS[:4]), start=start, end=end)
    assert [d.outputs[0][0] for d in decoded] == [model.vocabs["lemma"].decode(h.tokens) for h in by_hand]
    assert [d.outputs[0][1] for d in decoded] == pytest.approx([h.score for h in by_hand], abs=1e-5)


def test_predict_decodes_tab_separated_sources(trained):
    lines = "".join(f"{form}\t{tag}\n" for form, tag in WORDS)
    code, out, err = cli("predict", str(SPEC), "--checkpoint", str(trained), stdin=lines)
    assert code == 0, err
    assert len(out.splitlines()) == len(WORDS)
    code, out, err = cli("predict", str(SPEC), "--checkpoint", str(trained), "--beam", "3", "--json",
                         "--length-penalty", "0.5", stdin=lines)
    assert code == 0, err
    first = json.loads(out)[0]
    assert first["input"] == "Walked\tVERB" and first["sources"] == {"form": list("Walked"), "upos": ["VERB"]}
    assert len(first["beam"]) == 3 and first["length_penalty"] == 0.5
    ranked = [b["normalized_score"] for b in first["beam"]]
    assert ranked == sorted(ranked, reverse=True)
    for b in first["beam"]:             # log p over ((5 + n) / 6) ** 0.5, n: its letters and </s>
        n = len(b["output"]) + b["ended"]
        assert b["normalized_score"] == pytest.approx(b["score"] / ((5 + n) / 6) ** 0.5)


def test_predict_draws_the_attention_over_the_form(trained, tmp_path):
    code, _, err = cli("predict", str(SPEC), "--checkpoint", str(trained), "--attention", str(tmp_path),
                       stdin="cats\tNOUN\n")
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == ["0001.png"]


@pytest.mark.parametrize("stdin, message", [
    ("cats\tNOUN\ngeese\n", "<stdin>:2: error: 1 column, but this decoder reads 2 sources, one per tab-separated "
                            "column: form, upos"),
    ("cats\tNOUN\tx\n", "<stdin>:1: error: 3 columns"),
    ("\tNOUN\n", "<stdin>:1: error: an empty source: decoding needs at least one token ('form')"),
])
def test_a_line_with_the_wrong_columns_is_an_error_at_its_line(trained, stdin, message):
    code, out, err = cli("predict", str(SPEC), "--checkpoint", str(trained), stdin=stdin)
    assert code != 0 and out == ""
    assert message in err and "Traceback" not in err


def test_the_error_names_the_input_file(trained, tmp_path):
    words = tmp_path / "words.tsv"
    words.write_text("cats\tNOUN\nwas AUX\n")
    code, _, err = cli("predict", str(SPEC), "--checkpoint", str(trained), "--input", str(words))
    assert code != 0 and f"{words}:2: error: 1 column" in err
