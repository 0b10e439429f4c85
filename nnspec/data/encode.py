"""Raw examples -> numbers: float arrays, label ids, token-id sequences."""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from .errors import DataError
from .fields import FieldKind, FieldSpec, TEXT_KINDS
from .raw import RawData
from .vocab import Vocab

Origin = tuple[str, int | None]
MAX_WORD_CHARS = 1000   # the longest word a nested sequence holds (chars(w, k) clips words to k)


@dataclass
class Encoded:
    """One split, numeric. Per field: vector -> float64 (N, *shape); class ->
    int64 (N,); tokens, classes, bag -> list of int64 id arrays; vector_seq ->
    list of float64 (T_i, *shape). ``bag_sizes`` holds each bag field's vector
    size (its vocabulary size); ``bag_scales`` a bag field's per-token weights, when it is fed as
    weighted presence (``nb_scale``: see normalize.NaiveBayesScaler). ``lengths`` (N,) are the sequence lengths, None
    without sequence fields; all sequence fields of an example on one axis have that length.
    ``axis_lengths``: each sequence axis's lengths; with several axes (an encoder's source and
    a decoder's target) ``lengths`` are those of the first (batching by length sorts by all of them).
    """

    fields: list[FieldSpec]
    data: dict[str, np.ndarray | list[np.ndarray]]
    origins: list[Origin]
    bag_sizes: dict[str, int] = field(default_factory=dict)
    bag_scales: dict[str, object] = field(default_factory=dict)  # field -> NaiveBayesScaler
    lengths: np.ndarray | None = field(init=False)
    axis_lengths: dict = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.origins)
        for f in self.fields:
            if len(self.data[f.name]) != n:
                raise ValueError(f"field {f.name!r} has {len(self.data[f.name])} examples, expected {n}")
        self.lengths, self.axis_lengths, first = None, {}, {}
        for f in (f for f in self.fields if f.is_sequence):
            lengths = np.fromiter((len(x) for x in self.data[f.name]), dtype=np.int64, count=n)
            axis = f.axis or "time"
            if axis not in self.axis_lengths:
                self.axis_lengths[axis], first[axis] = lengths, f
                if self.lengths is None:
                    self.lengths = lengths
                continue
            bad = np.flatnonzero(lengths != self.axis_lengths[axis])
            if bad.size:
                i = bad[0]
                on = f" (both on the axis {axis})" if len(self.axis_lengths) > 1 or axis != "time" else ""
                raise DataError(f"sequence fields differ in length: '{first[axis].name}' has "
                                f"{self.axis_lengths[axis][i]} steps, '{f.name}' has {lengths[i]}{on}",
                                *self.origins[i])

    def __len__(self) -> int:
        return len(self.origins)


def _check_text(value, f: FieldSpec, origin: Origin) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value):
        if f.level == "char":  # a list is taken as tokens already: for characters, each must be one
            word = next((t for t in value if len(t) != 1 and t not in f.symbols), None)
            if word is not None:
                raise DataError(f"field '{f.name}' holds characters, but the data gives it the token {word!r}; "
                                f"give text, or declare the field a sequence of tokens", *origin)
        return
    raise DataError(f"field '{f.name}' expects text or a list of tokens, got {value!r}", *origin)


def _check_label(value, f: FieldSpec, origin: Origin) -> None:
    if isinstance(value, str) or (type(value) is int):
        return
    raise DataError(f"field '{f.name}': a class label must be an integer or a string, got {value!r}", *origin)


def _label_sequence(value, f: FieldSpec, origin: Origin) -> list:
    if not isinstance(value, (list, tuple)):
        raise DataError(f"field '{f.name}' expects a sequence of labels, got {value!r}", *origin)
    for label in value:
        _check_label(label, f, origin)
    return list(value)


def _default_origins(n: int) -> list[Origin]:
    return [("<data>", i + 1) for i in range(n)]


