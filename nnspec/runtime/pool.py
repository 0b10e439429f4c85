"""Big arrays reused from one pass to the next (``BufferPool``)."""
from __future__ import annotations

import math

import numpy as np

from .reuse import Reuse


class BufferPool:
    """Big arrays reused from one pass to the next, safely.

    An array is handed out again only once nothing but the pool refers to it
    (``reuse.Reuse``): values and gradients that a caller still holds — a
    tape, a gradient dict, a view of either — are never overwritten. Arrays are
    1-D blocks in size classes (steps of 2^(1/4)) handed out as reshaped views,
    so batches of different lengths share them; a block nobody took for a few
    passes is let go. Small arrays come from NumPy as usual.

    Why: on this kind of machine a fresh big array costs a page fault per 4 KiB
    page on first touch, and a step that frees its arrays at the end and makes
    them again next step spent a third of its time there.
    """

    MIN_BYTES = 1 << 16
    KEEP_PASSES = 3

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.blocks: dict[tuple, tuple[Reuse, list]] = {}   # (elements, dtype) -> (blocks, last pass used)
        self.pass_no = 0

    def new_pass(self) -> None:
        self.pass_no += 1
        for key in list(self.blocks):
            # a block that is free and unused lately goes
            reuse, last = self.blocks[key]
            kept = [i for i in range(len(last))
                    if self.pass_no - last[i] <= self.KEEP_PASSES or not reuse.free_at(i)]
            if not kept:
                del self.blocks[key]
            elif len(kept) < len(last):
                reuse.keep(kept)
                last[:] = [last[i] for i in kept]

    def block_count(self) -> int:
        return sum(len(last) for _, last in self.blocks.values())

    _classes: dict[int, int] = {}

    @classmethod
    def _size_class(cls, n: int) -> int:
        c = cls._classes.get(n)
        if c is None:
            c = 1 if n <= 1 else max(n, int(math.ceil(2.0 ** (math.ceil(4 * math.log2(n)) / 4))))
            cls._classes[n] = c
        return c

    def empty(self, shape, dtype) -> np.ndarray:
        return self._take(tuple(shape), np.dtype(dtype), zero=False)

    def zeros(self, shape, dtype) -> np.ndarray:
        return self._take(tuple(shape), np.dtype(dtype), zero=True)

    def _take(self, shape: tuple, dtype: np.dtype, zero: bool) -> np.ndarray:
        n = math.prod(shape)
        if not self.enabled or n * dtype.itemsize < self.MIN_BYTES:
            return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
        key = (self._size_class(n), dtype.str)
        reuse, last = self.blocks.setdefault(key, (Reuse(), []))
        for i in range(len(last)):
            if reuse.free_at(i):
                last[i] = self.pass_no
                a = reuse.arrays[i][:n].reshape(shape)
                if zero:
                    a.fill(0)
                return a
        reuse.track([(np.zeros if zero else np.empty)(key[0], dtype)])   # (no name of ours holds it)
        last.append(self.pass_no)
        return reuse.arrays[-1][:n].reshape(shape)
