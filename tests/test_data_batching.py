"""Batches: stacking, padding and masks, length grouping, language-model streams."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nnspec.data import (IGNORE_LABEL, PAD_ID, DataError, Encoded, FieldSpec, build_vocabs,
                         encode_split, iterate_batches, stream_batches)


def F(name, kind, **kw):
    return FieldSpec(name=name, kind=kind, **kw)


def tagged(lengths) -> Encoded:
    """Sentences w_i of the given lengths, each tagged, with a per-sentence label."""
    fields = [F("w", "tokens"), F("t", "classes", role="target"), F("y", "class", role="target")]
    split = {"w": [[f"w{j}" for j in range(n)] for n in lengths],
             "t": [["A" if j % 2 else "B" for j in range(n)] for n in lengths],
             "y": [i % 3 for i in range(len(lengths))]}
    return encode_split(split, fields, build_vocabs(split, fields))


def test_padding_time_major_with_masks():
    enc = tagged([3, 1, 2])
    (batch,) = iterate_batches(enc, 8, shuffle=False)
    assert batch.size == 3 and batch.index.tolist() == [0, 1, 2] and not batch.carry
    w, t = batch.arrays["w"], batch.arrays["t"]
    assert w.shape == t.shape == (3, 3) and w.dtype == t.dtype == np.int64
    assert batch.lengths.tolist() == [3, 1, 2]
    assert batch.mask.tolist() == [[1, 1, 1], [1, 0, 1], [1, 0, 0]] and batch.mask.dtype == np.float32
    assert (w[batch.mask == 0] == PAD_ID).all() and (w[batch.mask == 1] != PAD_ID).all()
    assert (t[batch.mask == 0] == IGNORE_LABEL).all() and (t[batch.mask == 1] >= 0).all()
    assert batch.arrays["y"].tolist() == [0, 1, 2]


def test_feed_forward_bag_and_vector_seq():
    fields = [F("x", "vector", size=2), F("b", "bag"), F("v", "vector_seq", size=2)]
    split = {"x": [[1, 2], [3, 4]], "b": ["a a b", "b"], "v": [[[1, 1]], [[2, 2], [3, 3]]]}
    vocabs = build_vocabs(split, fields)
    (batch,) = iterate_batches(encode_split(split, fields, vocabs), 2, shuffle=False, dtype=np.float64)
    assert batch.arrays["x"].shape == (2, 2) and batch.arrays["x"].dtype == np.float64
    bag = batch.arrays["b"]
    a, b = vocabs["b"].index("a"), vocabs["b"].index("b")
    assert bag.shape == (2, len(vocabs["b"])) and bag[0, a] == 2 and bag[0, b] == 1 and bag[1].sum() == 1
    assert batch.arrays["v"].shape == (2, 2, 2) and batch.arrays["v"][1, 0].tolist() == [0, 0]
    assert batch.lengths.tolist() == [1, 2]


def test_feed_forward_only_has_no_mask():
    fields = [F("x", "vector")]
    batches = list(iterate_batches(encode_split({"x": [1, 2, 3]}, fields, {}), 2, shuffle=False))
    assert [b.size for b in batches] == [2, 1] and batches[0].mask is None and batches[0].lengths is None


def test_shuffle_needs_rng_and_is_deterministic():
    enc = tagged([1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError):
        iterate_batches(enc, 2, shuffle=True)
    order = [[b.index.tolist() for b in iterate_batches(enc, 2, shuffle=True, rng=np.random.default_rng(5))]
             for _ in range(2)]
    assert order[0] == order[1] and sorted(sum(order[0], [])) == list(range(6))


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=300),
       batch_size=st.integers(1, 17), seed=st.integers(0, 1000), shuffle=st.booleans())
def test_by_length_loses_no_example(lengths, batch_size, seed, shuffle):
    enc = tagged(lengths)
    rng = np.random.default_rng(seed)
    batches = list(iterate_batches(enc, batch_size, shuffle=shuffle, rng=rng, by_length=True))
    seen = np.concatenate([b.index for b in batches])
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    assert all(1 <= b.size <= batch_size for b in batches)
    for b in batches:  # every example's tokens survive padding
        for col, i in enumerate(b.index):
            assert b.arrays["w"][: lengths[i], col].tolist() == enc.data["w"][i].tolist()


def test_by_length_reduces_padding():
    lengths = np.random.default_rng(0).integers(1, 50, size=400).tolist()
    enc = tagged(lengths)

    def padding(by_length):
        batches = iterate_batches(enc, 16, shuffle=True, rng=np.random.default_rng(1), by_length=by_length)
        return sum(b.mask.size - b.mask.sum() for b in batches)

    assert padding(True) < padding(False) / 4


def two_axes(src_lengths, tgt_lengths) -> Encoded:
    """Sources and targets on axes of their own (an encoder-decoder's data), of the given lengths."""
    fields = [F("src", "tokens", axis="src"), F("tgt", "tokens", axis="out")]
    split = {"src": [[f"s{j % 7}" for j in range(n)] for n in src_lengths],
             "tgt": [[f"t{j % 5}" for j in range(n)] for n in tgt_lengths]}
    return encode_split(split, fields, build_vocabs(split, fields))


def padded_steps(batches, lengths: dict) -> dict:
    """Padding steps on each axis, over all the batches."""
    return {axis: sum(len(b.index) * int(ls[b.index].max()) - int(ls[b.index].sum()) for b in batches)
            for axis, ls in lengths.items()}


@pytest.mark.parametrize("shuffle", [True, False])
def test_by_length_groups_every_sequence_axis(shuffle):
    """Lengths on two axes that do not follow each other: batching by length pads the second axis far
    less than sorting by the first alone (what it did before), the first about as little, and each
    example's tokens survive on both axes."""
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 30, size=3000), rng.integers(1, 30, size=3000)
    enc = two_axes(src, tgt)
    lengths = {"src": src, "out": tgt}

    def batches(e, by_length):
        return list(iterate_batches(e, 16, shuffle=shuffle, rng=np.random.default_rng(1), by_length=by_length))
    unsorted = padded_steps(batches(enc, False), lengths)
    first_only = padded_steps(batches(two_axes(src, src), True), lengths)   # one axis: sorted by src alone
    both = padded_steps(batches(enc, True), lengths)
    assert both["out"] < first_only["out"] / 3 and first_only["out"] > unsorted["out"] * 0.8
    assert both["src"] < unsorted["src"] / 4
    assert sum(both.values()) < sum(first_only.values()) / 2
    found = batches(enc, True)
    assert sorted(np.concatenate([b.index for b in found]).tolist()) == list(range(3000))
    for b in found[:50]:
        for col, i in enumerate(b.index):
            assert b.arrays["tgt"][:tgt[i], col].tolist() == enc.data["tgt"][i].tolist()
            assert b.arrays["src"][:src[i], col].tolist() == enc.data["src"][i].tolist()
            assert b.lengths["out"][col] == tgt[i] and b.lengths["src"][col] == src[i]


