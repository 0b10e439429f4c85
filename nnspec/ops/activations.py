"""Activation functions: elementwise, except softmax/log_softmax (last axis)."""
from __future__ import annotations

import numpy as np

from .registry import NotALoss, Op, ScalarForm, ShapeError, register, show_shape


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + e^-x), exact at the limits: e^-x may overflow to inf for x << 0
    (float32: x < -88), and then 1 / (1 + inf) is exactly 0, so the overflow
    is expected and silenced. One exp and three cheap passes, in place."""
    with np.errstate(over="ignore"):
        return _sigmoid(x, out)


def _sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """sigmoid without silencing the overflow warning (the caller does)."""
    out = np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1.0
    return np.reciprocal(out, out=out)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, shifted by the max so exp cannot overflow."""
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class Activation(NotALoss, Op):
    arity = 1
    needs_ctx = False
    elementwise = True
    operator = None
    args = ("x",)
    saves_state = False
    last_axis_view = False
    row_gradient_input = None
    reads_across_chunks = False
    scores_as = None
    passes_gradient = ()

    def shape(self, shapes, attrs, dims):
        return shapes[0]


@register
class Sigmoid(Activation):
    name = "sigmoid"
    scores_as = "binary_probabilities"
    fused = ScalarForm('1.0 / (1.0 + exp(-{x0}))', ('{out} * (1.0 - {out})',))
    vectorised_step = "sigmoid_rows"
    doc = "logistic 1 / (1 + e^-x), stable for large |x|"

    vjp_reads = ("out",)
    quiet_overflow = True
    spends_input = True   # forward_into may be given its input's array (one elementwise pass at a time)

    def forward_into(self, xs, out, attrs):
        sigmoid(xs[0], out=out)

    def step_forward(self, xs, out, attrs):
        (x,) = xs   # the runtime silences overflow around the loop (quiet_overflow)

        def f(t):
            _sigmoid(x[t], out[t])
        return f

    def vjp(self, g, xs, out, attrs, ctx):
        return [g * out * (1.0 - out)]

    def local_grad(self, xs, out, attrs, into=None):
        d = np.subtract(1.0, out, out=into)
        d *= out
        return d


@register
class Tanh(Activation):
    name = "tanh"
    fused = ScalarForm('tanh({x0})', ('1.0 - {out} * {out}',))
    doc = "hyperbolic tangent"

    vjp_reads = ("out",)
    spends_input = True   # forward_into may be given its input's array (one elementwise pass)

    def forward_into(self, xs, out, attrs):
        np.tanh(xs[0], out=out)

    def step_forward(self, xs, out, attrs):
        (x,) = xs
        tanh = np.tanh

        def f(t):
            tanh(x[t], out=out[t])
        return f

    def vjp(self, g, xs, out, attrs, ctx):
        return [g * (1.0 - out * out)]

    def local_grad(self, xs, out, attrs, into=None):
        d = np.square(out, out=into)
        np.subtract(1.0, d, out=d)
        return d


@register
class Relu(Activation):
    name = "relu"
    # (not x <= 0: NaN stays NaN and -0.0 gives 0.0, as np.maximum(x, 0))
    fused = ScalarForm('({x0} if not {x0} <= 0.0 else 0.0)', ('(1.0 if {out} > 0 else 0.0)',))
    doc = "max(x, 0)"

    # The derivative from the output (out > 0 exactly where x > 0, NaN included): the input is
    # then read by nothing in the backward pass, and its array can hold a gradient instead.
    vjp_reads = ("out",)
    spends_input = True   # forward_into may be given its input's array (one elementwise pass)

    def forward_into(self, xs, out, attrs):
        np.maximum(xs[0], 0, out=out)

    def vjp(self, g, xs, out, attrs, ctx):
        return [g * (out > 0)]

    def vjp_into(self, i, g, xs, out, attrs, dest, accumulate):
        if accumulate:
            dest += g * (out > 0)
        else:
            np.multiply(g, out > 0, out=dest)   # (one boolean temporary, not a float one too)

    def local_grad(self, xs, out, attrs, into=None):
        if into is None:
            return (out > 0).astype(out.dtype)
        np.greater(out, 0, out=into)  # booleans cast to 0.0 / 1.0
        return into


