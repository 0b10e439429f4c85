"""The ``sweep { ... }`` block as a search space, and one trial's settings written back as spec text.

    sweep {
      lr        loguniform(1e-4, 1e-1)      # a train setting, keyed as --set keys it
      dropout   h = uniform(0, 0.5)
      batch     choice(16, 32, 64)
      optimizer choice(adam(lr = 0.001), momentum(lr = 0.1))
      H         int(8, 64, log = true)      # a top-level `let`
      char_ngrams choice(0, 4)              # a keyword of the data statement (ngrams, char_ngrams)
      maximize  accuracy                    # the objective: dev accuracy (default: the spec's metric)
      trials 20; folds 5; pruner median; sampler tpe(startup = 10)
    }

A trial is a pure function of its spec text: the chosen values are written into the spec (each
swept ``let`` gets its value, the train block ends with the chosen settings, the sweep block is
commented out, a swept data keyword is written into the data statement), so a trial's run directory holds a spec that ``nnspec run`` trains as it is.
Nothing here imports optuna: :meth:`Dimension.suggest` takes any object with Optuna's
``suggest_*`` methods.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Diagnostics, Span, did_you_mean
from ..settings import TrainSettings, _ALIASES
from ..syntax import ast
from ..syntax.parser import parse

RANGES = ("loguniform", "uniform", "int", "choice")
META = ("trials", "maximize", "minimize", "pruner", "sampler", "folds")
METRICS = ("accuracy", "loss", "perplexity")
PRUNERS = {"median": ("startup", "warmup"), "none": ()}
SAMPLERS = {"tpe": ("startup", "seed"), "random": ("seed",)}
DATA_KEYS = ("ngrams", "char_ngrams")  # the data statement's options a sweep may search (features to count)
# train settings whose values are whole numbers: a float range would be refused by every trial
_WHOLE = {name for name, f in TrainSettings.model_fields.items() if "int" in str(f.annotation)}


@dataclass(frozen=True)
class Dimension:
    """One searched value: a train setting (``dropout h``), a ``let`` or a data keyword, with its range."""
    name: str                 # as the study knows it: "lr", "dropout.h", "H", "char_ngrams"
    kind: str                 # loguniform | uniform | int | choice
    target: str               # "setting", "let" or "data"
    key: str                  # the train setting, let name or data keyword
    pair: str | None = None   # "h" in `dropout h = ...`
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int = 1
    choices: tuple[str, ...] = ()   # each choice as written in the spec

    def suggest(self, trial) -> Any:
        if self.kind == "loguniform":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.name, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=self.step)
        return trial.suggest_categorical(self.name, list(self.choices))

    def text(self, value) -> str:
        """The value as spec text (a choice is already its own text)."""
        if isinstance(value, bool) or isinstance(value, str):
            return str(value).lower() if isinstance(value, bool) else value
        if isinstance(value, int) or (isinstance(value, float) and self.kind == "int"):
            return str(int(value))
        return repr(float(value))

    def setting_line(self, value) -> str:
        """The line a train block (or ``--set``) takes: ``lr 0.003``, ``dropout h = 0.25``."""
        return f"{self.key} {self.pair} = {self.text(value)}" if self.pair else f"{self.key} {self.text(value)}"


@dataclass
class SearchSpace:
    dimensions: list[Dimension]
    span: Span
    trials: int | None = None
    metric: str | None = None          # None: the spec's own selection metric
    direction: str | None = None       # "maximize" / "minimize"; None: the metric's own
    folds: int | None = None           # objective: the mean over folds of the training data, not dev
    pruner: tuple[str, dict] = ("median", {})
    sampler: tuple[str, dict] = ("tpe", {})

    def by_name(self) -> dict[str, Dimension]:
        return {d.name: d for d in self.dimensions}


def read_space(sweep: ast.Sweep, lets: set[str], diags: Diagnostics, data: ast.DataSource | None = None) -> SearchSpace:
    """Check a sweep block and turn it into a search space; every mistake is reported at its line.
    ``data``: the spec's data statement, whose keywords ``ngrams`` and ``char_ngrams`` may be searched."""
    space = SearchSpace([], sweep.span)
    seen: dict[str, Span] = {}
    errors_before = len(diags.errors)
    for s in sweep.settings:
        key = _ALIASES.get(s.key, s.key)
        if key in META:
            _meta(space, key, s, diags)
            continue
        if key in TrainSettings.model_fields:
            target = "setting"
        elif s.key in lets:
            target, key = "let", s.key
        elif s.key in DATA_KEYS:
            from ..dataset import NGRAM_SOURCES
            if data is None or data.source not in NGRAM_SOURCES:
                diags.error(f"'{s.key}' is a keyword of a data statement that reads lines or a table "
                            f"({', '.join(NGRAM_SOURCES)}), and this spec has none", s.span)
                continue
            target, key = "data", s.key
        else:
            known = list(TrainSettings.model_fields) + sorted(lets) + list(DATA_KEYS)
            diags.error(f"'{s.key}' is neither a training setting nor a top-level let{did_you_mean(s.key, known)} "
                        f"(a sweep searches train settings, let values and the data keywords "
                        f"{', '.join(DATA_KEYS)}; it also takes {', '.join(META)})", s.span)
            continue
        items = [(kw.name, kw.value, kw.span) for kw in s.pairs] if s.pairs else [(None, s.value, s.span)]
        for pair, value, span in items:
            name = f"{key}.{pair}" if pair else key
            if name in seen:
                diags.error(f"'{name}' is searched twice", span, [("first here", seen[name])])
                continue
            seen[name] = span
            dim = _range(name, key, pair, target, value, diags)
            if dim is not None:
                if target == "data" and not _data_range_ok(dim, value, diags):
                    continue
                if target == "setting" and key in _WHOLE and dim.kind in ("uniform", "loguniform"):
                    diags.error(f"'{key}' is a whole number: search it with int({_num(dim.low)}, "
                                f"{_num(dim.high)}) or choice(...)", value.span)
                    continue
                space.dimensions.append(dim)
    if not space.dimensions and len(diags.errors) == errors_before:  # not when its lines are wrong
        diags.error("the sweep block searches nothing: give a setting or let a range, e.g. "
                    "lr loguniform(1e-4, 1e-1)", sweep.span)
    return space


