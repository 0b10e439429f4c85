"""Training settings: the spec's ``train { ... }`` block, overridable from the command line.

``nnspec run spec.nn --set epochs=5 --set "optimizer sgd(lr = 0.5)"`` parses
each override with the spec grammar itself, as if it were one more line of the
train block, so the two always accept the same syntax.
"""
from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from .catalog import AVERAGES, INITIALIZERS, OPTIMIZERS, SCHEDULES
from .errors import Diagnostics, Span, did_you_mean
from .syntax import ast
from .syntax.parser import parse


class Choice(BaseModel):
    """A named choice with keyword arguments, e.g. ``adam(lr = 0.001)``."""
    name: str
    args: dict[str, Any] = {}


class TrainSettings(BaseModel):
    optimizer: Choice = Choice(name="adam", args={"lr": 1e-3})
    lr: float | None = Field(None, gt=0)  # shorthand that overrides the optimizer's lr
    batch: int = Field(32, ge=1)
    epochs: int = Field(10, ge=1)
    seed: int = Field(0, ge=0)          # NumPy seeds are non-negative
    split: dict[str, float] = {}         # dev / test fractions of the data
    dropout: dict[str, float] = {}       # value -> drop probability (training only)
    init: str | None = None              # default initialiser for weight matrices
    normalize: bool = False              # inputs to zero mean / unit variance (training statistics)
    nb_scale: str | None = None          # a bag input fed as NBSVM's naive-Bayes-weighted presence
    patience: int | None = Field(None, ge=1)  # early stopping: epochs without a better dev score
    clip: float | None = Field(None, gt=0)    # global gradient-norm clipping
    schedule: Choice | None = None       # learning-rate schedule
    average: Choice | None = None        # weight averaging: evaluate and keep e.g. an ema of the weights
    bptt: int | None = Field(None, ge=1)  # truncated BPTT chunk length (streams)
    min_count: int = Field(1, ge=1)      # rarer tokens become <unk>
    by_length: bool = False              # batch sequences of similar length together
    rule: Literal["perceptron"] | None = None  # the perceptron learning rule
    metric: Literal["accuracy", "loss", "perplexity"] | None = None  # what picks the best epoch
    dtype: Literal["float32", "float64"] = "float32"
    max_length: int | None = Field(None, ge=1)  # longest sequence accepted
    limit: int | None = Field(None, ge=1)  # N evenly spaced examples of each part (first N tokens of a stream)
    memory_limit_mb: float = Field(4096.0, gt=0)  # refuse a batch whose BPTT activations need more

    @field_validator("split")
    @classmethod
    def _parts_leave_training_data(cls, split: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(split) - {"dev", "test"})
        if unknown:
            raise ValueError(f"split takes dev and test, not {', '.join(unknown)}")
        for part, fraction in split.items():
            if not (isinstance(fraction, (int, float)) and 0 <= fraction < 1):
                raise ValueError(f"{part} must be a fraction from 0% to below 100%, got {fraction!r}")
        if sum(split.values()) >= 1:
            shown = ", ".join(f"{k} = {v:.0%}" for k, v in split.items())
            raise ValueError(f"{shown} leave no training data: dev and test together must be below 100%")
        return split

    def optimizer_args(self) -> dict[str, Any]:
        args = dict(self.optimizer.args)
        if self.lr is not None:
            args["lr"] = self.lr
        return args


_ALIASES = {"batch_size": "batch", "early_stop": "patience", "optim": "optimizer", "clip_norm": "clip",
            "normalise": "normalize"}


def _value(e, diags: Diagnostics) -> Any:
    if isinstance(e, ast.Number) and not math.isfinite(e.value):
        diags.error(f"{e.text} is too large a number", e.span)
        return None
    if isinstance(e, ast.Number):
        return int(e.value) if e.value == int(e.value) and "." not in e.text and "e" not in e.text.lower() \
            else e.value
    if isinstance(e, ast.Neg):
        v = _value(e.operand, diags)
        return -v if isinstance(v, (int, float)) else v
    if isinstance(e, ast.Percent):
        return e.value
    if isinstance(e, (ast.String,)):
        return e.value
    if isinstance(e, ast.Name):
        return {"true": True, "false": False}.get(e.name, e.name)
    if isinstance(e, ast.Call):
        return Choice(name=e.func, args={k.name: _value(k.value, diags) for k in e.keywords})
    diags.error("expected a number, a name or a call like adam(lr = 0.001)", e.span)
    return None


