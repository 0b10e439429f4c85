"""Evaluation metrics on NumPy arrays.

Following the runtime's convention, gold labels < 0 mark padding and are
ignored, as are positions where ``mask`` is 0/False.
"""
from __future__ import annotations

import math

import numpy as np


def _valid(gold: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    keep = gold >= 0
    if mask is not None:
        keep &= np.asarray(mask).astype(bool)
    return keep


def accuracy(pred: np.ndarray, gold: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Fraction of kept positions where pred == gold.

    ``pred`` is either class ids shaped like ``gold`` or scores with one more
    trailing axis (argmax is taken). Returns NaN when nothing is kept.
    """
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.ndim == gold.ndim + 1:
        pred = pred.argmax(axis=-1)
    if pred.shape != gold.shape:
        raise ValueError(f"accuracy: pred shape {pred.shape} does not match gold {gold.shape}")
    keep = _valid(gold, mask)
    n = int(keep.sum())
    return float(((pred == gold) & keep).sum()) / n if n else float("nan")


def confusion_matrix(pred: np.ndarray, gold: np.ndarray, n: int,
                     mask: np.ndarray | None = None) -> np.ndarray:
    """(n, n) int64 counts: row = gold class, column = predicted class."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.ndim == gold.ndim + 1:
        pred = pred.argmax(axis=-1)
    keep = _valid(gold, mask)
    p, g = pred[keep].astype(np.int64), gold[keep].astype(np.int64)
    if p.size and (p.min() < 0 or p.max() >= n or g.max() >= n):
        raise ValueError(f"confusion_matrix: class ids must lie in [0, {n})")
    return np.bincount(g * n + p, minlength=n * n).reshape(n, n)


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood in nats); inf instead of overflowing."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return float("inf")


class RunningMean:
    """Weighted running mean, e.g. of per-batch losses weighted by batch size."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0.0

    def add(self, value: float, weight: float = 1.0) -> None:
        self.total += float(value) * weight
        self.count += weight

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def __repr__(self) -> str:
        return f"RunningMean(mean={self.mean:.6g}, count={self.count:g})"
