"""A model's plan as an ONNX model.

The plan (nnspec.plan) is the contract: its inputs, parameters and steps in order. Each ``OpStep``
becomes a few ONNX nodes (nnspec.onnx.ops), each ``LoopStep`` either one of ONNX's fused recurrent
ops, when the loop is exactly a library cell (nnspec.onnx.cells), or a ``Scan`` whose body is the
loop body, its states carried from step to step. The plan lowered is the one compiled without
optimisation passes, where every library cell still reads as its equations.

The exported model's layout (docs/onnx.md): inputs and outputs have the spec's names; a sequence is
time-major ``(T, B, ...)`` with ``lengths`` (int64, ``(B,)``, 1..T) giving each example's real steps;
ids are int64; a real scalar per example is ``(B, 1)``. Both ``T`` and ``B`` are free. At the padded
steps of a sequence output the model gives 0 (-1 for ids); every real step equals nnspec's.

A network on several sequence axes (nnspec/axes.py) has per axis a dimension ``T_<axis>`` and an input
``lengths_<axis>``; a value on axes ``(a1, ..., ak)`` is ``(T_a1, ..., T_ak, B, ...)`` as in nnspec's
runtime, so ONNX's broadcasting combines values on lined-up axes as nnspec does, ops over steps work
on their operand's innermost axis with that axis's lengths, and a loop runs over its own axis.

A nested sequence (``input c : seq of seq(char) of char``, each word's characters) is laid out as in
nnspec's runtime (nnspec/runtime/axes.py): the words of the batch are the rows of its inner axis,
``c`` is ``(T_char, N_char)`` with word t of example b in row ``t * B + b``, and ``lengths_char`` (N_char,)
holds each word's number of characters (0 for a padding word). Values on the characters are arrays on
the inner axis alone, so its loops are fused ops or Scans over the rows of every word at once, and a
reduction over the characters (``last``, ``first``, ...) gives one row per word, reshaped to ``(T, B, ...)``
on the outer axis (0 for a padding word).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..compiler import compile_program
from ..errors import Diagnostics, SpecError, Span
from ..graph import where
from ..ops import REGISTRY
from ..plan import LoopStep, OpStep, Plan, plan_axes, plan_axis_names
from ..runtime.axes import runtime_axes
from .build import (FLOAT_TYPES, OPSET, GraphBuilder, Names, array_shape as _array_shape, lengths_name,
                    steps_name)
from .cells import lower_fused, match_cell, partner, ready
from .ops import LOWERINGS, Site
from .scan import lower_scan


@dataclass
class LoopExport:
    """What a loop of the plan became."""
    index: int
    states: list[str]
    direction: int
    onnx_op: str          # "LSTM", "GRU", "RNN" or "Scan"
    detail: str = ""      # e.g. "lstm, direction reverse" or why a library cell became a Scan
    span: Span | None = None
    # the loop run the other way in time that became the same op (direction = bidirectional), if any
    partner: "LoopExport | None" = None

    @property
    def kind(self) -> str:
        """The op, and whether it runs both ways: "LSTM (bidirectional)"."""
        return self.onnx_op + (" (bidirectional)" if self.partner is not None else "")

    def line(self) -> str:
        where = f" ({self.span.file}:{self.span.line})" if self.span is not None else ""
        runs = [self] + ([self.partner] if self.partner is not None else [])
        indices = " and ".join(str(l.index) for l in runs)
        states = " and ".join(f"{', '.join(l.states)} ({'forward' if l.direction > 0 else 'backward'} in time)"
                              for l in runs)
        return (f"loop{'s' if len(runs) > 1 else ''} {indices} over {states}{where}: {self.kind}"
                + (f" — {self.detail}" if self.detail else ""))


@dataclass
class Exported:
    model: onnx.ModelProto
    loops: list[LoopExport] = field(default_factory=list)
    # outputs of a spec that declares none: name -> (activation, the loss's prediction it applies to)
    derived: dict[str, tuple[str, str]] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        onnx.save_model(self.model, str(path))
        return path

    def inventory(self) -> str:
        """Each loop with the ONNX op it became, one line a loop."""
        return "\n".join(l.line() for l in self.loops) or "no loops"


def _nnspec_version() -> str:
    from importlib.metadata import PackageNotFoundError, version   # not the package nnspec: a higher layer
    try:
        return version("nnspec")
    except PackageNotFoundError:
        return "unknown"


def plain_plan(model) -> Plan:
    """The model's plan as compiled without optimisation passes (every library cell as its equations)."""
    compiled = model.compiled
    if not compiled.plan.passes:
        return compiled.plan
    again = compile_program(compiled.program, Diagnostics(compiled.diags.sources), bindings=compiled.bindings,
                            optimize=False)
    return again.plan


