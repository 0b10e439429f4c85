"""Values on several sequence axes (nnspec/axes.py): the ops over time on them, and loops that
read other axes' values whole.

Every axis is a ``TimeAxis`` on the tape (its T and each example's lengths, by name); a value's
axes are outermost first, and the one its ops over time read is its innermost
(``PlanFacts.axis_of``): ``softmax_steps`` of scores on ``(out, src)`` normalises over ``src``,
with ``src``'s padding. A loop runs over its own axis (``LoopStep.axis``).

Ops work on one time axis ``(T, B, ...)``. For a value on several axes
``(T_a1, ..., T_ak, B, ...)``, :class:`FoldedOp` moves the innermost axis to the front and
folds the outer ones into the batch, ``(T_ak, T_a1 * ... * B, ...)``, with the mask repeated
to match; the op runs unchanged and its result is unfolded. So every reduction over time
(``sum``, ``last``, ...) and ``softmax_steps`` works over the innermost axis of any value.

A loop that reads values on other axes whole (attention inside it), or whose body ops work over
axes of their own within a step, runs on the reference engine (``loop_reads``: the whole
values, and each such body op's innermost axis for its mask); other loops take the fast
path on their own axis. Plans with one axis are untouched.
"""
from __future__ import annotations

import numpy as np

from ..ops.registry import Ctx, Op


def folded(op: Op, axes: tuple) -> Op:
    """The op to run over a first operand on ``axes``: over time on several axes, folded."""
    return FoldedOp(op, len(axes)) if op.over_time and len(axes) > 1 else op


class FoldedOp:
    """``op`` (over time, one input) on a value with ``k`` > 1 sequence axes: the innermost one is
    the op's time axis, the outer ones are folded into the batch."""

    def __init__(self, op: Op, k: int):
        self.op, self.k = op, k
        self.needs_ctx = True

    def __getattr__(self, name):          # facts and everything else: the op's own
        return getattr(self.op, name)

    def _fold(self, x: np.ndarray) -> np.ndarray:
        t = np.moveaxis(x, self.k - 1, 0)
        return t.reshape((t.shape[0], -1) + x.shape[self.k + 1:])

    def _inner_ctx(self, x: np.ndarray, ctx: Ctx) -> Ctx:
        outer = int(np.prod(x.shape[:self.k - 1]))
        T, B = x.shape[self.k - 1], x.shape[self.k]
        mask = ctx.mask if ctx.mask is not None else np.ones((T, B))
        mask = np.broadcast_to(mask[:, None, :], (T, outer, B)).reshape(T, outer * B)
        lengths = None if ctx.lengths is None else np.tile(np.asarray(ctx.lengths), outer)
        return Ctx(train=ctx.train, rng=ctx.rng, mask=mask, lengths=lengths)

    def forward(self, xs, attrs, ctx):
        x = xs[0]
        inner = self._inner_ctx(x, ctx)
        ctx.saved["inner"] = inner
        y = self.op.forward([self._fold(x)], attrs, inner)
        keeps = not self.op.reduces_time
        outer, b = x.shape[:self.k - 1], x.shape[self.k]
        if keeps:
            return np.moveaxis(y.reshape((y.shape[0],) + outer + (b,) + y.shape[2:]), 0, self.k - 1)
        return y.reshape(outer + (b,) + y.shape[1:])

    def vjp(self, g, xs, out, attrs, ctx):
        x = xs[0]
        inner = ctx.saved["inner"]
        if self.op.reduces_time:
            gf = g.reshape((-1,) + g.shape[self.k:])
            of = out.reshape((-1,) + out.shape[self.k:])
        else:
            gf, of = self._fold(g), self._fold(out)
        dx = self.op.vjp(gf, [self._fold(x)], of, attrs, inner)[0]
        if dx is None:
            return [None]
        outer, b = x.shape[:self.k - 1], x.shape[self.k]
        return [np.moveaxis(dx.reshape((dx.shape[0],) + outer + (b,) + dx.shape[2:]), 0, self.k - 1)]

    def vjp_one(self, i, g, xs, out, attrs, ctx):
        return self.vjp(g, xs, out, attrs, ctx)[i]


def runtime_axes(axes: tuple, nested: frozenset) -> tuple:
    """The axes a value's array has: a value on a nested inner axis (``(word, char)``: each word's
    characters) is ``(T_char, T_word * B, ...)``, the outer axis's steps folded into the rows of the
    inner axis's batch, so that a loop runs over the characters of every word of the batch at once;
    its axes at run time are ``(char,)``."""
    k = next((j for j, a in enumerate(axes) if a in nested), None)
    return axes if k is None else axes[k:]


