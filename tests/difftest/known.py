"""Known bugs: failure signatures the random tests expect, each with its minimal spec.

A failure of a generated spec is excused when a known bug's ``matches`` says the spec has the
construct and the failing oracle is one the bug breaks. Everything else fails the tests.

When a fix is merged, its entry's minimal spec starts to pass: ``tests/test_difftest.py`` runs
each minimal spec as a non-strict xfail, so the lead sees it XPASS and deletes the entry here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from nnspec.plan import LoopStep

from .oracles import Failure, Outcome

REDUCTIONS = {"sum", "mean", "max", "first", "last"}
LOSS_CALL = re.compile(r"^loss (mse|bce|bce_logits|perceptron|cross_entropy|cross_entropy_logits|nll)\(.*\)$")


@dataclass
class KnownBug:
    name: str
    description: str
    oracles: set[str]              # the oracles it breaks ("compile": the spec is rejected)
    spec: str                      # the minimal spec
    matches: Callable[[str, object, Failure | None], bool]   # (text, compiled plan or None, failure)
    seed: int = 0                  # a seed of the oracles' data on which the minimal spec fails
    probe: Callable[[], bool] | None = None   # a direct test that the bug is still there (True: it is)


def _weighted_or_several_losses(text, plan, failure) -> bool:
    losses = [line for line in text.splitlines() if line.startswith("loss ")]
    return len(losses) > 1 or any(not LOSS_CALL.match(line) for line in losses)


def _reduction_in_loop(text, plan, failure) -> bool:
    return plan is not None and any(isinstance(s, LoopStep) and any(b.op in REDUCTIONS for b in s.body)
                                    for s in plan.steps)


def _outer_read_of_state_with_initial(text, plan, failure) -> bool:
    if plan is None:
        return False
    for loop in (s for s in plan.steps if isinstance(s, LoopStep)):
        inside = {b.id for b in loop.body}
        for s in plan.steps:
            body = s.body if isinstance(s, LoopStep) else [s]
            for b in body:
                if b.id not in inside and any(src in loop.initials and d for src, d in b.inputs):
                    return True
    return False


def _state_in_scalar_arithmetic(text, plan, failure) -> bool:
    return plan is None and failure is not None and "but where it is used it must have size []" in failure.message


ACTIVATED_STATE = re.compile(r"\b[a-z_]+\(\w+(\.\w+)*\[t[-+]\d\]\)")


def _activation_of_state_fast_backward(text, plan, failure) -> bool:
    return failure is not None and "local_grad" in failure.message and bool(ACTIVATED_STATE.search(text))


def _initial_ignored() -> bool:
    """y = h[t-1] at the first step should be h's initial state [0.5, -1]."""
    import numpy as np

    from nnspec import compile_text
    from nnspec.runtime import Executor
    plan = compile_text(KNOWN[2].spec).plan
    params = {p.name: np.ones(p.shape) for p in plan.params}
    y = Executor(plan, dtype=np.float64).forward(params, {"x": np.ones((2, 1, 2))}).values["y"]
    return not np.allclose(y[0, 0], [0.5, -1])


KNOWN: list[KnownBug] = [
    KnownBug(
        "loss_not_one_number",
        "a weighted loss or several loss lines: the loss has shape (B, 1) and gradients are B times too large",
        {"batch", "torch"},
        "input x[3]\ntarget r[2]\nloss 0.5 * mse(W @ x + c, r)\n",
        _weighted_or_several_losses),
    KnownBug(
        "reduction_in_loop",
        "a reduction over time (sum, also mean, max, first) inside a recurrent loop reduces over the batch; "
        "the fast backward crashes on it",
        {"fast", "batch", "fd", "torch", "repeat", "optimize"},
        "input x[1] : seq\noutput h\nh[4] = W4 @ x + sum(W5 @ h[t-1])\n",
        _reduction_in_loop, seed=2),
    KnownBug(
        "outer_read_ignores_initial",
        "a state read at [t-1] from outside its loop reads zeros, not its initial state, before the first step",
        {"torch"},
        "input x[2] : seq\noutput y\nh[2] = tanh(W @ x + U @ h[t-1])\ninitial h = [0.5, -1]\ny[2] = h[t-1]\n",
        _outer_read_of_state_with_initial, probe=_initial_ignored),
    KnownBug(
        "state_in_scalar_arithmetic_rejected",
        "a state read at another step, in arithmetic with a number or a scalar (2 * h[t-1], h[t-1] / 2, "
        "h[t-1] - 3), is rejected: 'h has size [2], but where it is used it must have size []'",
        {"compile"},
        "input x[2] : seq\noutput h\nh[2] = tanh(2 * h[t-1] + W @ x)\n",
        _state_in_scalar_arithmetic),
    KnownBug(
        "activation_of_state_fast_backward",
        "an activation applied directly to a state read (x + relu(h[t-1])): the fast backward's "
        "local_grad crashes with a broadcast ValueError",
        {"fast", "repeat"},
        "input x[2] : seq\noutput h\nh[2] = tanh(x + relu(h[t-1]))\n",
        _activation_of_state_fast_backward),
]


def _fused_clipped_loss(text, plan, failure) -> bool:
    return "cross_entropy(softmax(" in text or "bce(sigmoid(" in text


KNOWN.append(KnownBug(
    "fused_loss_ignores_the_clip",
    "fuse_losses (optimize.py) turns cross_entropy(softmax(z), y) into cross_entropy_logits(z, y) and "
    "bce(sigmoid(z), y) into bce_logits(z, y); unoptimised, the probability is clipped to 1e-12 "
    "(loss at most 27.6, zero gradient beyond), fused it is not: when a logit gap passes ~27 the "
    "optimised plan gives another loss and other gradients than the unoptimised one",
    {"optimize"},
    "input x[2]\ntarget y : class[2]\nloss cross_entropy(softmax(40 * W @ x), y)\n",
    _fused_clipped_loss, seed=4))


def known_bug(outcome: Outcome, plan, failure: Failure | None) -> KnownBug | None:
    """The known bug that explains a failure (or a rejection, ``failure.oracle == 'compile'``)."""
    oracle = failure.oracle if failure is not None else "compile"
    for bug in KNOWN:
        if oracle in bug.oracles and bug.matches(outcome.text, plan, failure):
            return bug
    return None
