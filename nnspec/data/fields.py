"""What a spec declares about each data field: its kind, size, role and tokenization."""
from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FieldKind(str, Enum):
    vector = "vector"  # floats, per-example shape (size,), or () when size is None
    class_ = "class"  # one integer label per example
    tokens = "tokens"  # a sequence of token ids from a vocabulary
    classes = "classes"  # a sequence of labels, one per step
    bag = "bag"  # tokens counted into a vector of vocabulary size
    vector_seq = "vector_seq"  # a sequence of float vectors (size,) per step, () if None
    char_seqs = "char_seqs"  # a sequence of words, each a sequence of character ids (a nested sequence)


SEQUENCE_KINDS = frozenset({FieldKind.tokens, FieldKind.classes, FieldKind.vector_seq, FieldKind.char_seqs})
TEXT_KINDS = frozenset({FieldKind.tokens, FieldKind.bag})
LABEL_KINDS = frozenset({FieldKind.class_, FieldKind.classes})


class FieldSpec(BaseModel):
    """One declared field. ``size`` is the vector size, or the class count of a
    class/classes field when the spec declares it."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: FieldKind
    size: int | None = Field(default=None, ge=1)
    role: Literal["input", "target"] = "input"
    level: Literal["word", "char"] = "word"
    lowercase: bool = False
    axis: str | None = None   # a sequence's axis (nnspec/axes.py): fields on one axis have one length
    inner_axis: str | None = None   # a nested sequence's inner axis (char_seqs: the characters of a word)
    ngrams: int = Field(default=1, ge=1)  # a word-level text field also holds runs of up to n words
    char_ngrams: int = Field(default=0, ge=0)  # ... and the runs of 2..n characters of each word
    symbols: tuple[str, ...] = ()  # a decoder's start and end symbols around each sequence: whole tokens, also in a char field

    @property
    def is_sequence(self) -> bool:
        return self.kind in SEQUENCE_KINDS

    def describe(self) -> str:
        """Short form for messages, e.g. ``x (vector[4] input)``."""
        size = f"[{self.size}]" if self.size is not None else ""
        return f"'{self.name}' ({self.kind.value}{size} {self.role})"
