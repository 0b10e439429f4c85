"""Ops over the time axis of time-major sequences ``(T, B, ...)``.

Sequence b is real for steps ``t < lengths[b]`` (``ctx.mask[t, b] == 1``); the
rest is padding, which never reaches an output nor receives a gradient.
Sequences are assumed non-empty (lengths >= 1). Without a mask every step is real.
"""
from __future__ import annotations

import numpy as np

from .registry import NotALoss, Op, ShapeError, register, show_shape


def _real(x: np.ndarray, ctx) -> tuple[np.ndarray, np.ndarray]:
    """(T, B, 1...) bool of real steps, broadcastable to x, and the (B,) lengths."""
    T, B = x.shape[:2]
    if ctx.mask is not None:
        real = ctx.mask > 0
    elif ctx.lengths is not None:
        real = np.arange(T)[:, None] < np.asarray(ctx.lengths)[None, :]
    else:
        real = np.ones((T, B), dtype=bool)
    return real.reshape(real.shape + (1,) * (x.ndim - 2)), real.sum(axis=0)


class OverTime(NotALoss, Op):
    """Sequence (T, B, *shape) -> one value (B, *shape) per sequence."""
    arity = 1
    over_time = True
    reduces_time = True
    elementwise = False
    operator = None
    last_axis_view = False
    row_gradient_input = None
    passes_gradient = ()
    args = ("x",)
    saves_state = False
    reads_across_chunks = False
    scores_as = None

    def shape(self, shapes, attrs, dims):
        return shapes[0]


@register
class Last(OverTime):
    name = "last"
    doc = "the last real step of each sequence"

    def forward(self, xs, attrs, ctx):
        _, lengths = _real(xs[0], ctx)
        return xs[0][lengths - 1, np.arange(len(lengths))]

    def vjp(self, g, xs, out, attrs, ctx):
        _, lengths = _real(xs[0], ctx)
        dx = np.zeros_like(xs[0])
        dx[lengths - 1, np.arange(len(lengths))] = g
        return [dx]


@register
class First(OverTime):
    name = "first"
    doc = "the first step of each sequence"

    def forward(self, xs, attrs, ctx):
        return xs[0][0]

    def vjp(self, g, xs, out, attrs, ctx):
        dx = np.zeros_like(xs[0])
        dx[0] = g
        return [dx]


@register
class Sum(OverTime):
    name = "sum"
    doc = "sum over the real steps of each sequence"

    def forward(self, xs, attrs, ctx):
        real, _ = _real(xs[0], ctx)
        return np.where(real, xs[0], 0).sum(axis=0)  # where, not *: padding may be inf

    def vjp(self, g, xs, out, attrs, ctx):
        real, _ = _real(xs[0], ctx)
        return [np.where(real, g[None], 0)]


@register
class Mean(OverTime):
    name = "mean"
    doc = "mean over the real steps of each sequence"
    saves_state = True   # the lengths

    def forward(self, xs, attrs, ctx):
        x = xs[0]
        real, lengths = _real(x, ctx)
        n = lengths.reshape(lengths.shape + (1,) * (x.ndim - 2)).astype(x.dtype)
        ctx.saved["n"] = n
        return np.where(real, x, 0).sum(axis=0) / n

    def vjp(self, g, xs, out, attrs, ctx):
        real, _ = _real(xs[0], ctx)
        return [np.where(real, (g / ctx.saved["n"])[None], 0)]


@register
class Max(OverTime):
    name = "max"
    doc = "elementwise max over the real steps (gradient flows to the max step)"
    saves_state = True   # where the max was

    def forward(self, xs, attrs, ctx):
        real, _ = _real(xs[0], ctx)
        at = np.where(real, xs[0], -np.inf).argmax(axis=0)[None]
        ctx.saved["at"] = at
        return np.take_along_axis(xs[0], at, axis=0)[0]

    def vjp(self, g, xs, out, attrs, ctx):
        dx = np.zeros_like(xs[0])
        np.put_along_axis(dx, ctx.saved["at"], g[None], axis=0)
        return [dx]


@register
class Shift(NotALoss, Op):
    name = "shift"
    attrs = {"k": 1}
    over_time = True
    doc = ("out[t] = x[t+k] while t+k is a real step, else padding "
           "(-1 ints, 0 floats): next-token targets")
    elementwise = False
    operator = None
    last_axis_view = False
    row_gradient_input = None
    passes_gradient = ()
    args = ("x",)
    saves_state = False
    reads_across_chunks = True
    scores_as = None

    def shape(self, shapes, attrs, dims):
        return shapes[0]

    def output_integer(self, inputs_integer):
        return inputs_integer[0]

    def _moves(self, x, attrs, ctx):
        """Indices (t, b) of output steps that read a real input step t + k."""
        k = int(self.attr(attrs, "k"))
        src = np.arange(x.shape[0])[:, None] + k
        t, b = np.nonzero((src >= 0) & (src < _real(x, ctx)[1][None, :]))
        return t, b, t + k

    def forward(self, xs, attrs, ctx):
        x = xs[0]
        t, b, src = self._moves(x, attrs, ctx)
        out = np.full_like(x, -1 if np.issubdtype(x.dtype, np.integer) else 0)
        out[t, b] = x[src, b]
        return out

    def vjp(self, g, xs, out, attrs, ctx):
        if np.issubdtype(xs[0].dtype, np.integer):
            return [None]
        t, b, src = self._moves(xs[0], attrs, ctx)
        dx = np.zeros_like(xs[0])
        dx[src, b] = g[t, b]  # each input step feeds at most one output step
        return [dx]


@register
class Argmax(NotALoss, Op):
    name = "argmax"
    integer_output = True
    needs_ctx = False
    doc = "index of the largest value on the last axis (int; not differentiable)"
    elementwise = False
    operator = None
    last_axis_view = False
    row_gradient_input = None
    passes_gradient = ()
    args = ("x",)
    saves_state = False
    reads_across_chunks = False
    scores_as = None

    def shape(self, shapes, attrs, dims):
        if len(shapes[0]) == 0:
            raise ShapeError(f"argmax needs a vector, got shape {show_shape(shapes[0])}")
        return tuple(shapes[0][:-1])

    def forward(self, xs, attrs, ctx):
        return xs[0].argmax(axis=-1).astype(np.int64)

    def vjp(self, g, xs, out, attrs, ctx):
        return [None]
