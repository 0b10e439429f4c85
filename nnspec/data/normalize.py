"""Input statistics from the training part: standardisation (zero mean, unit variance) and
naive-Bayes scaling of bags (NBSVM)."""
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


@dataclass
class NaiveBayesScaler:
    """NBSVM's features (Wang & Manning 2012): a bag of tokens as present-or-not, each token
    scaled by its log-count ratio r = log((p / |p|1) / (q / |q|1)), where p = alpha + how many
    examples of class 1 hold the token and q likewise for class 0. Fitted on training labels only.
    """

    ratio: np.ndarray  # (V,): one weight per token of the bag's vocabulary

    ALPHA = 1.0  # Laplace smoothing: a token unseen in one class still has a finite ratio

    @classmethod
    def fit(cls, bags: list[np.ndarray], labels: np.ndarray, size: int) -> NaiveBayesScaler:
        """``bags``: each example's token ids; ``labels``: its class, 0 or 1; ``size``: vocabulary size."""
        labels = np.asarray(labels)
        present = [np.unique(ids) for ids in bags]
        counts = np.zeros((2, size), dtype=np.float64)
        for c in (0, 1):
            chosen = [ids for ids, y in zip(present, labels) if y == c]
            if chosen:
                counts[c] = np.bincount(np.concatenate(chosen), minlength=size)[:size]
        q, p = counts + cls.ALPHA
        return cls(np.log(p / p.sum()) - np.log(q / q.sum()))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Token counts (..., V) -> ratio where a token is present, 0 where it is not."""
        x = np.asarray(x)
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        return np.where(x > 0, self.ratio, 0.0).astype(dtype, copy=False)

    def to_json(self) -> dict:
        return {"nb_ratio": self.ratio.tolist()}

    @classmethod
    def from_json(cls, data: dict) -> NaiveBayesScaler:
        return cls(np.asarray(data["nb_ratio"], dtype=np.float64))


def input_statistics_from_json(data: dict) -> Standardizer | NaiveBayesScaler:
    """What a checkpoint's ``norm_stats`` holds for one input: a standardizer or NB ratios."""
    return NaiveBayesScaler.from_json(data) if "nb_ratio" in data else Standardizer.from_json(data)