def build_vocabs(train_split: dict[str, list], fields: list[FieldSpec], min_count: int = 1,
                 origins: list[Origin] | None = None) -> dict[str, Vocab]:
    """Vocabularies from the training split only: tokens and bag fields get token
    vocabularies, class and classes fields label vocabularies."""
    vocabs = {}
    for f in fields:
        values = train_split[f.name]
        where = origins or _default_origins(len(values))
        if f.kind is FieldKind.char_seqs:   # the characters of every word (min_count counts characters)
            vocabs[f.name] = Vocab.build(([ch for word in v for ch in word] for v in values),
                                         min_count=min_count, level="char")
        elif f.kind in TEXT_KINDS:
            for value, origin in zip(values, where):
                _check_text(value, f, origin)
            vocabs[f.name] = Vocab.build(values, min_count=min_count, level=f.level, lowercase=f.lowercase,
                                          ngrams=f.ngrams, char_ngrams=f.char_ngrams)
        elif f.kind is FieldKind.class_:
            for value, origin in zip(values, where):
                _check_label(value, f, origin)
            vocabs[f.name] = Vocab.labels(values, size=f.size)
        elif f.kind is FieldKind.classes:
            labels = [_label_sequence(v, f, o) for v, o in zip(values, where)]
            vocabs[f.name] = Vocab.labels(chain.from_iterable(labels), size=f.size)
    return vocabs


def _floats(value, f: FieldSpec, shape: tuple, origin: Origin) -> np.ndarray:
    """One example (or one step) as floats of the declared shape."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise DataError(f"field '{f.name}' expects numbers, got {value!r}", *origin) from None
    if array.shape != shape:
        want = "a single number" if shape == () else f"{shape[0]} numbers"
        got = "a single number" if array.shape == () else f"shape {array.shape}"
        raise DataError(f"field {f.describe()} expects {want} per {'step' if f.is_sequence else 'example'}, "
                        f"got {got}", *origin)
    if not np.isfinite(array).all():
        raise DataError(f"field '{f.name}' holds a value that is not a finite number", *origin)
    return array


def _encode_vector(values: list, f: FieldSpec, origins: list[Origin]) -> np.ndarray:
    shape = () if f.size is None else (f.size,)
    try:  # fast path: one conversion of the whole column
        array = np.asarray(values, dtype=np.float64)
        if array.shape == (len(values), *shape) and np.isfinite(array).all():
            return array
    except (ValueError, TypeError):
        pass
    if not values:
        return np.zeros((0, *shape))
    return np.stack([_floats(v, f, shape, o) for v, o in zip(values, origins)])


def _encode_vector_seq(value, f: FieldSpec, origin: Origin) -> np.ndarray:
    shape = () if f.size is None else (f.size,)
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) == 0:
        raise DataError(f"field {f.describe()} expects a non-empty sequence of vectors", *origin)
    return np.stack([_floats(step, f, shape, origin) for step in value])


def _label_ids(labels: list, f: FieldSpec, vocab: Vocab, origins: list[Origin], steps: bool = False) -> np.ndarray:
    """Label ids; ``origins`` has one entry per label, to name a bad one (and, for the labels of one
    sequence, ``steps`` names its step)."""
    ids = np.fromiter((vocab.stoi.get(v, -1) for v in labels), dtype=np.int64, count=len(labels))
    limit = len(vocab) if f.size is None else f.size
    bad = np.flatnonzero((ids < 0) | (ids >= limit))
    if bad.size == 0:
        return ids
    i = bad[0]
    if ids[i] < 0:
        known = ", ".join(map(str, vocab.itos[:20])) + (", ..." if len(vocab) > 20 else "")
        at = f" at step {i + 1}" if steps else ""
        raise DataError(f"field '{f.name}': label {labels[i]!r}{at} does not occur in the training data "
                        f"(known labels: {known})", *origins[i])
    raise DataError(f"field '{f.name}' declares {f.size} classes, but the training data has "
                    f"{len(vocab)} labels: {', '.join(map(str, vocab.itos))}", *origins[i])


def _encode_words(words, f: FieldSpec, vocab: Vocab, origin: Origin) -> list[np.ndarray]:
    """One example of a nested sequence: each word's character ids. A word with no characters, or
    more than ``MAX_WORD_CHARS``, is an error at the example's line."""
    if not isinstance(words, (list, tuple)) or not words:
        raise DataError(f"field '{f.name}' expects a non-empty sequence of words", *origin)
    out = []
    for i, word in enumerate(words):
        if len(word) == 0:
            raise DataError(f"field '{f.name}': word {i + 1} has no characters (each word of a nested "
                            f"sequence needs at least one)", *origin)
        if len(word) > MAX_WORD_CHARS:
            raise DataError(f"field '{f.name}': word {i + 1} has {len(word)} characters, more than "
                            f"{MAX_WORD_CHARS}; clip words with chars(w, k)", *origin)
        out.append(vocab.encode(list(word)))
    return out


