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
    assert max(len(h.tokens) for hs in fast for h in hs) >= 3     # several decoder steps compared
