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
    1-D blocks handed out as reshaped views: a request takes the smallest free
    block of its dtype that holds it with at most 2^(1/4) to spare (``FIT``), so
    batches of different lengths share them; a new block is the request's size
    rounded up to a step of 2^(1/16) (``GROW``: a batch's geometry used again
    wastes at most 4%, where size classes of 2^(1/4) wasted up to 19%: 1.2 MB of
    the benchmark LSTM's 20). A block nobody took for a few passes is let go.
    Small arrays come from NumPy as usual.

    Why: on this kind of machine a fresh big array costs a page fault per 4 KiB
    page on first touch, and a step that frees its arrays at the end and makes
    them again next step spent a third of its time there.
    """

    MIN_BYTES = 1 << 16
    KEEP_PASSES = 3
    FIT = 2.0 ** 0.25       # a request takes a free block up to this many times its size
    GROW = 2.0 ** (1 / 16)  # a new block: the request rounded up to a power of this

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.blocks: dict[str, tuple[Reuse, list]] = {}   # dtype -> (blocks, last pass each was used)
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
            c = 1 if n <= 1 else max(n, int(math.ceil(cls.GROW ** math.ceil(math.log(n, cls.GROW)))))
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
        reuse, last = self.blocks.setdefault(dtype.str, (Reuse(), []))
        best, most = None, n * self.FIT
        sizes = [a.size for a in reuse.arrays]   # (no name may hold a block while free_at counts)
        for i, size in enumerate(sizes):
            if n <= size <= most and (best is None or size < sizes[best]) and reuse.free_at(i):
                best = i
        if best is not None:
            last[best] = self.pass_no
            a = reuse.arrays[best][:n].reshape(shape)
            if zero:
                a.fill(0)
            return a
        reuse.track([(np.zeros if zero else np.empty)(self._size_class(n), dtype)])   # (no name of ours holds it)
        last.append(self.pass_no)
        return reuse.arrays[-1][:n].reshape(shape)
