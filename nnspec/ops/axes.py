"""Ops that relate sequence axes, and reductions over features: the parts of attention.

Arrays follow their value's axes (nnspec/axes.py): a value on axes ``(a1, ..., ak)`` is
``(T_a1, ..., T_ak, B, *shape)``; a real value of per-example shape ``()`` is held as
``(..., 1)``. The runtime gives an op on several axes its innermost axis as *the* time axis
(the others folded into the batch), so ``softmax_steps`` and the reductions of sequence.py
see ``(T, B', ...)`` with that axis's mask.
"""
from __future__ import annotations

import numpy as np

from .registry import NotALoss, Op, ShapeError, register, show_shape, unbroadcast, unify_dims
from .sequence import _real


class _Plain(NotALoss, Op):
    """Facts shared by the ops here: none of them is elementwise, a view, or reads across chunks."""
    elementwise = False
    operator = None
    last_axis_view = False
    row_gradient_input = None
    passes_gradient = ()
    saves_state = False
    reads_across_chunks = False
    scores_as = None


@register
class Along(_Plain):
    name = "along"
    arity = 2
    adds_axis = True
    needs_ctx = False
    # no settings a spec may write: the compiler (nnspec/axes.py) sets "at", where the new axis goes
    # in x's array (after x's own sequence axes), and "of", the axis of s's array x is repeated along
    attrs = {}
    args = ("x", "s")
    doc = ("x repeated along the innermost sequence axis of s: a decoder step's query beside every "
           "encoder step; its value is on x's axes and that one")

    def shape(self, shapes, attrs, dims):
        return tuple(shapes[0])

    def forward(self, xs, attrs, ctx):
        x, s = xs
        at, of = int(attrs.get("at", 0)), int(attrs.get("of", 0))
        out_shape = x.shape[:at] + (s.shape[of],) + x.shape[at:]
        # a read-only view, no copy: its readers (dot, +, *) broadcast it anyway
        return np.broadcast_to(np.expand_dims(x, at), out_shape)

    def vjp(self, g, xs, out, attrs, ctx):
        s = xs[1]   # only its length is read: its values get no gradient
        return [g.sum(axis=int(attrs.get("at", 0))), None if np.issubdtype(s.dtype, np.integer) else np.zeros_like(s)]


@register
class Dot(_Plain):
    name = "dot"
    arity = 2
    needs_ctx = False
    args = ("a", "b")
    doc = "the dot product of two vectors (a sum over features), one number per position"

    def shape(self, shapes, attrs, dims):
        a, b = (tuple(s) for s in shapes)
        if len(a) != 1 or len(b) != 1:
            raise ShapeError(f"dot takes two vectors, got shapes {show_shape(a)} and {show_shape(b)}")
        unify_dims(a, b, dims, "dot")
        return ()

    def forward(self, xs, attrs, ctx):
        a, b = xs
        # one pass, no a * b temporary (attention scores: a decoder state beside every encoder step)
        return np.einsum("...i,...i->...", a, b)[..., None]

    def vjp(self, g, xs, out, attrs, ctx):
        a, b = xs
        return [unbroadcast(g * b, a.shape), unbroadcast(g * a, b.shape)]


@register
class SumFeatures(_Plain):
    name = "sum_features"
    needs_ctx = False
    args = ("x",)
    doc = "the sum of a vector's features, one number per position (never over the batch or the steps)"

    def shape(self, shapes, attrs, dims):
        if len(shapes[0]) != 1:
            raise ShapeError(f"sum_features takes a vector, got shape {show_shape(shapes[0])}")
        return ()

    def forward(self, xs, attrs, ctx):
        return xs[0].sum(axis=-1, keepdims=True)

    def vjp(self, g, xs, out, attrs, ctx):
        return [np.broadcast_to(g, xs[0].shape).copy()]


@register
class SoftmaxSteps(_Plain):
    name = "softmax_steps"
    over_time = True
    args = ("s",)
    doc = ("softmax over the steps of the innermost sequence axis of s (one score per step): "
           "attention weights; padding steps get weight 0")

    def shape(self, shapes, attrs, dims):
        if len(shapes[0]) != 0:
            raise ShapeError(f"softmax_steps takes one score per step, got shape {show_shape(shapes[0])}; "
                             f"score vectors with dot(q, k)")
        return ()

    def forward(self, xs, attrs, ctx):
        s = xs[0]
        real, _ = _real(s, ctx)
        top = np.where(real, s, -np.inf).max(axis=0, keepdims=True)
        e = np.where(real, np.exp(np.where(real, s - top, 0.0)), 0.0)
        return e / e.sum(axis=0, keepdims=True)

    def vjp(self, g, xs, out, attrs, ctx):
        return [out * (g - (out * g).sum(axis=0, keepdims=True))]
