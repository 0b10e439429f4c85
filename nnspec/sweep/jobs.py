"""One training run as a job for a Dask worker: a pure function of (spec text, settings, seed, fold).

A job leaves an ordinary run directory (spec.nn, settings.json, metrics.jsonl, best/, last/), so
``nnspec evaluate`` and ``predict`` work on it. While it trains, the driver reads its per-epoch
rows from metrics.jsonl (the run directory is the channel, as on any cluster whose workers share
a file system with the driver) and, to prune it, writes a file named PRUNE there; the job looks
for that file after each epoch. A job started again (its worker died) starts from nothing.

Mistakes and failures of training (a NaN, a batch refused for memory, a bad setting) come back as
a result with state "failed" and the message: they are the trial's outcome, not the worker's.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRUNE_FILE = "PRUNE"


@dataclass(frozen=True)
class Job:
    spec_path: str                        # where the spec lives: its data paths are relative to it
    text: str                             # the spec text to train (a trial's values already written in)
    run_dir: str | None = None            # None: leave nothing on disk
    fold: tuple[int, int] | None = None   # (k, i): fold i of k is the test part
    outer: tuple[int, int] | None = None  # (k, i): fold i of an outer cross-validation is left out first
    seed: int | None = None
    float64: bool = False
    saved_text: str | None = None         # the spec as the run directory keeps it (paths relative to it)
    overrides: tuple[str, ...] = ()       # --set settings


def run_job(job: Job) -> dict[str, Any]:
    """Train one job; returns its state (complete, pruned, failed), metrics and time."""
    from ..data import DataError
    from ..errors import SpecError
    from ..runtime import RuntimeFailure
    from ..session import open_session
    from ..train.checkpoint import CheckpointError
    from ..train.loop import Trainer, TrainingError, find_heads, selection_metric
    from ..train.rundir import RunDir

    start = time.perf_counter()
    run_dir = None
    if job.run_dir is not None:
        path = Path(job.run_dir)
        if path.exists():  # an earlier attempt on a worker that died: start over
            shutil.rmtree(path)
        path.mkdir(parents=True)
    try:
        session = open_session(job.spec_path, text=job.text, fold=job.fold, outer=job.outer, seed=job.seed,
                               dtype="float64" if job.float64 else None, overrides=list(job.overrides))
        if session.data is None:
            return _failed("training needs data: the spec has no data statement", start)
        if job.run_dir is not None:
            run_dir = RunDir(path=job.run_dir, flush_seconds=0.0)  # each epoch's row at once: the driver prunes by it
            run_dir.write_spec(job.saved_text or job.text)
            run_dir.write_settings(session.settings.model_dump())
        prune = Path(job.run_dir) / PRUNE_FILE if job.run_dir else None
        trainer = Trainer(session.model, session.data, session.settings, run_dir=run_dir,
                          spec_hash=session.spec_hash, quiet=True,
                          on_epoch=(lambda row: prune.exists()) if prune else None)
        result = trainer.fit()
        metric, higher = selection_metric(session.settings, find_heads(session.model))
        if run_dir is not None:
            from ..train.plots import plot_curves
            plot_curves(result.history, run_dir.plots / "curves.png", title=session.compiled.name)
    except SpecError as e:
        return _failed(e.diagnostics.render(), start)
    except (DataError, TrainingError, RuntimeFailure, CheckpointError, ValueError, FloatingPointError) as e:
        return _failed(str(e), start)
    except MemoryError:
        return _failed("out of memory", start)
    best = {k: v for k, v in result.best.items() if isinstance(v, (int, float))}
    return {"state": "pruned" if trainer.stopped else "complete",
            "metric": metric, "higher": higher,
            "best": best, "best_epoch": result.best_epoch, "epochs": result.epochs_run,
            "test": result.test, "history": result.history,
            "seconds": time.perf_counter() - start, "run_dir": job.run_dir}


def _failed(message: str, start: float) -> dict[str, Any]:
    return {"state": "failed", "error": message, "seconds": time.perf_counter() - start}


def figure_of(result: dict, metric: str, part: str) -> float:
    """A job's figure: its best epoch's dev metric (part "dev") or its held-out fold's ("test")."""
    if part == "test":
        source = result.get("test") or {}
    else:
        source = {k.removeprefix("dev_"): v for k, v in result.get("best", {}).items() if k.startswith("dev_")}
    value = source.get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def read_rows(run_dir: str | Path, skip: int = 0) -> list[dict]:
    """The per-epoch rows a running job has written so far, from row ``skip`` on."""
    import json
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines[skip:]:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            break
    return rows
