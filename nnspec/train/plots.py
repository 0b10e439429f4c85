"""PNG plots of a run, drawn off-screen.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas rather
than through pyplot, so nothing here touches the global backend, opens a
window, or leaks figures in a long process.

Metric rows use the training loop's keys: ``epoch``, ``train_loss`` (or
``loss``), ``dev_loss``, and any other ``train_*`` / ``dev_*`` number as a
metric (e.g. ``dev_acc``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get("epoch", i + 1))
            ys.append(v)
    return xs, ys


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_curves(metrics_rows: Sequence[dict[str, Any]], path: str | os.PathLike,
                step_losses: Sequence[float] | None = None, title: str = "Training curves") -> Path:
    """Losses on the left panel (per-step training loss faint behind the
    per-epoch means, dev loss dashed, so over-fitting shows as the curves
    parting); other train/dev metrics on the right panel."""
    rows = list(metrics_rows)
    fig = Figure(figsize=(11, 4.2))
    ax_loss, ax_metric = fig.subplots(1, 2)

    train_key = "train_loss" if any("train_loss" in r for r in rows) else "loss"
    if step_losses is not None and len(step_losses):
        # Spread the steps evenly over the epochs the rows cover.
        n_epochs = max([r.get("epoch", i + 1) for i, r in enumerate(rows)] or [1])
        xs = np.arange(1, len(step_losses) + 1) * (n_epochs / len(step_losses))
        ax_loss.plot(xs, step_losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
    for key, style, label in ((train_key, "-o", "train"), ("dev_loss", "--s", "dev")):
        xs, ys = _series(rows, key)
        if ys:
            ax_loss.plot(xs, ys, style, markersize=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.grid(alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend()

    metric_keys = []
    for r in rows:
        for k in r:
            if (k.startswith(("dev_", "train_")) and not k.endswith("loss")
                    and k not in metric_keys and _series(rows, k)[1]):
                metric_keys.append(k)
    for k in metric_keys:
        xs, ys = _series(rows, k)
        ax_metric.plot(xs, ys, "--s" if k.startswith("dev_") else "-o", markersize=3, label=k)
    ax_metric.set(xlabel="epoch", ylabel="metric", title="Metrics")
    ax_metric.grid(alpha=0.3)
    if metric_keys:
        ax_metric.legend()
    else:
        ax_metric.text(0.5, 0.5, "no metrics recorded", ha="center", va="center",
                       transform=ax_metric.transAxes, color="gray")

    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], path: str | os.PathLike,
                   title: str = "Confusion matrix (rows: gold, normalised)") -> Path:
    """Heat map of the row-normalised matrix (each gold class sums to 1, so
    rare classes are as visible as common ones), annotated with raw counts."""
    m = np.asarray(matrix)
    n = m.shape[0]
    if m.shape != (n, n) or len(labels) != n:
        raise ValueError(f"confusion matrix {m.shape} does not match {len(labels)} labels")
    totals = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, totals, out=np.zeros(m.shape, dtype=float), where=totals > 0)

    side = min(4 + 0.45 * n, 16)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of gold class")
    ax.set_xticks(range(n), labels=[str(x) for x in labels], rotation=45, ha="right",
                  rotation_mode="anchor")
    ax.set_yticks(range(n), labels=[str(x) for x in labels])
    ax.set(xlabel="predicted", ylabel="gold", title=title)
    if n <= 30:  # beyond that the counts are unreadable anyway
        fontsize = 9 if n <= 10 else 7 if n <= 20 else 5
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=fontsize,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _save(fig, path)
