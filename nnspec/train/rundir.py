"""A run directory: everything one training run leaves behind.

    runs/<spec-name>-<YYYYmmdd-HHMMSS>[-n]/
        spec.nn          the resolved spec text
        settings.json    training settings
        metrics.jsonl    one JSON object per epoch (the source of truth)
        metrics.csv      the same rows as a table, for spreadsheets
        plots/           PNGs (written by nnspec.train.plots)
        best/  last/     checkpoint directories (nnspec.train.checkpoint)
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"


def _json_default(obj):
    if hasattr(obj, "tolist"):  # NumPy arrays and scalars
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunDir:
    """Create a fresh run directory, or reopen one (``path=``) to resume.

    Reopening reads back ``metrics.jsonl`` so later rows extend the same CSV
    columns.
    """

    def __init__(self, spec_name: str = "run", root: str | os.PathLike = "runs",
                 path: str | os.PathLike | None = None, now: datetime | None = None):
        if path is not None:
            self.path = Path(path)
            self.path.mkdir(parents=True, exist_ok=True)
        else:
            self.path = self._fresh(Path(root), _safe_name(spec_name), now or datetime.now())
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = []
        if self.metrics_jsonl.exists():
            for line in self.metrics_jsonl.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self._remember(json.loads(line))

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

    def log_metrics(self, row: dict[str, Any]) -> None:
        """Append one row (typically one epoch) to metrics.jsonl and metrics.csv."""
        line = json.dumps(row, default=_json_default)
        row = json.loads(line)  # plain Python values from here on
        with open(self.metrics_jsonl, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        new_columns = self._remember(row)
        if new_columns or not self.metrics_csv.exists():
            # A new key changes the header: rewrite the table from all rows.
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(self.columns)
            for r in self.rows:
                w.writerow(self._csv_cells(r))
            _write_atomic(self.metrics_csv, buf.getvalue())
        else:
            with open(self.metrics_csv, "a", encoding="utf-8", newline="") as f:
                csv.writer(f, lineterminator="\n").writerow(self._csv_cells(row))

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
