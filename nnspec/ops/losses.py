"""Losses: one number (a 0-d array) for the whole batch.

Float losses (mse, bce, bce_logits) average over every element of every real
position. Class losses take int targets (..., ) against predictions (..., K)
and average over *valid* positions: target >= 0 (padding holds -1) and, for
sequences, ``ctx.mask > 0``. Divisors are at least 1, so an all-padding batch
gives 0, not NaN.
"""
from __future__ import annotations

import numpy as np

from .activations import log_softmax, sigmoid
from .registry import Op, ShapeError, register, show_shape, unbroadcast, unify_dims

EPS = 1e-12  # probabilities are clipped to >= EPS inside log


def _expand(mask: np.ndarray, ndim: int) -> np.ndarray:
    """A (T, B) mask with trailing unit axes, to broadcast against (T, B, ...)."""
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


class FloatLoss(Op):
    """Mean of ``elems(pred, target)``; subclasses give the elements and their partials."""
    arity = 2
    scalar_output = True
    elementwise = False
    operator = None
    last_axis_view = False
    row_gradient_input = None
    reads_across_chunks = False
    scores_as = None
    passes_gradient = ()
    logits_form = None
    saves_state = False
    threshold = None

    def shape(self, shapes, attrs, dims):
        unify_dims(shapes[0], shapes[1], dims, f"{self.name} of prediction and target")
        return ()

    def _weights(self, xs, ctx):
        """Per-element weights and the divisor (Python floats keep float32 float32)."""
        shape = np.broadcast_shapes(xs[0].shape, xs[1].shape)
        if ctx.mask is None:
            return 1.0, float(max(np.prod(shape), 1))
        m = _expand(ctx.mask.astype(xs[0].dtype), len(shape))
        per_step = np.prod(shape) / ctx.mask.size
        return m, float(max(m.sum() * per_step, 1.0))

    def forward(self, xs, attrs, ctx):
        w, n = self._weights(xs, ctx)
        return np.asarray((self.elems(*xs) * w).sum() / n, dtype=xs[0].dtype)

    def vjp(self, g, xs, out, attrs, ctx):
        w, n = self._weights(xs, ctx)
        s = w * (float(g) / n)
        dp, dt = self.partials(*xs)
        return [unbroadcast(dp * s, xs[0].shape), unbroadcast(dt * s, xs[1].shape)]


@register
class Mse(FloatLoss):
    name = "mse"
    doc = "mean squared error mean((pred - target)^2)"
    args = ("pred", "target")
    prediction, target = "reals", "real"

    def elems(self, p, t):
        return (p - t) ** 2

    def partials(self, p, t):
        return 2.0 * (p - t), -2.0 * (p - t)


def _bce_bounds(dtype):
    """[EPS, 1 - EPS], except that in float32 1 - 1e-12 rounds to 1 (log 0)."""
    return EPS, 1.0 - max(EPS, float(np.finfo(dtype).epsneg))


@register
class Bce(FloatLoss):
    name = "bce"
    doc = "binary cross-entropy of probabilities p (clipped to [1e-12, 1-1e-12]) and targets y"
    args = ("p", "y")
    prediction, target, threshold = "probabilities", "binary", 0.5
    logits_form = ("sigmoid", "bce_logits")

    def elems(self, p, y):
        pc = np.clip(p, *_bce_bounds(p.dtype))
        return -(y * np.log(pc) + (1.0 - y) * np.log(1.0 - pc))

    def partials(self, p, y):
        lo, hi = _bce_bounds(p.dtype)
        pc = np.clip(p, lo, hi)
        inside = (p >= lo) & (p <= hi)  # the clipped loss is flat outside
        return (pc - y) / (pc * (1.0 - pc)) * inside, np.log(1.0 - pc) - np.log(pc)


@register
class BceLogits(FloatLoss):
    name = "bce_logits"
    doc = "binary cross-entropy of logits z (= bce(sigmoid(z), y), stable for any z)"
    args = ("z", "y")
    prediction, target, threshold = "logits", "binary", 0.0

    def elems(self, z, y):
        # log(1 + e^z) - z y, with log(1 + e^z) = max(z, 0) + log1p(e^-|z|)
        return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))

    def partials(self, z, y):
        return sigmoid(z) - y, -z


@register
class Perceptron(FloatLoss):
    name = "perceptron"
    doc = "perceptron criterion of a step unit's input z against 0/1 targets: mean((step(z) - t) z)"
    args = ("z", "t")
    prediction, target, threshold = "scores", "binary", 0.0  # the step unit's input

    # Zero where the unit is right, |z| where it is wrong; its gradient (step(z) - t)
    # is the perceptron learning rule, so SGD with batch 1 and lr 1 *is* that rule.
    def elems(self, z, t):
        return ((z > 0).astype(z.dtype) - t) * z

    def partials(self, z, t):
        return (z > 0).astype(z.dtype) - t, -z


