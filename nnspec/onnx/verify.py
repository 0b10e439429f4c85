"""Checking an exported model against nnspec's own forward pass.

``verify(model)`` exports a model, checks it with ``onnx.checker`` and shape inference, and runs
it in onnxruntime (CPU) and in onnx's reference evaluator on random batches: one example, several,
a padded batch of mixed lengths, and a number of steps the export never saw. Each output's worst
difference from ``Model.forward`` at the real steps is reported; the padded steps must hold 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..model import TEXT_ELEMS, Model, prepare_feeds
from .export import Exported, export_model
from .runner import OnnxModel, reference_run

# (name, lengths of the examples): the padded batch has T = the longest
CASES = [("batch of 1", [5]), ("batch of 3", [6, 6, 6]), ("padded batch", [7, 2, 5, 1]),
         ("unseen length", [13, 13, 9])]
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-9}


@dataclass
class Verification:
    exported: Exported
    worst: dict[str, float] = field(default_factory=dict)   # oracle -> worst difference over the cases

    @property
    def inventory(self) -> str:
        ops = [l.onnx_op for l in self.exported.loops]
        return ", ".join(f"{ops.count(o)} {o}" for o in dict.fromkeys(ops)) or "no loops"


def random_feeds(model: Model, lengths: list[int], rng: np.random.Generator) -> tuple[dict, np.ndarray | None]:
    """A batch of random inputs in nnspec's layout: ids below each vocabulary's size, normal reals."""
    plan = model.plan
    T, B = max(lengths), len(lengths)
    feeds = {}
    tables = {p.name: p.shape for p in plan.params}
    for v in plan.inputs + plan.targets:   # targets too: nnspec computes a loss's prediction with its loss
        lead = (T, B) if v.seq else (B,)
        if v.integer:
            high = v.card if isinstance(v.card, int) else 2
            for p, shape in tables.items():   # an embedding table's rows bound the ids
                if p.endswith(".table") and p.startswith(v.name):
                    high = shape[0]
            feeds[v.name] = rng.integers(0, high, lead)
        else:
            shape = tuple(int(d) for d in v.shape) or ((1,) if v.elem not in TEXT_ELEMS else ())
            feeds[v.name] = rng.normal(size=lead + shape).astype(model.dtype)
    any_seq = any(v.seq for v in plan.inputs)
    return feeds, (np.array(lengths, np.int64) if any_seq else None)


def verify(model: Model, seed: int = 0, reference: bool = True, cases=CASES) -> Verification:
    """Export ``model`` twice (library cells fused, and every loop as a Scan), check both, and compare
    them with nnspec on ``cases``. Oracles: onnxruntime on each export, and onnx's reference evaluator
    on the Scan export and on the fused export's unpadded batches (its RNN ops ignore
    ``sequence_lens`` when run in reverse)."""
    exports = {"fused": export_model(model), "scan": export_model(model, fused=False)}
    for exported in exports.values():
        onnx.checker.check_model(exported.model, full_check=True)   # full_check: with shape inference
        onnx.shape_inference.infer_shapes(exported.model, check_type=True, strict_mode=True)
    result = Verification(exports["fused"])
    runners = {k: OnnxModel(e.model) for k, e in exports.items()}
    rng = np.random.default_rng(seed)
    for _, lengths in cases:
        feeds, lens = random_feeds(model, lengths, rng)
        expected = expected_outputs(model, exports["fused"], feeds, lens)
        arrays, lens = prepare_feeds(model.plan, {v.name: feeds[v.name] for v in model.plan.inputs}, lens,
                                     dtype=model.dtype)
        padded = lens is not None and len(set(lengths)) > 1
        for kind, exported in exports.items():
            got = {"onnxruntime": runners[kind].run(arrays, lens)}
            if reference and (kind == "scan" or not padded):
                ref_feeds = {i.name: runner_input(runners[kind], i.name, arrays, lens)
                             for i in exported.model.graph.input}
                got["reference"] = reference_run(exported.model, ref_feeds)
            sequences = {o.name for o in exported.model.graph.output
                         if o.type.tensor_type.shape.dim and o.type.tensor_type.shape.dim[0].dim_param == "T"}
            for oracle, outs in got.items():
                key = oracle if kind == "fused" else f"{oracle} (Scan)"
                for name, want in expected.items():
                    worst = _difference(want, outs[name], lens, name in sequences)
                    result.worst[key] = max(result.worst.get(key, 0.0), worst)
    return result


def expected_outputs(model: Model, exported: Exported, feeds: dict, lengths) -> dict[str, np.ndarray]:
    """nnspec's values of the exported outputs (of a spec with no output: its losses' predictions)."""
    if not exported.derived:
        return model.forward(feeds, lengths=lengths)
    from ..ops import REGISTRY, Ctx
    arrays, lengths = prepare_feeds(model.plan, feeds, lengths, dtype=model.dtype, need_targets=True)
    values = model.trace(arrays, lengths, need_loss=True).values
    return {name: REGISTRY[op].forward([values[pred]], {}, Ctx()) for name, (op, pred) in exported.derived.items()}


def runner_input(runner: OnnxModel, name: str, arrays: dict, lengths) -> np.ndarray:
    from .build import LENGTHS
    if name == LENGTHS:
        return np.asarray(lengths, np.int64)
    info = runner.inputs[name]
    kind = np.int64 if info.type == "tensor(int64)" else (np.float64 if info.type == "tensor(double)" else np.float32)
    array = np.asarray(arrays[name])
    if array.ndim == len(info.shape) - 1:
        array = array[..., None]
    return array.astype(kind)


def _difference(want: np.ndarray, got: np.ndarray, lengths, sequence: bool) -> float:
    """The worst difference at the real steps; inf when a padded step of ``got`` is not 0 (-1 for ids)."""
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape:
        return float("inf")
    if sequence and lengths is not None:
        real = np.arange(want.shape[0])[:, None] < np.asarray(lengths)[None, :]
        real = real.reshape(real.shape + (1,) * (want.ndim - 2))
        pad = -1 if np.issubdtype(got.dtype, np.integer) else 0
        if np.any(np.where(real, pad, got) != pad):
            return float("inf")
        want, got = np.where(real, want, 0), np.where(real, got, 0)
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64))))
