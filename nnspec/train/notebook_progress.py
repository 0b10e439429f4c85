"""Training progress in a Jupyter notebook: a progress bar and curves that redraw each epoch.

:class:`NotebookProgress` has the interface of :class:`nnspec.train.progress.Progress` (it keeps
the same counters), so the trainer uses either; :func:`progress_class` picks this one inside a
notebook kernel. IPython is imported only here, and only when a notebook is running, so the
core never needs it.
"""
from __future__ import annotations

import html
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .progress import Progress


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not a terminal IPython, not plain Python)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress_class() -> type[Progress]:
    return NotebookProgress if in_notebook() else Progress


class NotebookProgress(Progress):
    """A bar for the epoch's steps and, after each epoch, its summary line and the loss and
    metric curves so far (the same figure as the run directory's plots/curves.png)."""

    def __init__(self, total_epochs: int, steps_per_epoch: int | None = None, unit: str = "ex",
                 quiet: bool = False, stream=None, refresh_interval: float = 0.5, max_lines: int = 25,
                 curve_interval: float = 2.0):
        super().__init__(total_epochs, steps_per_epoch, unit, quiet=True, stream=stream,
                         refresh_interval=refresh_interval, max_lines=max_lines)
        self.shown = not quiet
        self.rows: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._bar_handle = self._curve_handle = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.curve_interval = curve_interval   # seconds between redraws of the curves (a figure takes ~0.2 s)
        self._last_curves = float("-inf")
        self._drawn_epoch = 0

    def __enter__(self) -> "NotebookProgress":
        if self.shown:
            from IPython.display import HTML, display
            self._bar_handle = display(HTML(self._bar_html()), display_id=True)
            self._curve_handle = display(HTML(""), display_id=True)
            self._tmp = tempfile.TemporaryDirectory(prefix="nnspec-curves-")
        return self

    def step(self, n: int = 1, loss: float | None = None) -> None:
        super().step(n, loss)
        if self._bar_handle is not None:
            now = time.perf_counter()
            if now - self._last_refresh >= self.refresh_interval:
                self._last_refresh = now
                self._show_bar()

    def end_epoch(self, metrics: dict[str, Any] | None = None) -> str:
        line = self.summary(metrics)
        self.rows.append({"epoch": self.epoch, **(metrics or {})})
        if self.epoch % self.log_every == 0 or self.epoch in (1, self.total_epochs):
            self.lines.append(line)
        if self._bar_handle is not None:
            self._show_bar(done=True)
            now = time.perf_counter()
            if self.epoch == self.total_epochs or now - self._last_curves >= self.curve_interval:
                self._show_curves()
        return line

    def __exit__(self, *exc) -> None:
        if self._bar_handle is not None and self.rows and self._drawn_epoch != self.epoch:
            self._show_curves()   # an early stop: the curves up to the last epoch run
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def print(self, message: str) -> None:
        self.lines.append(message)
        if self._bar_handle is not None:
            self._show_bar(done=True)

    # -- drawing -------------------------------------------------------------------
    def _bar_html(self, done: bool = False) -> str:
        total = self.steps_per_epoch
        value = total if done and total else self.steps
        bar = (f"<progress value='{value}' max='{total}' style='width:50%'></progress> {value}/{total}"
               if total else f"{self.steps} steps")
        loss = f" loss {self.loss.mean:.4f}" if self.loss.count else ""
        head = f"<b>epoch {self.epoch}/{self.total_epochs}</b> {bar}{loss}"
        log = "".join(f"<div>{html.escape(line)}</div>" for line in self.lines[-12:])
        return f"<div style='font-family:monospace'>{head}{log}</div>"

    def _show_bar(self, done: bool = False) -> None:
        from IPython.display import HTML
        self._bar_handle.update(HTML(self._bar_html(done)))

    def _show_curves(self) -> None:
        from IPython.display import Image
        from .plots import plot_curves
        path = Path(self._tmp.name) / "curves.png"
        plot_curves(self.rows, path, title=f"after epoch {self.epoch}")
        self._curve_handle.update(Image(data=path.read_bytes(), format="png", width=720))
        self._last_curves, self._drawn_epoch = time.perf_counter(), self.epoch
