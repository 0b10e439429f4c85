"""Training progress display.

On a terminal: a rich progress bar for the current epoch (steps, running-mean
loss, throughput, ETA), and a summary line kept on screen when the epoch
ends. Otherwise (a log file, a pipe, CI): exactly one plain line per epoch,

    epoch 3/10  loss 0.4123  dev_acc 0.8123  1234 ex/s  12.3s

A run of more epochs than fit on a screen (XOR: 2000 of a step each) logs
every k-th epoch, at most ~``max_lines`` lines; its lines give the rate in
steps per second over the epochs since the previous line and the time since
the start, so a tiny epoch's fixed costs do not read as a falling throughput.

``quiet=True`` prints nothing. ``step`` is on the training hot path: it only
adds to counters and touches the bar at most every ``refresh_interval``
seconds.
"""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from .metrics import RunningMean


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if v == 0 or 1e-3 <= abs(v) < 1e6 else f"{v:.4g}"


def _fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}" if rate >= 10 else f"{rate:.2f}"


def _fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """``with Progress(total_epochs, steps_per_epoch, unit="ex") as p:``
    ``p.start_epoch(e)`` (e is the 1-based epoch number shown),
    ``p.step(n, loss)`` per batch, ``p.end_epoch(metrics)`` at the end.

    ``n`` counts whatever ``unit`` names (examples, tokens); the loss shown is
    the mean over the epoch's steps weighted by ``n``. ``steps_per_epoch`` may
    be None when unknown (the bar then has no ETA).
    """

    def __init__(self, total_epochs: int, steps_per_epoch: int | None = None, unit: str = "ex",
                 quiet: bool = False, stream: TextIO | None = None, refresh_interval: float = 0.2,
                 max_lines: int = 25):
        self.total_epochs = total_epochs
        # long runs of tiny epochs (XOR: 2000) log every k-th epoch, at most ~max_lines lines
        self.log_every = max(1, -(-total_epochs // max_lines))
        self.steps_per_epoch = steps_per_epoch
        self.unit = unit
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.refresh_interval = refresh_interval
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = not quiet and bool(isatty and isatty())
        self._bar = None
        self._task = None
        self.epoch = 0
        self.loss = RunningMean()
        self._reset_counters()
        self._start = self._line_t0 = time.perf_counter()
        self._line_steps = 0  # steps since the previous printed line

    def _reset_counters(self) -> None:
        self.loss.reset()
        self.steps = 0
        self.count = 0
        self._t0 = self._last_refresh = time.perf_counter()

    # -- context manager ---------------------------------------------------
    def __enter__(self) -> "Progress":
        if self.interactive:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeRemainingColumn)
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                refresh_per_second=5,
            )
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    # -- per epoch / per step ----------------------------------------------
    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._reset_counters()
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(
                f"epoch {epoch}/{self.total_epochs}", total=self.steps_per_epoch, loss="-", rate="")

    def step(self, n: int = 1, loss: float | None = None) -> None:
        self.steps += 1
        self.count += n
        if loss is not None:
            self.loss.add(loss, n)
        if self._bar is not None:
            now = time.perf_counter()
            if now - self._last_refresh >= self.refresh_interval:
                self._last_refresh = now
                self._refresh(now)

    def _refresh(self, now: float) -> None:
        elapsed = max(now - self._t0, 1e-9)
        self._bar.update(self._task, completed=self.steps,
                         loss=f"{self.loss.mean:.4f}" if self.loss.count else "-",
                         rate=f"{_fmt_rate(self.count / elapsed)} {self.unit}/s")

    def summary(self, metrics: dict[str, Any] | None = None) -> str:
        """The one-line epoch summary (what end_epoch prints)."""
        now = time.perf_counter()
        elapsed = now - self._t0
        parts = [f"epoch {self.epoch}/{self.total_epochs}"]
        metrics = dict(metrics or {})
        if self.loss.count:
            parts.append(f"loss {self.loss.mean:.4f}")
            metrics.pop("loss", None)
            metrics.pop("train_loss", None)
        for key in ("epoch", "step"):
            metrics.pop(key, None)
        parts += [f"{k} {_fmt_value(v)}" for k, v in metrics.items()]
        if self.log_every > 1:  # many short epochs: the steps since the last line, the time since the start
            span = now - self._line_t0
            steps = self._line_steps + self.steps
            if steps and span > 0:
                parts.append(f"{_fmt_rate(steps / span)} steps/s")
            parts.append(_fmt_duration(now - self._start))
            return "  ".join(parts)
        if self.count and elapsed > 0:
            parts.append(f"{_fmt_rate(self.count / elapsed)} {self.unit}/s")
        parts.append(_fmt_duration(elapsed))
        return "  ".join(parts)

    def end_epoch(self, metrics: dict[str, Any] | None = None) -> str:
        line = self.summary(metrics)
        if self._bar is not None and self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
        if self.epoch % self.log_every and self.epoch not in (1, self.total_epochs):
            self._line_steps += self.steps
            return line
        self._line_steps, self._line_t0 = 0, time.perf_counter()
        if self._bar is not None:
            self._bar.console.print(line, highlight=False, markup=False)
        elif not self.quiet:
            self.stream.write(line + "\n")
            self.stream.flush()
        return line

    def print(self, message: str) -> None:
        """A log message that does not disturb the bar (e.g. "saved best")."""
        if self._bar is not None:
            self._bar.console.print(message, highlight=False, markup=False)
        elif not self.quiet:
            self.stream.write(message + "\n")
            self.stream.flush()
