"""Vocabularies, encoding to numbers, and input standardisation."""
import json

import numpy as np
import pytest

from nnspec.data import (PAD_ID, UNK_ID, DataError, FieldSpec, RawData, Standardizer, Vocab,
                         build_vocabs, encode_data, encode_split, tokenize)


def F(name, kind, **kw):
    return FieldSpec(name=name, kind=kind, **kw)


# ---------------------------------------------------------------- Vocab

def test_token_vocab_order_specials_and_min_count():
    v = Vocab.build(["b a c a", "b a d"], min_count=2)
    assert v.itos == ["<pad>", "<unk>", "a", "b"]  # a: 3, b: 2; c and d once
    assert list(v.encode("a b c zzz")) == [2, 3, UNK_ID, UNK_ID]
    assert v.decode([2, 3, UNK_ID, PAD_ID]) == ["a", "b", "<unk>", "<pad>"]
    assert len(v) == 4 and "a" in v and "c" not in v


def test_token_vocab_ties_break_by_string_and_lists_are_tokens():
    v = Vocab.build([["z", "y"], ["x"]])
    assert v.itos[2:] == ["x", "y", "z"]
    assert v.encode(["x y"]).tolist() == [UNK_ID]  # a list is not re-tokenized


def test_char_level_and_lowercase():
    v = Vocab.build(["Abba"], level="char", lowercase=True)
    assert v.itos[2:] == ["a", "b"]
    assert v.encode("BAx").tolist() == [3, 2, UNK_ID]
    assert tokenize("Hi there", "word", lowercase=True) == ["hi", "there"]


def test_label_vocabs():
    assert Vocab.labels(["pos", "neg", "pos"]).itos == ["neg", "pos"]
    assert Vocab.labels([2, 0, 1]).itos == [0, 1, 2]  # already 0..K-1: kept
    assert Vocab.labels([0, 1], size=4).itos == [0, 1, 2, 3]  # declared count
    assert Vocab.labels([5, 1, 3]).itos == [1, 3, 5]
    v = Vocab.labels(["b", "a"])
    assert v.encode(["b", "a"]).tolist() == [1, 0]
    with pytest.raises(KeyError):
        v.index("c")


def test_vocab_json_round_trip():
    for v in (Vocab.build(["x y y"], level="char", lowercase=True), Vocab.labels([3, 1])):
        w = Vocab.from_json(json.loads(json.dumps(v.to_json())))
        assert w.itos == v.itos and w.to_json() == v.to_json()


def test_a_declared_class_count_of_integer_labels_costs_nothing_however_large():
    # (tests.fuzz_text seed 7900000: class[9999993] held a list of ten million ints and its dict, 1 GB)
    import tracemalloc
    tracemalloc.start()
    v = Vocab.labels([2, 0], size=10_000_000)
    held = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert held < 2**20 and len(v) == 10_000_000
    assert v.itos[:3] == [0, 1, 2] and v.itos[-1] == 9_999_999 and 5 in v and 10_000_000 not in v
    assert v.encode([3, 9_999_999]).tolist() == [3, 9_999_999] and v.decode([7]) == [7]
    # its index finds what a dict keyed by the ints would find: equal numbers, nothing else
    assert [v.stoi.get(k, -1) for k in (4, 4.0, True, np.int64(4), 4.5, "4", -1, 10_000_000, float("nan"))] \
        == [4, 4, 1, 4, -1, -1, -1, -1, -1]
    with pytest.raises(KeyError):
        v.index(10_000_000)
    assert v.to_json()["labels"] == 10_000_000 and "itos" not in v.to_json()   # a small checkpoint
    w = Vocab.from_json(json.loads(json.dumps(v.to_json())))
    assert w.itos == v.itos and len(w) == 10_000_000
    assert Vocab.labels([0, 1], size=3).itos == [0, 1, 2] != [0, 1]


# ---------------------------------------------------------------- encoding

