"""A spec with its data and settings, ready to run: what ``nnspec run`` does, as functions.

    spec file --compile--> symbolic plan --read data--> sizes --compile--> concrete plan --> Model
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .compiler import Compiled, compile_program
from .dataset import BoundData, bind_for_settings
from .errors import Diagnostics
from .loader import Program, load_file, load_text
from .model import Model
from .settings import TrainSettings, settings_from_block
from .shapes import MemoryBudget, check_memory, default_memory_limit


@dataclass
class Session:
    compiled: Compiled
    settings: TrainSettings
    data: BoundData | None
    given: Model | None = None   # the model, if made already (else made, its weights drawn, when first asked for)

    @property
    def model(self) -> Model | None:
        """The network with its initial weights (the settings' init and seed); None while some sizes
        are still symbolic (the data decides them). Made when first asked for: ``nnspec check``, a
        sweep's set-up and the folds' names never draw the weights of a network of gigabytes."""
        if self.given is None and all(isinstance(d, int) for p in self.compiled.plan.params for d in p.shape):
            self.given = Model(self.compiled, dtype=np.dtype(self.settings.dtype), seed=self.settings.seed,
                               default_init=self.settings.init)
        return self.given

    @property
    def plan(self):
        return self.compiled.plan

    @property
    def spec_hash(self) -> str:
        return spec_hash(self.compiled)

    def _repr_html_(self) -> str:   # a notebook shows the model (or the spec, while sizes are open)
        return (self.model or self.compiled)._repr_html_()


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
                 seed: int | None = None, memory_limit: int | None = None,
                 outer: tuple[int, int] | None = None) -> Session:
    """Compile a spec, read its data (vocabularies decide some sizes), compile again with those sizes.
    ``fold = (k, i)``: fold i of k-fold cross-validation is the test part; ``outer = (k, i)``: fold i of
    an outer cross-validation is left out before anything else (see dataset.bind_data).

    ``memory_limit`` (bytes; default: the train block's ``memory_limit_mb`` if it sets one, else
    ``NNSPEC_MEMORY_LIMIT``, else 4 GiB) bounds what a training step may allocate: a network whose
    parameters and values for one batch need more is a SpecError before anything is allocated."""
    program, diags = load(path, text=text)
    first = compile_program(program, diags)
    settings = settings_from_block(first.flat.train, diags, overrides)
    if first.flat.train is not None and first.plan.loss is None:
        diags.error("a train block needs a loss to minimise; add one, e.g. 'loss cross_entropy(p, y)'",
                    first.flat.train.span)
    diags.raise_if_errors()
    if seed is not None:
        settings = settings.model_copy(update={"seed": seed})
    if dtype is not None:
        settings = settings.model_copy(update={"dtype": dtype})
    if memory_limit is None:
        set_in_spec = "memory_limit_mb" in settings.model_fields_set
        memory_limit = int(settings.memory_limit_mb * 2**20) if set_in_spec else default_memory_limit()
    settings = settings.model_copy(update={"memory_limit_mb": memory_limit / 2**20})  # the trainer's check too
    data = None
    compiled = first
    if with_data and first.flat.data is not None:
        data = bind_for_settings(first.flat, first.plan, settings, diags, fold=fold, outer=outer)
    if data is not None and data.stream and first.flat.train is not None:
        for split in data.streams:  # said now rather than when training reaches that part
            data.check_stream_batch(split, settings.batch)
    if data is not None or settings.dropout:
        compiled = recompile(first, bindings=data.bindings if data else None, dropout=settings.dropout)
    training = first.flat.train is not None or bool(overrides)
    budget = MemoryBudget(limit=memory_limit, batch=1 if settings.rule == "perceptron" else settings.batch,
                          itemsize=np.dtype(settings.dtype).itemsize, training=training)
    check = Diagnostics(compiled.diags.sources)
    check_memory(compiled.graph, check, budget)
    check.raise_if_errors()
    return Session(compiled, settings, data)
