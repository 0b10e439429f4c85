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
    rounded up to a whole page (``PAGE``): a batch's geometry used again wastes
    nothing, where rounding up to a step of 2^(1/16) wasted 3% of every block
    (0.5 MB of the benchmark LSTM's 18, the step's peak) for the few batches a bit
    longer than the last that it let share a block. A block nobody took for a few
    passes is let go. Small arrays come from NumPy as usual.

    Why: on this kind of machine a fresh big array costs a page fault per 4 KiB
    page on first touch, and a step that frees its arrays at the end and makes
    them again next step spent a third of its time there.
    """

    MIN_BYTES = 1 << 16
    KEEP_PASSES = 3
    FIT = 2.0 ** 0.25       # a request takes a free block up to this many times its size
    PAGE = 4096             # a new block: the request rounded up to whole pages of this many bytes

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

    @classmethod
    def _block_size(cls, n: int, itemsize: int) -> int:
        """Elements of a new block for a request of n: whole pages."""
        per_page = max(cls.PAGE // itemsize, 1)
        return -(-n // per_page) * per_page

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
        reuse.track([(np.zeros if zero else np.empty)(self._block_size(n, dtype.itemsize), dtype)])   # (no name of ours holds it)
        last.append(self.pass_no)
        return reuse.arrays[-1][:n].reshape(shape)
