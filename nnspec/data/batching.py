"""Batches: examples stacked feed-forward (B, *shape) or padded time-major (T, B, ...)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .encode import Encoded
from .fields import FieldKind
from .vocab import PAD_ID

IGNORE_LABEL = -1  # label at padding steps: losses skip it
POOL_BATCHES = 100  # by_length sorts pools of this many batches


@dataclass
class Batch:
    """``lengths`` (B,) and ``mask`` (T, B) describe the sequence fields (None
    without any); ``index`` holds the examples' positions in the split.
    ``carry`` marks a chunk that continues the previous chunk's sequences
    (truncated backpropagation through time): keep the hidden state."""

    arrays: dict[str, np.ndarray]
    lengths: np.ndarray | None
    mask: np.ndarray | None
    size: int
    index: np.ndarray
    carry: bool = False


def _pad(seqs: list[np.ndarray], fill, dtype) -> np.ndarray:
    out = np.full((max(len(s) for s in seqs), len(seqs), *seqs[0].shape[1:]), fill, dtype=dtype)
    for b, s in enumerate(seqs):
        out[: len(s), b] = s
    return out


def _bag(ids: list[np.ndarray], size: int, dtype, scale=None) -> np.ndarray:
    """Token counts (B, size); with ``scale`` (a NaiveBayesScaler) each present token's weight."""
    out = np.zeros((len(ids), size), dtype=dtype)
    rows = np.repeat(np.arange(len(ids)), [len(x) for x in ids])
    cols = np.concatenate(ids)
    if scale is None:
        np.add.at(out, (rows, cols), 1)
    else:  # set, not added: a token twice is one presence (only the nonzeros are touched)
        out[rows, cols] = scale.ratio[cols]
    return out