def test_encode_all_kinds():
    fields = [F("x", "vector", size=2), F("s", "vector"), F("y", "class", role="target"),
              F("w", "tokens"), F("t", "classes", role="target"), F("b", "bag"),
              F("v", "vector_seq", size=3)]
    train = {"x": [[1, 2], [3, 4]], "s": [1.5, 2], "y": ["neg", "pos"], "w": ["a b", "b"],
             "t": [["D", "N"], ["N"]], "b": ["a a b", "c"], "v": [[[0, 0, 1], [1, 0, 0]], [[2, 2, 2]]]}
    vocabs = build_vocabs(train, fields)
    assert set(vocabs) == {"y", "w", "t", "b"}
    enc = encode_split(train, fields, vocabs)
    assert enc.data["x"].shape == (2, 2) and enc.data["s"].shape == (2,)
    assert enc.data["y"].tolist() == [0, 1] and enc.data["y"].dtype == np.int64
    assert [ids.tolist() for ids in enc.data["t"]] == [[0, 1], [1]]
    assert enc.data["v"][0].shape == (2, 3) and enc.bag_sizes == {"b": len(vocabs["b"])}
    assert enc.lengths.tolist() == [2, 1] and len(enc) == 2


def test_unseen_tokens_map_to_unk_outside_train():
    fields = [F("w", "tokens"), F("y", "class", role="target")]
    raw = RawData({"train": {"w": ["a b", "a"], "y": [0, 1]}, "test": {"w": ["a c"], "y": [1]}},
                  {"train": [("tr", 1), ("tr", 2)], "test": [("te", 1)]})
    encoded, vocabs = encode_data(raw, fields)
    assert "c" not in vocabs["w"]
    assert encoded["test"].data["w"][0].tolist() == [vocabs["w"].index("a"), UNK_ID]


def test_vector_size_mismatch_names_example_origin():
    fields = [F("x", "vector", size=3)]
    with pytest.raises(DataError) as info:
        encode_split({"x": [[1, 2, 3], [1, 2]]}, fields, {}, [("d.json", 4), ("d.json", 9)])
    assert (info.value.file, info.value.line) == ("d.json", 9)
    assert "expects 3 numbers per example, got shape (2,)" in info.value.message
    with pytest.raises(DataError, match="expects numbers"):
        encode_split({"x": [[1, 2, "a"]]}, fields, {})
    with pytest.raises(DataError, match="not a finite number"):
        encode_split({"x": [[1, 2, np.nan]]}, fields, {})


def test_label_errors_name_origin():
    fields = [F("y", "class", role="target", size=2)]
    vocabs = build_vocabs({"y": ["a", "b", "c"]}, fields)
    with pytest.raises(DataError, match="declares 2 classes, but the training data has 3 labels") as info:
        encode_split({"y": ["a", "c"]}, fields, vocabs, [("f", 1), ("f", 2)])
    assert info.value.line == 2
    fields = [F("y", "class", role="target")]
    vocabs = build_vocabs({"y": [0, 1]}, fields)
    with pytest.raises(DataError, match="label 2 does not occur in the training data"):
        encode_split({"y": [2]}, fields, vocabs, [("test.csv", 5)])
    with pytest.raises(DataError, match="integer or a string"):
        build_vocabs({"y": [0.5]}, fields)


def test_sequence_fields_must_have_equal_lengths():
    fields = [F("w", "tokens"), F("t", "classes", role="target")]
    split = {"w": ["a b", "a b c"], "t": [["X", "Y"], ["X", "Y"]]}
    with pytest.raises(DataError, match="differ in length: 'w' has 3 steps, 't' has 2") as info:
        encode_split(split, fields, build_vocabs(split, fields), [("f", 1), ("f", 7)])
    assert info.value.line == 7


def test_empty_token_sequence_is_an_error():
    fields = [F("w", "tokens")]
    with pytest.raises(DataError, match="no tokens"):
        encode_split({"w": ["a", "   "]}, fields, build_vocabs({"w": ["a"]}, fields), [("f", 1), ("f", 2)])


# ---------------------------------------------------------------- Standardizer

def test_standardizer_zero_mean_unit_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 3, size=(200, 3))
    x[:, 2] = 7.0  # constant feature: std 0 -> 1
    s = Standardizer.fit(x)
    y = s.apply(x.astype(np.float32))
    assert y.dtype == np.float32
    assert np.allclose(y[:, :2].mean(0), 0, atol=1e-5) and np.allclose(y[:, :2].std(0), 1, atol=1e-5)
    assert np.all(y[:, 2] == 0) and s.std[2] == 1
    t = Standardizer.from_json(json.loads(json.dumps(s.to_json())))
    assert np.array_equal(t.apply(x), s.apply(x))
    assert s.apply(x[None]).shape == (1, 200, 3)  # broadcasts over (T, B, n)
