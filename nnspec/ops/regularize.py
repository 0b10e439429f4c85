"""Regularisation ops: active only while training (``ctx.train``)."""
from __future__ import annotations

import numpy as np

from .registry import NotALoss, Op, ShapeError, register


@register
class Dropout(NotALoss, Op):
    name = "dropout"
    attrs = {"p": 0.5}
    doc = "while training, zero each value with probability p and scale the rest by 1/(1-p)"
    elementwise = False  # random: its mask is drawn for the whole array
    operator = None
    last_axis_view = False
    row_gradient_input = None
    passes_gradient = ()
    args = ("x",)
    reads_across_chunks = False
    scores_as = None
    saves_state = True   # the mask

    def shape(self, shapes, attrs, dims):
        p = float(self.attr(attrs, "p"))
        if not 0.0 <= p < 1.0:
            raise ShapeError(f"dropout: p must be in [0, 1), got {p}")
        return shapes[0]

    def forward(self, xs, attrs, ctx):
        x, p = xs[0], float(self.attr(attrs, "p"))
        if not ctx.train or p == 0.0:
            ctx.saved["scale"] = None
            return x
        if ctx.rng is None:
            raise ValueError("dropout: training needs ctx.rng")
        # Inverted dropout: scale at train time so evaluation is the identity.
        scale = (ctx.rng.random(x.shape) >= p).astype(x.dtype) / (1.0 - p)
        ctx.saved["scale"] = scale
        return x * scale

    def vjp(self, g, xs, out, attrs, ctx):
        scale = ctx.saved["scale"]
        return [g if scale is None else g * scale]


@register
class WordDropout(NotALoss, Op):
    name = "word_dropout"
    attrs = {"p": 0.1}
    integer_inputs = (0,)
    integer_output = True
    doc = "while training, replace each token id by <unk> (id 1) with probability p; padding stays"
    elementwise = False
    operator = None
    last_axis_view = False
    row_gradient_input = None
    passes_gradient = ()
    args = ("x",)
    reads_across_chunks = False
    scores_as = None
    saves_state = False

    # Dropping whole words teaches the <unk> embedding what unseen words at test time look like.
    def shape(self, shapes, attrs, dims):
        p = float(self.attr(attrs, "p"))
        if not 0.0 <= p < 1.0:
            raise ShapeError(f"word_dropout: p must be in [0, 1), got {p}")
        return shapes[0]

    def forward(self, xs, attrs, ctx):
        ids, p = xs[0], float(self.attr(attrs, "p"))
        if not ctx.train or p == 0.0:
            return ids
        if ctx.rng is None:
            raise ValueError("word_dropout: training needs ctx.rng")
        drop = (ctx.rng.random(ids.shape) < p) & (ids > 1)  # keep <pad> (0) and <unk> (1) as they are
        return np.where(drop, 1, ids)

    def vjp(self, g, xs, out, attrs, ctx):
        return [None]