def _data_range_ok(dim: Dimension, e, diags: Diagnostics) -> bool:
    """A data keyword's range holds only values the keyword takes (else every trial would fail)."""
    from ..dataset import MAX_CHAR_NGRAMS, MAX_NGRAMS, ngram_option_takes
    if dim.kind in ("uniform", "loguniform"):
        diags.error(f"'{dim.key}' is a whole number: search it with int(a, b) or choice(...)", e.span)
        return False
    values = [int(c) if c.isdigit() else c for c in dim.choices] if dim.kind == "choice" \
        else list(range(int(dim.low), int(dim.high) + 1, dim.step))
    bad = [v for v in values if not ngram_option_takes(dim.key, v)]
    if bad:
        takes = f"1 to {MAX_NGRAMS}" if dim.key == "ngrams" else f"0 (none) or 2 to {MAX_CHAR_NGRAMS}"
        diags.error(f"'{dim.key}' takes {takes}, not {bad[0]!r}", e.span)
        return False
    return True


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _range(name, key, pair, target, e, diags: Diagnostics) -> Dimension | None:
    if not isinstance(e, ast.Call) or e.func not in RANGES:
        diags.error(f"'{name}' needs a range: loguniform(a, b), uniform(a, b), int(a, b) or choice(x, y, ...)",
                    e.span)
        return None
    if e.func == "choice":
        if len(e.args) < 2 or e.keywords:
            diags.error("choice takes two or more values, e.g. choice(16, 32, 64)", e.span)
            return None
        texts = tuple(_source(a, diags) for a in e.args)
        if len(set(texts)) != len(texts):
            diags.error("choice lists a value twice", e.span)
            return None
        return Dimension(name, "choice", target, key, pair, choices=texts)
    bounds = [_number(a, diags) for a in e.args]
    if len(bounds) != 2 or None in bounds:
        if len(bounds) != 2:
            diags.error(f"{e.func} takes two bounds, low and high, e.g. {e.func}(1, 10)", e.span)
        return None
    low, high = bounds
    if not low < high:
        diags.error(f"the low bound {_num(low)} must be below the high bound {_num(high)}", e.span)
        return None
    options = {kw.name: kw for kw in e.keywords}
    allowed = {"int": ("log", "step")}.get(e.func, ())
    for kw in e.keywords:
        if kw.name not in allowed:
            diags.error(f"{e.func} takes {', '.join(allowed) or 'no options'}, not '{kw.name}'", kw.span)
            return None
    if e.func == "loguniform" and low <= 0:
        diags.error(f"loguniform needs a positive low bound, not {_num(low)}", e.span)
        return None
    if e.func == "int":
        if not (low.is_integer() and high.is_integer()):
            diags.error("int takes whole-number bounds", e.span)
            return None
        log = "log" in options and isinstance(options["log"].value, ast.Name) and options["log"].value.name == "true"
        step = _number(options["step"].value, diags) if "step" in options else 1
        if step is None or not float(step).is_integer() or step < 1 or (log and step != 1):
            diags.error("step is a whole number from 1 (and 1 with log = true)", e.span)
            return None
        if log and low < 1:
            diags.error("int(..., log = true) needs a low bound of at least 1", e.span)
            return None
        return Dimension(name, "int", target, key, pair, low=low, high=high, log=log, step=int(step))
    return Dimension(name, e.func, target, key, pair, low=low, high=high, log=e.func == "loguniform")


