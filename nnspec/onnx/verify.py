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

from ..graph import DEFAULT_AXIS
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
    by_case: dict[str, dict[str, float]] = field(default_factory=dict)   # case -> oracle -> worst difference

    @property
    def inventory(self) -> str:
        ops = [l.kind for l in self.exported.loops]
        return ", ".join(f"{ops.count(o)} {o}" for o in dict.fromkeys(ops)) or "no loops"


def axis_lengths(axes: list[str], lengths: list[int]) -> dict[str, np.ndarray]:
    """Lengths on each of several axes from one case's: the first axis has them, each next one the
    same rolled by one example and one step longer, so that every axis has its own lengths and its
    own number of steps (a padded batch stays padded on each)."""
    return {a: np.roll(np.array(lengths, np.int64), j) + j for j, a in enumerate(axes)}


def random_feeds(model: Model, lengths: list[int], rng: np.random.Generator) -> tuple[dict, "np.ndarray | dict | None"]:
    """A batch of random inputs in nnspec's layout: ids below each vocabulary's size, normal reals.
    On several sequence axes, each axis gets lengths of its own (:func:`axis_lengths`), as a dict."""
    plan = model.plan
    B = len(lengths)
    axis_of = {v.name: (v.axes or [DEFAULT_AXIS])[-1] for v in plan.inputs + plan.targets if v.seq}
    inner = {v.axes[-1] for v in plan.inputs if v.nested}
    several = sorted(set(axis_of.values())) if len(set(axis_of.values())) > 1 else None
    per_axis = axis_lengths(several, lengths) if several else None
    feeds = {}
    tables = {p.name: p.shape for p in plan.params}
    for v in plan.inputs + plan.targets:   # targets too: nnspec computes a loss's prediction with its loss
        if v.nested:   # each example's words (as many as its outer axis's lengths), of 1 to 6 characters
            words = per_axis[v.axes[-2]] if several else lengths
            high = v.card if isinstance(v.card, int) else 2
            feeds[v.name] = [[rng.integers(1 if high > 1 else 0, high, rng.integers(1, 7)) for _ in range(n)]
                             for n in words]
            continue
        T = int(per_axis[axis_of[v.name]].max()) if several and v.seq else max(lengths)
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
    if several:   # a nested input's characters: their lengths are those of its lists
        return feeds, {a: ls for a, ls in per_axis.items() if a not in inner}
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
    for case, lengths in cases:
        feeds, lens = random_feeds(model, lengths, rng)
        expected = expected_outputs(model, exports["fused"], feeds, lens)
        arrays, lens = prepare_feeds(model.plan, {v.name: feeds[v.name] for v in model.plan.inputs}, lens,
                                     dtype=model.dtype)
        padded = lens is not None and any(len(set(np.asarray(ls).tolist())) > 1
                                          for ls in (lens.values() if isinstance(lens, dict) else [lens]))
        for kind, exported in exports.items():
            got = {"onnxruntime": runners[kind].run(arrays, lens)}
            if reference and (kind == "scan" or not padded):
                ref_feeds = {i.name: runner_input(runners[kind], i.name, arrays, lens)
                             for i in exported.model.graph.input}
                got["reference"] = reference_run(exported.model, ref_feeds)
            steps = {o.name: [d.dim_param[2:] for d in o.type.tensor_type.shape.dim if d.dim_param.startswith("T")]
                     for o in exported.model.graph.output}
            for oracle, outs in got.items():
                key = oracle if kind == "fused" else f"{oracle} (Scan)"
                for name, want in expected.items():
                    worst = _difference(want, outs[name], _real_positions(steps[name], lens, np.shape(want)))
                    result.worst[key] = max(result.worst.get(key, 0.0), worst)
                    mine = result.by_case.setdefault(case, {})
                    mine[key] = max(mine.get(key, 0.0), worst)
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
    if name in runner.lengths_inputs:
        axis = runner.lengths_inputs[name]
        return np.asarray(lengths[axis] if axis is not None else lengths, np.int64)
    info = runner.inputs[name]
    kind = np.int64 if info.type == "tensor(int64)" else (np.float64 if info.type == "tensor(double)" else np.float32)
    array = np.asarray(arrays[name])
    if array.ndim == len(info.shape) - 1:
        array = array[..., None]
    return array.astype(kind)


def _real_positions(axes: list[str], lengths, shape: tuple) -> "np.ndarray | None":
    """(T_1, ..., T_k, B) bool: the real positions of an output on ``axes`` (dimension names after
    the ``T``: ``""`` for the one axis of a network on one), or None for an output on no axis."""
    if not axes or lengths is None:
        return None
    real = None
    for i, axis in enumerate(axes):      # axis i: (T_i, 1 for each axis inside it, B), right-aligned
        ls = np.asarray(lengths[axis] if isinstance(lengths, dict) else lengths)
        mask = np.arange(shape[i])[:, None] < ls[None, :]
        mask = mask.reshape(mask.shape[:1] + (1,) * (len(axes) - 1 - i) + mask.shape[1:])
        real = mask if real is None else np.logical_and(real, mask)
    return real


def _difference(want: np.ndarray, got: np.ndarray, real: "np.ndarray | None") -> float:
    """The worst difference at the real positions; inf when a padded one of ``got`` is not 0 (-1 for ids)."""
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape:
        return float("inf")
    if real is not None:
        real = real.reshape(real.shape + (1,) * (want.ndim - real.ndim))
        pad = -1 if np.issubdtype(got.dtype, np.integer) else 0
        if np.any(np.where(real, pad, got) != pad):
            return float("inf")
        want, got = np.where(real, want, 0), np.where(real, got, 0)
    if want.size == 0:
        return 0.0
    return float(np.max(np.abs(want.astype(np.float64) - got.astype(np.float64))))
