"""The one way gradients are summed: ``GradSum`` adds each gradient that reaches a value into
the gradient dict, in place where the array is one it made itself (never into a caller's)."""
from __future__ import annotations

import numpy as np

from .pool import BufferPool
from .reuse import Spare
from .rowgrad import RowGrad


class Into:
    """A VJP written into a given array: ``fn(dest, accumulate)``."""

    __slots__ = ("op", "i", "g", "xs", "out", "attrs")

    def __init__(self, op, i, g, xs, out, attrs):
        self.op, self.i, self.g, self.xs, self.out, self.attrs = op, i, g, xs, out, attrs

    def __call__(self, dest, accumulate):
        self.op.vjp_into(self.i, self.g, self.xs, self.out, self.attrs, dest, accumulate)


class GradSum:
    """Adds gradients into a dict, in place where the array is one it made itself."""

    def __init__(self, grads: dict, pool: BufferPool | None = None):
        self.grads = grads
        self.owned: set[str] = set()
        self.pool = pool or BufferPool(enabled=False)
        self.blank: dict[str, tuple] = {}  # key -> (its array, ranges of the last axis still all zeros)
        # key -> the array of its value, which nothing in this backward pass reads (a single-use
        # pass, ``PlanFacts.dead_in_backward``): its gradient is written there instead of into a new one
        self.donors: dict[str, np.ndarray] = {}
        self.lent: dict[str, list] = {}    # key -> parts (lo, hi) of its array a loop writes in place
        # arrays of values a single-use backward pass reads no more (``reuse.Spare``): new gradient
        # arrays are parts of them before the pool is asked
        self.spare: Spare | None = None
        self.leaves: set | None = None     # the gradients the caller keeps (None: every one)
        # key -> the array its gradient goes into (a parameter's slot of the flat gradient array,
        # ``paramblocks.FlatGrads``), each handed out once
        self.slots: dict | None = None
        self.flat = None                   # the FlatArrays of those slots

    def lend_part(self, key: str, lo: int, hi: int) -> np.ndarray | None:
        """``[..., lo:hi]`` of the array that will hold key's gradient, for a loop's backward pass to
        write that part's gradient in place (``loopback``): the value's own array, if it lends it
        and that part is still untouched; the part's gradient then comes back through ``add_part``
        (or, for the whole array, ``add``) without a copy. None if it cannot be had."""
        acc = self.grads.get(key)
        if acc is None:
            donor = self.donors.get(key)
            if donor is None:
                return None
            n = donor.shape[-1]
            if lo == 0 and hi == n:    # the whole array: it comes back as key's first gradient
                return self.donors.pop(key)
            del self.donors[key]
            donor[..., :lo] = 0
            donor[..., hi:] = 0
            self.grads[key] = donor
            self.owned.add(key)
            self.blank[key] = (donor, [(a, b) for a, b in ((0, lo), (hi, n)) if b > a])
            self.lent[key] = [(lo, hi)]
            return donor[..., lo:hi]
        blanks = self.blank.get(key)
        if blanks is None or blanks[0] is not acc:
            return None
        ranges = blanks[1]
        for i, (a, b) in enumerate(ranges):
            if a <= lo and hi <= b:
                rest = ranges[:i] + [(x, y) for x, y in ((a, lo), (hi, b)) if y > x] + ranges[i + 1:]
                self.blank[key] = (acc, rest)
                self.lent.setdefault(key, []).append((lo, hi))
                return acc[..., lo:hi]
        return None

    def _fresh(self, key: str, shape, dtype, zero: bool) -> np.ndarray:
        """A new array for the gradient of key: its value's own, if lent, else a part of a spare
        array, else one from the pool."""
        if self.slots is not None:
            a = self.slots.pop(key, None)
            if a is not None and a.shape == tuple(shape) and a.dtype == dtype:
                if zero:
                    a.fill(0)
                return a
        a = self.donors.pop(key, None)
        if not (a is not None and a.shape == tuple(shape) and a.dtype == dtype):
            a = self.spare.take(tuple(shape), dtype) if self.spare is not None else None
        if a is not None:
            if zero:
                a.fill(0)
            return a
        return self.pool.zeros(shape, dtype) if zero else self.pool.empty(shape, dtype)

    def _own(self, key: str, shape, dtype) -> np.ndarray:
        """Make the gradient of key an array of this sum's own (a pooled copy)."""
        self.blank.pop(key, None)
        acc = self.grads.get(key)
        if isinstance(acc, RowGrad):   # about to get other rows: no promise any more
            acc = self.grads[key] = np.asarray(acc)
        if acc is not None and key in self.owned and acc.shape == tuple(shape) and acc.dtype == dtype:
            return acc
        new = self._fresh(key, shape, dtype, zero=acc is None)
        if acc is not None:
            np.copyto(new, acc)  # broadcasts a smaller one
        self.grads[key] = new
        self.owned.add(key)
        return new

    def first_stacked(self, src: str, keys: tuple, shape: tuple, dtype) -> np.ndarray | None:
        """The block of the flat gradient array holding the slots of ``keys`` (a stacking step's
        inputs, ``Op.stacks_rows``), handed out as each key's first gradient, for the gradient of
        their stack ``src`` to be written there by its only reader's VJP (``src`` then gets no
        gradient of its own: its step has nothing to do). None where it cannot be: ``src`` kept or
        with a gradient already, a key not a kept leaf without a gradient, another shape."""
        slots, leaves, grads = self.slots, self.leaves, self.grads
        if not slots or leaves is None or src in leaves or src in grads:
            return None
        block = self.flat.blocks.get(keys)
        if block is None or block.shape != shape or block.dtype != dtype:
            return None
        for k in keys:   # (a loop, not all() of a comprehension: three calls a step of a small LSTM)
            if k not in slots or k not in leaves or k in grads:
                return None
        self._hand_out(keys)
        return block

    def vjp_into_stack(self, keys: tuple, src: str, op, i: int, g, xs, out, attrs) -> bool:
        """``op``'s VJP for its input ``i`` (the stack ``src`` of the parameters ``keys``) written
        straight into their block of the flat gradient array (``first_stacked``); False (nothing
        done) where that block cannot be had."""
        dest = self.first_stacked(src, keys, xs[i].shape, g.dtype)
        if dest is None:
            return False
        op.vjp_into(i, g, xs, out, attrs, dest, False)
        return True

    def add_stacked(self, keys: tuple, g: np.ndarray) -> bool:
        """Write ``g``, the gradient of the stack of ``keys`` (``Op.stacks_rows``), into their slots of
        the flat gradient array in one copy when those are adjacent and none has a gradient yet:
        each key's first gradient is its slot. False (nothing done) otherwise."""
        slots, grads = self.slots, self.grads
        block = self.flat.blocks.get(keys)
        if block is None or block.shape != g.shape or not all([k in slots and k not in grads for k in keys]):
            return False
        np.copyto(block, g)
        self._hand_out(keys)
        return True

    def _hand_out(self, keys: tuple) -> None:
        """Each of ``keys`` gets its slot of the flat gradient array as its (first) gradient."""
        grads, slots, owned = self.grads, self.slots, self.owned
        for k in keys:
            grads[k] = slots.pop(k)
            owned.add(k)

    def add(self, key: str, g: np.ndarray, owned: bool = False) -> None:
        """Add ``g`` to the gradient of ``key``; the first is kept as it is (``owned``: and may be
        added into, as an array of the runtime's own)."""
        self.blank.pop(key, None)
        acc = self.grads.get(key)
        if acc is None:
            self.grads[key] = g
            if owned:
                self.owned.add(key)
            return
        shape = np.broadcast_shapes(acc.shape, g.shape)
        target = self._own(key, shape, np.result_type(acc, g))
        target += g

    def add_into(self, key: str, shape, into: Into) -> None:
        """Let ``into`` write (first gradient) or add (later ones) straight into key's gradient."""
        acc = self.grads.get(key)
        dtype = into.g.dtype
        if acc is None:
            dest = self._fresh(key, shape, dtype, zero=False)
            into(dest, False)
            self.grads[key] = dest
            self.owned.add(key)
            return
        into(self._own(key, np.broadcast_shapes(acc.shape, tuple(shape)), np.result_type(acc, dtype)), True)

    def write_over(self, key: str, of: str, into: Into) -> bool:
        """Let ``into`` write key's first gradient over the gradient of ``of`` (its reader's), if that
        is an array of this sum's own that nobody else has or keeps (a single-use pass that hands out
        its leaves' gradients only, ``of`` read once): True if done."""
        g = into.g
        if (self.spare is None or self.leaves is None or key in self.grads or of in self.leaves
                or of not in self.owned or of in self.blank or of in self.lent or self.grads.get(of) is not g):
            return False
        into(g, False)
        self.grads[key] = g
        self.owned.add(key)
        return True

    def add_part(self, key: str, g: np.ndarray, lo: int, hi: int, shape: tuple) -> None:
        """Add g into ``[..., lo:hi]`` of the gradient of key (whose full shape is ``shape``).

        The parts of a gradient made of slices (the gates of a fused projection) are written,
        not added onto zeros, while they fall on parts nothing has written yet."""
        shape = tuple(shape)
        acc = self.grads.get(key)
        parts = self.lent.get(key)
        if parts and (lo, hi) in parts and acc is not None:
            parts.remove((lo, hi))          # the loop wrote this part in place: its first gradient
            part = acc[..., lo:hi]
            if not _same_view(part, g):
                np.copyto(part, g)
            return
        blanks = self.blank.pop(key, None)
        if acc is None:
            new = self._fresh(key, shape, g.dtype, zero=False)
            np.copyto(new[..., lo:hi], g)
            new[..., :lo] = 0
            new[..., hi:] = 0
            self.grads[key] = new
            self.owned.add(key)
            self.blank[key] = (new, [(a, b) for a, b in ((0, lo), (hi, shape[-1])) if b > a])
            return
        if blanks and blanks[0] is acc and acc.shape == shape and acc.dtype == g.dtype:
            ranges = blanks[1]
            for i, (a, b) in enumerate(ranges):
                if a <= lo and hi <= b:
                    np.copyto(acc[..., lo:hi], g)
                    rest = ranges[:i] + [(x, y) for x, y in ((a, lo), (hi, b)) if y > x] + ranges[i + 1:]
                    if rest:
                        self.blank[key] = (acc, rest)
                    return
        self._own(key, shape, g.dtype)[..., lo:hi] += g

    def disown(self, key: str) -> None:
        self.owned.discard(key)
        self.blank.pop(key, None)


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a and b are the same elements of memory."""
    return (a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])
