"""One rule for reusing arrays from one pass to the next: an array that a kept structure (a
prepared pass, a loop run, the buffer pool, the table gradients) made may be overwritten only
while nobody else refers to it — no tape, gradient dict or view of it outlives the pass that
used it. ``Reuse`` notes, when an array starts being tracked, the references its owner holds to
it itself (``sys.getrefcount``), and compares later counts with them."""
from __future__ import annotations

import sys
from itertools import islice

import numpy as np


class Reuse:
    """Arrays tracked for reuse and the references their owner holds to each itself."""

    __slots__ = ("arrays", "own")   # (one for every kept structure: no instance dict)

    def __init__(self) -> None:
        self.arrays: list = []
        self.own: list[int] = []

    def counts(self, start: int = 0) -> list[int]:
        # (islice: a slice of the list would hold a reference to each array itself)
        return list(map(sys.getrefcount, islice(self.arrays, start, None) if start else self.arrays))

    def track(self, arrays: list) -> None:
        """Start tracking ``arrays`` (a list the caller drops afterwards): every reference to them
        that exists now, besides that list's, is the owner's own."""
        n = len(self.arrays)
        self.arrays.extend(arrays)
        now = self.counts()[n:]           # (before any other list holds them)
        temp: dict[int, int] = {}   # (a dict, not a Counter: its ABC check of a generator fills
        for a in arrays:            # caches of every Mapping class, 15 KiB held, at each setup)
            temp[id(a)] = temp.get(id(a), 0) + 1
        self.own.extend(c - temp[id(a)] for a, c in zip(self.arrays[n:], now))

    def absorb(self, before: list[int]) -> None:
        """References the owner added to the tracked arrays since ``before = counts()`` are its own."""
        self.own = [o + now - b for o, now, b in zip(self.own, self.counts(), before)] + self.own[len(before):]

    def free(self, start: int = 0) -> bool:
        """Whether nobody but the owner refers to the tracked arrays (from ``start`` on)."""
        return self.counts(start) == (self.own[start:] if start else self.own)

    def free_at(self, i: int) -> bool:
        return sys.getrefcount(self.arrays[i]) == self.own[i]   # (counted as counts() counts: the call's argument)

    def keep(self, indices: list[int]) -> None:
        """Stop tracking all but the arrays at ``indices``."""
        self.arrays = [self.arrays[i] for i in indices]
        self.own = [self.own[i] for i in indices]


def distinct(arrays: list) -> list:
    """The arrays and the arrays they are views of, each once."""
    seen, out = set(), []
    for a in arrays:
        for x in (a, a.base):
            if x is not None and id(x) not in seen:
                seen.add(id(x))
                out.append(x)
    return out


class Spare:
    """Arrays a backward pass reads no more, handed out again in parts (bump allocation: the
    parts of one array never overlap; each starts at a multiple of 64 bytes)."""

    ALIGN = 64

    def __init__(self) -> None:
        self.free: list[list] = []      # [flat array, offset of its first free element]

    def add(self, a: np.ndarray) -> None:
        if a.flags.c_contiguous and a.size:
            self.free.append([a.reshape(-1), 0])

    def take(self, shape: tuple, dtype) -> np.ndarray | None:
        """A part of a spare array for an array of ``shape`` and ``dtype`` (the one with the least
        room that holds it), or None."""
        n = int(np.prod(shape, dtype=np.int64))
        best = None
        for entry in self.free:
            flat, at = entry
            if (flat.dtype == dtype and flat.size - at >= n
                    and (best is None or flat.size - at < best[0].size - best[1])):
                best = entry
        if best is None:
            return None
        flat, at = best
        step = max(self.ALIGN // flat.itemsize, 1)
        best[1] = min(-(-(at + n) // step) * step, flat.size)
        return flat[at:at + n].reshape(shape)
