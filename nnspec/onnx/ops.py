"""ONNX forms of the registry's operations, one lowering per op class.

The registry (nnspec.ops) stays the one place that says what an op is; this table says only how
each op class is written in ONNX. A lowering gets a :class:`Site` (where it is written, the ranks
of its operands, the mask of real steps) and the names of its operands' tensors, and returns the
name of its result. Arrays keep nnspec's layout (docs/internals.md §2): ``(B, ...)``, time-major
``(T, B, ...)``, a parameter without leading axes; a lowering inside a Scan body sees one step,
``(B, ...)``, and is written so that any number of leading axes works.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..ops import activations as act, axes, elementwise as ew, linalg, regularize, sequence
from ..plan import OpStep
from .build import GraphBuilder


@dataclass
class Site:
    g: GraphBuilder
    step: OpStep
    ranks: list[int]                 # array rank of each operand (leading axes included)
    rank: int                        # array rank of the result
    real: Callable[[str, int], str] | None = None   # (T, B, 1...) bool of an axis's real steps at a rank
    axes: list[tuple] | None = None  # each operand's sequence axes in its array here, outermost first

    def attr(self, key: str):
        from ..ops import REGISTRY
        return REGISTRY[self.step.op].attr(self.step.attrs, key)

    def over(self, i: int = 0) -> tuple[int, str]:
        """What an op over steps works on, as nnspec's runtime has it: the innermost sequence axis of
        operand ``i``, ``(T_1, ..., T_k, B, ...)``: its array axis k - 1, and the real steps of that
        axis at the rank that broadcasts against the operand, ``(T_k, B, 1...)``."""
        axes = self.axes[i]
        k = len(axes)
        return k - 1, self.real(axes[-1], self.ranks[i] - (k - 1))


Lowering = Callable[[Site, list[str]], str]
LOWERINGS: dict[type, Lowering] = {}


def lowers(*classes: type):
    def register(fn: Lowering) -> Lowering:
        for cls in classes:
            LOWERINGS[cls] = fn
        return fn
    return register


def _same(op_type: str, **attrs) -> Lowering:
    return lambda s, xs: s.g.op(op_type, xs, s.step.id, **attrs)


# ---- activations and elementwise arithmetic (NumPy broadcasting is ONNX's multidirectional one) ----
for cls, onnx_op in [(act.Sigmoid, "Sigmoid"), (act.Tanh, "Tanh"), (act.Relu, "Relu"), (act.Identity, "Identity"),
                     (ew.Add, "Add"), (ew.Sub, "Sub"), (ew.Mul, "Mul"), (ew.Div, "Div"), (ew.Neg, "Neg"),
                     (ew.Exp, "Exp"), (ew.Log, "Log"), (ew.Sqrt, "Sqrt"), (ew.Abs, "Abs")]:
    LOWERINGS[cls] = _same(onnx_op)

LOWERINGS[act.Softmax] = _same("Softmax", axis=-1)
LOWERINGS[act.LogSoftmax] = _same("LogSoftmax", axis=-1)
# dropout is for training only: the exported model computes in evaluation mode, as predict does
LOWERINGS[regularize.Dropout] = LOWERINGS[regularize.WordDropout] = _same("Identity")


@lowers(act.Step)
def _step(s, xs):
    return s.g.op("Cast", [s.g.op("Greater", [xs[0], s.g.const(0)])], s.step.id, to=_onnx_type(s.g))


@lowers(act.LeakyRelu)
def _leaky_relu(s, xs):
    return s.g.op("LeakyRelu", xs, s.step.id, alpha=float(s.attr("alpha")))


@lowers(act.Elu)
def _elu(s, xs):
    return s.g.op("Elu", xs, s.step.id, alpha=float(s.attr("alpha")))


def _softplus(g: GraphBuilder, x: str) -> str:
    """log(1 + e^x) as relu(x) + log(1 + e^-|x|): no overflow, as nnspec's logaddexp(0, x)."""
    tail = g.op("Log", [g.op("Add", [g.const(1), g.op("Exp", [g.op("Neg", [g.op("Abs", [x])])])])])
    return g.op("Add", [g.op("Relu", [x]), tail])


@lowers(act.Softplus)
def _softplus_op(s, xs):
    return s.g.op("Identity", [_softplus(s.g, xs[0])], s.step.id)