def _pad_words(examples: list[list[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The character ids of every word of a batch, ``(T_char, T_word * B)`` time-major: word t of
    example b is column t * B + b (``<pad>`` after its characters, and for the padding words), and the
    number of characters of each column (0 for padding words)."""
    B, T_word = len(examples), max(len(x) for x in examples)
    counts = np.zeros((T_word, B), dtype=np.int64)
    for b, words in enumerate(examples):
        counts[:len(words), b] = [len(w) for w in words]
    out = np.full((max(int(counts.max()), 1), T_word * B), PAD_ID, dtype=np.int64)
    for b, words in enumerate(examples):
        for t, w in enumerate(words):
            out[:len(w), t * B + b] = w
    return out, counts.reshape(-1)


def collate(encoded: Encoded, index: np.ndarray, dtype=np.float32) -> Batch:
    """The batch of the examples at ``index``."""
    index = np.asarray(index, dtype=np.int64)
    arrays, nested = {}, {}
    for f in encoded.fields:
        values = encoded.data[f.name]
        if f.kind is FieldKind.vector:
            arrays[f.name] = values[index].astype(dtype, copy=False)   # (indexing made a copy already)
        elif f.kind is FieldKind.class_:
            arrays[f.name] = values[index]
        elif f.kind is FieldKind.bag:
            arrays[f.name] = _bag([values[i] for i in index], encoded.bag_sizes[f.name], dtype,
                                  encoded.bag_scales.get(f.name))
        elif f.kind is FieldKind.tokens:
            arrays[f.name] = _pad([values[i] for i in index], PAD_ID, np.int64)
        elif f.kind is FieldKind.classes:
            arrays[f.name] = _pad([values[i] for i in index], IGNORE_LABEL, np.int64)
        elif f.kind is FieldKind.char_seqs:
            arrays[f.name], nested[f.inner_axis] = _pad_words([values[i] for i in index])
        else:  # vector_seq
            arrays[f.name] = _pad([values[i] for i in index], 0.0, dtype)
    lengths = mask = None
    if nested:   # the lengths of a nested inner axis: one per (outer step, example), 0 at padding words
        lengths = {axis: ls[index] for axis, ls in encoded.axis_lengths.items()}
        longest = max(lengths.values(), key=lambda ls: ls.max())
        mask = (np.arange(longest.max())[:, None] < longest[None, :]).astype(dtype)
        lengths.update(nested)
    elif len(encoded.axis_lengths) > 1:
        # several sequence axes: lengths per axis (a dict, as Model.run takes them); the mask of
        # the longest, for the memory estimate of backpropagation through time
        lengths = {axis: ls[index] for axis, ls in encoded.axis_lengths.items()}
        longest = max(lengths.values(), key=lambda ls: ls.max())
        mask = (np.arange(longest.max())[:, None] < longest[None, :]).astype(dtype)
    elif encoded.lengths is not None:
        lengths = encoded.lengths[index]
        mask = (np.arange(lengths.max())[:, None] < lengths[None, :]).astype(dtype)
    return Batch(arrays, lengths, mask, len(index), index)


def _length_groups(order: np.ndarray, lengths: list[np.ndarray], batch_size: int, pool: int) -> list[np.ndarray]:
    """Cut ``order`` into pools, sort each by length, and batch it: similar
    lengths share a batch, so little is padded, yet pools keep the randomness.
    ``lengths``: one array per sequence axis (an encoder's source, a decoder's target)."""
    batches = []
    for start in range(0, len(order), pool):
        chunk = _by_length(order[start:start + pool], lengths, batch_size)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return batches


def _by_length(chunk: np.ndarray, lengths: list[np.ndarray], batch_size: int) -> np.ndarray:
    """``chunk`` ordered so that batches cut from it have similar lengths on every axis: sorted by the
    first axis's lengths and, with d axes, cut into strips of about n^((d-1)/d) of its n batches, each
    strip ordered the same way by the other axes (a grid over the lengths: each strip spans a narrow
    range of the first axis, each batch within it a narrow range of the next). Sorting by the first
    axis alone pads the others as if unsorted when their lengths do not follow the first's."""
    chunk = chunk[np.argsort(lengths[0][chunk], kind="stable")]
    if len(lengths) == 1 or len(chunk) <= batch_size:
        return chunk
    batches = -(-len(chunk) // batch_size)
    strip = batch_size * max(1, round(batches ** ((len(lengths) - 1) / len(lengths))))
    return np.concatenate([_by_length(chunk[i:i + strip], lengths[1:], batch_size)
                           for i in range(0, len(chunk), strip)])


def iterate_batches(encoded: Encoded, batch_size: int, *, shuffle: bool,
                    rng: np.random.Generator | None = None, by_length: bool = False,
                    dtype=np.float32) -> Iterator[Batch]:
    """All examples once, in batches of ``batch_size`` (the last may be smaller).

    The order is drawn from ``rng`` when this is called, not while iterating, so
    it depends only on the rng's state at the call. ``by_length`` groups
    sequences of similar length, on every sequence axis (in shuffled pools when
    shuffling, over the whole split otherwise) and, when shuffling, shuffles the batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if shuffle and rng is None:
        raise ValueError("shuffle needs an rng")
    n = len(encoded)
    order = rng.permutation(n) if shuffle else np.arange(n)
    if by_length and encoded.lengths is not None:
        pool = batch_size * POOL_BATCHES if shuffle else n
        per_axis = [ls for ls in encoded.axis_lengths.values() if np.shape(ls) == (n,)] or [encoded.lengths]
        batches = _length_groups(order, per_axis, batch_size, max(pool, 1))
        if shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
    else:
        batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    return (collate(encoded, index, dtype) for index in batches)


def stream_batches(ids: np.ndarray, batch_size: int, bptt: int, *, name: str = "input", ahead: int = 1,
                   dtype=np.float32) -> Iterator[Batch]:
    """Language-model batches of a token stream of n tokens.

    The stream's n - 1 steps (a token and the token after it) are dealt to
    ``batch_size`` columns of consecutive steps, side by side: column b starts
    where column b - 1 ends, so every step of the stream is in exactly one
    column and nothing is dropped (the first (n - 1) % B columns have one step
    more, so the last chunk may have unequal lengths). Chunks of ``bptt`` steps
    follow down the columns (the last takes the rest, up to ``bptt + 1``);
    every chunk after the first has ``carry=True``.

    ``name`` holds the chunk's tokens (T, B); ``name.ahead`` (ahead, B) the
    ``ahead`` tokens that follow each column's last step in the chunk, in the
    stream (-1 past its end): what a ``shift`` that looks ahead reads beyond the
    chunk, so that the last steps of a chunk have targets too.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 1 or batch_size < 1 or bptt < 1:
        raise ValueError("need a 1-D id stream, batch_size >= 1 and bptt >= 1")
    shortest = (len(ids) - 1) // batch_size
    if shortest < 1:
        raise ValueError(f"a stream of {len(ids)} tokens is too short for {batch_size} parallel streams")
    longer = (len(ids) - 1) % batch_size
    lengths = shortest + (np.arange(batch_size) < longer)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])           # each column's first token
    ends = list(range(bptt, shortest, bptt)) + [int(lengths.max())]   # the last chunk takes the rest
    chunk_starts = [0] + ends[:-1]
    return (_chunk(ids, starts, lengths, a, b, max(ahead, 1), name, dtype) for a, b in zip(chunk_starts, ends))


def _chunk(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, a: int, b: int, ahead: int, name: str,
           dtype) -> Batch:
    """Steps a..b of every column (a column that ends sooner is padded)."""
    steps = np.minimum(lengths, b) - a                                 # real steps of each column
    t = np.arange(b - a)[:, None]
    position = starts[None, :] + a + t
    tokens = np.where(t < steps[None, :], ids[np.minimum(position, len(ids) - 1)], PAD_ID)
    after = starts[None, :] + a + steps[None, :] + np.arange(ahead)[:, None]
    following = np.where(after < len(ids), ids[np.minimum(after, len(ids) - 1)], -1)
    mask = (t < steps[None, :]).astype(dtype)
    return Batch({name: tokens, f"{name}.ahead": following}, steps.astype(np.int64), mask, len(starts),
                 np.arange(len(starts)), carry=a > 0)