def apply_setting(values: dict, s: ast.Setting, diags: Diagnostics) -> None:
    key = _ALIASES.get(s.key, s.key)
    if key not in TrainSettings.model_fields:
        hint = did_you_mean(s.key, TrainSettings.model_fields).rstrip("?")
        diags.error(f"unknown training setting '{s.key}'{hint + '?' if hint else ''} (settings are "
                    f"{', '.join(TrainSettings.model_fields)})", s.span)
        return
    if s.pairs:
        values.setdefault(key, {})
        if not isinstance(values[key], dict):
            values[key] = {}
        for kw in s.pairs:
            values[key][kw.name] = _value(kw.value, diags)
        return
    v = _value(s.value, diags)
    if key == "average" and v == "none":
        values.pop(key, None)             # --set average=none: train without averaging
        return
    if key in ("optimizer", "schedule", "average") and isinstance(v, str):
        v = Choice(name=v)
    if key in ("normalize", "by_length") and isinstance(v, str):
        v = v in ("true", "yes", "on")
    if key == "nb_scale" and not isinstance(v, str):
        diags.error("nb_scale names the bag input to scale, e.g. 'nb_scale x'", s.span)
        return
    if key in ("optimizer", "schedule", "average") and isinstance(v, Choice):
        _check_choice(key, v, s, diags)
    if key == "average" and isinstance(v, Choice) and "decay" in v.args:
        decay = v.args["decay"]
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
            diags.error(f"{v.name}'s decay must be a number between 0 and 1 (exclusive), e.g. 0.999, "
                        f"not {decay!r}", s.span)
    if key == "init" and isinstance(v, str):
        if v not in INITIALIZERS:
            diags.error(f"unknown initialiser '{v}'{did_you_mean(v, INITIALIZERS)} (initialisers are "
                        f"{', '.join(INITIALIZERS)})", s.span)
    values[key] = v


def _check_choice(key: str, choice: Choice, s: ast.Setting, diags: Diagnostics) -> None:
    """An optimizer, schedule or averaging must exist and take the keywords given: say so at the setting's line."""
    table = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "average": AVERAGES}[key]
    settings = table.get(choice.name.lower())
    if settings is None:
        diags.error(f"unknown {key} '{choice.name}'{did_you_mean(choice.name, table)} ({key}s are "
                    f"{', '.join(table)})", s.span)
        return
    accepted = list(settings)
    for name in choice.args:
        if key == "schedule" and name == "lr":
            diags.error(f"a schedule scales the optimizer's learning rate: give lr to the optimizer "
                        f"(e.g. 'optimizer sgd(lr = 0.1)'), not to {choice.name}", s.span)
        elif name not in accepted:
            diags.error(f"{choice.name} takes {', '.join(accepted) or 'no settings'}, not '{name}'", s.span)


def settings_from_block(block: ast.Train | None, diags: Diagnostics,
                        overrides: list[str] = ()) -> TrainSettings:
    values: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    for s in block.settings if block else []:
        apply_setting(values, s, diags)
        spans[_ALIASES.get(s.key, s.key)] = s.span
    for i, text in enumerate(overrides):
        for s in parse_override(text, i, diags):
            apply_setting(values, s, diags)
    try:
        return TrainSettings(**{k: v for k, v in values.items() if v is not None})
    except Exception as e:  # pydantic's message names the field and what it expected
        for err in getattr(e, "errors", lambda: [])():
            field = str(err["loc"][0]) if err.get("loc") else ""
            msg = err["msg"]
            msg = msg.removeprefix("Value error, ") if msg.startswith("Value error, ") else msg.lower()
            diags.error(f"training setting '{field}': {msg}", spans.get(field))
        if not diags.errors:
            diags.error(str(e))
        diags.raise_if_errors()
        raise


def parse_override(text: str, index: int, diags: Diagnostics) -> list[ast.Setting]:
    """``epochs=5`` or ``optimizer sgd(lr = 0.1)``: parsed as a line of a train block."""
    if "=" in text and " " not in text.split("=", 1)[0].strip():
        key, rest = text.split("=", 1)
        if not rest.strip().startswith("="):
            text = f"{key.strip()} {rest.strip()}"
    file = f"<--set {index + 1}>"
    module = parse(f"train {{ {text} }}", file, diags)
    if module is None:
        return []
    return [s for stmt in module.statements for s in stmt.settings]
