"""Vocabularies: tokens and labels <-> integer ids."""
from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Mapping
from typing import Hashable, Iterable, Sequence

import numpy as np

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


def tokenize(value: str | Sequence[str], level: str = "word", lowercase: bool = False) -> list[str]:
    """Text -> tokens: whitespace-separated words, or characters. A list is
    taken as already tokenized (e.g. the words of a treebank sentence)."""
    if isinstance(value, str):
        if lowercase:
            value = value.lower()
        return list(value) if level == "char" else value.split()
    return [t.lower() for t in value] if lowercase else list(value)


def with_ngrams(tokens: list[str], n: int) -> list[str]:
    """The tokens, then every run of 2..n consecutive tokens joined by a space (``ngrams = n`` on a
    data source): ``a b c`` with n = 2 -> ``a, b, c, a b, b c``. Words never hold a space, so an
    n-gram is never mistaken for a word."""
    out = list(tokens)
    for k in range(2, n + 1):
        out += [" ".join(tokens[i:i + k]) for i in range(len(tokens) - k + 1)]
    return out


def with_char_ngrams(tokens: list[str], words: list[str], n: int) -> list[str]:
    """The tokens, then every run of 2..n characters of each word marked at its ends, ``<film>``
    (``char_ngrams = n`` on a data source): ``film`` with n = 3 -> `` <f``, `` fi``, ..., `` m>``,
    `` <fi``, ..., `` lm>``. Each is held as a space followed by its characters: words never hold a
    space and word n-grams never start with one, so a piece of a word is never mistaken for either."""
    out = list(tokens)
    for word in words:
        marked = f"<{word}>"
        for k in range(2, n + 1):
            out += [" " + marked[i:i + k] for i in range(len(marked) - k + 1)]
    return out


class IdentityLabels(Sequence):
    """The labels 0..n-1 as a label vocabulary's entries, each its own id, held as their count: a
    declared ``class[n]`` of integer labels costs nothing however large n is (a list of ten million
    ints and its index took a gigabyte). Compares equal to the list ``[0, ..., n-1]``."""

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return list(range(self.n)[i]) if isinstance(i, slice) else range(self.n)[i]

    def __iter__(self):
        return iter(range(self.n))

    def __contains__(self, label) -> bool:
        return _label_id(label, self.n) is not None

    def __eq__(self, other) -> bool:
        if isinstance(other, IdentityLabels):
            return other.n == self.n
        return isinstance(other, (list, tuple)) and len(other) == self.n and all(
            a == b for a, b in zip(other, range(self.n)))

    def __hash__(self):
        return hash(("IdentityLabels", self.n))

    def __repr__(self) -> str:
        return f"IdentityLabels({self.n})"


class _IdentityIndex(Mapping):
    """``stoi`` of :class:`IdentityLabels`: a label's id is the label (a dict's lookup of an equal number)."""

    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = n

    def __getitem__(self, label) -> int:
        i = _label_id(label, self.n)
        if i is None:
            raise KeyError(label)
        return i

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(range(self.n))


def _label_id(label, n: int) -> int | None:
    """The entry of 0..n-1 a dict keyed by those ints would find for ``label`` (an equal number), else None."""
    if not isinstance(label, numbers.Number):
        return None
    try:
        i = int(label)
    except (TypeError, ValueError, OverflowError):
        return None
    return i if i == label and 0 <= i < n else None