def _number(e, diags: Diagnostics) -> float | None:
    if isinstance(e, ast.Number) and math.isfinite(e.value):
        return e.value
    if isinstance(e, ast.Percent):
        return e.value
    if isinstance(e, ast.Neg) and isinstance(e.operand, ast.Number):
        return -e.operand.value
    diags.error("expected a number", e.span)
    return None


def _source(e, diags: Diagnostics) -> str:
    """A choice as written (``adam(lr = 0.001)``), to be put back into the train block as it is."""
    text = diags.sources.snippet(e.span)
    if text is None:  # over several lines: join them
        lines = [diags.sources.line(e.span.file, n) or "" for n in range(e.span.line, e.span.end_line + 1)]
        lines[-1] = lines[-1][:e.span.end_column - 1]
        lines[0] = lines[0][e.span.column - 1:]
        text = " ".join(line.strip() for line in lines)
    return text


def _meta(space: SearchSpace, key: str, s: ast.Setting, diags: Diagnostics) -> None:
    e = s.value
    if s.pairs or e is None:
        diags.error(f"'{key}' takes one value", s.span)
        return
    if key in ("trials", "folds"):
        v = _number(e, diags)
        low = 1 if key == "trials" else 2
        if v is not None and (not v.is_integer() or v < low):
            diags.error(f"{key} is a whole number from {low}", e.span)
        elif v is not None:
            setattr(space, key, int(v))
    elif key in ("maximize", "minimize"):
        metric = e.name.removeprefix("dev_") if isinstance(e, ast.Name) else None
        if metric not in METRICS:
            diags.error(f"{key} takes a metric: {', '.join(METRICS)}", e.span)
            return
        space.metric, space.direction = metric, key
    else:
        table = PRUNERS if key == "pruner" else SAMPLERS
        name = e.name if isinstance(e, ast.Name) else e.func if isinstance(e, ast.Call) else None
        if name not in table:
            diags.error(f"unknown {key} '{name}'{did_you_mean(str(name), table)} ({key}s are "
                        f"{', '.join(table)})", e.span)
            return
        args = {}
        for kw in e.keywords if isinstance(e, ast.Call) else []:
            v = _number(kw.value, diags)
            if kw.name not in table[name]:
                diags.error(f"{name} takes {', '.join(table[name]) or 'no options'}, not '{kw.name}'", kw.span)
            elif v is not None and (not v.is_integer() or v < 0):
                diags.error(f"{kw.name} is a whole number", kw.value.span)
            else:
                args[kw.name] = int(v)
        setattr(space, key, (name, args))


# ---- the spec text of one trial ------------------------------------------------------------------

@dataclass
class SweepSpec:
    """A spec with a sweep block: its text, where it lives, and its search space."""
    path: Path
    text: str
    space: SearchSpace
    module: ast.Module

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def read_sweep_spec(path: str | Path, text: str | None = None, need_space: bool = True) -> SweepSpec:
    """Parse a spec and read its sweep block. Raises SpecError (with carets) on mistakes."""
    from ..session import load
    path = Path(path)
    program, diags = load(path, text=text)
    diags.raise_if_errors()
    text = diags.sources.texts[str(path)]
    module = parse(text, str(path), Diagnostics(diags.sources))
    sweeps = [s for s in program.statements if isinstance(s, ast.Sweep)]
    lets = {s.name for s in module.statements if isinstance(s, ast.Let)}
    data = next((s for s in module.statements if isinstance(s, ast.DataSource)), None)
    if not sweeps:
        if need_space:
            diags.error(f"{path} has no sweep block: add one, e.g. sweep {{ lr loguniform(1e-4, 1e-1) }}")
            diags.raise_if_errors()
        return SweepSpec(path, text, SearchSpace([], Span(file=str(path), line=1, column=1, end_line=1,
                                                                 end_column=1)), module)
    for extra in sweeps[1:]:
        diags.error("only one sweep block is allowed", extra.span, [("the first is here", sweeps[0].span)])
    if sweeps[0].span.file != str(path):
        diags.error("the sweep block belongs in the spec file itself, not in an included file", sweeps[0].span)
    space = read_space(sweeps[0], lets, diags, data)
    diags.raise_if_errors()
    return SweepSpec(path, text, space, module)