def export_model(model, *, fused: bool = True, doc: str = "") -> Exported:
    """An :class:`Exported` ONNX model of ``model`` (an nnspec ``Model``) with its parameters.
    ``fused=False`` writes every loop as a Scan. Raises SpecError for a construct with no ONNX form."""
    plan = plain_plan(model)
    diags = Diagnostics(model.compiled.diags.sources)
    unsized = [p.name for p in plan.params if not all(isinstance(d, int) for d in p.shape)]
    if unsized:
        diags.error(f"the sizes of {', '.join(unsized)} are decided by the data; export a model whose data "
                    f"was read (or give vocabs=) so that every parameter has a size")
        raise SpecError(diags)
    if not plan.outputs:
        plan = _with_predictions(plan, model.compiled.graph, diags)
    lowerer = _Lowerer(plan, model, diags, fused)
    graph = lowerer.run()
    diags.raise_if_errors()
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="nnspec", doc_string=doc or f"nnspec network {plan.name}")
    helper.set_model_props(onnx_model, {
        "nnspec.version": _nnspec_version(), "nnspec.network": plan.name, "nnspec.dtype": str(model.dtype),
        "nnspec.lengths": ",".join(lowerer.lengths_inputs.values()),
        "nnspec.loops": json.dumps([{"index": l.index, "states": l.states, "op": l.onnx_op, "detail": l.detail}
                                    | ({"with": {"index": l.partner.index, "states": l.partner.states}}
                                       if l.partner is not None else {}) for l in lowerer.loops])})
    derived = {s.id: (s.op, s.inputs[0][0]) for s in plan.steps if isinstance(s, OpStep) and s.id in plan.outputs
               and s.id not in {b.id for b in plain_plan(model).steps if isinstance(b, OpStep)}}
    return Exported(onnx_model, lowerer.loops, derived)


