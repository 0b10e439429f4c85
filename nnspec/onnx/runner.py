"""Running an exported model in onnxruntime with nnspec's feeds.

Feeds are as :meth:`nnspec.Model.forward` takes them (a list of per-example sequences, or a padded
time-major array with ``lengths``) and are checked the same way; the lengths must be 1..T, as in
nnspec (an ONNX model cannot refuse them itself: a length of 0 or past the padded steps would give
an answer nnspec never gives).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..model import FeedError, prepare_feeds
from .build import LENGTHS


class OnnxModel:
    """An exported model in an onnxruntime session (CPU), fed like the nnspec model it came from."""

    def __init__(self, model: "onnx.ModelProto | str | Path", plan=None, threads: int | None = None) -> None:
        import onnxruntime as ort
        self.proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(self.proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.plan = plan
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]

    def forward(self, feeds: dict, lengths=None) -> dict[str, np.ndarray]:
        """The outputs for a batch, as ``Model.forward`` gives them (padded steps of a sequence: 0)."""
        if self.plan is not None:
            wanted = {v.name for v in self.plan.inputs}
            feeds, lengths = prepare_feeds(self.plan, {k: v for k, v in feeds.items() if k in wanted}, lengths,
                                           dtype=np.float32)
        else:
            feeds, lengths = self._padded(feeds, lengths)
        return self.run(feeds, lengths)

    def _padded(self, feeds: dict, lengths) -> tuple[dict, np.ndarray | None]:
        """Lists of per-example sequences of the model's sequence inputs, padded time-major (0 after
        each example's end), and their lengths."""
        out = dict(feeds)
        for name, value in feeds.items():
            info = self.inputs.get(name)
            if info is None or not info.shape or info.shape[0] != "T" or not isinstance(value, (list, tuple)):
                continue
            rows = [np.asarray(r) for r in value]
            if not rows or any(r.ndim == 0 or len(r) == 0 for r in rows):
                raise FeedError(f"{name!r}: a list of B sequences, each of at least one step")
            got = np.array([len(r) for r in rows], np.int64)
            if lengths is not None and not np.array_equal(np.asarray(lengths), got):
                raise FeedError(f"lengths {list(lengths)} disagree with the sequences of {name!r} ({got.tolist()})")
            lengths = got
            array = np.zeros((int(got.max()), len(rows)) + rows[0].shape[1:], rows[0].dtype)
            for b, r in enumerate(rows):
                array[:len(r), b] = r
            out[name] = array
        return out, lengths

    def run(self, feeds: dict[str, np.ndarray], lengths=None) -> dict[str, np.ndarray]:
        """The outputs for arrays already in the exported layout (time-major sequences)."""
        arrays = {}
        steps = None
        for name, info in self.inputs.items():
            if name == LENGTHS:
                continue
            if name not in feeds:
                raise FeedError(f"no value for {name!r}: the exported model takes {', '.join(self.inputs)}")
            kind = np.int64 if info.type == "tensor(int64)" else (np.float64 if info.type == "tensor(double)"
                                                                  else np.float32)
            array = np.asarray(feeds[name])
            if array.ndim == len(info.shape) - 1 and info.shape[-1] == 1:
                array = array[..., None]      # a real scalar per example: (B,) as (B, 1)
            arrays[name] = array.astype(kind, copy=False)
            if info.shape and info.shape[0] == "T":
                steps = array.shape[0]
        if LENGTHS in self.inputs:
            batch = next(a.shape[1] for n, a in arrays.items() if self.inputs[n].shape[0] == "T")
            lengths = np.full(batch, steps, np.int64) if lengths is None else np.asarray(lengths, np.int64)
            if lengths.shape != (batch,):
                raise FeedError(f"lengths has {lengths.size} entries, but the batch holds {batch} examples")
            if lengths.size and (lengths.min() < 1 or lengths.max() > steps):
                raise FeedError(f"lengths must be between 1 and the {steps} steps of the padded sequences, "
                                f"got {lengths.tolist()}")
            arrays[LENGTHS] = lengths
        return dict(zip(self.outputs, self.session.run(self.outputs, arrays)))


def reference_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same model by onnx's reference evaluator (an independent implementation, in Python)."""
    from onnx.reference import ReferenceEvaluator
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(names, feeds)))
