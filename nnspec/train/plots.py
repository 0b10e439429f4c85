"""PNG plots of a run, drawn off-screen.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas rather
than through pyplot, so nothing here touches the global backend, opens a
window, or leaks figures in a long process.

Metric rows use the training loop's keys: ``epoch``, ``train_loss`` (or
``loss``), ``dev_loss``, and any other ``train_*`` / ``dev_*`` number as a
metric (e.g. ``dev_accuracy``); ``lr`` and other keys are not drawn.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


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


def _family(key: str) -> str:
    """``dev_accuracy`` -> ``accuracy``: train and dev figures of one kind share a panel."""
    for prefix in ("train_", "dev_", "test_"):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _epochs_axis(ax, xs_all: list) -> None:
    """Epochs are whole numbers: integer ticks, and a little room around one or two points."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if xs_all:
        lo, hi = min(xs_all), max(xs_all)
        if hi - lo < 4:
            ax.set_xlim(lo - 0.5, hi + 0.5)


def curves_figure(metrics_rows: Sequence[dict[str, Any]], step_losses: Sequence[float] | None = None,
                  title: str = "Training curves", best_epoch: int | None = None,
                  loss_unit: str | None = None) -> Figure:
    """Losses in the first panel (per-step training loss faint behind the per-epoch means,
    dev loss dashed, so over-fitting shows as the curves parting), labelled with their unit;
    then one panel per kind of metric (accuracy, perplexity, mistakes...), so figures of
    different scales each get their own axis. The best epoch is marked in every panel.
    Epochs are few or many: each is a point while they are few, and ticks are whole epochs."""
    rows = list(metrics_rows)
    train_key = "train_loss" if any("train_loss" in r for r in rows) else "loss"
    families: dict[str, list[str]] = {}
    for r in rows:
        for k in r:
            if (k.startswith(("dev_", "train_")) and not k.endswith("loss") and _series(rows, k)[1]
                    and k not in families.get(_family(k), [])):
                families.setdefault(_family(k), []).append(k)
    n = 1 + len(families)
    fig = Figure(figsize=(5.5 * n, 4.2))
    axes = fig.subplots(1, n, squeeze=False)[0]
    few = len(rows) <= 40
    marker = "o" if few else None

    ax_loss = axes[0]
    if step_losses is not None and len(step_losses):
        # Spread the steps evenly over the epochs the rows cover.
        n_epochs = max([r.get("epoch", i + 1) for i, r in enumerate(rows)] or [1])
        xs = np.arange(1, len(step_losses) + 1) * (n_epochs / len(step_losses))
        ax_loss.plot(xs, step_losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
    all_xs: list = []
    for key, style, label in ((train_key, "-", "train"), ("dev_loss", "--", "dev")):
        xs, ys = _series(rows, key)
        if ys:
            ax_loss.plot(xs, ys, style, marker=marker, markersize=4, label=label)
            all_xs += xs
    ax_loss.set(xlabel="epoch", ylabel=f"loss ({loss_unit})" if loss_unit else "loss", title="Loss")
    panels = [(ax_loss, all_xs)]

    for ax, (family, keys) in zip(axes[1:], families.items()):
        xs_all: list = []
        for k in keys:
            xs, ys = _series(rows, k)
            ax.plot(xs, ys, "--" if k.startswith("dev_") else "-", marker=marker, markersize=4,
                    label=k.split("_", 1)[0] if "_" in k else k)
            xs_all += xs
        ax.set(xlabel="epoch", ylabel=family.replace("_", " "), title=family.replace("_", " ").capitalize())
        if family.startswith("accuracy"):
            ax.set_ylim(max(0.0, min(ax.get_ylim()[0], 1.0) - 0.02), 1.02)
        panels.append((ax, xs_all))

    for ax, xs in panels:
        ax.grid(alpha=0.3)
        _epochs_axis(ax, xs)
        if best_epoch:
            ax.axvline(best_epoch, color="tab:green", linestyle=":", linewidth=1.5,
                       label=f"best (epoch {best_epoch})")
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(metrics_rows: Sequence[dict[str, Any]], path: str | os.PathLike,
                step_losses: Sequence[float] | None = None, title: str = "Training curves",
                best_epoch: int | None = None, loss_unit: str | None = None) -> Path:
    """The training curves (``curves_figure``) as a PNG."""
    return _save(curves_figure(metrics_rows, step_losses, title, best_epoch, loss_unit), path)


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


def plot_attention(weights: np.ndarray, outputs: Sequence[str], sources: Sequence[str], path: str | os.PathLike,
                   title: str = "Attention") -> Path:
    """Heat map of attention weights: a row per output token, a column per source token, each row
    the weights (summing to 1) with which that output step read the source."""
    w = np.asarray(weights, dtype=float)
    if w.shape != (len(outputs), len(sources)):
        raise ValueError(f"attention weights {w.shape} do not match {len(outputs)} outputs and {len(sources)} sources")
    fig = Figure(figsize=(min(2.5 + 0.45 * len(sources), 16), min(2 + 0.45 * len(outputs), 16)))
    ax = fig.subplots()
    im = ax.imshow(w, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="weight")
    ax.set_xticks(range(len(sources)), labels=[str(x) for x in sources], rotation=45, ha="right",
                  rotation_mode="anchor")
    ax.set_yticks(range(len(outputs)), labels=[str(x) for x in outputs])
    ax.set(xlabel="source", ylabel="output", title=title)
    fig.tight_layout()
    return _save(fig, path)


# ---- drawing in a helper process ------------------------------------------------------
# nnspec run starts this module as a script in a process of its own (nnspec/cli/plotting.py), so
# that importing matplotlib (about 0.45 s) happens while the network trains. It imports no nnspec
# module; a plot arrives as a line of JSON naming one of these functions and its arguments.

PLOTS = {"plot_curves": plot_curves, "plot_confusion": plot_confusion}


def draw(job: dict) -> Path:
    """One plot described as data: ``{"plot": "plot_curves", "args": [...], "kwargs": {...}}``."""
    return PLOTS[job["plot"]](*job.get("args", []), **job.get("kwargs", {}))


def serve(lines=None) -> None:
    """Draw each plot read from standard input, a line of JSON each, until it closes (also when
    the process that started this one ended without sending anything)."""
    import json
    import sys
    for line in lines if lines is not None else sys.stdin:
        if line.strip():
            draw(json.loads(line))