def unnested(op: Op, axes: tuple, nested: frozenset) -> Op:
    """A reduction over a nested inner axis: its result, one row per (outer step, example), put back
    on the outer axis (``Unnested``)."""
    return Unnested(op) if op.reduces_time and axes and axes[-1] in nested else op


class Unnested:
    """A reduction (``last``, ``mean``, ...) over a nested inner axis: the op reduces ``(T_char, N, ...)``
    to ``(N, ...)``, one row per word, which is ``(T_word, B, ...)`` on the outer axis (``ctx.rows``).
    A padding word has no characters, and the reduction of nothing (a mean of 0/0, a max of no step)
    is no number: the op reads its first (padding) step instead, its result is 0 and no gradient
    reaches it, so no NaN or infinity runs on through the padding (and from there into a weight's
    gradient as NaN * 0)."""

    def __init__(self, op: Op):
        self.op = op
        self.needs_ctx = True

    def __getattr__(self, name):          # facts and everything else: the op's own
        return getattr(self.op, name)

    def _inner_ctx(self, ctx: Ctx) -> tuple[Ctx, np.ndarray]:
        empty = np.asarray(ctx.lengths) == 0
        if not empty.any():
            return ctx, empty
        mask = ctx.mask.copy()
        mask[0, empty] = 1
        return Ctx(train=ctx.train, rng=ctx.rng, mask=mask, lengths=np.maximum(ctx.lengths, 1),
                   saved=ctx.saved, empty=ctx.empty), empty

    def forward(self, xs, attrs, ctx):
        inner, empty = self._inner_ctx(ctx)
        y = self.op.forward(xs, attrs, inner)
        if empty.any():
            y = np.where(empty.reshape((-1,) + (1,) * (y.ndim - 1)), 0, y).astype(y.dtype, copy=False)
        if ctx.gather is not None:   # each distinct word's vector, to every place it occurs
            ctx.saved["distinct"] = y
            y = y[ctx.gather]
        return y.reshape(ctx.rows + y.shape[1:])

    def vjp(self, g, xs, out, attrs, ctx):
        inner, empty = self._inner_ctx(ctx)
        n = g.shape[0] * g.shape[1]
        g = g.reshape((n,) + g.shape[2:])
        if ctx.gather is not None:   # a distinct word's gradient: the sum over the places it occurs
            out = ctx.saved["distinct"]
            summed = np.zeros(out.shape, dtype=g.dtype)
            np.add.at(summed, ctx.gather, g)
            g = summed
        else:
            out = out.reshape((n,) + out.shape[2:])
        if empty.any():
            g = np.where(empty.reshape((-1,) + (1,) * (g.ndim - 1)), 0, g)
        return self.op.vjp(g, xs, out, attrs, inner)

    def vjp_one(self, i, g, xs, out, attrs, ctx):
        return self.vjp(g, xs, out, attrs, ctx)[i]


def distinct_words(ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct words of a nested feed ``(T_char, N)`` (a word: its characters up to its length):
    ``(T_char', U)`` ids, their ``(U,)`` lengths, and for each of the N rows its word's column. A word
    that occurs many times in a batch (``the``, ``,``) then runs through the character loops once."""
    real = np.arange(ids.shape[0])[:, None] < lengths[None, :]
    keys = np.concatenate([lengths[None, :], np.where(real, ids, 0)]).T
    distinct, first, gather = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    gather = gather.reshape(-1)
    steps = max(int(lengths.max()) if lengths.size else 0, 1)
    return np.ascontiguousarray(ids[:steps, first]), lengths[first], gather


def loop_reads(loop, axes: dict[str, tuple]) -> tuple[frozenset, dict[str, str]]:
    """What a loop over ``loop.axis`` reads *whole* at every step: the values from outside it on other
    axes (an encoder's states, read by a decoder's attention), each with its own mask; and for each
    body op whose first operand has axes of its own within a step (``softmax_steps`` of a step's
    scores over the encoder's steps), the innermost (whose mask its context carries) and how many."""
    body = {b.id for b in loop.body}
    whole = frozenset(src for b in loop.body for src, _ in b.inputs
                      if src not in body and axes.get(src) and axes[src][0] != loop.axis)
    masked = {}
    for b in loop.body:
        if b.inputs:
            a = axes.get(b.inputs[0][0], ())
            a = a[1:] if a[:1] == (loop.axis,) else a
            if a:
                masked[b.id] = (a[-1], len(a))
    return whole, masked


def in_loop_op(op: Op, inner_axes: int):
    """A body op over time whose first operand has ``inner_axes`` axes within a step: over the innermost."""
    return FoldedOp(op, inner_axes) if op.over_time and inner_axes > 1 else op