def encode_split(split_fields: dict[str, list], fields: list[FieldSpec], vocabs: dict[str, Vocab],
                 origins: list[Origin] | None = None) -> Encoded:
    """Encode one split's examples. ``origins`` (file, line) name the example in
    errors; without them errors give the example's 1-based number."""
    n = len(split_fields[fields[0].name]) if fields else 0
    origins = origins or _default_origins(n)
    data: dict[str, np.ndarray | list[np.ndarray]] = {}
    for f in fields:
        values = split_fields[f.name]
        if f.kind is FieldKind.vector:
            data[f.name] = _encode_vector(values, f, origins)
        elif f.kind is FieldKind.vector_seq:
            data[f.name] = [_encode_vector_seq(v, f, o) for v, o in zip(values, origins)]
        elif f.kind is FieldKind.class_:
            for value, origin in zip(values, origins):
                _check_label(value, f, origin)
            data[f.name] = _label_ids(values, f, vocabs[f.name], origins)
        elif f.kind is FieldKind.char_seqs:
            data[f.name] = [_encode_words(v, f, vocabs[f.name], o) for v, o in zip(values, origins)]
        elif f.kind is FieldKind.classes:
            data[f.name] = [_label_ids(_label_sequence(v, f, o), f, vocabs[f.name], [o] * len(v), steps=True)
                            for v, o in zip(values, origins)]
            for ids, origin in zip(data[f.name], origins):
                if ids.size == 0:
                    raise DataError(f"field '{f.name}': empty sequence", *origin)
        else:  # tokens, bag
            ids = []
            for value, origin in zip(values, origins):
                _check_text(value, f, origin)
                ids.append(vocabs[f.name].encode(value))
                if f.kind is FieldKind.tokens and ids[-1].size == 0:
                    raise DataError(f"field '{f.name}': no tokens (a sequence needs at least one step)",
                                    *origin)
            data[f.name] = ids
    bag_sizes = {f.name: len(vocabs[f.name]) for f in fields if f.kind is FieldKind.bag}
    return Encoded(list(fields), data, list(origins), bag_sizes)


def encode_data(raw: RawData, fields: list[FieldSpec],
                min_count: int = 1) -> tuple[dict[str, Encoded], dict[str, Vocab]]:
    """Every split encoded with vocabularies built from "train" ("all" if unsplit)."""
    source = "train" if "train" in raw.splits else "all"
    if source not in raw.splits:
        raise ValueError(f"no train split to build vocabularies from (splits: {', '.join(raw.splits)})")
    vocabs = build_vocabs(raw.splits[source], fields, min_count, raw.origins[source])
    encoded = {name: encode_split(split, fields, vocabs, raw.origins[name])
               for name, split in raw.splits.items()}
    return encoded, vocabs