@register
class Hinge(FloatLoss):
    name = "hinge"
    doc = "hinge loss of scores z against 0/1 targets t (labels s = 2t - 1): mean(max(0, 1 - s z))"
    args = ("z", "t")
    prediction, target, threshold = "scores", "binary", 0.0

    # The support vector machine's loss: zero once an example is on its side with margin 1,
    # where the perceptron criterion stops at margin 0.
    def elems(self, z, t):
        return np.maximum(0.0, 1.0 - (2.0 * t - 1.0) * z)

    def partials(self, z, t):
        inside = (1.0 - (2.0 * t - 1.0) * z > 0).astype(z.dtype)
        return -(2.0 * t - 1.0) * inside, -2.0 * z * inside


class ClassLoss(Op):
    """Predictions (..., K) against int classes (...), -1 meaning 'ignore'."""
    arity = 2
    integer_inputs = (1,)
    scalar_output = True
    elementwise = False
    operator = None
    last_axis_view = False
    row_gradient_input = None
    reads_across_chunks = False
    scores_as = None
    passes_gradient = ()
    logits_form = None
    saves_state = False
    target = "class"
    threshold = None

    def shape(self, shapes, attrs, dims):
        pred, target = shapes
        if len(pred) != len(target) + 1:
            raise ShapeError(f"{self.name}: predictions {show_shape(pred)} need one more axis "
                             f"(the classes) than int targets {show_shape(target)}")
        unify_dims(tuple(pred[:-1]), tuple(target), dims, self.name)
        return ()

    def _valid(self, pred, y, ctx):
        """Valid positions, the divisor, and y with ignored positions set to class 0."""
        if y.size and y.max() >= pred.shape[-1]:
            raise ValueError(f"{self.name}: class {int(y.max())} out of range for "
                             f"{pred.shape[-1]} classes")
        valid = y >= 0
        if ctx.mask is not None:
            valid &= _expand(ctx.mask, y.ndim) > 0
        return valid, float(max(valid.sum(), 1)), np.where(valid, y, 0)[..., None]

    def _onehot(self, pred, idx, values):
        """Zeros like pred, with ``values`` at the target classes."""
        d = np.zeros_like(pred)
        np.put_along_axis(d, idx, values[..., None].astype(pred.dtype), axis=-1)
        return d


@register
class CrossEntropy(ClassLoss):
    name = "cross_entropy"
    doc = "-log p[y] for probabilities p (..., K) and int classes y (...); -1 is ignored"
    args = ("p", "y")
    prediction = "probabilities"
    logits_form = ("softmax", "cross_entropy_logits")

    def forward(self, xs, attrs, ctx):
        p, y = xs
        valid, n, idx = self._valid(p, y, ctx)
        py = np.maximum(np.take_along_axis(p, idx, -1)[..., 0], EPS)
        return np.asarray(-(np.log(py) * valid).sum() / n, dtype=p.dtype)

    def vjp(self, g, xs, out, attrs, ctx):
        p, y = xs
        valid, n, idx = self._valid(p, y, ctx)
        py = np.take_along_axis(p, idx, -1)[..., 0]
        live = valid & (py >= EPS)  # below EPS the clipped loss is flat
        return [self._onehot(p, idx, live / np.maximum(py, EPS) * (-float(g) / n)), None]


