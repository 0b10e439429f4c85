"""Plan-to-plan optimisation passes, applied by default after ``build_plan``.

Each pass takes a plan and returns an equivalent one (same outputs and
gradients up to floating-point reassociation); each can be switched off on its
own, so tests compare optimised with unoptimised plans. Each pass is a module of
this package, working on the plan as ``work.Work`` holds it (its steps, where
each value is made and who reads it); this module runs them in order and
verifies the plan after each. Nothing here knows
about LSTMs or GRUs: the passes look for general patterns, and a cell written
gate by gate gets the same plan as the library's.

``fuse_losses``
    ``cross_entropy(softmax(z), y)`` -> ``cross_entropy_logits(z, y)``,
    ``bce(sigmoid(z), y)`` -> ``bce_logits(z, y)`` and
    ``nll(log_softmax(z), y)`` -> ``cross_entropy_logits(z, y)``: stable and
    cheaper. The softmax stays only while something else (an output) reads it.
``hoist_sums``
    In a loop body, a sum whose addends are partly loop-invariant is
    reassociated so that the invariant addends are added once, over all time
    steps, before the loop: ``W@x + U@h[t-1] + b`` becomes ``(W@x + b)``
    outside plus one add inside.
``fuse_matmuls``
    Products with parameter weights that share their right operand (same
    value, same delay) become one product with the weights concatenated by
    ``concat_rows`` (once per pass, outside any loop), followed by ``slice``
    views: the four input projections of an LSTM are one ``(T*B, E) x (E, 4H)``
    product, and its four recurrent products one per step. Gates are ordered so
    that gates with the same activation sit side by side, and so that the
    recurrent slices line up with the input-projection slices they are added to.
``sink_slices``
    An elementwise op applied to adjacent slices of one value (and, for binary
    ops, to matching slices of another value or to parameter vectors) becomes
    one op over the union: four bias adds become one add of the concatenated
    biases, ``sigmoid`` over the three sigmoid gates runs once per step.
``fuse_linear``
    ``W @ x + b`` with a parameter bias becomes one ``linear`` step: the bias is
    added in place into the product, no second array.
``simplify``
    Slices of slices compose, whole-width slices disappear, and values nothing
    reads are removed.
"""
from __future__ import annotations

import os

from ..gcpause import gc_paused
from ..plan import LoopStep, OpStep, Plan, verify_plan
from ..syntax.construct import construct
from .gates import fuse_matmuls
from .linear import fuse_linear
from .losses import fuse_losses
from .slices import simplify, sink_slices
from .sums import hoist_sums
from .work import Work

PASSES = ("fuse_losses", "hoist_sums", "fuse_matmuls", "sink_slices", "fuse_linear", "simplify")


def optimize_plan(plan: Plan, passes: tuple[str, ...] | list[str] | None = None) -> Plan:
    """The optimised copy of ``plan``; ``passes`` chooses which passes run (default: all).

    ``NNSPEC_PASSES`` in the environment (comma-separated; empty for none) overrides
    the default, for experiments.
    """
    if passes is None:
        env = os.environ.get("NNSPEC_PASSES")
        passes = PASSES if env is None else tuple(p for p in env.split(",") if p)
    unknown = set(passes) - set(PASSES)
    if unknown:
        raise ValueError(f"unknown optimisation pass(es) {sorted(unknown)}; known: {', '.join(PASSES)}")
    with gc_paused():   # many small objects, none cyclic: the collector would only rescan them
        return _optimize(plan, passes)


def _copy_step(s):
    """A copy of a step that passes may edit (validation-free: the fields are already valid)."""
    if type(s) is LoopStep:
        return construct(LoopStep, {"kind": "loop", "index": s.index, "direction": s.direction,
                                    "body": [_copy_step(b) for b in s.body], "states": list(s.states),
                                    "initials": dict(s.initials), "axis": s.axis})
    return construct(OpStep, {"kind": "op", "id": s.id, "op": s.op, "inputs": list(s.inputs), "attrs": dict(s.attrs),
                              "seq": s.seq, "integer": s.integer, "shape": list(s.shape), "axes": list(s.axes),
                              "span": s.span})


def _optimize(plan: Plan, passes) -> Plan:
    # (a copy as ``model_copy`` makes, sharing the fields set of a model given every field: the plan a model keeps)
    plan = construct(Plan, {**plan.__dict__, "steps": [_copy_step(s) for s in plan.steps]})
    w = Work(plan)

    def run(name: str, apply) -> None:
        apply()
        # each pass hands on a plan the runtime can run: a pass that breaks one is named at once
        # (the shape rules, most of the checking's cost, run once on the last pass's plan below)
        verify_plan(plan.model_copy(update={"steps": w.steps}), stage=f"the optimisation pass {name}",
                    shapes=False)

    if "fuse_losses" in passes:
        run("fuse_losses", lambda: fuse_losses(w))
    if "hoist_sums" in passes:
        run("hoist_sums", lambda: hoist_sums(w))
    if "fuse_matmuls" in passes:
        run("fuse_matmuls (outside loops)", lambda: fuse_matmuls(w, outside=True, inside=False))
    if "sink_slices" in passes:
        run("sink_slices", lambda: sink_slices(w))
    if "fuse_matmuls" in passes:
        run("fuse_matmuls (inside loops)", lambda: fuse_matmuls(w, outside=False, inside=True))
    if "sink_slices" in passes:
        run("sink_slices (second round)", lambda: sink_slices(w))
    if "fuse_linear" in passes:
        run("fuse_linear", lambda: fuse_linear(w))
    if "simplify" in passes or passes:
        run("simplify", lambda: simplify(w, drop_whole=("simplify" in passes)))
    plan.steps = w.steps
    plan.passes = [p for p in PASSES if p in passes]
    verify_plan(plan, stage=f"the optimisation passes {', '.join(plan.passes) or '(none)'}")
    return plan