@register
class Step(Activation):
    name = "step"
    fused = ScalarForm('(1.0 if {x0} > 0 else 0.0)', ('0.0',))
    doc = ("Heaviside 1 if x > 0 else 0, the perceptron unit: "
           "zero gradient, train with the perceptron rule")

    def forward(self, xs, attrs, ctx):
        return (xs[0] > 0).astype(xs[0].dtype)

    def vjp(self, g, xs, out, attrs, ctx):
        return [np.zeros_like(xs[0])]


@register
class Identity(Activation):
    name = "identity"
    scores_as = "scores"
    fused = ScalarForm('{x0}', ('1.0',))
    doc = "x unchanged (a linear unit)"

    vjp_reads = ()
    passes_gradient = (0,)

    def output_integer(self, inputs_integer):
        return inputs_integer[0]  # ids stay ids

    def forward(self, xs, attrs, ctx):
        return xs[0]

    def vjp(self, g, xs, out, attrs, ctx):
        return [g]


@register
class LeakyRelu(Activation):
    name = "leaky_relu"
    fused = ScalarForm(
        '({x0} if {x0} > 0 else {alpha} * {x0})',
        ('(1.0 if {x0} > 0 else {alpha})',))
    attrs = {"alpha": 0.01}
    doc = "x where x > 0 else alpha * x (attr alpha, default 0.01)"

    def forward(self, xs, attrs, ctx):
        x = xs[0]
        return np.where(x > 0, x, float(self.attr(attrs, "alpha")) * x)

    def vjp(self, g, xs, out, attrs, ctx):
        return [np.where(xs[0] > 0, g, float(self.attr(attrs, "alpha")) * g)]


@register
class Elu(Activation):
    name = "elu"
    fused = ScalarForm(
        '({x0} if {x0} > 0 else {alpha} * expm1(min({x0}, 0.0)))',
        ('(1.0 if {x0} > 0 else {out} + {alpha})',))
    attrs = {"alpha": 1.0}
    doc = "x where x > 0 else alpha * (e^x - 1) (attr alpha, default 1)"

    def forward(self, xs, attrs, ctx):
        x, alpha = xs[0], float(self.attr(attrs, "alpha"))
        return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))  # min: no overflow

    def vjp(self, g, xs, out, attrs, ctx):
        alpha = float(self.attr(attrs, "alpha"))
        return [np.where(xs[0] > 0, g, g * (out + alpha))]  # d/dx alpha(e^x-1) = out + alpha


@register
class Softplus(Activation):
    name = "softplus"
    fused = ScalarForm(
        'max({x0}, 0.0) + log1p(exp(-abs({x0})))',
        ('1.0 / (1.0 + exp(-{x0}))',))
    doc = "log(1 + e^x), computed as logaddexp(0, x) so it never overflows"

    def forward(self, xs, attrs, ctx):
        return np.logaddexp(0, xs[0])

    def vjp(self, g, xs, out, attrs, ctx):
        return [g * sigmoid(xs[0])]


