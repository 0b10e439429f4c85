"""Loops that are exactly a library cell, as ONNX's fused RNN, LSTM and GRU.

A loop is recognised by its computation, not by a name: the library cell is compiled on its own
(a template) and its plan is matched, step for step, against the loop and the steps that feed it
(``W @ x`` is computed before the loop, outside its body). Same ops, same attributes, operands in
the same places and read at the same delays; the cell's input ``x`` may be any sequence of vectors
and its parameters any parameters of the right shapes. A loop that matches computes what the ONNX
op computes, so it becomes that op, its weights stacked in ONNX's gate order; anything else (a
peephole, another activation, a loop at ``t-2``, a gate read after the loop) becomes a Scan.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..compiler import compile_text
from ..plan import LoopStep, OpStep, Plan

# cell -> (ONNX op, its attributes, gate order of W and R as the cell's parameter suffixes, biases)
CELLS = {
    "rnn": ("RNN", {}, (("W",), ("U",)), ("b",), ()),
    "lstm": ("LSTM", {}, (("Wi", "Wo", "Wf", "Wg"), ("Ui", "Uo", "Uf", "Ug")), ("bi", "bo", "bf", "bg"), ()),
    "gru_reset_after": ("GRU", {"linear_before_reset": 1}, (("Wz", "Wr", "Wn"), ("Uz", "Ur", "Un")),
                        ("bz", "br", "bn"), (None, None, "bhn")),
    "gru_reset_before": ("GRU", {"linear_before_reset": 0}, (("Wz", "Wr", "Wn"), ("Uz", "Ur", "Un")),
                         ("bz", "br", "bn"), ()),
}
CELL = "h"        # the template's instance: its parameters are h.W, h.Uf, ...
INPUT = "x"


@dataclass
class Match:
    cell: str
    onnx_op: str
    mapping: dict[str, str]     # template value -> the loop's value (or parameter, or input)


@lru_cache(maxsize=None)
def template(cell: str) -> tuple[Plan, LoopStep]:
    plan = compile_text(f"network template\ninput {INPUT}[3] : seq\noutput {CELL}\n{CELL} = {cell}({INPUT}, H = 2)\n",
                        file=f"<template {cell}>", optimize=False).plan
    return plan, next(s for s in plan.steps if isinstance(s, LoopStep))


def match_cell(lw, loop: LoopStep) -> tuple[Match | None, str]:
    """The library cell ``loop`` computes exactly, if any, with why it cannot be fused otherwise."""
    producers = _producers(lw.plan)
    for cell, (onnx_op, *_rest) in CELLS.items():
        tpl_plan, tpl_loop = template(cell)
        if len(tpl_loop.body) != len(loop.body) or len(tpl_loop.states) != len(loop.states):
            continue
        for state in loop.states:
            mapping = _unify_all(tpl_plan, tpl_loop, lw.plan, loop, producers, CELL, state)
            if mapping is None:
                continue
            match = Match(cell, onnx_op, mapping)
            why = _not_fusable(lw, loop, match)
            if why:
                return None, f"computes {cell}, but {why}"
            return match, ""
    return None, ""


def _producers(plan: Plan) -> dict[str, tuple[OpStep, int | None]]:
    out = {}
    for s in plan.steps:
        for b in (s.body if isinstance(s, LoopStep) else [s]):
            out[b.id] = (b, s.index if isinstance(s, LoopStep) else None)
    return out


def _unify_all(tpl_plan: Plan, tpl_loop: LoopStep, plan: Plan, loop: LoopStep, producers, start_t: str,
               start_s: str) -> dict[str, str] | None:
    t_prod = _producers(tpl_plan)
    t_params = {p.name: p for p in tpl_plan.params}
    s_params = {p.name: p for p in plan.params}
    mapping: dict[str, str] = {}
    used: set[str] = set()

    def unify(tv: str, sv: str) -> bool:
        if tv in mapping:
            return mapping[tv] == sv
        if tv == INPUT:
            if sv in producers:   # a sequence of vectors computed before the loop
                step, index = producers[sv]
                fits = index != loop.index and step.seq and not step.integer and len(step.shape) == 1
            else:                 # or an input
                inp = next((v for v in plan.inputs if v.name == sv), None)
                fits = inp is not None and inp.seq and not inp.integer and len(inp.shape) == 1
            if not fits:
                return False
        elif tv in t_params:
            if sv not in s_params or len(s_params[sv].shape) != len(t_params[tv].shape):
                return False
            mapping[tv] = sv
            return True         # a parameter may serve several gates: its values are copied into each
        elif tv in tpl_plan.consts:
            if sv not in plan.consts or not np.array_equal(np.asarray(plan.consts[sv]), np.asarray(tpl_plan.consts[tv])):
                return False
        else:
            ts, t_loop = t_prod[tv]
            got = producers.get(sv)
            if got is None or sv in used:
                return False
            ss, s_loop = got
            if (ss.op != ts.op or ss.attrs != ts.attrs or len(ss.inputs) != len(ts.inputs)
                    or (t_loop is not None) != (s_loop == loop.index)):
                return False
            mapping[tv], _ = sv, used.add(sv)
            # a delay of the cell run forward is the opposite delay of the cell run backward (reverse)
            return all(td * tpl_loop.direction == sd * loop.direction and unify(ti, si) for (ti, td), (si, sd) in zip(ts.inputs, ss.inputs))
        mapping[tv] = sv
        used.add(sv)
        return True

    if not unify(start_t, start_s):
        return None
    body = {b.id for b in loop.body}
    if {mapping.get(b.id) for b in tpl_loop.body} != body:
        return None
    if {mapping.get(s) for s in tpl_loop.states} != set(loop.states):
        return None
    return mapping


def _not_fusable(lw, loop: LoopStep, match: Match) -> str:
    if lw.dtype != np.float32:
        return "onnxruntime's RNN, LSTM and GRU compute in float32 only"
    output = match.mapping[CELL]
    read = lw.read_after_loop(loop) - {output}
    if read:
        return f"{', '.join(sorted(read))} is read after the loop (the fused op gives the output {output} only)"
    return ""


def partner(lw, loop: LoopStep, match: Match, later: list[LoopStep]) -> tuple[LoopStep, Match] | None:
    """A loop of ``later`` that runs the same cell of the same size the other way in time on the same
    axis, so that both become one op with ``direction = bidirectional`` (``bidirectional(cell)`` is two
    such loops; their inputs differ when its argument is an expression with parameters, such as
    ``embed(w, 100)``, which nnspec makes once per direction)."""
    recurrent = f"{CELL}.{CELLS[match.cell][2][1][0]}"     # U (Ui, Uz): its shape is (H, H)
    for other in later:
        if other.direction == loop.direction or other.axis != loop.axis:
            continue
        found, _ = match_cell(lw, other)
        if found is None or found.cell != match.cell:
            continue
        if np.shape(lw.model.params[found.mapping[recurrent]]) == np.shape(lw.model.params[match.mapping[recurrent]]):
            return other, found
    return None


def ready(lw, loop: LoopStep, match: Match) -> bool:
    """Whether what ``loop`` reads from outside (its input, its initial states) is lowered already."""
    return match.mapping[INPUT] in lw.tensor and all(init in lw.tensor for init in loop.initials.values())


def lower_fused(lw, runs: list[tuple[LoopStep, Match]]) -> str:
    """One fused op for one loop, or for a loop forward and one backward in time (``bidirectional``):
    W, R, B, initial_h (initial_c) stacked on ONNX's axis of directions, forward first."""
    g = lw.g
    runs = sorted(runs, key=lambda run: -run[0].direction)    # forward, then reverse
    cell = runs[0][1].cell
    onnx_op, attrs, (w_gates, r_gates), biases, recurrent_biases = CELLS[cell]
    params = lw.model.params

    def stacked(m, names) -> np.ndarray:
        return np.concatenate([np.asarray(params[m[f"{CELL}.{n}"]], dtype=lw.dtype) for n in names])

    Ws, Rs, Bs = [], [], []
    for _, match in runs:
        m = match.mapping
        Ws.append(stacked(m, w_gates))
        Rs.append(stacked(m, r_gates))
        bias_w = stacked(m, biases)
        bias_r = np.zeros_like(bias_w)
        hidden = Rs[-1].shape[1]
        for i, name in enumerate(recurrent_biases):
            if name is not None:
                bias_r[i * hidden:(i + 1) * hidden] = params[m[f"{CELL}.{name}"]]
        Bs.append(np.concatenate([bias_w, bias_r]))
    bases = [match.mapping[CELL] for _, match in runs]
    base = _common_name(bases)
    loop0 = runs[0][0]
    xs = list(dict.fromkeys(lw.tensor[match.mapping[INPUT]] for _, match in runs))
    if len(xs) == 2:
        # the directions read different inputs, ONNX's op one X: X is both, side by side on the features,
        # and each direction's W is zero on the other's (exact: the zeros add exact zeros)
        widths = [w.shape[1] for w in Ws]
        Ws = [np.pad(Ws[0], ((0, 0), (0, widths[1]))), np.pad(Ws[1], ((0, 0), (widths[0], 0)))]
        x = g.op("Concat", xs, f"{base}.x", axis=2)
    else:
        x = xs[0]
    inputs = [x, g.initializer(f"{base}.{onnx_op}.W", np.stack(Ws)),
              g.initializer(f"{base}.{onnx_op}.R", np.stack(Rs)), g.initializer(f"{base}.{onnx_op}.B", np.stack(Bs)),
              g.op("Cast", [lw.lengths(loop0.axis)], "lengths_int32", to=6)]   # ONNX wants int32 lengths
    for state in [CELL] + ([f"{CELL}.c"] if onnx_op == "LSTM" else []):
        per_run = [(loop, match.mapping[state]) for loop, match in runs]
        if not any(s in lw.initial for _, s in per_run):
            inputs.append("")
            continue
        # a direction without an initial state starts from zeros, as nnspec's does
        initial = [lw.initial[s] if s in lw.initial
                   else g.op("Expand", [g.const(0), lw.batch_shape(next(b for b in loop.body if b.id == s))])
                   for loop, s in per_run]
        stacked_initial = [g.op("Unsqueeze", [i, g.ints(0)]) for i in initial]
        inputs.append(stacked_initial[0] if len(runs) == 1 else g.op("Concat", stacked_initial, axis=0))
    while inputs[-1] == "":
        inputs.pop()
    direction = ("bidirectional" if len(runs) == 2 else "forward" if loop0.direction > 0 else "reverse")
    y = g.op(onnx_op, inputs, f"{base}.{onnx_op}", hidden_size=hidden, direction=direction, **attrs)
    for d, ((loop, _), out) in enumerate(zip(runs, bases)):   # (T, directions, B, H) -> (T, B, H) each
        lw._define(out, g.op("Gather", [y, g.const(d, np.int64)], out, axis=1), 3, True, False)
    return f"{cell}, direction {direction}"


def _common_name(names: list[str]) -> str:
    """h for h.fwd and h.bwd (the name of what ``bidirectional`` made); the name itself for one."""
    if len(names) == 1:
        return names[0]
    parts = [n.split(".") for n in names]
    common = []
    for same in zip(*parts):
        if len(set(same)) > 1:
            break
        common.append(same[0])
    return ".".join(common) or names[0]
