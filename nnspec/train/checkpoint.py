"""Checkpoint directories: ``weights.safetensors`` + ``meta.json``, never pickle.

``weights.safetensors`` holds the parameters under their own names and the
optimiser's state arrays under ``optim/<key>``. ``meta.json`` holds everything
else as plain JSON: spec hash, epoch, step, metrics, the RNG's bit-generator
state (a dict of ints), vocabularies, normalisation statistics, the
optimiser's scalar state, caller extras, and a SHA-256 of the weights file so
a damaged or mismatched file is caught on load.

Saving is atomic with respect to crashes: both files are written and fsynced
in a fresh temp dir next to the target, then swapped in by renames. A POSIX
rename cannot replace a non-empty directory, so an existing checkpoint is
first renamed to ``.<name>.old`` and deleted only after the new one is in
place; if a crash falls between the two renames, ``load_checkpoint`` reads the
``.old`` copy and the next save restores it before proceeding.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors.numpy as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..limits import READ_LIMIT_VARIABLE, ReadRefused, read_limit, read_regular_file

WEIGHTS = "weights.safetensors"
META = "meta.json"
OPTIM_PREFIX = "optim/"
FORMAT = "nnspec-checkpoint"
VERSION = 1


class CheckpointError(Exception):
    """A checkpoint is missing, damaged, or does not belong to this spec."""


@dataclass
class Checkpoint:
    path: Path
    params: dict[str, np.ndarray]
    optimizer_state: dict[str, Any] | None
    meta: dict[str, Any] = field(repr=False)

    spec_hash = property(lambda self: self.meta.get("spec_hash"))
    epoch = property(lambda self: self.meta.get("epoch", 0))
    step = property(lambda self: self.meta.get("step", 0))
    metrics = property(lambda self: self.meta.get("metrics") or {})
    rng_state = property(lambda self: self.meta.get("rng_state"))
    vocabs = property(lambda self: self.meta.get("vocabs"))
    norm_stats = property(lambda self: self.meta.get("norm_stats"))
    extra = property(lambda self: self.meta.get("extra") or {})

    def rng(self) -> np.random.Generator:
        """A Generator positioned exactly where the saved one was."""
        if self.rng_state is None:
            raise CheckpointError(f"{self.path}: checkpoint has no saved RNG state")
        return rng_from_state(self.rng_state)


def rng_from_state(state: dict) -> np.random.Generator:
    """Rebuild a Generator from ``bit_generator.state`` (e.g. read from JSON)."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    bitgen_cls = getattr(np.random, name, None) if isinstance(name, str) else None
    if not (isinstance(bitgen_cls, type) and issubclass(bitgen_cls, np.random.BitGenerator)):
        raise CheckpointError(f"unknown bit generator {name!r} in RNG state")
    bitgen = bitgen_cls()
    try:
        bitgen.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise CheckpointError(f"the saved RNG state is damaged ({e})") from None
    return np.random.Generator(bitgen)


# ---- what meta.json may hold (checked on load; extra keys are allowed for newer writers) ----

class _Strict(BaseModel):
    # the validators are built when a checkpoint is first loaded, not by every command that imports this
    model_config = ConfigDict(strict=True, extra="allow", defer_build=True)


class _VocabMeta(_Strict):
    itos: list[str | int] | None = None
    labels: int | None = Field(default=None, ge=0)    # (instead of itos: the labels 0..labels-1, each its id)

    @model_validator(mode="after")
    def _entries(self):
        if (self.itos is None) == (self.labels is None):
            raise ValueError("a vocabulary lists its entries (itos) or counts its labels (labels), one of the two")
        return self
    specials: bool
    level: Literal["word", "char"]
    lowercase: bool
    ngrams: int = Field(default=1, ge=1, le=5)


class _NormMeta(_Strict):
    mean: list[float] | float
    std: list[float] | float


class _NaiveBayesMeta(_Strict):
    nb_ratio: list[float]


class _RngMeta(_Strict):
    bit_generator: str
    state: dict[str, Any]