class _Lowerer:
    def __init__(self, plan: Plan, model, diags: Diagnostics, fused: bool) -> None:
        self.plan, self.model, self.diags, self.fused = plan, model, diags, fused
        self.dtype = np.dtype(model.dtype)
        self.float_type = FLOAT_TYPES[self.dtype]
        self.names = Names()
        self.g = GraphBuilder(self.names, self.dtype)
        self.tensor: dict[str, str] = {}     # plan value -> tensor name
        self.rank: dict[str, int] = {}       # plan value -> array rank (leading axes included)
        self.seq: set[str] = set()           # plan values with a sequence axis
        # a nested sequence's inner axis -> its outer one; values on it are arrays on the inner axis alone
        self.nested: dict[str, str] = {v.axes[-1]: v.axes[-2] for v in plan.inputs if v.nested}
        self.plan_axes: dict[str, tuple] = plan_axes(plan)   # plan value -> its sequence axes, outermost first
        self.axes: dict[str, tuple] = {v: runtime_axes(a, frozenset(self.nested))      # ... in its array
                                       for v, a in self.plan_axes.items()}
        names = sorted(plan_axis_names(plan))
        several = len(names) > 1
        # each axis: its lengths input and its dimension of steps (T, or T_<axis> on several axes)
        self.lengths_inputs: dict[str, str] = {a: lengths_name(a, several) for a in names}
        self.steps_dims: dict[str, str] = {a: steps_name(a, several) for a in names}
        self.integer: set[str] = set()
        self.static: set[str] = set()        # parameters, constants and values of them alone
        self.initial: dict[str, str] = {}    # loop state -> tensor (B, ...) of its initial state
        self.loops: list[LoopExport] = []
        self._real: dict[tuple[str, int], str] = {}          # (axis, rank) -> real steps, made once
        self._valid: dict[tuple[str, int, int], str] = {}   # (axis, delay, rank) -> valid reads, made once
        self._T: dict[str, str] = {}                         # axis -> its number of steps
        self._B: str | None = None
        self.first_seq: dict[str, str] = {}                  # axis -> an input on it (its T)

    # ---- the graph ------------------------------------------------------------------------------
    def run(self) -> onnx.GraphProto:
        plan, g = self.plan, self.g
        needed = _needed(plan)
        self._read_after = _reads_after_loops(plan)
        outputs = list(plan.outputs)
        for name in outputs + [v.name for v in plan.inputs] + [p.name for p in plan.params] + list(plan.consts):
            self.names.claim(name)
        inputs = []
        for v in plan.inputs:
            if v.name not in needed:
                continue
            trailing = _array_shape(v.shape, v.integer)
            axes = self.axes[v.name]
            shape = [self.steps_dims[a] for a in axes] + [self.batch_dim(axes)] + list(trailing)
            kind = TensorProto.INT64 if v.integer else self.float_type
            inputs.append(helper.make_tensor_value_info(v.name, kind, shape))
            self._define(v.name, v.name, len(shape), bool(axes), v.integer)
            if axes:
                self.first_seq.setdefault(axes[-1], v.name)
        # the lengths of each axis an input brings (an axis no needed input is on is not the model's)
        # (and the outer axis of a nested one: its words are the rows of the inner axis's batch)
        kept = set(self.first_seq) | {self.nested[a] for a in self.first_seq if a in self.nested}
        self.lengths_inputs = {a: n for a, n in self.lengths_inputs.items() if a in kept}
        for name in self.lengths_inputs.values():
            if self.names.claim(name) != name:
                self.diags.error(f"an input is named '{name}', the name the exported model gives the lengths of "
                                 f"its sequences; rename it", None)
                return helper.make_graph([], plan.name, [], [])
            axis = next(a for a, n in self.lengths_inputs.items() if n == name)
            inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, [self.batch_dim((axis,))]))
        for p in plan.params:
            if p.name in needed:
                value = np.asarray(self.model.params[p.name], dtype=self.dtype)
                g.params[p.name] = value
                g.initializers.append(onnx.numpy_helper.from_array(value, p.name))
                self._define(p.name, p.name, value.ndim, False, False, static=True)
        for c, value in plan.consts.items():
            if c in needed:
                array = np.asarray(value, dtype=self.dtype)
                g.initializers.append(onnx.numpy_helper.from_array(array, c))
                self._define(c, c, array.ndim, False, False, static=True)
        needed_loops = [s for s in plan.steps if isinstance(s, LoopStep) and any(b.id in needed for b in s.body)]
        self._lowered_with: set[int] = set()    # loops lowered with an earlier one (bidirectional)
        self._deferred: dict[int, tuple] = {}   # a loop -> the earlier one waiting to be lowered with it
        for step in plan.steps:
            if isinstance(step, LoopStep):
                if step.index in {s.index for s in needed_loops} and step.index not in self._lowered_with:
                    self._loop(step, [s for s in needed_loops if s.index > step.index
                                      and s.index not in self._lowered_with and s.index not in self._deferred])
            elif step.id in needed:
                self._op_step(step)
        graph_outputs = []
        for o in outputs:
            src = self.tensor[o]
            axes = self.axes.get(o, ())
            if o in self.seq:   # padding steps give 0 (ids: -1), whatever the computation left there
                fill = g.const(-1, np.int64) if o in self.integer else g.const(0)
                g.nodes.append(helper.make_node("Where", [self.real_all(axes, self.rank[o]), src, fill], [o],
                                                name=f"Where:{o}"))
            else:
                g.nodes.append(helper.make_node("Identity", [src], [o], name=f"Identity:{o}"))
            kind = TensorProto.INT64 if o in self.integer else self.float_type
            lead = ([self.steps_dims[a] for a in axes] + [self.batch_dim(axes)] if o in self.seq
                    else ([] if o in self.static else ["B"]))
            step_shape = _array_shape(_shape_of(plan, o), o in self.integer) if o not in self.static else None
            graph_outputs.append(helper.make_tensor_value_info(o, kind, lead + list(step_shape)
                                                               if step_shape is not None else None))
        nodes, initializers = _prune(g.nodes, g.initializers, [o.name for o in graph_outputs])
        return helper.make_graph(nodes, plan.name, inputs, graph_outputs, initializers)

    def batch_dim(self, axes: tuple) -> str:
        """The dimension of examples of a value on ``axes``: B, or the words of the batch (N_<inner>)
        for one on a nested sequence's inner axis."""
        return f"N_{axes[-1]}" if axes and axes[-1] in self.nested else "B"

    def _define(self, value: str, tensor: str, rank: int, seq: bool, integer: bool, static: bool = False) -> None:
        self.tensor[value], self.rank[value] = tensor, rank
        if seq:
            self.seq.add(value)
        if integer:
            self.integer.add(value)
        if static:
            self.static.add(value)

    # ---- lengths, real steps, delayed reads -------------------------------------------------------
    def lengths(self, axis: str) -> str:
        """The lengths input of ``axis``."""
        return self.lengths_inputs[axis]

    def steps_count(self, axis: str) -> str:
        """The number of steps of ``axis`` as a tensor of one int64."""
        if axis not in self._T:
            g = self.g
            if axis in self.first_seq:
                self._T[axis] = g.op("Slice", [g.op("Shape", [self.first_seq[axis]]), g.ints(0), g.ints(1)],
                                     self.steps_dims[axis])
            else:     # the outer axis of a nested sequence that no input is on: its rows over B
                inner = next(a for a, outer in self.nested.items() if outer == axis)
                self._T[axis] = g.op("Div", [self.batch_of_axis(inner), self.batch_of_axis(None)],
                                     self.steps_dims[axis])
        return self._T[axis]

    def real(self, axis: str, rank: int) -> str:
        """(T, B, 1...) bool of the real steps of ``axis`` (t < its lengths[b]), of the given rank; a
        value on axes (a1, ..., ak) broadcasts it right-aligned, so axis ak is the one it masks at
        rank - k + 1."""
        g = self.g
        if (axis, 2) not in self._real:
            t = g.op("Range", [g.const(0, np.int64), g.op("Squeeze", [self.steps_count(axis), g.ints(0)]),
                               g.const(1, np.int64)], "t")
            self._real[(axis, 2)] = g.op("Less", [g.op("Unsqueeze", [t, g.ints(1)]),
                                                  g.op("Unsqueeze", [self.lengths(axis), g.ints(0)])], "real_steps")
        if (axis, rank) not in self._real:
            self._real[(axis, rank)] = g.op("Unsqueeze", [self._real[(axis, 2)], g.ints(*range(2, rank))],
                                            "real_steps")
        return self._real[(axis, rank)]

    def real_all(self, axes: tuple, rank: int) -> str:
        """The real positions of a value on ``axes`` (each axis's real steps, all of them), at ``rank``."""
        g, k, masks = self.g, len(axes), []
        for i, a in enumerate(axes):     # axis i: (T_i, 1 for each axis inside it, B, 1...)
            m = self.real(a, 2)
            if k - 1 - i:
                m = g.op("Unsqueeze", [m, g.ints(*range(1, k - i))])
            if rank - i > k - i + 1:
                m = g.op("Unsqueeze", [m, g.ints(*range(k - i + 1, rank - i))])
            masks.append(m)
        out = masks[0]
        for m in masks[1:]:
            out = self.g.op("And", [out, m])
        return out

    def valid_read(self, axis: str, d: int, rank: int) -> str:
        """(T, B, 1...) bool: step t + d of ``axis`` is a real step of example b."""
        g = self.g
        key, cache = (axis, d, rank), self._valid
        if key not in cache:
            T = g.op("Squeeze", [self.steps_count(axis), g.ints(0)])
            t = g.op("Range", [g.const(d, np.int64), g.op("Add", [T, g.const(d, np.int64)]), g.const(1, np.int64)])
            inside = g.op("GreaterOrEqual", [t, g.const(0, np.int64)])
            valid = g.op("And", [g.op("Unsqueeze", [inside, g.ints(1)]),
                                 g.op("Less", [g.op("Unsqueeze", [t, g.ints(1)]),
                                               g.op("Unsqueeze", [self.lengths(axis), g.ints(0)])])])
            cache[key] = valid if rank == 2 else g.op("Unsqueeze", [valid, g.ints(*range(2, rank))], f"valid_t{d:+d}")
        return cache[key]

    def delayed(self, value: str, d: int, fill: str | None = None, span=None) -> str:
        """``out[t] = value[t + d]`` where t + d is a real step of that example, else ``fill`` (a loop
        state's initial state, zeros, or -1 for ids), as nnspec's delayed reads of a whole sequence."""
        g, x, rank = self.g, self.tensor[value], self.rank[value]
        axes = self.axes.get(value, ())
        if len(axes) != 1:
            self.diags.error(f"a read of {value} at another step: it is on the axes {', '.join(axes) or 'none'}, "
                             f"and nnspec.onnx shifts values on one sequence axis only", span)
            raise SpecError(self.diags)
        axis = axes[0]
        if fill is None:
            fill = self.initial.get(value) or (g.const(-1, np.int64) if value in self.integer else g.const(0))
        pad = [0] * (2 * rank)
        pad[0 if d < 0 else rank] = abs(d)                      # before (d < 0) or after the steps
        zero = g.const(0, np.int64) if value in self.integer else g.const(0)
        padded = g.op("Pad", [x, g.ints(*pad), zero])
        start = g.ints(0) if d < 0 else g.ints(d)
        shifted = g.op("Slice", [padded, start, g.op("Add", [start, self.steps_count(axis)]), g.ints(0)])
        return g.op("Where", [self.valid_read(axis, d, rank), shifted, fill], f"{value}[t{d:+d}]")

    # ---- steps ----------------------------------------------------------------------------------------
    def _operands(self, step: OpStep) -> list[str]:
        return [self.tensor[src] if d == 0 else self.delayed(src, d, span=step.span) for src, d in step.inputs]

    def _op_step(self, step: OpStep) -> None:
        op = REGISTRY[step.op]
        if step.op == "shift":   # out[t] = x[t + k] at real steps, else padding: a delayed read
            src = step.inputs[0][0]
            fill = self.g.const(-1, np.int64) if src in self.integer else self.g.const(0)
            k = int(op.attr(step.attrs, "k")) + step.inputs[0][1]
            out = self.delayed(src, k, fill, span=step.span) if k else self.tensor[src]
            self._define(step.id, self.g.op("Identity", [out], step.id), self.rank[src], True, src in self.integer)
            return
        xs = self._operands(step)
        static = bool(step.inputs) and all(src in self.static for src, _ in step.inputs)
        axes = () if static else self.axes.get(step.id, ())
        integer = bool(step.integer)
        rank = len(step.shape) if static else len(axes) + 1 + len(_array_shape(step.shape, integer))
        operand_axes = [self.axes.get(src, ()) for src, _ in step.inputs]
        ranks = [self.rank[src] for src, _ in step.inputs]
        inner = self._nested_operand(step, operand_axes)
        if inner is not None and not axes[-1:] == (inner,):    # a reduction over each word's characters
            out = self._unnest(step, self.lower(self.g, step, xs, ranks, rank - len(axes), operand_axes), inner, rank)
        else:
            out = self.lower(self.g, step, xs, ranks, rank, operand_axes)
        seq = bool(axes)
        self._define(step.id, out, rank, seq, integer, static)

    def _nested_operand(self, step: OpStep, operand_axes: list[tuple]) -> str | None:
        """The nested inner axis ``step`` reads values on, if any. The language lines up nothing else with
        them but parameters (nnspec's runtime, which folds the words into rows, would not either): any
        other operand is a located error."""
        inner = next((a[-1] for a in operand_axes if a and a[-1] in self.nested), None)
        if inner is None:
            return None
        for (src, _), a in zip(step.inputs, operand_axes):
            if a[-1:] != (inner,) and src not in self.static:
                where = ", ".join(self.plan_axes.get(src, ()))
                self.diags.error(f"'{step.op}' combines a value on each word's characters with one "
                                 f"{'on ' + where if where else 'of each example'}: nnspec.onnx lines up a nested "
                                 f"sequence's characters with parameters only (reduce them to one vector per "
                                 f"word first: last(...), mean(...))", step.span)
                raise SpecError(self.diags)
        return inner

    def _unnest(self, step: OpStep, rows: str, inner: str, rank: int) -> str:
        """A reduction's result over a nested inner axis, one row per word ``(N, ...)``, as a value on the
        outer axis ``(T, B, ...)``; a padding word (no characters) gives 0, as in nnspec's runtime."""
        g = self.g
        empty = g.op("Equal", [self.lengths(inner), g.const(0, np.int64)])
        empty = g.op("Unsqueeze", [empty, g.ints(*range(1, rank - 1))]) if rank > 2 else empty
        zero = g.const(-1, np.int64) if step.integer else g.const(0)
        rows = g.op("Where", [empty, zero, rows])
        outer = self.nested[inner]
        shape = g.op("Concat", [self.steps_count(outer), self.batch_of_axis(outer),
                                g.op("Slice", [g.op("Shape", [rows]), g.ints(1), g.ints(2 ** 62)])], axis=0)
        return g.op("Reshape", [rows, shape], step.id)

    def lower(self, g: GraphBuilder, step: OpStep, xs: list[str], ranks: list[int], rank: int,
              axes: list[tuple]) -> str:
        """``step`` written into ``g``; ``axes``: each operand's sequence axes in its array there (in a
        Scan's body, a loop's own axis is not in its values' arrays)."""
        lowering = LOWERINGS.get(type(REGISTRY[step.op]))
        if lowering is None:
            raise_no_form(self.diags, step)
        return lowering(Site(g, step, ranks, rank, self.real, axes), xs)

    # ---- loops -------------------------------------------------------------------------------------------
    def _loop_span(self, loop: LoopStep) -> Span | None:
        span = next((b.span for b in loop.body if b.id in loop.states and b.span is not None), loop.body[0].span)
        graph = self.model.compiled.graph
        if loop.states[0] in graph.g:   # a library cell's loop: at the user's call of the cell
            span = where(graph, loop.states[0])[0] or span
        return span

    def _loop(self, loop: LoopStep, later: list[LoopStep]) -> None:
        """``loop`` as a fused op or a Scan; a loop of ``later`` that runs the same cell the other way
        over the same input joins it in one op with ``direction = bidirectional``."""
        span = self._loop_span(loop)
        for s, init in loop.initials.items():
            self.initial[s] = self._batch_of(init, loop, s)
        reason = ""
        if self.fused:
            match, reason = match_cell(self, loop)
            if match is not None:
                runs = [(loop, match)]
                if loop.index in self._deferred:    # the earlier loop of its pair waited for this one
                    runs.insert(0, self._deferred.pop(loop.index))
                other = partner(self, loop, match, later) if len(runs) == 1 else None
                if other is not None and ready(self, *other):
                    runs.append(other)
                    for s, init in other[0].initials.items():
                        self.initial[s] = self._batch_of(init, other[0], s)
                    self._lowered_with.add(other[0].index)
                elif other is not None and not self._read_before(loop, other[0]):
                    # its partner's input is computed after this loop (``bidirectional(cell)(embed(w, 9))``
                    # makes an embedding per direction): both are lowered at the partner, which nothing
                    # in between waits for
                    self._deferred[other[0].index] = (loop, match)
                    return
                detail = lower_fused(self, runs)
                exports = [LoopExport(l.index, list(l.states), l.direction, m.onnx_op, detail, self._loop_span(l))
                           for l, m in runs]
                if len(exports) == 2:
                    exports[0].partner = exports[1]
                self.loops.append(exports[0])
                return
        lower_scan(self, loop)
        self.loops.append(LoopExport(loop.index, list(loop.states), loop.direction, "Scan", reason, span))

    def _read_before(self, loop: LoopStep, later: LoopStep) -> bool:
        """Whether a step of the plan between ``loop`` and ``later`` reads a value of ``loop``."""
        steps = self.plan.steps
        between = steps[steps.index(loop) + 1:steps.index(later)]
        values = {b.id for b in loop.body}
        for s in between:
            for b in (s.body if isinstance(s, LoopStep) else [s]):
                if any(src in values for src, _ in b.inputs):
                    return True
            if isinstance(s, LoopStep) and values & set(s.initials.values()):
                return True
        return False

    def read_after_loop(self, loop: LoopStep) -> set[str]:
        """The values of ``loop`` that a later step, another loop or an output reads."""
        return self._read_after.get(loop.index, set())

    def _batch_of(self, init: str, loop: LoopStep, state: str) -> str:
        """An initial state as a (B, ...) tensor (a parameter is the same for every example)."""
        g = self.g
        body = next(b for b in loop.body if b.id == state)
        if self.rank[init] == 1 + len(_array_shape(body.shape, body.integer)):
            return self.tensor[init]
        return g.op("Expand", [self.tensor[init], self.batch_shape(body)], f"{state}.initial")

    def batch_shape(self, body: OpStep) -> str:
        """(B, *shape) of a loop value, as an int64 tensor (B: the words of the batch, N, for a loop over
        a nested sequence's characters)."""
        g = self.g
        axes = self.axes.get(body.id, ())
        return g.op("Concat", [self.batch_of_axis(axes[-1] if axes else None),
                               g.ints(*_array_shape(body.shape, body.integer))], axis=0)

    def batch_of_axis(self, axis: str | None) -> str:
        """The number of examples (rows of a nested inner axis) as a tensor of one int64."""
        g = self.g
        if axis is None or axis not in self.nested:
            if self._B is None:
                outer = [n for a, n in self.lengths_inputs.items() if a not in self.nested]
                self._B = g.op("Shape", [outer[0] if outer else next(iter(self.lengths_inputs.values()))], "B")
            return self._B
        return g.op("Shape", [self.lengths(axis)], f"N_{axis}")


