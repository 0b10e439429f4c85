"""A run directory: everything one training run leaves behind.

    runs/<spec-name>-<YYYYmmdd-HHMMSS>[-n]/
        spec.nn          the resolved spec text
        settings.json    training settings
        metrics.jsonl    one JSON object per epoch (the source of truth)
        metrics.csv      the same rows as a table, for spreadsheets
        results.json     the run's outcome: best epoch, its figures, held-out test figures
        plots/           PNGs (written by nnspec.train.plots)
        best/  last/     checkpoint directories (nnspec.train.checkpoint)

Rows are appended to files kept open (a row costs microseconds, not an open
and a close), written together every ``flush_seconds`` and on ``flush()`` and
``close()``. ``flush(durable=True)`` — called before every checkpoint is
written — puts them on the disk, so a checkpoint never refers to a row that a
kill or a power cut could lose. Rows logged after the last checkpoint may be
lost, or be on disk without one; ``keep_epochs(n)`` (on resume) drops them,
and the resumed run writes them again: each epoch has one row.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

RESULTS = "results.json"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"


def _json_default(obj):
    if hasattr(obj, "tolist"):  # NumPy arrays and scalars
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


_ENCODER = json.JSONEncoder(default=_json_default)  # json.dumps(row, default=...) would build one a row


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a last line cut short by a kill is no row."""
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # only the last line can be partial: appends go in order
        if isinstance(row, dict):
            rows.append(row)
    return rows


def nan_to_null(x):
    """A JSON-ready copy of ``x`` with every non-finite float as None: JSON has no NaN, and a
    figure that went NaN is reported as null (results.json, ``--json``, sweep tables)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: nan_to_null(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_null(v) for v in x]
    return x


class RunDir:
    """Create a fresh run directory, or reopen one (``path=``) to resume.

    Reopening reads back ``metrics.jsonl`` so later rows extend the same CSV
    columns.
    """

    def __init__(self, spec_name: str = "run", root: str | os.PathLike = "runs",
                 path: str | os.PathLike | None = None, now: datetime | None = None,
                 flush_seconds: float = 1.0):
        if path is not None:
            self.path = Path(path)
            self.path.mkdir(parents=True, exist_ok=True)
        else:
            self.path = self._fresh(Path(root), _safe_name(spec_name), now or datetime.now())
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []
        self._jsonl = self._csv = self._csv_writer = None
        self._pending: list[dict[str, Any]] = []  # logged, not yet written
        self._csv_stale = False
        self.flush_seconds = flush_seconds  # how stale the files may be (`tail -f metrics.csv`)
        self._flushed_at = time.monotonic()
        for row in _read_rows(self.metrics_jsonl):
            self._remember(row)

    @staticmethod
    def _fresh(root: Path, name: str, now: datetime) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        base = f"{name}-{now:%Y%m%d-%H%M%S}"
        n = 1
        while True:
            candidate = root / (base if n == 1 else f"{base}-{n}")
            try:
                candidate.mkdir()  # exclusive: two runs started in the same second both get a dir
                return candidate
            except FileExistsError:
                n += 1

    # -- well-known paths -------------------------------------------------
    spec_path = property(lambda self: self.path / "spec.nn")
    settings_path = property(lambda self: self.path / "settings.json")
    metrics_jsonl = property(lambda self: self.path / "metrics.jsonl")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    results_path = property(lambda self: self.path / RESULTS)
    best = property(lambda self: self.path / "best")
    last = property(lambda self: self.path / "last")

    @property
    def plots(self) -> Path:
        p = self.path / "plots"
        p.mkdir(exist_ok=True)
        return p

    # -- writers -----------------------------------------------------------
    def write_spec(self, text: str) -> Path:
        _write_atomic(self.spec_path, text if text.endswith("\n") else text + "\n")
        return self.spec_path

    def write_settings(self, settings: dict[str, Any]) -> Path:
        _write_atomic(self.settings_path, json.dumps(settings, indent=2, default=_json_default) + "\n")
        return self.settings_path

    def read_settings(self) -> dict[str, Any]:
        return json.loads(self.settings_path.read_text(encoding="utf-8"))

    def write_results(self, results: dict[str, Any]) -> Path:
        """The run's outcome (best epoch and its figures, held-out test figures, a
        cross-validation summary): what the printed report says, kept."""
        _write_atomic(self.results_path, json.dumps(results, indent=2, default=_json_default) + "\n")
        return self.results_path

    def read_results(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.results_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append one row (typically one epoch) to metrics.jsonl and metrics.csv."""
        if any(not isinstance(v, (int, float, str, bool, type(None))) for v in row.values()):
            row = json.loads(_ENCODER.encode(row))  # plain Python values from here on
        else:
            row = dict(row)
        if self._remember(row):
            self._csv_stale = True  # a new key changes the header: the table is rewritten from all rows
        self._pending.append(row)
        if time.monotonic() - self._flushed_at >= self.flush_seconds:
            self.flush()

    def flush(self, durable: bool = False) -> None:
        """Write the rows logged since the last flush, handing them to the OS (they then survive a
        kill of this process); ``durable``: to the disk too (they survive a power cut). Only
        metrics.jsonl is made durable: metrics.csv is rebuilt from it on resume."""
        if self._pending:
            if self._jsonl is None:
                self._jsonl = open(self.metrics_jsonl, "a", encoding="utf-8")
            self._jsonl.write("".join(_ENCODER.encode(r) + "\n" for r in self._pending))
            if self._csv_stale or self._csv is None:
                self._rewrite_csv()
            else:
                self._csv_writer.writerows(self._csv_cells(r) for r in self._pending)
            self._pending = []
        for f in (self._jsonl, self._csv):
            if f is not None:
                f.flush()
        if durable and self._jsonl is not None:
            os.fsync(self._jsonl.fileno())
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        self.flush()
        for f in (self._jsonl, self._csv):
            if f is not None:
                f.close()
        self._jsonl = self._csv = self._csv_writer = None

    def keep_epochs(self, epochs: int) -> None:
        """Forget rows of epochs after ``epochs`` (the checkpoint a run resumes
        from): they were logged after it, and the resumed run logs them again."""
        self.close()  # and rewrite both files: a kill may have cut their last lines short
        kept = [r for r in self.rows if not isinstance(r.get("epoch"), int) or r["epoch"] <= epochs]
        self.rows, self.columns = [], []
        for r in kept:
            self._remember(r)
        _write_atomic(self.metrics_jsonl, "".join(json.dumps(r) + "\n" for r in kept))
        self._rewrite_csv()

    def _rewrite_csv(self) -> None:
        if self._csv is not None:
            self._csv.close()
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        for r in self.rows:
            w.writerow(self._csv_cells(r))
        _write_atomic(self.metrics_csv, buf.getvalue())
        self._csv_stale = False
        self._csv = open(self.metrics_csv, "a", encoding="utf-8", newline="")
        self._csv_writer = csv.writer(self._csv, lineterminator="\n")

    def _remember(self, row: dict[str, Any]) -> bool:
        self.rows.append(row)
        added = [k for k in row if k not in self.columns]
        self.columns.extend(added)  # first-seen order, never reordered
        return bool(added)

    def _csv_cells(self, row: dict[str, Any]) -> list[str]:
        cells = []
        for col in self.columns:
            v = row.get(col)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("")
            elif isinstance(v, (dict, list)):
                cells.append(json.dumps(v))
            else:
                cells.append(str(v))
        return cells

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"



