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
from .build import LENGTHS, steps_name


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
        # lengths input -> its axis (None: the one axis of a network on one), as the export recorded them
        props = {p.key: p.value for p in self.proto.metadata_props}
        names = [n for n in props.get("nnspec.lengths", LENGTHS).split(",") if n in self.inputs]
        self.lengths_inputs = {n: (None if n == LENGTHS else n[len(LENGTHS) + 1:]) for n in names}

    def forward(self, feeds: dict, lengths=None) -> dict[str, np.ndarray]:
        """The outputs for a batch, as ``Model.forward`` gives them (padded steps of a sequence: 0)."""
        if self.plan is not None:
            wanted = {v.name for v in self.plan.inputs}
            feeds, lengths = prepare_feeds(self.plan, {k: v for k, v in feeds.items() if k in wanted}, lengths,
                                           dtype=np.float32)
        else:
            feeds, lengths = self._padded(feeds, lengths)
        return self.run(feeds, lengths)

    def _padded(self, feeds: dict, lengths) -> tuple[dict, "np.ndarray | dict | None"]:
        """Lists of per-example sequences of the model's sequence inputs, padded time-major (0 after
        each example's end), and their lengths (on several axes: a dict from axis to lengths)."""
        out = dict(feeds)
        several = any(axis is not None for axis in self.lengths_inputs.values())
        given = dict(lengths) if isinstance(lengths, dict) else {None: lengths}
        found: dict = {}
        for name, value in feeds.items():
            info = self.inputs.get(name)
            if info is None or not info.shape or not str(info.shape[0]).startswith("T") \
                    or not isinstance(value, (list, tuple)):
                continue
            axis = str(info.shape[0])[2:] if several else None
            if len(info.shape) > 1 and str(info.shape[1]).startswith("N_"):   # each example's words' characters
                out[name], found[axis] = _nested(name, value)
                continue
            rows = [np.asarray(r) for r in value]
            if not rows or any(r.ndim == 0 or len(r) == 0 for r in rows):
                raise FeedError(f"{name!r}: a list of B sequences, each of at least one step")
            got = np.array([len(r) for r in rows], np.int64)
            want = found.get(axis, given.get(axis))
            if want is not None and not np.array_equal(np.asarray(want), got):
                raise FeedError(f"lengths {list(want)} disagree with the sequences of {name!r} ({got.tolist()})")
            found[axis] = got
            array = np.zeros((int(got.max()), len(rows)) + rows[0].shape[1:], rows[0].dtype)
            for b, r in enumerate(rows):
                array[:len(r), b] = r
            out[name] = array
        if several:
            return out, {**{a: v for a, v in given.items() if a is not None}, **found}
        return out, found.get(None, lengths)

    def run(self, feeds: dict[str, np.ndarray], lengths=None) -> dict[str, np.ndarray]:
        """The outputs for arrays already in the exported layout (time-major sequences). ``lengths``: of
        the one sequence axis, or on several axes a dict from axis name to its lengths (an axis left
        out: every example has all its steps)."""
        arrays = {}
        steps: dict[str, int] = {}      # dimension of steps (T, T_src, ...) -> its size in the feeds
        rows: dict[str, int] = {}       # the words of a nested sequence's batch (N_char) -> how many
        batch = None
        for name, info in self.inputs.items():
            if name in self.lengths_inputs:
                continue
            if name not in feeds:
                raise FeedError(f"no value for {name!r}: the exported model takes {', '.join(self.inputs)}")
            kind = np.int64 if info.type == "tensor(int64)" else (np.float64 if info.type == "tensor(double)"
                                                                  else np.float32)
            array = np.asarray(feeds[name])
            if array.ndim == len(info.shape) - 1 and info.shape[-1] == 1:
                array = array[..., None]      # a real scalar per example: (B,) as (B, 1)
            arrays[name] = array.astype(kind, copy=False)
            for i, dim in enumerate(info.shape):
                if dim == "B" and i < array.ndim:
                    batch = array.shape[i] if batch is None else batch
                elif isinstance(dim, str) and dim.startswith("T") and i < array.ndim:
                    steps.setdefault(dim, array.shape[i])
                elif isinstance(dim, str) and dim.startswith("N_") and i < array.ndim:
                    rows.setdefault(dim, array.shape[i])
        if self.lengths_inputs:
            several = any(axis is not None for axis in self.lengths_inputs.values())
            given = lengths if isinstance(lengths, dict) else ({} if lengths is None else {None: lengths})
            if not several and len(given) == 1:      # one axis: its lengths, however named
                given = {None: next(iter(given.values()))}
            if several and None in given:
                raise FeedError(f"the exported model's sequences are on several axes "
                                f"({', '.join(a for a in self.lengths_inputs.values())}): lengths is a dict from "
                                f"axis name to the lengths on that axis")
            unknown = set(given) - set(self.lengths_inputs.values()) - ({None} if not several else set())
            if unknown:
                raise FeedError(f"lengths for {', '.join(sorted(map(str, unknown)))}, which is no axis of the "
                                f"exported model")
            for name, axis in self.lengths_inputs.items():
                ls = given.get(axis)
                T = steps.get(steps_name(axis or "", several))
                if T is None:     # the outer axis of a nested sequence no other input is on: its lengths
                    if ls is None:
                        raise FeedError(f"lengths of {axis!r}: each example's number of words")
                    T = int(np.max(ls, initial=0))
                words = rows.get(str(self.inputs[name].shape[0]))    # a nested sequence: a length per word
                n = (batch if batch is not None else len(ls)) if words is None else words
                ls = np.full(n, T, np.int64) if ls is None else np.asarray(ls, np.int64)
                if ls.shape != (n,):
                    raise FeedError(f"lengths has {ls.size} entries, but the batch holds {n} "
                                    f"{'examples' if words is None else 'words (rows of ' + repr(axis) + ')'}")
                if words is not None:    # a padding word has no characters
                    if ls.size and (ls.min() < 0 or ls.max() > T):
                        raise FeedError(f"lengths of {axis!r} must be between 0 and the {T} steps of the padded "
                                        f"sequences, got {ls.tolist()}")
                elif ls.size and (ls.min() < 1 or ls.max() > T):
                    raise FeedError(f"lengths must be between 1 and the {T} steps of the padded sequences, "
                                    f"got {ls.tolist()}")
                arrays[name] = ls
        return dict(zip(self.outputs, self.session.run(self.outputs, arrays)))


