"""Parameter initialisers, looked up by name.

Every initialiser is ``fn(shape, rng, dtype=np.float64, **attrs) -> ndarray``.
Values are drawn in float64 and then cast, so a given seed yields the same
numbers (up to rounding) whatever the parameter dtype.

Fan convention: a matrix ``W`` of shape (m, n) maps an n-vector to an m-vector
(``y = W @ x``), so fan_in = n and fan_out = m. Higher-rank weights follow the
convolution layout (out, in, *kernel). A vector counts as fan_in = fan_out = n.
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import numpy as np

Initializer = Callable[..., np.ndarray]


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a parameter shape."""
    shape = tuple(shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def zeros(shape, rng, dtype=np.float64) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


def ones(shape, rng, dtype=np.float64) -> np.ndarray:
    return np.ones(shape, dtype=dtype)


def uniform(shape, rng, dtype=np.float64, scale: float = 0.1) -> np.ndarray:
    """U(-scale, scale)."""
    return rng.uniform(-scale, scale, size=shape).astype(dtype)


def normal(shape, rng, dtype=np.float64, std: float = 0.01, mean: float = 0.0) -> np.ndarray:
    return rng.normal(mean, std, size=shape).astype(dtype)


def xavier(shape, rng, dtype=np.float64, gain: float = 1.0) -> np.ndarray:
    """Glorot uniform: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def xavier_normal(shape, rng, dtype=np.float64, gain: float = 1.0) -> np.ndarray:
    """Glorot normal: N(0, gain^2 * 2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return rng.normal(0.0, std, size=shape).astype(dtype)


def he(shape, rng, dtype=np.float64, gain: float = math.sqrt(2.0)) -> np.ndarray:
    """Kaiming normal: N(0, gain^2 / fan_in); the default gain suits ReLU."""
    fan_in, _ = fans(shape)
    return rng.normal(0.0, gain / math.sqrt(fan_in), size=shape).astype(dtype)


def he_uniform(shape, rng, dtype=np.float64, gain: float = math.sqrt(2.0)) -> np.ndarray:
    """Kaiming uniform: same variance as :func:`he`, U(-a, a), a = gain*sqrt(3/fan_in)."""
    fan_in, _ = fans(shape)
    bound = gain * math.sqrt(3.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def orthogonal(shape, rng, dtype=np.float64, gain: float = 1.0) -> np.ndarray:
    """(Semi-)orthogonal matrix: rows or columns orthonormal, times ``gain``.

    Higher-rank shapes are flattened to (shape[0], rest). Signs are fixed from
    R's diagonal so the result is uniform over orthogonal matrices (Saxe et al.).
    """
    if len(shape) < 2:
        raise ValueError(f"orthogonal initialisation needs a matrix, got shape {tuple(shape)}")
    rows, cols = shape[0], math.prod(shape[1:])
    a = rng.normal(0.0, 1.0, size=(max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # np.sign(0) == 0 has probability zero here
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)


INITIALIZERS: dict[str, Initializer] = {
    "zeros": zeros,
    "ones": ones,
    "uniform": uniform,
    "normal": normal,
    "xavier": xavier,
    "glorot": xavier,
    "xavier_uniform": xavier,
    "xavier_normal": xavier_normal,
    "glorot_normal": xavier_normal,
    "he": he,
    "kaiming": he,
    "he_normal": he,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "orthogonal": orthogonal,
}


def initialize(name: str, shape, rng: np.random.Generator, dtype=np.float64, **attrs) -> np.ndarray:
    """Run the initialiser ``name``; bad names or attributes raise ValueError."""
    fn = INITIALIZERS.get(name)
    if fn is None:
        raise ValueError(f"unknown initialiser {name!r}; valid names: {', '.join(sorted(INITIALIZERS))}")
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("shape", "rng", "dtype")]
    unknown = sorted(set(attrs) - set(accepted))
    if unknown:
        raise ValueError(
            f"initialiser {name!r} does not take {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    return fn(tuple(shape), rng, dtype, **attrs)


def default_initializer(shape, role: str | None = None) -> tuple[str, dict]:
    """The (name, attrs) used when a spec does not choose an initialiser.

    Roles: "weight", "recurrent", "bias", "embedding", "gain" (norm scale);
    None infers from the rank (matrix -> weight, vector -> bias).

    * weight -> xavier uniform: keeps activation variance roughly constant
      through tanh/linear layers, and is a safe middle ground for ReLU.
    * recurrent -> orthogonal (square state-to-state matrices): repeated
      multiplication neither blows up nor shrinks the state at init.
    * bias -> zeros: symmetry is already broken by the weights.
    * gain -> ones: a norm layer should start as the identity.
    * embedding (vocab, dim) -> normal with std 1/sqrt(dim): each row has
      expected norm ~1 whatever the width, so the first layer sees unit-scale
      inputs (N(0, 1) as in some frameworks makes wide tables huge, a fixed
      0.01 makes narrow ones vanish).
    """
    shape = tuple(shape)
    if role is None:
        role = "weight" if len(shape) >= 2 else "bias"
    if role == "embedding":
        dim = shape[-1] if shape else 1
        return "normal", {"std": 1.0 / math.sqrt(dim)}
    if role == "recurrent" and len(shape) == 2:
        return "orthogonal", {}
    if role in ("weight", "recurrent"):
        return ("xavier", {}) if len(shape) >= 1 else ("zeros", {})
    if role == "gain":
        return "ones", {}
    if role == "bias":
        return "zeros", {}
    raise ValueError(f"unknown parameter role {role!r}; valid roles: weight, recurrent, bias, embedding, gain")