class _ExtraMeta(_Strict):
    history: list[dict[str, Any]] = []
    best_score: float | None = None
    best_epoch: int = Field(0, ge=0)


class CheckpointMeta(_Strict):
    """The schema of ``meta.json``: a checkpoint whose file does not fit it is refused, saying where."""
    format: Literal["nnspec-checkpoint"]
    version: int = Field(ge=1)
    spec_hash: str | None = None
    epoch: int = Field(0, ge=0)
    step: int = Field(0, ge=0)
    metrics: dict[str, Any] = {}
    rng_state: _RngMeta | None = None
    vocabs: dict[str, Any] | None = None
    norm_stats: dict[str, Any] | None = None
    optim: dict[str, Any] | None = None
    params: list[str] = []
    extra: dict[str, Any] = {}
    weights_sha256: str


class TrainedMeta(CheckpointMeta):
    """A checkpoint the training loop wrote: its vocabularies, statistics and extras as it writes them."""
    vocabs: dict[str, _VocabMeta] | None = None
    norm_stats: dict[str, _NormMeta | _NaiveBayesMeta] | None = None
    extra: _ExtraMeta = _ExtraMeta()


def _validate_meta(path: Path, meta: dict, schema: type[CheckpointMeta]) -> None:
    try:
        schema.model_validate(meta)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'the file'}: {_said(err)} "
                             f"(got {_shown(err.get('input'))})" for err in e.errors()[:5])
        raise CheckpointError(f"{path}: {META} is damaged: {problems}") from None


def _said(err: dict) -> str:
    if err["type"] in ("model_type", "dict_type"):  # pydantic would name the class
        return "should be a JSON object"
    return err["msg"].lower()


