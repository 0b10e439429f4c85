"""The corpora shipped in data/ read as their READMEs describe them."""
from pathlib import Path

import pytest

from nnspec.data import DataError, FieldSpec, encode_data, read_source

DATA = Path(__file__).resolve().parents[1] / "data"


def test_ud_english_ewt_dev():
    fields = [FieldSpec(name="words", kind="tokens"), FieldSpec(name="tags", kind="classes", role="target")]
    raw = read_source("conllu", [], {"dev": "en_ewt-ud-dev.conllu.gz"}, fields, DATA / "ud-english-ewt")
    words = raw.splits["dev"]["words"]
    assert len(words) == 2001
    assert sum(len(s) for s in words) == 25147
    assert words[0] == ["From", "the", "AP", "comes", "this", "story", ":"]
    tags = {t for sentence in raw.splits["dev"]["tags"] for t in sentence}
    upos = "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X"
    assert tags == set(upos.split())


def test_mr_polarity_is_latin1():
    fields = [FieldSpec(name="text", kind="tokens"), FieldSpec(name="label", kind="class", role="target")]
    pairs = [("rt-polarity.pos.gz", 1), ("rt-polarity.neg.gz", 0)]
    base = DATA / "mr-polarity"
    raw = read_source("lines", pairs, {"encoding": "latin-1"}, fields, base)
    labels = raw.splits["all"]["label"]
    assert len(labels) == 10662 and labels.count(1) == labels.count(0) == 5331
    assert sum(any(ord(c) > 127 for c in line) for line in raw.splits["all"]["text"]) > 100
    encoded, vocabs = encode_data(raw, fields)
    assert len(vocabs["label"]) == 2 and len(encoded["all"]) == 10662
    with pytest.raises(DataError, match='encoding = "latin-1"'):
        read_source("lines", pairs, {}, fields, base)


def test_corpora_keep_licence_and_attribution():
    for folder in ("ud-english-ewt", "mr-polarity", "tinyshakespeare"):
        assert (DATA / folder / "README.md").is_file()
    assert "Attribution-ShareAlike 4.0" in (DATA / "ud-english-ewt" / "LICENSE.txt").read_text()
    assert "Pang" in (DATA / "mr-polarity" / "README.md").read_text()