def _with_predictions(plan: Plan, graph, diags: Diagnostics) -> Plan:
    """A spec that declares no output exports what its losses predict: ``p`` of ``cross_entropy(p, y)``
    (the plan holds the loss of the logits, ``softmax(p)``'s argument, which a step turns back into p)."""
    steps, outputs = list(plan.steps), []
    for s in plan.steps:
        op = REGISTRY[s.op] if isinstance(s, OpStep) else None
        if op is None or not op.scalar_output:
            continue
        pred = s.inputs[0][0]
        named = [n for n in graph.g.successors(pred) if pred in graph.g
                 and graph.info(n).named and graph.info(n).kind == "op" and graph.info(n).inputs == [(pred, 0)]
                 and REGISTRY[graph.info(n).op].scores_as not in (None, "scores")]
        if named:
            info = graph.info(named[0])
            producer = next(b for b in plan.steps if isinstance(b, OpStep) and b.id == pred) \
                if any(isinstance(b, OpStep) and b.id == pred for b in plan.steps) else None
            steps.append(OpStep(id=info.id, op=info.op, inputs=[(pred, 0)], seq=bool(info.seq),
                                shape=list(producer.shape if producer else info.shape or ()), span=info.span))
            outputs.append(info.id)
        else:
            outputs.append(pred)
    if not outputs:
        diags.error("the network declares no output and has no loss with a prediction: nothing to export; "
                    "declare 'output NAME'")
        raise SpecError(diags)
    return plan.model_copy(update={"steps": steps, "outputs": outputs})