class Vocab:
    """A bijection between tokens (or labels) and ids 0..len-1.

    Token vocabularies reserve id 0 for ``<pad>`` and id 1 for ``<unk>``, to which
    every token outside the vocabulary maps. Label vocabularies have no specials
    and an unknown label is a KeyError: a model cannot predict a class it has no
    output for.
    """

    def __init__(self, itos: Sequence[Hashable], *, specials: bool = True,
                 level: str = "word", lowercase: bool = False, ngrams: int = 1, char_ngrams: int = 0):
        if isinstance(itos, IdentityLabels):
            self.itos, self.stoi = itos, _IdentityIndex(len(itos))
        else:
            self.itos = list(itos)
            self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.specials = specials
        self.level = level
        self.lowercase = lowercase
        self.ngrams = ngrams  # 1: words only; n: words and their runs of up to n words
        self.char_ngrams = char_ngrams  # 0: none; n: also the runs of 2..n characters of each word

    def units(self, value: str | Sequence[str]) -> list[str]:
        """What a text counts as: its tokens, and their n-grams when the vocabulary has them."""
        words = tokenize(value, self.level, self.lowercase)
        tokens = with_ngrams(words, self.ngrams) if self.ngrams > 1 else words
        return with_char_ngrams(tokens, words, self.char_ngrams) if self.char_ngrams else tokens

    @classmethod
    def build(cls, examples: Iterable[str | Sequence[str]], *, min_count: int = 1,
              level: str = "word", lowercase: bool = False, ngrams: int = 1, char_ngrams: int = 0) -> Vocab:
        """A token vocabulary of the tokens (and n-grams) seen at least ``min_count`` times,
        most frequent first, ties in string order (so the ids are reproducible)."""
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        reader = cls([], level=level, lowercase=lowercase, ngrams=ngrams, char_ngrams=char_ngrams)
        counts: Counter[str] = Counter()
        for example in examples:
            counts.update(reader.units(example))
        for special in (PAD, UNK):
            counts.pop(special, None)
        kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls([PAD, UNK, *kept], specials=True, level=level, lowercase=lowercase, ngrams=ngrams,
                   char_ngrams=char_ngrams)

    @classmethod
    def labels(cls, values: Iterable[Hashable], size: int | None = None) -> Vocab:
        """A label vocabulary. Integer labels already numbered 0..K-1 keep their
        numbers (K = the declared ``size`` when given, so a class absent from the
        training data still has its id); other labels are numbered in sorted order."""
        seen = set(values)
        ints = bool(seen) and all(type(v) is int for v in seen) and min(seen) >= 0
        if ints and size is not None:
            return cls(IdentityLabels(size), specials=False)  # labels >= size are rejected at encoding
        if ints and len(seen) == max(seen) + 1:
            return cls(IdentityLabels(len(seen)), specials=False)
        return cls(sorted(seen, key=lambda v: (isinstance(v, str), v)), specials=False)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: Hashable) -> bool:
        return token in self.stoi

    def index(self, token: Hashable) -> int:
        """The id of one token (``<unk>``'s for an unknown token) or label (KeyError)."""
        if self.specials:
            return self.stoi.get(token, UNK_ID)
        return self.stoi[token]

    def encode(self, value: str | Sequence[Hashable]) -> np.ndarray:
        """Ids (int64) of a text, a token list, or (label vocabulary) a label list."""
        tokens = self.units(value) if self.specials else value
        return np.fromiter((self.index(t) for t in tokens), dtype=np.int64, count=len(tokens))

    def decode(self, ids: Iterable[int]) -> list:
        return [self.itos[int(i)] for i in ids]

    def to_json(self) -> dict:
        """A JSON-serialisable dict, saved beside a trained model."""
        # (identity labels as their count: a checkpoint of ten million classes stays small)
        entries = ({"labels": len(self.itos)} if isinstance(self.itos, IdentityLabels) else {"itos": self.itos})
        return {**entries, "specials": self.specials,
                "level": self.level, "lowercase": self.lowercase, "ngrams": self.ngrams,
                "char_ngrams": self.char_ngrams}

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        itos = data["itos"] if data.get("itos") is not None else IdentityLabels(data["labels"])
        return cls(itos, specials=data["specials"],
                   level=data["level"], lowercase=data["lowercase"], ngrams=data.get("ngrams", 1),
                   char_ngrams=data.get("char_ngrams", 0))

    def __repr__(self) -> str:
        kind = "tokens" if self.specials else "labels"
        return f"Vocab({kind}, {len(self)} entries)"