def trial_text(spec: SweepSpec, params: dict[str, Any], out_dir: Path | None = None) -> str:
    """The spec with a trial's values written in; with ``out_dir``, its data and include paths are
    rewritten to be relative to that directory, so the text can be saved and run from there."""
    dims = spec.space.by_name()
    lines = _line_starts(spec.text)
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in the original text

    def offset(line: int, column: int) -> int:
        return lines[line - 1] + column - 1

    settings = [dims[n].setting_line(v) for n, v in params.items() if n in dims and dims[n].target == "setting"]
    let_values = {dims[n].key: dims[n].text(v) for n, v in params.items() if n in dims and dims[n].target == "let"}
    data_values = {dims[n].key: dims[n].text(v) for n, v in params.items() if n in dims and dims[n].target == "data"}
    train = None
    for stmt in spec.module.statements:
        if isinstance(stmt, ast.Let) and stmt.name in let_values:
            v = stmt.value.span
            edits.append((offset(v.line, v.column), offset(v.end_line, v.end_column), let_values[stmt.name]))
        elif isinstance(stmt, ast.Train):
            train = stmt
        elif isinstance(stmt, ast.Sweep):
            start, end = offset(stmt.span.line, stmt.span.column), offset(stmt.span.end_line, stmt.span.end_column)
            block = spec.text[start:end]
            edits.append((start, end, "# " + block.replace("\n", "\n# ") + "\n"))
        if isinstance(stmt, ast.DataSource) and data_values:
            edits += _data_keywords(stmt, data_values, offset)
        if out_dir is not None and isinstance(stmt, (ast.DataSource, ast.Include)):
            edits += _relocated(stmt, spec.base_dir, out_dir, offset)
    if settings:
        chosen = "".join(f"  {line}\n" for line in settings)
        if train is not None:
            close = offset(train.span.end_line, train.span.end_column) - 1   # the closing brace
            edits.append((close, close, "\n  # chosen by the sweep\n" + chosen))
        else:
            edits.append((len(spec.text), len(spec.text), "\ntrain {\n" + chosen + "}\n"))
    text = spec.text
    for start, end, new in sorted(edits, key=lambda e: e[0], reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _data_keywords(stmt: ast.DataSource, values: dict[str, str], offset) -> list[tuple[int, int, str]]:
    """The data statement with the trial's keyword values: a keyword it has gets its new value, one it
    lacks is added before the closing parenthesis."""
    edits = []
    for kw in stmt.call.keywords:
        if kw.name in values:
            v = kw.value.span
            edits.append((offset(v.line, v.column), offset(v.end_line, v.end_column), values[kw.name]))
    missing = [k for k in values if k not in {kw.name for kw in stmt.call.keywords}]
    if missing:
        close = offset(stmt.call.span.end_line, stmt.call.span.end_column) - 1   # the closing parenthesis
        edits.append((close, close, "".join(f", {k} = {values[k]}" for k in missing)))
    return edits


def _line_starts(text: str) -> list[int]:
    starts, pos = [0], 0
    for line in text.split("\n")[:-1]:
        pos += len(line) + 1
        starts.append(pos)
    return starts


def _relocated(stmt, base: Path, out_dir: Path, offset) -> list[tuple[int, int, str]]:
    """String arguments that name existing files, rewritten relative to ``out_dir``."""
    strings: list[ast.String] = []
    if isinstance(stmt, ast.Include):
        path = (base / stmt.path)
        rel = os.path.relpath(path.resolve(), out_dir.resolve())
        s = stmt.span
        return [(offset(s.line, s.column), offset(s.end_line, s.end_column), f'include "{rel}"')]
    call = stmt.call
    for e in list(call.args) + [k.value for k in call.keywords]:
        strings += [e] if isinstance(e, ast.String) else []
    edits = []
    for m in call.mappings:
        path = base / m.key
        if not Path(m.key).is_absolute() and path.exists():
            # a mapping's span covers `"file" -> value`: rewrite just the key at its start
            s = m.span
            start = offset(s.line, s.column)
            edits.append((start, start + len(m.key) + 2, f'"{os.path.relpath(path.resolve(), out_dir.resolve())}"'))
    for e in strings:
        path = base / e.value
        if e.value and not Path(e.value).is_absolute() and path.exists():
            s = e.span
            edits.append((offset(s.line, s.column), offset(s.end_line, s.end_column),
                          f'"{os.path.relpath(path.resolve(), out_dir.resolve())}"'))
    return edits
