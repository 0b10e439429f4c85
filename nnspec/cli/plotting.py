"""A run's plots, drawn by a helper process that imports matplotlib while the network trains.

Importing matplotlib takes about 0.45 s, as long as the README's first run trains. So a run that
saves starts ``nnspec/train/plots.py`` as a script in a process of its own (it imports numpy and
matplotlib, no nnspec module) on the machine's other core, sends it the plots to draw as lines of
JSON, and waits for them at the end. Where matplotlib is loaded already (a notebook, the tests,
a sweep's worker) or the helper cannot start or fails, the plots are drawn here, as before.
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

# -c puts the current directory first on sys.path: drop it, so that the helper imports only
# numpy and matplotlib, and load plots.py by its path (not the package, which imports nnspec).
_START = ("import sys, importlib.util\n"
          "del sys.path[0]\n"
          "spec = importlib.util.spec_from_file_location('nnspec_plots', sys.argv[1])\n"
          "plots = importlib.util.module_from_spec(spec)\n"
          "spec.loader.exec_module(plots)\n"
          "plots.serve()\n")


class Plotter:
    """Collects plots (``curves``, ``confusion``: nnspec.train.plots's ``plot_curves`` and
    ``plot_confusion``), hands each to the helper as it comes, and returns from ``finish`` when
    they are written; ``helper``: start the helper process now. Use it as a context manager, so
    that a failed or interrupted run stops the helper."""

    def __init__(self, helper: bool = True):
        self.jobs: list[dict] = []
        self.process: subprocess.Popen | None = None
        if not helper or "matplotlib.figure" in sys.modules or not sys.executable:
            return
        from .. import train
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _START, str(Path(train.__file__).with_name("plots.py"))],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # a plot it fails to draw is drawn here, where the error shows
                start_new_session=True)  # a Ctrl-C reaches this process, which stops the helper
        except OSError:
            return
        # A thread writes to the helper: a pipe holds 64 KB, and the helper reads only once
        # matplotlib is loaded, so a long run's curves would otherwise hold this process up.
        self._lines: queue.SimpleQueue = queue.SimpleQueue()
        self._writer = threading.Thread(target=_write_lines, args=(self._lines, self.process.stdin), daemon=True)
        self._writer.start()

    def curves(self, rows, path: Path, **kwargs) -> None:
        # plot_curves draws a row's Python numbers (a float32 or int64 is not one): the rest goes as null
        rows = [{k: v if isinstance(v, (int, float)) else None for k, v in r.items()} for r in rows]
        self._add({"plot": "plot_curves", "args": [rows, str(path)], "kwargs": kwargs})

    def confusion(self, matrix, labels, path: Path, **kwargs) -> None:
        self._add({"plot": "plot_confusion", "args": [np.asarray(matrix).tolist(), list(labels), str(path)],
                   "kwargs": kwargs})

    def _add(self, job: dict) -> None:
        self.jobs.append(job)
        if self.process is not None:
            self._lines.put((json.dumps(job, default=_plain) + "\n").encode("utf-8"))

    def finish(self) -> None:
        """Return when the plots are written."""
        if self.process is not None:
            self._lines.put(None)  # the writer closes the helper's input: it ends after the last plot
            self._writer.join()
            failed = self.process.wait() != 0
            self.process = None
            if not failed:
                return
        # here: the helper failed (drawn again here, a plot error shows as it always did), or none was started
        if self.jobs:
            from ..train.plots import draw
            for job in self.jobs:
                draw(job)

    def stop(self) -> None:
        """Stop the helper, if it runs (after a failure or Ctrl-C: the plots are not drawn)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._lines.put(None)
        self._writer.join()
        self.process = None

    def __enter__(self) -> "Plotter":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _write_lines(lines: queue.SimpleQueue, pipe) -> None:
    """Write each line to ``pipe`` until None comes, then close it; stop if the reader is gone."""
    try:
        for line in iter(lines.get, None):
            pipe.write(line)
            pipe.flush()
    except OSError:  # BrokenPipeError: the helper ended (finish draws here) or was stopped
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _plain(x):
    """NumPy numbers (a best epoch) as JSON numbers."""
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON")
