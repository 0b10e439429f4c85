"""Greedy decoding of a decoder trained with teacher forcing, with the very spec it was trained with.

A spec trains a decoder by teacher forcing when a token input (the output sequence, ``tgt``) is
the target of a class loss whose prediction is on that input's axis, and the prediction at a
step depends on the input's tokens *before* that step only (``ye = embed(tgt, 32)`` read as
``ye[t-1]``). Decoding then feeds the decoder its own predictions: at step t, the token fed as
``tgt[t]`` is the argmax of the prediction at t, which the next step reads. The plan says
which inputs these are (:func:`autoregressive`), so nothing more is declared.

Each step here is one forward pass over the steps so far (simple, and exactly the training
computation; a decoder that runs step by step, end symbols and beam search are future work),
for as many steps as the caller asks of each example.
"""
from __future__ import annotations

import numpy as np

from .model import FeedError, Model
from .ops import REGISTRY
from .plan import LoopStep, OpStep, Plan


def autoregressive(plan: Plan) -> list[tuple[str, str]]:
    """(input, prediction) pairs of the plan's teacher-forced decoders: a sequence token input that
    a class loss compares a prediction with, where the prediction at step t reads the input only
    at steps before t (no path at the same step, no read of a later step)."""
    tokens = {v.name: v for v in plan.inputs if v.seq and v.elem in ("token", "char")}
    pairs = []
    for s in plan.steps:
        if isinstance(s, OpStep) and REGISTRY[s.op].target == "class" and len(s.inputs) == 2:
            (pred, _), (target, _) = s.inputs
            if target in tokens and _only_earlier_steps(plan, target, pred):
                pairs.append((target, pred))
    return pairs


def _only_earlier_steps(plan: Plan, source: str, value: str) -> bool:
    """Whether ``value`` at step t reads ``source`` only at steps before t."""
    same = {source}      # depends on source at the same step (or a later one)
    reads = {source}     # depends on source at all
    for step in plan.steps:
        body = step.body if isinstance(step, LoopStep) else [step]
        for _ in range(len(body) + 1 if isinstance(step, LoopStep) else 1):   # a loop: to a fixpoint
            for b in body:
                for src, d in b.inputs:
                    if src in reads:
                        reads.add(b.id)
                        if d > 0:           # a later step of something made from the source
                            return False
                    if src in same and d == 0:
                        same.add(b.id)
    return value not in same and value in reads


def greedy(model: Model, feeds: dict, steps, lengths: dict | None = None) -> dict[str, np.ndarray]:
    """The tokens a teacher-forced decoder of ``model`` writes when fed its own predictions:
    ``{input: ids (T, B)}``. ``feeds``: every other input (lists of per-example sequences, or
    time-major arrays with ``lengths`` per axis); ``steps``: how many tokens to write for each
    example (an int for all, or one per example)."""
    pairs = autoregressive(model.plan)
    if not pairs:
        raise FeedError("this network has no decoder fed by its own predictions: no token input that a "
                        "class loss predicts from its earlier steps only (e.g. embed(tgt, 32) read as [t-1])")
    name, pred = pairs[0]
    spec = next(v for v in model.plan.inputs if v.name == name)
    axis = (spec.axes or ["time"])[-1]
    batch = _batch_size(model, feeds)
    n = np.full(batch, steps, dtype=np.int64) if np.ndim(steps) == 0 else np.asarray(steps, dtype=np.int64)
    if n.shape != (batch,) or n.size and n.min() < 1:
        raise FeedError(f"steps: one count of at least 1 for each of the {batch} examples, got {steps!r}")
    lengths = {**(lengths or {}), axis: n}
    ids = np.zeros((int(n.max()), batch), dtype=np.int64)
    for t in range(ids.shape[0]):
        tape = model.run({**feeds, name: ids}, lengths, need_loss=False)
        ids[t] = tape.values[pred][t].argmax(-1)
    return {name: ids}


def _batch_size(model: Model, feeds: dict) -> int:
    for v in model.plan.inputs:
        if v.name in feeds:
            a = feeds[v.name]
            if isinstance(a, (list, tuple)):
                return len(a)
            a = np.asarray(a)
            return a.shape[1] if v.seq else a.shape[0]
    raise FeedError("no inputs to decode from")
