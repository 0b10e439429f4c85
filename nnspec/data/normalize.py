"""Input normalisation to zero mean and unit variance, from training statistics."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Standardizer:
    """Per-feature mean and standard deviation over the examples (axis 0).

    ``apply`` broadcasts over leading axes, so statistics fitted on (N, n)
    vectors also apply to (B, n) batches and (T, B, n) sequences.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, train: np.ndarray) -> Standardizer:
        x = np.asarray(train, dtype=np.float64)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError("cannot fit a standardizer on no examples")
        mean, std = x.mean(axis=0), x.std(axis=0)
        # A constant feature has std 0 (or rounding noise): leave its scale alone.
        constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
        return cls(mean, np.where(constant, 1.0, std))

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        return ((x - self.mean) / self.std).astype(dtype, copy=False)

    def to_json(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> Standardizer:
        return cls(np.asarray(data["mean"], dtype=np.float64), np.asarray(data["std"], dtype=np.float64))
