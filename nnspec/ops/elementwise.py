"""Elementwise arithmetic.

Binary ops broadcast with NumPy (a bias ``(n,)`` meets a batch ``(B, n)`` or a
sequence ``(T, B, n)``), so each VJP sums its gradient back to that input's own
array shape with :func:`unbroadcast`.
"""
from __future__ import annotations

import numpy as np

from .registry import NotALoss, Op, ScalarForm, broadcast_shape, product_into, register, unbroadcast


class Binary(NotALoss, Op):
    arity = 2
    needs_ctx = False
    elementwise = True
    operator = None
    saves_state = False
    last_axis_view = False
    row_gradient_input = None
    reads_across_chunks = False
    scores_as = None
    passes_gradient = ()
    args = ("a", "b")

    def shape(self, shapes, attrs, dims):
        return broadcast_shape(shapes, dims, self.name)


class Unary(NotALoss, Op):
    arity = 1
    needs_ctx = False
    elementwise = True
    operator = None
    saves_state = False
    last_axis_view = False
    row_gradient_input = None
    reads_across_chunks = False
    scores_as = None
    passes_gradient = ()
    args = ("x",)

    def shape(self, shapes, attrs, dims):
        return shapes[0]


@register
class Add(Binary):
    name = "add"
    fused = ScalarForm('{x0} + {x1}', ('1.0', '1.0'))
    doc = "a + b, elementwise with broadcasting"
    operator = "+"
    passes_gradient = (0, 1)

    vjp_reads = ()

    def forward_into(self, xs, out, attrs):
        np.add(xs[0], xs[1], out=out)

    def vjp(self, g, xs, out, attrs, ctx):
        return [unbroadcast(g, xs[0].shape), unbroadcast(g, xs[1].shape)]

    def vjp_one(self, i, g, xs, out, attrs, ctx):
        return unbroadcast(g, xs[i].shape)

    def vjp_into(self, i, g, xs, out, attrs, dest, accumulate):
        _pass_into(g, dest, accumulate, negate=False)

    def step_forward(self, xs, out, attrs):
        return _binary_step(np.add, xs, out)

    def step_vjp(self, i, g, xs, out, attrs, dest, accumulate):
        return _pass_step(g, dest, accumulate, negate=False) or super().step_vjp(i, g, xs, out, attrs, dest,
                                                                              accumulate)


@register
class Sub(Binary):
    name = "sub"
    fused = ScalarForm('{x0} - {x1}', ('1.0', '-1.0'))
    doc = "a - b, elementwise with broadcasting"
    operator = "-"
    passes_gradient = (0,)

    vjp_reads = ()

    def forward_into(self, xs, out, attrs):
        np.subtract(xs[0], xs[1], out=out)

    def vjp(self, g, xs, out, attrs, ctx):
        return [unbroadcast(g, xs[0].shape), unbroadcast(-g, xs[1].shape)]

    def vjp_one(self, i, g, xs, out, attrs, ctx):
        return unbroadcast(g, xs[0].shape) if i == 0 else unbroadcast(-g, xs[1].shape)

    def vjp_into(self, i, g, xs, out, attrs, dest, accumulate):
        _pass_into(g, dest, accumulate, negate=i == 1)

    def step_forward(self, xs, out, attrs):
        return _binary_step(np.subtract, xs, out)

    def step_vjp(self, i, g, xs, out, attrs, dest, accumulate):
        return _pass_step(g, dest, accumulate, negate=i == 1) or super().step_vjp(i, g, xs, out, attrs, dest,
                                                                                 accumulate)


@register
class Mul(Binary):
    name = "mul"
    fused = ScalarForm('{x0} * {x1}', ('{x1}', '{x0}'))
    doc = "a * b, elementwise with broadcasting"
    operator = "*"

    vjp_reads = (0, 1)

    def forward_into(self, xs, out, attrs):
        np.multiply(xs[0], xs[1], out=out)

    def vjp(self, g, xs, out, attrs, ctx):
        a, b = xs
        return [unbroadcast(g * b, a.shape), unbroadcast(g * a, b.shape)]

    def vjp_one(self, i, g, xs, out, attrs, ctx):
        return unbroadcast(g * xs[1 - i], xs[i].shape)

    def vjp_into(self, i, g, xs, out, attrs, dest, accumulate):
        other = xs[1 - i]
        if dest.shape != g.shape or other.shape != g.shape:
            return super().vjp_into(i, g, xs, out, attrs, dest, accumulate)
        if accumulate:
            dest += g * other
        else:
            np.multiply(g, other, out=dest)

    def step_forward(self, xs, out, attrs):
        return _binary_step(np.multiply, xs, out)

    def step_vjp(self, i, g, xs, out, attrs, dest, accumulate):
        other = xs[1 - i]
        if not (dest[0].shape == g[0].shape == other[0].shape):
            return super().step_vjp(i, g, xs, out, attrs, dest, accumulate)
        return product_into(g, other, dest, accumulate)


