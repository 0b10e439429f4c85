"""Known bugs: failure signatures the random tests expect, each with its minimal spec.

A failure of a generated spec is excused when a known bug's ``matches`` says the spec has the
construct and the failing oracle is one the bug breaks. Everything else fails the tests.

When a fix is merged, its entry's minimal spec starts to pass: ``tests/test_difftest.py`` runs
each minimal spec as a non-strict xfail, so the lead sees it XPASS and deletes the entry here.

(Fixed by the merge of ``semantics``, and removed from here: a weighted loss or several loss lines
gave a loss of shape (B, 1); a reduction over time inside a loop crossed the batch (now refused
with a located error); a state read at [t-1] outside its loop ignored ``initial``; ``2 * h[t-1]``
was refused; ``x + relu(h[t-1])`` crashed the fast backward; delayed reads of computed sequences
crashed. Fixed by ``findings``: the optimiser's fusion of ``cross_entropy(softmax(z), y)`` into
``cross_entropy_logits(z, y)`` changed the loss where the probability was clipped; the fusion is
now the meaning of the loss, in the unoptimised plan too.)
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


KNOWN: list[KnownBug] = []


def known_bug(outcome: Outcome, plan, failure: Failure | None) -> KnownBug | None:
    """The known bug that explains a failure (or a rejection, ``failure.oracle == 'compile'``)."""
    oracle = failure.oracle if failure is not None else "compile"
    for bug in KNOWN:
        if oracle in bug.oracles and bug.matches(outcome.text, plan, failure):
            return bug
    return None