@lowers(act.Mish)
def _mish(s, xs):
    return s.g.op("Mul", [xs[0], s.g.op("Tanh", [_softplus(s.g, xs[0])])], s.step.id)


@lowers(act.Gelu)
def _gelu(s, xs):   # the tanh approximation nnspec computes (ONNX's Gelu needs opset 20)
    g, x = s.g, xs[0]
    inner = g.op("Mul", [g.const(act.Gelu.C), g.op("Add", [x, g.op("Mul", [g.const(0.044715),
                                                                          g.op("Mul", [x, g.op("Mul", [x, x])])])])])
    return g.op("Mul", [g.op("Mul", [g.const(0.5), x]), g.op("Add", [g.const(1), g.op("Tanh", [inner])])], s.step.id)


@lowers(act.HardTanh)
def _hard_tanh(s, xs):
    return s.g.op("Clip", [xs[0], s.g.const(-1.0), s.g.const(1.0)], s.step.id)


@lowers(ew.Pow)
def _pow(s, xs):
    return s.g.op("Pow", [xs[0], s.g.const(float(s.attr("p")))], s.step.id)


@lowers(ew.Square)
def _square(s, xs):
    return s.g.op("Mul", [xs[0], xs[0]], s.step.id)


# ---- linear algebra ----------------------------------------------------------------------------
@lowers(linalg.Matmul)
def _matmul(s, xs):   # W x for x with any leading axes: x W^T
    return s.g.op("MatMul", [xs[1], transposed(s.g, xs[0])], s.step.id)


@lowers(linalg.Linear)
def _linear(s, xs):
    return s.g.op("Add", [s.g.op("MatMul", [xs[1], transposed(s.g, xs[0])]), xs[2]], s.step.id)


def transposed(g: GraphBuilder, w: str) -> str:
    """W^T of a weight; a parameter's transpose is an initialiser of its own, made once."""
    if w not in g.params:
        return g.op("Transpose", [w], f"{w}.T")
    if w not in g.transposes:
        g.transposes[w] = g.initializer(f"{w}.T", np.ascontiguousarray(g.params[w].T))
    return g.transposes[w]


@lowers(linalg.Concat)
def _concat(s, xs):
    g, top = s.g, max(s.ranks)
    if len(set(s.ranks)) > 1:
        # nnspec broadcasts the leading axes (a parameter beside a batch); ONNX's Concat does not
        lead = None
        for x, r in zip(xs, s.ranks):
            if r == top:
                lead = g.op("Slice", [g.op("Shape", [x]), g.ints(0), g.ints(top - 1)])
                break
        xs = [x if r == top else g.op("Expand", [x, g.op("Concat", [lead, g.op("Slice", [
            g.op("Shape", [x]), g.ints(-1), g.ints(2 ** 62)])], axis=0)]) for x, r in zip(xs, s.ranks)]
    return g.op("Concat", xs, s.step.id, axis=-1)


@lowers(linalg.Slice)
def _slice(s, xs):
    start, stop = int(s.step.attrs.get("start", 0)), s.step.attrs.get("stop")
    stop = 2 ** 62 if stop is None else int(stop)
    return s.g.op("Slice", [xs[0], s.g.ints(start), s.g.ints(stop), s.g.ints(-1)], s.step.id)


@lowers(linalg.ConcatRows)
def _concat_rows(s, xs):
    return s.g.op("Concat", xs, s.step.id, axis=0)


@lowers(linalg.Embed)
def _embed(s, xs):
    g, (ids, table) = s.g, xs
    pad = g.op("Less", [ids, g.ints(0)])            # a read before the first step: -1, embeds to zeros
    rows = g.op("Gather", [table, g.op("Where", [pad, g.const(0, np.int64), ids])], axis=0)
    return g.op("Where", [g.op("Unsqueeze", [pad, g.ints(-1)]), g.const(0), rows], s.step.id)


@lowers(sequence.Argmax)
def _argmax(s, xs):
    return s.g.op("ArgMax", xs, s.step.id, axis=-1, keepdims=0)


# ---- over time: a sequence (T, B, ...) and the real steps of each of its examples -----------------
# On several axes, (T_1, ..., T_k, B, ...), each works over the innermost axis with its own lengths.
@lowers(sequence.First)
def _first(s, xs):
    axis, _ = s.over()
    return s.g.op("Gather", [xs[0], s.g.const(0, np.int64)], s.step.id, axis=axis)


