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


def lower_fused(lw, loop: LoopStep, match: Match) -> str:
    g, m = lw.g, match.mapping
    onnx_op, attrs, (w_gates, r_gates), biases, recurrent_biases = CELLS[match.cell]
    params = lw.model.params

    def stacked(names) -> np.ndarray:
        return np.concatenate([np.asarray(params[m[f"{CELL}.{n}"]], dtype=lw.dtype) for n in names])[None]

    W, R = stacked(w_gates), stacked(r_gates)
    hidden = R.shape[2]
    bias_w = stacked(biases)
    bias_r = np.zeros_like(bias_w)
    for i, name in enumerate(recurrent_biases):
        if name is not None:
            bias_r[0, i * hidden:(i + 1) * hidden] = params[m[f"{CELL}.{name}"]]
    base = m[CELL]
    inputs = [lw.tensor[m[INPUT]], g.initializer(f"{base}.{onnx_op}.W", W), g.initializer(f"{base}.{onnx_op}.R", R),
              g.initializer(f"{base}.{onnx_op}.B", np.concatenate([bias_w, bias_r], axis=1)),
              g.op("Cast", [lw.lengths(loop.axis)], "lengths_int32", to=6)]   # ONNX wants int32 lengths
    states = [m[CELL]] + ([m[f"{CELL}.c"]] if onnx_op == "LSTM" else [])
    for s in states:
        inputs.append(g.op("Unsqueeze", [lw.initial[s], g.ints(0)]) if s in lw.initial else "")
    while inputs[-1] == "":
        inputs.pop()
    direction = "forward" if loop.direction > 0 else "reverse"
    y = g.op(onnx_op, inputs, f"{base}.{onnx_op}", hidden_size=hidden, direction=direction, **attrs)
    h = g.op("Squeeze", [y, g.ints(1)], base)      # (T, directions = 1, B, H) -> (T, B, H)
    lw._define(base, h, 3, True, False)
    return f"{match.cell}, direction {direction}"
