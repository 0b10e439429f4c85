"""A spec with its data and settings, ready to run: what ``nnspec run`` does, as functions.

    spec file --compile--> symbolic plan --read data--> sizes --compile--> concrete plan --> Model
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .compiler import Compiled, compile_program
from .dataset import BoundData, bind_data
from .errors import Diagnostics
from .loader import Program, load_file, load_text
from .model import Model
from .settings import TrainSettings, settings_from_block


@dataclass
class Session:
    compiled: Compiled
    settings: TrainSettings
    data: BoundData | None
    model: Model | None   # None while some sizes are still symbolic (the data decides them)

    @property
    def plan(self):
        return self.compiled.plan

    @property
    def spec_hash(self) -> str:
        return spec_hash(self.compiled)


def spec_hash(compiled: Compiled) -> str:
    """Identifies the network — its expanded equations and data-decided sizes, not its training
    settings (dropout, epochs): a checkpoint fits only the same network."""
    from .expand import format_flat
    text = format_flat(compiled.flat) + repr(sorted(compiled.bindings.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load(path: str | Path | None = None, *, text: str | None = None) -> tuple[Program, Diagnostics]:
    diags = Diagnostics()
    program = load_file(path, diags) if text is None else load_text(text, str(path or "<string>"), diags)
    return program, diags


def recompile(compiled: Compiled, **kw) -> Compiled:
    """The same parsed program compiled again (e.g. with the sizes its data decided)."""
    return compile_program(compiled.program, Diagnostics(compiled.diags.sources), **kw)


def open_session(path: str | Path | None = None, *, text: str | None = None, overrides: list[str] = (),
                 with_data: bool = True, fold: tuple[int, int] | None = None, dtype: str | None = None,
                 seed: int | None = None, outer: tuple[int, int] | None = None) -> Session:
    """Compile a spec, read its data (vocabularies decide some sizes), compile again with those sizes.
    ``fold = (k, i)``: fold i of k-fold cross-validation is the test part; ``outer = (k, i)``: fold i of
    an outer cross-validation is left out before anything else (see dataset.bind_data)."""
    program, diags = load(path, text=text)
    first = compile_program(program, diags)
    settings = settings_from_block(first.flat.train, diags, overrides)
    diags.raise_if_errors()
    if seed is not None:
        settings = settings.model_copy(update={"seed": seed})
    if dtype is not None:
        settings = settings.model_copy(update={"dtype": dtype})
    data = None
    compiled = first
    if with_data and first.flat.data is not None:
        split = settings.split
        unknown = set(split) - {"dev", "test"}
        if unknown:
            diags.error(f"split takes dev and test, not {', '.join(sorted(unknown))}", first.flat.train.span)
            diags.raise_if_errors()
        data = bind_data(first.flat, first.plan, diags, dev=split.get("dev", 0.0), test=split.get("test", 0.0),
                         seed=settings.seed, min_count=settings.min_count, normalize=settings.normalize,
                         fold=fold, limit=settings.limit, outer=outer)
    if data is not None or settings.dropout:
        compiled = recompile(first, bindings=data.bindings if data else None, dropout=settings.dropout)
    model = None
    if all(isinstance(d, int) for p in compiled.plan.params for d in p.shape):
        model = Model(compiled, dtype=np.dtype(settings.dtype), seed=settings.seed, default_init=settings.init)
    return Session(compiled, settings, data, model)