def test_by_length_on_one_axis_sorts_as_before():
    """With one sequence axis the batches are those of a sort by its lengths, pool by pool."""
    lengths = np.random.default_rng(2).integers(1, 40, size=500)
    found = [b.index for b in iterate_batches(tagged(lengths.tolist()), 8, shuffle=True,
                                               rng=np.random.default_rng(3), by_length=True)]
    order = np.random.default_rng(3).permutation(500)
    expected = []
    for a in range(0, 500, 800):
        chunk = order[a:a + 800][np.argsort(lengths[order[a:a + 800]], kind="stable")]
        expected += [chunk[i:i + 8].tolist() for i in range(0, len(chunk), 8)]
    assert sorted(map(list, found)) == sorted(expected)


def test_stream_chunks_reassemble_into_the_stream():
    ids = np.arange(103)
    chunks = list(stream_batches(ids, batch_size=4, bptt=7))  # 102 steps: columns of 26, 26, 25, 25
    assert [c.carry for c in chunks] == [False] + [True] * (len(chunks) - 1)
    assert [c.arrays["input"].shape[0] for c in chunks] == [7, 7, 7, 5]
    assert chunks[-1].lengths.tolist() == [5, 5, 4, 4]
    for c in chunks[:-1]:
        assert c.lengths.tolist() == [7] * 4 and c.mask.shape == (7, 4) and c.mask.all()
    columns = [np.concatenate([c.arrays["input"][:n, b] for c in chunks for n in [c.lengths[b]]])
               for b in range(4)]
    assert np.array_equal(np.concatenate(columns), ids[:102])  # every token but the last is a step, once


def _pairs(chunks, k=1):
    """(token, token k steps later) of every real step, reading past a chunk's end from its lookahead."""
    pairs = []
    for c in chunks:
        x, ahead = c.arrays["x"], c.arrays["x.ahead"]
        for b, n in enumerate(c.lengths):
            following = np.concatenate([x[:n, b], ahead[:, b]])
            pairs += [(int(x[t, b]), int(following[t + k])) for t in range(n)]
    return pairs


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 500), batch_size=st.integers(1, 9), bptt=st.integers(1, 40))
def test_every_consecutive_pair_of_the_stream_is_a_step_once(n, batch_size, bptt):
    if n - 1 < batch_size:
        with pytest.raises(ValueError):
            stream_batches(np.arange(n), batch_size, bptt)
        return
    chunks = list(stream_batches(np.arange(n), batch_size, bptt, name="x"))
    # ids are positions: the next token is id + 1, and the last token has none
    assert sorted(_pairs(chunks)) == [(i, i + 1) for i in range(n - 1)]
    assert all(c.arrays["x"].shape[0] == bptt for c in chunks[:-1])
    assert chunks[-1].lengths.min() >= 1 and chunks[-1].arrays["x"].shape[0] <= bptt + 1
    assert all(c.arrays["x.ahead"].shape == (1, batch_size) for c in chunks)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 300), batch_size=st.integers(1, 5), bptt=st.integers(3, 20), k=st.integers(1, 3))
def test_the_lookahead_reaches_k_tokens_past_a_chunk(n, batch_size, bptt, k):
    if n - 1 < batch_size:
        return
    chunks = list(stream_batches(np.arange(n), batch_size, bptt, name="x", ahead=k))
    assert sorted(_pairs(chunks, k)) == [(i, i + k if i + k < n else -1) for i in range(n - 1)]


def test_mismatched_sequence_lengths_name_the_example():
    fields = [F("w", "tokens"), F("v", "vector_seq")]
    with pytest.raises(DataError) as info:
        Encoded(fields, {"w": [np.array([2, 3])], "v": [np.zeros(3)]}, [("s.npz", 12)])
    assert str(info.value).startswith("s.npz:12: error: sequence fields differ in length")