@register
class Div(Binary):
    name = "div"
    fused = ScalarForm('{x0} / {x1}', ('1.0 / {x1}', '-{out} / {x1}'))
    doc = "a / b, elementwise with broadcasting"
    operator = "/"

    vjp_reads = (1, "out")

    def forward_into(self, xs, out, attrs):
        np.divide(xs[0], xs[1], out=out)

    def step_forward(self, xs, out, attrs):
        return _binary_step(np.divide, xs, out)

    def vjp(self, g, xs, out, attrs, ctx):
        a, b = xs
        return [unbroadcast(g / b, a.shape), unbroadcast(-g * out / b, b.shape)]


@register
class Neg(Unary):
    name = "neg"
    fused = ScalarForm('-{x0}', ('-1.0',))
    doc = "-x"
    operator = "-"

    vjp_reads = ()

    def forward_into(self, xs, out, attrs):
        np.negative(xs[0], out=out)

    def vjp(self, g, xs, out, attrs, ctx):
        return [-g]

    def vjp_into(self, i, g, xs, out, attrs, dest, accumulate):
        _pass_into(g, dest, accumulate, negate=True)

    def step_forward(self, xs, out, attrs):
        return _unary_step(np.negative, xs, out)


@register
class Pow(Unary):
    name = "pow"
    fused = ScalarForm('{x0} ** {p}', ('{p} * {x0} ** ({p} - 1.0)',))
    attrs = {"p": 2.0}
    doc = "x ** p for a constant exponent p (attr p, default 2)"

    def forward(self, xs, attrs, ctx):
        return xs[0] ** float(self.attr(attrs, "p"))

    def vjp(self, g, xs, out, attrs, ctx):
        p = float(self.attr(attrs, "p"))
        return [g * p * xs[0] ** (p - 1.0)]


@register
class Exp(Unary):
    name = "exp"
    fused = ScalarForm('exp({x0})', ('{out}',))
    doc = "e ** x"

    vjp_reads = ("out",)
    spends_input = True   # forward_into may be given its input's array (one elementwise pass)

    def forward_into(self, xs, out, attrs):
        np.exp(xs[0], out=out)

    def step_forward(self, xs, out, attrs):
        return _unary_step(np.exp, xs, out)

    def vjp(self, g, xs, out, attrs, ctx):
        return [g * out]

    def local_grad(self, xs, out, attrs, into=None):
        return out


@register
class Log(Unary):
    name = "log"
    fused = ScalarForm('log({x0})', ('1.0 / {x0}',))
    doc = "natural logarithm"

    def forward(self, xs, attrs, ctx):
        return np.log(xs[0])

    def vjp(self, g, xs, out, attrs, ctx):
        return [g / xs[0]]


@register
class Sqrt(Unary):
    name = "sqrt"
    fused = ScalarForm('sqrt({x0})', ('0.5 / {out}',))
    doc = "square root"

    def forward(self, xs, attrs, ctx):
        return np.sqrt(xs[0])

    def vjp(self, g, xs, out, attrs, ctx):
        return [g / (2.0 * out)]


@register
class Square(Unary):
    name = "square"
    fused = ScalarForm('{x0} * {x0}', ('2.0 * {x0}',))
    doc = "x * x"

    def forward(self, xs, attrs, ctx):
        return np.square(xs[0])

    def vjp(self, g, xs, out, attrs, ctx):
        return [2.0 * g * xs[0]]


@register
class Abs(Unary):
    name = "abs"
    fused = ScalarForm('abs({x0})', ('(1.0 if {x0} > 0 else (-1.0 if {x0} < 0 else 0.0))',))
    doc = "|x| (gradient sign(x), 0 at 0)"

    def forward(self, xs, attrs, ctx):
        return np.abs(xs[0])

    def vjp(self, g, xs, out, attrs, ctx):
        return [g * np.sign(xs[0])]


def _pass_into(g: np.ndarray, dest: np.ndarray, accumulate: bool, negate: bool) -> None:
    """dest (+)= +-g, summing g over broadcast axes first when dest is smaller."""
    if g.shape != dest.shape:
        g = unbroadcast(g, dest.shape)
    if accumulate:
        (np.subtract if negate else np.add)(dest, g, out=dest)
    elif negate:
        np.negative(g, out=dest)
    else:
        np.copyto(dest, g)


def _binary_step(ufunc, xs, out):
    """Step kernel of a binary ufunc: out[t] = ufunc(a[t], b[t])."""
    a, b = xs

    def f(t):
        ufunc(a[t], b[t], out=out[t])
    return f


def _unary_step(ufunc, xs, out):
    (a,) = xs

    def f(t):
        ufunc(a[t], out=out[t])
    return f


def _pass_step(g, dest, accumulate, negate):
    """Step kernel of dest[t] (+)= +-g[t] when shapes agree (None: they do not)."""
    if g[0].shape != dest[0].shape:
        return None
    if accumulate:
        op = np.subtract if negate else np.add

        def f(t):
            op(dest[t], g[t], out=dest[t])
    elif negate:
        def f(t):
            np.negative(g[t], out=dest[t])
    else:
        copyto = np.copyto

        def f(t):
            copyto(dest[t], g[t])
    return f