@register
class Gelu(Activation):
    name = "gelu"
    # t = tanh(C (x + 0.044715 x^3)): value 0.5 x (1 + t), derivative 0.5 (1 + t + x (1 - t^2) C (1 + 3 0.044715 x^2))
    fused = ScalarForm(
        "0.5 * {x0} * (1.0 + tanh(0.7978845608028654 * ({x0} + 0.044715 * {x0} * {x0} * {x0})))",
        ("0.5 * (1.0 + tanh(0.7978845608028654 * ({x0} + 0.044715 * {x0} * {x0} * {x0}))"
         " + {x0} * (1.0 - tanh(0.7978845608028654 * ({x0} + 0.044715 * {x0} * {x0} * {x0})) ** 2)"
         " * 0.7978845608028654 * (1.0 + 3 * 0.044715 * {x0} * {x0}))",))
    doc = "x * Phi(x), tanh approximation 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))"
    C = float(np.sqrt(2.0 / np.pi))

    vjp_reads = (0,)

    def _t(self, x):
        return np.tanh(self.C * (x + 0.044715 * x ** 3))

    def forward_into(self, xs, out, attrs):
        # the vjp computes tanh(...) again from x: saving it would need the context and keep a
        # loop holding gelu off the fast path
        x = xs[0]
        np.multiply(0.5 * x, 1.0 + self._t(x), out=out)

    def local_grad(self, xs, out, attrs, into=None):
        x = xs[0]
        t = self._t(x)
        dt = (1.0 - t * t) * self.C * (1.0 + 3 * 0.044715 * x * x)
        return np.multiply(0.5, 1.0 + t + x * dt, out=into)

    def vjp(self, g, xs, out, attrs, ctx):
        return [g * self.local_grad(xs, out, attrs)]


@register
class Mish(Activation):
    name = "mish"
    # sp = softplus(x): value x tanh(sp), derivative tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x)
    fused = ScalarForm(
        "{x0} * tanh(max({x0}, 0.0) + log1p(exp(-abs({x0}))))",
        ("tanh(max({x0}, 0.0) + log1p(exp(-abs({x0}))))"
         " + {x0} * (1.0 - tanh(max({x0}, 0.0) + log1p(exp(-abs({x0})))) ** 2) / (1.0 + exp(-{x0}))",))
    doc = "x * tanh(softplus(x)), smooth and non-monotonic (Misra 2019)"

    vjp_reads = (0,)

    def forward_into(self, xs, out, attrs):
        x = xs[0]
        np.multiply(x, np.tanh(np.logaddexp(0, x)), out=out)

    def local_grad(self, xs, out, attrs, into=None):
        # d/dx x tanh(sp(x)) = tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x)
        x = xs[0]
        t = np.tanh(np.logaddexp(0, x))
        return np.add(t, x * (1.0 - t * t) * sigmoid(x), out=into)

    def vjp(self, g, xs, out, attrs, ctx):
        return [g * self.local_grad(xs, out, attrs)]


@register
class HardTanh(Activation):
    name = "hard_tanh"
    fused = ScalarForm('min(max({x0}, -1.0), 1.0)', ('(1.0 if abs({x0}) < 1 else 0.0)',))
    doc = "x clipped to [-1, 1]"

    def forward(self, xs, attrs, ctx):
        return np.clip(xs[0], -1.0, 1.0)

    def vjp(self, g, xs, out, attrs, ctx):
        return [g * (np.abs(xs[0]) < 1)]


class LastAxis(Activation):
    elementwise = False  # each value reads its whole row
    def shape(self, shapes, attrs, dims):
        if len(shapes[0]) == 0:
            raise ShapeError(f"{self.name} needs a vector (classes on the last axis), "
                             f"got shape {show_shape(shapes[0])}")
        return shapes[0]


@register
class Softmax(LastAxis):
    name = "softmax"
    scores_as = "probabilities"
    doc = "e^x / sum(e^x) over the last axis (max-shifted, stable)"

    def forward(self, xs, attrs, ctx):
        return np.exp(log_softmax(xs[0]))

    def vjp(self, g, xs, out, attrs, ctx):
        return [out * (g - (g * out).sum(axis=-1, keepdims=True))]


@register
class LogSoftmax(LastAxis):
    name = "log_softmax"
    scores_as = "log_probabilities"
    doc = "x - logsumexp(x) over the last axis (stable)"

    def forward(self, xs, attrs, ctx):
        return log_softmax(xs[0])

    def vjp(self, g, xs, out, attrs, ctx):
        return [g - np.exp(out) * g.sum(axis=-1, keepdims=True)]
