"""Known bugs: failure signatures the random tests expect, each with its minimal spec.

A failure of a generated spec is excused when a known bug's ``matches`` says the spec has the
construct and the failing oracle is one the bug breaks. Everything else fails the tests.

When a fix is merged, its entry's minimal spec starts to pass: ``tests/test_difftest.py`` runs
each minimal spec as a non-strict xfail, so the lead sees it XPASS and deletes the entry here.

(Fixed by the merge of ``semantics``, and removed from here: a weighted loss or several loss lines
gave a loss of shape (B, 1); a reduction over time inside a loop crossed the batch (now refused
with a located error); a state read at [t-1] outside its loop ignored ``initial``; ``2 * h[t-1]``
was refused; ``x + relu(h[t-1])`` crashed the fast backward; delayed reads of computed sequences
crashed.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .oracles import Failure, Outcome


@dataclass
class KnownBug:
    name: str
    description: str
    oracles: set[str]              # the oracles it breaks ("compile": the spec is rejected)
    spec: str                      # the minimal spec
    matches: Callable[[str, object, Failure | None], bool]   # (text, compiled plan or None, failure)
    seed: int = 0                  # a seed of the oracles' data on which the minimal spec fails
    probe: Callable[[], bool] | None = None   # a direct test that the bug is still there (True: it is)


def _fused_clipped_loss(text, plan, failure) -> bool:
    return "cross_entropy(softmax(" in text or "bce(sigmoid(" in text


KNOWN: list[KnownBug] = [
    KnownBug(
        "fused_loss_ignores_the_clip",
        "fuse_losses (optimize.py) turns cross_entropy(softmax(z), y) into cross_entropy_logits(z, y) and "
        "bce(sigmoid(z), y) into bce_logits(z, y); unoptimised, the probability is clipped to 1e-12 "
        "(loss at most 27.6, zero gradient beyond), fused it is not: when a logit gap passes ~27 the "
        "optimised plan gives another loss and other gradients than the unoptimised one",
        {"optimize"},
        "input x[2]\ntarget y : class[2]\nloss cross_entropy(softmax(40 * W @ x), y)\n",
        _fused_clipped_loss, seed=4),
]


def known_bug(outcome: Outcome, plan, failure: Failure | None) -> KnownBug | None:
    """The known bug that explains a failure (or a rejection, ``failure.oracle == 'compile'``)."""
    oracle = failure.oracle if failure is not None else "compile"
    for bug in KNOWN:
        if oracle in bug.oracles and bug.matches(outcome.text, plan, failure):
            return bug
    return None
