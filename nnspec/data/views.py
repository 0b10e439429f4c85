"""Views: token inputs derived from another input's tokens (``input s : seq of token = suffix(w, 3)``),
and the characters of each word, a sequence of sequences (``input c : seq of seq(char) of char = chars(w)``).

They let a tagger see the spelling of a word — its suffix, prefix, shape or
lower-cased form — through an embedding of its own, so rare and unseen words
still carry evidence about their tag.
"""
from __future__ import annotations

import re
from typing import Callable


def word_shape(word: str) -> str:
    """Character classes with runs collapsed: ``Hello`` -> ``Xx``, ``1999`` -> ``d``, ``U.S.`` -> ``X.X.``."""
    classes = "".join("X" if ch.isupper() else "x" if ch.islower() else "d" if ch.isdigit() else ch for ch in word)
    return re.sub(r"(.)\1+", r"\1", classes)


def _affix(take: Callable[[str, int], str], default: int):
    def view(word: str, k: int | None) -> str:
        return take(word.lower(), k or default)
    return view


VIEWS: dict[str, Callable[[str, int | None], str | list[str]]] = {
    "lower": lambda w, k: w.lower(),
    "prefix": _affix(lambda w, k: w[:k], 3),
    "suffix": _affix(lambda w, k: w[-k:], 3),
    "shape": lambda w, k: word_shape(w),
    "chars": lambda w, k: clip_word(list(w), k),   # a nested sequence: each word's characters, case kept
}


def clip_word(chars: list[str], k: int | None) -> list[str]:
    """At most ``k`` characters of a word (all without ``k``): a longer word keeps its first ``k // 2``
    and its last ``k - k // 2``, where its capitals, prefixes and suffixes are."""
    if k is None or len(chars) <= k:
        return chars
    return chars[:k // 2] + chars[len(chars) - (k - k // 2):]


def apply_view(name: str, tokens: list[str], k: int | None) -> list[str]:
    fn = VIEWS[name]
    return [fn(t, k) for t in tokens]
