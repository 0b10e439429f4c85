"""Plots are written as real, non-trivial PNGs, here or by the helper process of nnspec run."""
import sys

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


# ---- the helper process of nnspec run (nnspec/cli/plotting.py) -----------------------

def _rows():
    return [{"epoch": e, "train_loss": np.float32(1 / e), "dev_loss": 1.2 / e, "dev_accuracy": float("nan") if e == 2
             else 1 - 0.5 / e} for e in range(1, 6)]


def _without_matplotlib(monkeypatch):
    """As in a fresh `nnspec run`, where matplotlib is not loaded: the Plotter starts its helper."""
    monkeypatch.delitem(sys.modules, "matplotlib.figure", raising=False)


def test_the_helper_draws_what_this_process_draws(tmp_path, monkeypatch):
    from nnspec.cli.plotting import Plotter
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])
    _without_matplotlib(monkeypatch)
    with Plotter() as plotter:
        assert plotter.process is not None
        plotter.curves(_rows(), tmp_path / "helper" / "curves.png", title="t", best_epoch=3, loss_unit="nats")
        plotter.confusion(matrix, ["a", "b", "c"], tmp_path / "helper" / "cm.png", title="cm")
        plotter.finish()
        assert plotter.process is None
    import matplotlib
    with matplotlib.rc_context():   # as a fresh process has them, whatever earlier tests changed here
        matplotlib.rc_file_defaults()
        plot_curves(_rows(), tmp_path / "here" / "curves.png", title="t", best_epoch=3, loss_unit="nats")
        plot_confusion(matrix, ["a", "b", "c"], tmp_path / "here" / "cm.png", title="cm")
    for name in ("curves.png", "cm.png"):
        assert _is_png(tmp_path / "helper" / name)
        assert (tmp_path / "helper" / name).read_bytes() == (tmp_path / "here" / name).read_bytes()


def test_a_plot_the_helper_cannot_draw_fails_as_it_would_here(tmp_path, monkeypatch):
    from nnspec.cli.plotting import Plotter
    _without_matplotlib(monkeypatch)
    with Plotter() as plotter:
        plotter.confusion(np.eye(3), ["a", "b"], tmp_path / "x.png")
        with pytest.raises(ValueError, match="does not match"):
            plotter.finish()


def test_the_helper_ends_when_nothing_is_sent_or_the_run_stops(tmp_path, monkeypatch):
    from nnspec.cli.plotting import Plotter
    _without_matplotlib(monkeypatch)
    plotter = Plotter()
    process = plotter.process
    process.stdin.close()  # what the helper sees when nnspec run is killed: its input ends
    assert process.wait(timeout=60) == 0
    plotter.stop()
    with pytest.raises(KeyboardInterrupt):
        with Plotter() as plotter:
            process = plotter.process
            raise KeyboardInterrupt  # Ctrl-C during training: the helper is stopped, not left behind
    assert process.poll() is not None and plotter.process is None
    assert not list(tmp_path.iterdir())