def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _best_figure(results: dict[str, Any]) -> tuple[str, float] | None:
    """The figure a run is judged by: cross-validated test accuracy, else held-out test accuracy,
    else the best epoch's dev accuracy, dev loss or training loss."""
    test = results.get("test") or {}
    if results.get("kind") == "cross-validation":
        for name, fig in test.items():
            if isinstance(fig, dict) and fig.get("mean") is not None:
                return f"cv test {name}", fig["mean"]
        return None
    best = results.get("best") or {}
    for label, value in (("test accuracy", test.get("accuracy")), ("test perplexity", test.get("perplexity")),
                         ("dev accuracy", best.get("dev_accuracy")), ("dev perplexity", best.get("dev_perplexity")),
                         ("dev loss", best.get("dev_loss")), ("train loss", best.get("train_loss"))):
        if isinstance(value, (int, float)):
            return label, value
    return None


def list_runs(root: str | os.PathLike = "runs") -> list[dict[str, Any]]:
    """The run directories under ``root``, oldest first: spec, date, status (finished,
    interrupted: resumable from last/, or empty), epochs, the best figure, size in bytes."""
    root = Path(root)
    runs = []
    if not root.is_dir():
        return runs
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        markers = ("spec.nn", "settings.json", RESULTS, "metrics.jsonl")
        if not any((path / m).exists() for m in markers):
            continue
        try:
            results = json.loads((path / RESULTS).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            results = None
        stat = path.stat()
        if results is not None:
            status = "finished"
        elif (path / "last").is_dir() or (path / ".last.old").is_dir():
            status = "interrupted"
        else:
            status = "empty"
        epochs = (results or {}).get("epochs")
        if epochs is None and (path / "metrics.jsonl").exists():
            epochs = len(_read_rows(path / "metrics.jsonl")) or None
        figure = _best_figure(results) if results else None
        runs.append({"path": str(path), "spec": (results or {}).get("spec") or re.sub(r"-\d{8}-\d{6}(-\d+)?$", "", path.name),
                     "date": (results or {}).get("finished") or datetime.fromtimestamp(stat.st_mtime).isoformat(timespec="seconds"),
                     "status": status, "epochs": epochs,
                     "best": {"name": figure[0], "value": figure[1]} if figure else None,
                     "bytes": _size(path)})
    return runs
