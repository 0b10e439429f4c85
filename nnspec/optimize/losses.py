"""``fuse_losses``: ``cross_entropy(softmax(z), y)`` -> ``cross_entropy_logits(z, y)``, ``bce(sigmoid(z), y)``
-> ``bce_logits(z, y)`` and ``nll(log_softmax(z), y)`` -> ``cross_entropy_logits(z, y)``, as the ops' ``logits_form``
says: stable and cheaper. The activation stays only while something else (an output) reads it."""
from __future__ import annotations

from ..ops import REGISTRY
from ..plan import LoopStep
from .work import Work, drop_dead


def fuse_losses(w: Work) -> None:
    for s in list(w.steps):
        if isinstance(s, LoopStep) or not s.inputs:
            continue
        src, d = s.inputs[0]
        prod = w.where.get(src)
        if d != 0 or prod is None:
            continue
        form = REGISTRY[s.op].logits_form   # (activation, the loss of its input)
        if form is None or form[0] != prod.step.op or prod.step.inputs[0][1] != 0:
            continue
        old = s.inputs
        s.op = form[1]
        s.inputs = [prod.step.inputs[0]] + list(s.inputs[1:])
        w.rewired(s, old)
    drop_dead(w)