def raise_no_form(diags: Diagnostics, step: OpStep) -> None:
    from .ops import not_lowered_reason
    why = not_lowered_reason(REGISTRY[step.op]) or "nnspec.onnx has no lowering for this op"
    diags.error(f"'{step.op}' has no ONNX form ({why}); the network cannot be exported", step.span)
    raise SpecError(diags)


def _shape_of(plan: Plan, value: str) -> list:
    for s in plan.steps:
        for b in (s.body if isinstance(s, LoopStep) else [s]):
            if b.id == value:
                return list(b.shape)
    for v in plan.inputs:
        if v.name == value:
            return list(v.shape)
    return []


def _prune(nodes: list, initializers: list, outputs: list[str]) -> tuple[list, list]:
    """Only the nodes and initialisers the outputs need (a fused loop leaves its input products and
    the cell's own weights unread)."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(_subgraph_reads(node))
    return kept[::-1], [i for i in initializers if i.name in needed]


def _subgraph_reads(node) -> set[str]:
    """Every name a Scan body reads (its own values included: a superset of what it reads from outside)."""
    found: set[str] = set()
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            for n in a.g.node:
                found.update(n.input)
                found.update(_subgraph_reads(n))
            found.update(o.name for o in a.g.output)
    return found


def _reads_after_loops(plan: Plan) -> dict[int, set[str]]:
    loop_of = {b.id: s.index for s in plan.steps if isinstance(s, LoopStep) for b in s.body}
    read: dict[int, set[str]] = {}
    for s in plan.steps:
        own = s.index if isinstance(s, LoopStep) else None
        for b in (s.body if isinstance(s, LoopStep) else [s]):
            for src, _ in b.inputs:
                if src in loop_of and loop_of[src] != own:
                    read.setdefault(loop_of[src], set()).add(src)
        for init in (s.initials.values() if isinstance(s, LoopStep) else ()):
            if init in loop_of:
                read.setdefault(loop_of[init], set()).add(init)
    for o in plan.outputs:
        if o in loop_of:
            read.setdefault(loop_of[o], set()).add(o)
    return read


def _needed(plan: Plan) -> set[str]:
    """What the outputs depend on (the loss and the targets are left out), initial states included."""
    producers: dict[str, list[tuple[str, int]]] = {}
    loop_of: dict[str, LoopStep] = {}
    for s in plan.steps:
        for b in (s.body if isinstance(s, LoopStep) else [s]):
            producers[b.id] = list(b.inputs)
            if isinstance(s, LoopStep):
                loop_of[b.id] = s
    needed: set[str] = set()
    stack = list(plan.outputs)
    while stack:
        v = stack.pop()
        if v in needed:
            continue
        needed.add(v)
        stack += [src for src, _ in producers.get(v, [])]
        loop = loop_of.get(v)
        if loop is not None:   # a loop runs whole
            stack += [b.id for b in loop.body] + list(loop.initials.values())
    return needed