@lowers(sequence.Sum)
def _sum(s, xs):
    axis, real = s.over()
    return s.g.op("ReduceSum", [s.g.op("Where", [real, xs[0], s.g.const(0)]), s.g.ints(axis)], s.step.id,
                  keepdims=0)


@lowers(sequence.Last)
def _last(s, xs):   # the sum over t of x where t is the last real step: x itself, exactly
    g, (axis, real) = s.g, s.over()
    later = g.op("Concat", [g.op("Slice", [real, g.ints(1), g.ints(2 ** 62)]),
                            g.op("Expand", [g.const(False, bool), g.op("Shape", [g.op("Slice", [real, g.ints(0), g.ints(1)])])])],
                 axis=0)                        # real[t + 1], False after the end
    is_last = g.op("And", [real, g.op("Not", [later])])
    return g.op("ReduceSum", [g.op("Where", [is_last, xs[0], g.const(0)]), g.ints(axis)], s.step.id, keepdims=0)


@lowers(sequence.Mean)
def _mean(s, xs):
    g, (axis, real) = s.g, s.over()
    total = g.op("ReduceSum", [g.op("Where", [real, xs[0], g.const(0)]), g.ints(axis)], keepdims=0)
    count = g.op("ReduceSum", [g.op("Cast", [real], to=_onnx_type(g)), g.ints(0)], keepdims=0)
    return g.op("Div", [total, count], s.step.id)


@lowers(sequence.Max)
def _max(s, xs):
    axis, real = s.over()
    return s.g.op("ReduceMax", [s.g.op("Where", [real, xs[0], s.g.const(-np.inf)])], s.step.id, axes=[axis],
                  keepdims=0)   # axes: an input from opset 18


# ---- across sequence axes (nnspec/ops/axes.py): the parts of attention --------------------------------
@lowers(axes.Along)
def _along(s, xs):   # x with a new axis at "at", as long as axis "of" of s, as nnspec's runtime places them
    g, (x, seq) = s.g, xs
    at, of = int(s.step.attrs.get("at", 0)), int(s.step.attrs.get("of", 0))
    shape_x = g.op("Shape", [x])
    shape = g.op("Concat", [g.op("Slice", [shape_x, g.ints(0), g.ints(at)]),
                            g.op("Slice", [g.op("Shape", [seq]), g.ints(of), g.ints(of + 1)]),
                            g.op("Slice", [shape_x, g.ints(at), g.ints(2 ** 62)])], axis=0)
    return g.op("Expand", [g.op("Unsqueeze", [x, g.ints(at)]), shape], s.step.id)


@lowers(axes.Dot)
def _dot(s, xs):
    return s.g.op("ReduceSum", [s.g.op("Mul", xs), s.g.ints(-1)], s.step.id, keepdims=1)


@lowers(axes.SumFeatures)
def _sum_features(s, xs):
    return s.g.op("ReduceSum", [xs[0], s.g.ints(-1)], s.step.id, keepdims=1)


@lowers(axes.SoftmaxSteps)
def _softmax_steps(s, xs):
    """Over the real steps of the innermost axis, as nnspec: the largest real score subtracted first,
    padding steps weight 0."""
    g, (axis, real) = s.g, s.over()
    ninf, zero = g.const(-np.inf), g.const(0)
    top = g.op("ReduceMax", [g.op("Where", [real, xs[0], ninf])], axes=[axis], keepdims=1)
    e = g.op("Where", [real, g.op("Exp", [g.op("Where", [real, g.op("Sub", [xs[0], top]), zero])]), zero])
    return g.op("Div", [e, g.op("ReduceSum", [e, g.ints(axis)], keepdims=1)], s.step.id)


def _onnx_type(g: GraphBuilder) -> int:
    from .build import FLOAT_TYPES
    return FLOAT_TYPES[g.dtype]


def not_lowered_reason(op) -> str | None:
    """Why an op with no lowering needs none, asked of the op's facts (no list of loss names here:
    a new loss needs nothing in this module). A loss compares a prediction with a target: it is for
    training, and an exported model computes its outputs only (a spec's output is never a loss).
    shift is lowered with the delayed reads (nnspec.onnx.export), as it moves a sequence along time
    as they do."""
    if op.prediction is not None:
        return "a loss is for training; the exported model computes the outputs"
    if isinstance(op, sequence.Shift):
        return "lowered as a delayed read of its sequence"
    return None