@register
class CrossEntropyLogits(ClassLoss):
    name = "cross_entropy_logits"
    doc = "cross_entropy(softmax(z), y) computed stably from logits z"
    args = ("z", "y")
    prediction = "logits"
    saves_state = True    # the exponentials, for the vjp
    spends_input = True   # in a single-use pass the exponentials overwrite the logits

    # Rows flattened to (N, K) and few NumPy calls: for small batches the calls are the cost (the
    # rows' sums as a product by ones, one BLAS call: NumPy's sum along a short axis costs 2-6 us)
    def forward(self, xs, attrs, ctx):
        z, y = xs
        K = z.shape[-1]
        flat, yf = z.reshape(-1, K), y.reshape(-1)
        valid, n = self._positions(y, ctx)
        cols = yf if valid is None else np.where(valid, yf, 0)
        rows = _arange(len(yf))
        # One exp over the logits: e = exp(z - max), -log p[y] = log(sum e) - (z[y] - max).
        e = np.subtract(flat, _row_max(flat), out=flat if ctx.spend else ctx.empty(flat.shape, z.dtype))
        try:
            zy = e[rows, cols]
        except IndexError:
            raise ValueError(f"{self.name}: class {int(yf.max())} out of range for {K} classes") from None
        np.exp(e, out=e)
        s = _row_sums(e)
        nll = np.log(s)
        nll -= zy
        ctx.saved["exp"] = e, s, rows, cols, valid, n  # softmax = e / s, divided in the VJP
        loss = np.dot(nll, _ones(len(nll), nll.dtype) if valid is None else valid.astype(nll.dtype))
        return np.asarray(loss / n, dtype=z.dtype)

    def _positions(self, y, ctx):
        """Which positions count (None: all of them) and how many (at least 1)."""
        if ctx.mask is None and y.size and np.minimum.reduce(y, axis=None) >= 0:
            return None, float(y.size)   # (no padding label: one NumPy call, not a mask and its count)
        valid = y >= 0
        if ctx.mask is not None:
            valid &= _expand(ctx.mask, y.ndim) > 0
        n = int(np.count_nonzero(valid))
        return (None if n == y.size else valid.reshape(-1)), float(max(n, 1))

    def vjp(self, g, xs, out, attrs, ctx):
        z, y = xs
        # (softmax - onehot) * w, written over the saved exponentials (no copy of a (..., K)
        # array); a second backward over the same tape computes the softmax again
        saved = ctx.saved.pop("exp", None)
        if saved is None:
            valid, n = self._positions(y, ctx)
            yf = y.reshape(-1)
            e = np.exp(log_softmax(z)).reshape(-1, z.shape[-1])
            s, rows, cols = None, _arange(len(yf)), (yf if valid is None else np.where(valid, yf, 0))
        else:
            e, s, rows, cols, valid, n = saved
        w = float(g) / n   # (a Python float: with float32 arrays it computes in float32)
        d = e
        if valid is not None:
            scale = valid * np.asarray(w, e.dtype)
            d *= (scale / s if s is not None else scale)[:, None]
            d[rows, cols] -= scale
        else:
            d *= np.divide(w, s, out=s)[:, None] if s is not None else w   # (s is the VJP's to spend)
            d[rows, cols] -= w
        return [d.reshape(z.shape), None]


def _row_max(a: np.ndarray) -> np.ndarray:
    """The maxima of a 2-d array's rows, (N, 1). Rows of a few classes (a classifier's, a tagger's):
    by the columns of its transposed copy, as NumPy's reduction along a short axis pays per row
    (64 x 10: 3.7 -> 1.9 us; 800 x 17: 31 -> 11). A maximum is exact: the same numbers either way."""
    n, k = a.shape
    if k <= 32 and n >= 16:
        return np.maximum.reduce(np.ascontiguousarray(a.T), axis=0)[:, None]
    return np.maximum.reduce(a, axis=1, keepdims=True)


def _row_sums(a: np.ndarray) -> np.ndarray:
    """The sums of a 2-d array's rows, as a product by ones (one BLAS call)."""
    return np.dot(a, _ones(a.shape[1], a.dtype))


def _kept(cache: dict, key, make) -> np.ndarray:
    """``make()``'s array, kept per ``key`` (read only); many batch shapes (variable lengths) start
    the cache over rather than grow it."""
    a = cache.get(key)
    if a is None:
        if len(cache) > 64:
            cache.clear()
        a = cache[key] = make()
        a.flags.writeable = False
    return a


_ONES: dict[tuple, np.ndarray] = {}
_ARANGE: dict[int, np.ndarray] = {}


def _ones(n: int, dtype) -> np.ndarray:
    """n ones of dtype, kept (read only)."""
    return _kept(_ONES, (n, dtype), lambda: np.ones(n, dtype))


def _arange(n: int) -> np.ndarray:
    """0..n-1, kept (row numbers for fancy indexing, read only)."""
    return _kept(_ARANGE, n, lambda: np.arange(n))


@register
class Nll(ClassLoss):
    name = "nll"
    doc = "negative log-likelihood -logp[y] for log-probabilities (..., K) and int classes y"
    args = ("logp", "y")
    prediction = "log_probabilities"
    logits_form = ("log_softmax", "cross_entropy_logits")

    def forward(self, xs, attrs, ctx):
        logp, y = xs
        valid, n, idx = self._valid(logp, y, ctx)
        return np.asarray(-(np.take_along_axis(logp, idx, -1)[..., 0] * valid).sum() / n,
                          dtype=logp.dtype)

    def vjp(self, g, xs, out, attrs, ctx):
        logp, y = xs
        valid, n, idx = self._valid(logp, y, ctx)
        return [self._onehot(logp, idx, valid * (-float(g) / n)), None]
