"""Plots are written as real, non-trivial PNGs."""
import numpy as np
import pytest

from nnspec.train.plots import plot_confusion, plot_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path, min_bytes=5000):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > min_bytes


def test_plot_curves(tmp_path):
    rows = [{"epoch": e, "train_loss": 1 / e, "dev_loss": 1.2 / e, "dev_acc": 1 - 0.5 / e, "lr": 0.1}
            for e in range(1, 6)]
    steps = list(np.linspace(1.5, 0.2, 50) + np.random.default_rng(0).normal(0, 0.05, 50))
    assert _is_png(plot_curves(rows, tmp_path / "curves.png", step_losses=steps))
    assert _is_png(plot_curves(rows[:1], tmp_path / "sub" / "one.png"))
    assert _is_png(plot_curves([{"epoch": 1, "loss": 0.5}], tmp_path / "bare.png"))


@pytest.mark.parametrize("n", [3, 20])
def test_plot_confusion(tmp_path, n):
    rng = np.random.default_rng(n)
    m = rng.integers(0, 50, size=(n, n)) + np.diag(rng.integers(50, 200, size=n))
    m[0] = 0  # a class with no gold examples must not divide by zero
    labels = [f"class_{i}" for i in range(n)]
    assert _is_png(plot_confusion(m, labels, tmp_path / f"cm{n}.png"))


def test_plot_confusion_label_mismatch(tmp_path):
    with pytest.raises(ValueError):
        plot_confusion(np.eye(3), ["a", "b"], tmp_path / "x.png")