def _nested(name: str, examples) -> tuple[np.ndarray, np.ndarray]:
    """A nested feed, each example a list of its words' characters, as the exported model reads it:
    ``(T_char, T_word * B)`` with word t of example b in row ``t * B + b``, and each row's length (0 for
    the padding words after an example's last)."""
    words = [[np.asarray(w) for w in example] for example in examples]
    if not words or any(not ws or any(w.ndim != 1 or len(w) == 0 for w in ws) for ws in words):
        raise FeedError(f"{name!r}: a list of B examples, each a list of its words' characters, every word "
                        f"of at least one")
    B, T = len(words), max(len(ws) for ws in words)
    counts = np.zeros(T * B, np.int64)
    array = np.zeros((max(len(w) for ws in words for w in ws), T * B), words[0][0].dtype)
    for b, ws in enumerate(words):
        for t, w in enumerate(ws):
            array[:len(w), t * B + b], counts[t * B + b] = w, len(w)
    return array, counts


def reference_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same model by onnx's reference evaluator (an independent implementation, in Python)."""
    from onnx.reference import ReferenceEvaluator
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(names, feeds)))


def greedy(runner: OnnxModel, plan, feeds: dict, steps, lengths: dict | None = None) -> dict[str, np.ndarray]:
    """Greedy decoding for a given number of steps (as :func:`nnspec.decode.greedy_steps`) with an
    exported model: the teacher-forced decoder of ``plan`` fed its own predictions, one forward pass
    of the exported model a step. ``{input: ids (T, B)}``, 0 past each example's ``steps``."""
    from ..decode import fixed_length_decoder, step_counts
    from ..ops import REGISTRY
    from ..plan import OpStep
    name, pred, axis = fixed_length_decoder(plan)
    # the output that gives the prediction: itself, or what turns its scores into probabilities
    made_of = [s.id for s in plan.steps if isinstance(s, OpStep) and s.id in runner.outputs
               and REGISTRY[s.op].scores_as in ("probabilities", "log_probabilities", "scores")
               and s.inputs and s.inputs[0][0] == pred]
    output = pred if pred in runner.outputs else (made_of[0] if made_of else None)
    if output is None:
        raise FeedError(f"the exported model has no output giving {pred!r}, the prediction its decoder is fed")
    n = step_counts(plan, feeds, steps)
    ids = np.zeros((int(n.max()), len(n)), dtype=np.int64)
    real = np.arange(ids.shape[0])[:, None] < n[None, :]
    for t in range(ids.shape[0]):
        arrays, lens = prepare_feeds(plan, {**feeds, name: ids}, {**(lengths or {}), axis: n})
        ids[t] = np.where(real[t], runner.run(arrays, lens)[output][t].argmax(-1), 0)
    return {name: ids}
