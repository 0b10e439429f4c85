"""Regularisation ops: active only while training (``ctx.train``)."""
from __future__ import annotations

from .registry import Op, ShapeError, register


@register
class Dropout(Op):
    name = "dropout"
    attrs = {"p": 0.5}
    doc = "while training, zero each value with probability p and scale the rest by 1/(1-p)"

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