def _shown(value) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, list, dict, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _fsync_dir(path: Path) -> None:
    # Makes the renames themselves durable; not possible on every platform.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _backup(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def _tidy(path: Path) -> None:
    """Finish or undo what a crashed earlier save left behind."""
    backup = _backup(path)
    if backup.exists():
        if path.exists():
            shutil.rmtree(backup)  # crash after the swap, before the delete
        else:
            os.replace(backup, path)  # crash between the two renames
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _commit(tmp: Path, path: Path) -> None:
    if path.exists():
        backup = _backup(path)
        os.replace(path, backup)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(backup)
    else:
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def save_checkpoint(
    path: str | os.PathLike,
    params: dict[str, np.ndarray],
    *,
    optimizer_state: dict[str, Any] | None = None,
    spec_hash: str | None = None,
    epoch: int = 0,
    step: int = 0,
    metrics: dict[str, Any] | None = None,
    rng: np.random.Generator | dict | None = None,
    vocabs: Any = None,
    norm_stats: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically; returns the path.

    ``rng`` may be a Generator or its ``bit_generator.state``. NumPy arrays
    inside the JSON fields (e.g. normalisation means) are stored as lists.
    """
    path = Path(path)
    tensors: dict[str, np.ndarray] = {}
    for name, value in params.items():
        if name.startswith(OPTIM_PREFIX):
            raise ValueError(f"parameter name {name!r} clashes with the reserved {OPTIM_PREFIX!r} prefix")
        tensors[name] = np.ascontiguousarray(value)
    optim_scalars = None
    if optimizer_state is not None:
        optim_scalars = {}
        for key, value in optimizer_state.items():
            if isinstance(value, np.ndarray):
                tensors[OPTIM_PREFIX + key] = np.ascontiguousarray(value)
            else:
                optim_scalars[key] = value
    if isinstance(rng, np.random.Generator):
        rng = rng.bit_generator.state

    # Serialise everything before touching the disk, so bad input fails early.
    weights = st.save(tensors)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "spec_hash": spec_hash,
        "epoch": int(epoch),
        "step": int(step),
        "metrics": metrics or {},
        "rng_state": rng,
        "vocabs": vocabs,
        "norm_stats": norm_stats,
        "optim": optim_scalars,
        "params": list(params),
        "extra": extra or {},
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    try:
        meta_text = json.dumps(meta, indent=2, default=_jsonable)
    except TypeError as e:
        raise ValueError(f"checkpoint metadata is not JSON-able: {e}") from None

    path.parent.mkdir(parents=True, exist_ok=True)
    _tidy(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        _write_file(tmp / WEIGHTS, weights)
        _write_file(tmp / META, meta_text.encode("utf-8"))
        _fsync_dir(tmp)
        _commit(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, expected_spec_hash: str | None = None,
                    expected_shapes: dict[str, tuple[int, ...]] | None = None,
                    schema: type[CheckpointMeta] = CheckpointMeta) -> Checkpoint:
    """Read a checkpoint directory; raises CheckpointError when it is missing,
    damaged (``meta.json`` must fit ``schema``: :class:`CheckpointMeta`, or :class:`TrainedMeta` for
    what the training loop wrote), or (given ``expected_spec_hash``
    or ``expected_shapes``, parameter name -> shape) made from a different spec."""
    path = Path(path)
    src = path
    if not path.is_dir() and _backup(path).is_dir():
        src = _backup(path)  # a save was interrupted mid-swap; this is the previous checkpoint
    if not src.is_dir():
        raise CheckpointError(f"{path}: no checkpoint directory here")
    for fname in (META, WEIGHTS):
        if not (src / fname).is_file():
            raise CheckpointError(f"{path}: not a complete checkpoint (missing {fname})")

    try:   # (read within the data files' limit: a checkpoint directory may come from anywhere)
        text = read_regular_file(src / META, read_limit(), f"set {READ_LIMIT_VARIABLE} to allow more")
        meta = json.loads(text.decode("utf-8"))
    except ReadRefused as e:
        raise CheckpointError(f"{path}: {META} is not read: {e}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: {META} is corrupt ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: {META} is not an nnspec checkpoint description")
    version = meta.get("version", 0)
    if type(version) is int and version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta['version']} is newer than "
                              f"this nnspec understands ({VERSION})")
    _validate_meta(path, meta, schema)

    saved_hash = meta.get("spec_hash")
    if expected_spec_hash is not None and saved_hash != expected_spec_hash:
        raise CheckpointError(
            f"{path}: checkpoint was made from a different spec "
            f"(hash {_short(saved_hash)}, this spec {_short(expected_spec_hash)})"
        )

    data = (src / WEIGHTS).read_bytes()
    if meta.get("weights_sha256") != hashlib.sha256(data).hexdigest():
        raise CheckpointError(f"{path}: {WEIGHTS} is corrupt (checksum does not match {META})")
    try:
        tensors = st.load(data)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{path}: {WEIGHTS} is corrupt ({e})") from None

    params = {name: tensors[name] for name in meta.get("params", []) if name in tensors}
    missing = [n for n in meta.get("params", []) if n not in tensors]
    if missing:
        raise CheckpointError(f"{path}: {WEIGHTS} lacks parameters {', '.join(missing)}")
    if expected_shapes is not None:
        check_shapes(path, params, expected_shapes)
    optimizer_state = None
    if meta.get("optim") is not None:
        optimizer_state = dict(meta["optim"])
        for key, value in tensors.items():
            if key.startswith(OPTIM_PREFIX):
                optimizer_state[key[len(OPTIM_PREFIX):]] = value
    return Checkpoint(path=path, params=params, optimizer_state=optimizer_state, meta=meta)


def check_shapes(path, params: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> None:
    """The saved weights are the network's: the same names, each with its shape and a float type."""
    missing = [n for n in expected if n not in params]
    if missing:
        raise CheckpointError(f"{path}: checkpoint was made from a different spec (it has no weights for "
                              f"{', '.join(missing)})")
    for name, shape in expected.items():
        got = params[name]
        if tuple(got.shape) != tuple(shape):
            raise CheckpointError(f"{path}: weight '{name}' has shape {list(got.shape)}, but this spec "
                                  f"makes it {list(shape)}: the checkpoint belongs to a different network")
        if got.dtype.kind != "f":
            raise CheckpointError(f"{path}: weight '{name}' holds {got.dtype} values, not floats")


def _short(h: str | None) -> str:
    if h is None:
        return "none recorded"
    return h[:12] + "…" if len(h) > 12 else h
