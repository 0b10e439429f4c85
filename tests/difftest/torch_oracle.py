"""A PyTorch oracle for nnspec: the expanded equations, read as the language reference defines them.

``torch_run(compiled, params, feeds, lengths)`` computes a spec's outputs, its loss and the
gradients of the loss (float64, PyTorch autograd) without any of nnspec's plan, loop analysis,
optimiser or NumPy kernels. It reads only what ``nnspec expand`` prints (``compiled.flat``: the
declarations, equations, ``initial`` statements and losses, cells already written out), plus
two facts the front end decided: the shape of a recurrent state (for its zero initial state)
and the name of an embedding table written inside a larger expression.

It is simple on purpose, and slow:

* every example of the batch runs alone, over its own lengths: there is no padding at all;
* every value has its sequence axes (docs/language.md section 18), inferred here from the
  equations alone: an input's axis, the longer of two that line up from the inside out,
  ``along(x, s)`` adds the innermost axis of ``s``, a reduction removes its argument's innermost;
* a value is computed at one position at a time (a step on each of its axes), on demand, and
  remembered: ``value(h, {"out": 3})`` evaluates ``h``'s equation there, and ``h[t-1]`` asks for
  ``h`` one step earlier on its outermost axis, or, before the first step (after the last, for
  ``h[t+1]``), for ``h``'s initial state (docs/language.md section 8: zeros, a learned parameter,
  or an expression); so forward, backward and two-step recurrences, and loops over one axis that
  read a value on another whole (attention inside a decoder), need no loop analysis;
* a reduction, ``softmax_steps`` and a loss visit the real steps of an example only, which is
  what masking the padding means;
* a nested sequence (``input c : seq of seq(k) of char``, each word's characters) is on its outer
  axis and an inner one whose length is that of the word at the outer step: character j of word t
  is ``c`` at ``{time: t, k: j}``; a recurrence over such a value (``h[t-1]``) steps along the inner
  axis, within the word, and a reduction over it gives one value per word;
* a loss is one number for the batch (section 9): the sum of its terms over every real
  position of every example, divided by the number of positions that count; the loss lines are
  added; anything computed from a loss (``0.1 * mse(...)``) is computed from those numbers.

Outputs come back as nnspec's runtime lays them out: ``(B, ...)``, a value on the axes
``(a1, ..., ak)`` as ``(T_a1, ..., T_ak, B, ...)`` with the padding steps zero, a real scalar as
``(..., 1)``, a batch-level value (a loss) as a 0-d array. Gradients are of the loss; without a loss, of
``sum(output * seed)`` over the outputs (``seeds``: arrays laid out like the outputs; by
default ones on every real position).

A construct it cannot translate raises :class:`Untranslatable` naming it, so that a tester can
skip the case and count it.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from nnspec.ops import REGISTRY
from nnspec.syntax import ast

DTYPE = torch.float64
EPS = 1e-12                       # probabilities are clipped to >= EPS inside log (docs: ops table)
REDUCTIONS = {"last", "first", "mean", "max", "sum"}
CLASS_LOSSES = {"cross_entropy", "cross_entropy_logits", "nll"}
FLOAT_LOSSES = {"mse", "bce", "bce_logits", "perceptron", "hinge"}
LOSSES = CLASS_LOSSES | FLOAT_LOSSES
INTEGER_ELEMS = {"token", "char", "class"}
DEFAULT_AXIS = "time"           # the axis of a sequence whose type names none (docs: section 18)


class Untranslatable(Exception):
    """A construct this oracle does not translate; ``construct`` names it (for counting)."""

    def __init__(self, construct: str, detail: str = ""):
        super().__init__(f"{construct}: {detail}" if detail else construct)
        self.construct = construct


@dataclass
class TorchResult:
    outputs: dict[str, np.ndarray]
    loss: float | None
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    sequences: set[str] = field(default_factory=set)   # outputs and inputs that are sequences (T, B, ...)
    # outputs and inputs that are sequences -> which positions are real: (T_a1, ..., T_ak, B) booleans
    masks: dict[str, np.ndarray] = field(default_factory=dict)


# ---- the spec, as the expanded equations say it ----------------------------------------------

class _Spec:
    """Names and facts read from the FlatSpec."""

    def __init__(self, compiled):
        flat = compiled.flat
        self.compiled = compiled
        self.decls = {d.name: d for d in flat.decls if d.role != "output"}
        self.outputs = [d.name for d in flat.decls if d.role == "output"]
        self.equations = {eq.name: eq.value for eq in flat.equations}
        self.initials = {i.name: i.value for i in flat.initials}
        self.losses = [loss.value for loss in flat.losses]
        self.literal_params = {p.name: p.value for p in flat.params if p.value is not None}
        self.axes = self._axes()
        self.seq = {n: bool(a) for n, a in self.axes.items()}
        self.batch_level = self._batch_level()

    def input_axes(self, name: str) -> tuple[str, ...]:
        t = self.decls[name].type
        if t and t.nested:
            return (t.axis or DEFAULT_AXIS, t.inner_axis or name)
        return ((t.axis or DEFAULT_AXIS),) if t and t.sequence else ()

    @property
    def inner(self) -> dict[str, str]:
        """A nested sequence's inner axis -> its outer axis."""
        return {a[1]: a[0] for n in self.decls for a in [self.input_axes(n)] if len(a) == 2
                and self.decls[n].type.nested}

    def input_seq(self, name: str) -> bool:
        return bool(self.input_axes(name))

    def integer_input(self, name: str) -> bool:
        t = self.decls[name].type
        return bool(t and t.elem in INTEGER_ELEMS)

    def _axes(self) -> dict[str, tuple[str, ...]]:
        """The sequence axes of every value: a fixpoint, since recurrent values depend on themselves
        (a loop's state is on the axis of what it reads; its reads of itself add nothing)."""
        axes = {n: self.input_axes(n) for n in self.decls}
        axes.update({n: () for n in self.equations})
        changed = True
        while changed:
            changed = False
            for name, e in self.equations.items():
                a = self.expr_axes(e, axes, lenient=True)
                if len(a) > len(axes[name]):
                    axes[name], changed = a, True
        for e in self.equations.values():     # now every value is known: combinations must line up
            self.expr_axes(e, axes)
        return axes

    def expr_axes(self, e, axes=None, lenient=False) -> tuple[str, ...]:
        axes = self.axes if axes is None else axes
        if isinstance(e, (ast.Name, ast.Delayed)):
            return axes.get(e.name, ())
        if isinstance(e, ast.BinOp):
            return _combine(self.expr_axes(e.left, axes, lenient), self.expr_axes(e.right, axes, lenient), lenient)
        if isinstance(e, ast.Neg):
            return self.expr_axes(e.operand, axes, lenient)
        if isinstance(e, ast.Call):
            if e.func in LOSSES:
                return ()
            args = [self.expr_axes(a, axes, lenient) for a in e.args if not _is_setting(a)]
            if e.func == "along":
                x, s = args[0], args[1]
                if not s or s[-1] in x:
                    raise Untranslatable("along of a value not on another axis")
                return x + (s[-1],)
            out: tuple = ()
            for a in args:
                out = _combine(out, a, lenient)
            return out[:-1] if e.func in REDUCTIONS else out
        return ()

    def expr_seq(self, e, seq=None) -> bool:
        return bool(self.expr_axes(e))

    def _batch_level(self) -> set[str]:
        """Values computed from a loss: one number for the whole batch."""
        out: set[str] = set()
        changed = True
        while changed:
            changed = False
            for name, e in self.equations.items():
                if name not in out and self.has_loss(e, out):
                    out.add(name)
                    changed = True
        return out

    def has_loss(self, e, batch_level) -> bool:
        if isinstance(e, (ast.Name, ast.Delayed)):
            return e.name in batch_level
        if isinstance(e, ast.BinOp):
            return self.has_loss(e.left, batch_level) or self.has_loss(e.right, batch_level)
        if isinstance(e, ast.Neg):
            return self.has_loss(e.operand, batch_level)
        if isinstance(e, ast.Call):
            return e.func in LOSSES or any(self.has_loss(a, batch_level) for a in e.args)
        return False

    def state_shape(self, name: str) -> tuple[int, ...]:
        """The per-example shape of a recurrent state, for its zero initial state."""
        info = self.compiled.graph.info(name)
        shape = tuple(info.shape or ())
        if not all(isinstance(d, int) for d in shape):
            raise Untranslatable("symbolic state size", f"{name}: {shape}")
        return shape


def _combine(a: tuple, b: tuple, lenient=False) -> tuple:
    """The axes of a value made of values on axes a and b: they line up from the inside out."""
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    if long[len(long) - len(short):] != short and not lenient:
        raise Untranslatable("values on axes that do not line up", f"{a} and {b}")
    return long


def _is_setting(e) -> bool:
    return isinstance(e, (ast.Number, ast.Percent)) or isinstance(e, ast.Neg) and isinstance(e.operand, ast.Number)


def _attrs(e: ast.Call) -> tuple[list, dict]:
    """The value arguments of a call and its settings (by position after them, or by name)."""
    op = REGISTRY[e.func]
    n = len(e.args) if op.arity is None else min(op.arity, len(e.args))
    attrs = dict(op.attrs)
    for extra, name in zip(e.args[n:], list(op.attrs)):
        attrs[name] = _setting(extra)
    for k in e.keywords:
        attrs[k.name] = _setting(k.value)
    return e.args[:n], attrs


def _setting(e):
    if isinstance(e, ast.Number):
        return e.value
    if isinstance(e, ast.Neg) and isinstance(e.operand, ast.Number):
        return -e.operand.value
    if isinstance(e, ast.Percent):
        return e.value
    raise Untranslatable("non-numeric setting", type(e).__name__)


def _literal(e) -> np.ndarray:
    def conv(x):
        if isinstance(x, ast.Number):
            return x.value
        if isinstance(x, ast.Neg):
            return (-np.asarray(conv(x.operand))).tolist()
        if isinstance(x, ast.ListLit):
            return [conv(i) for i in x.items]
        raise Untranslatable("literal", type(x).__name__)
    return np.array(conv(e), dtype=np.float64)


# ---- one example -----------------------------------------------------------------------------

class _Example:
    """Evaluates the equations for one example of ``lengths`` (axis -> its number of steps).

    A position ``at`` maps axes to steps; a value is evaluated at the steps of its own axes only
    (an encoder state read at a decoder step ignores the decoder's axis)."""

    def __init__(self, run: "_Run", b: int, lengths: dict[str, int]):
        self.run, self.spec, self.b, self.lengths = run, run.spec, b, lengths
        self.memo: dict[tuple, torch.Tensor] = {}
        self.busy: set[tuple] = set()
        self.evaluating: list[str] = []      # the equations being computed, innermost last

    def positions(self, axes: tuple, at: dict | None = None):
        """Every real position of this example on ``axes`` (a nested inner axis: as long as its word)."""
        at = at or {}
        if not axes:
            yield dict(at)
            return
        for u in range(self.length(axes[0], at)):
            yield from self.positions(axes[1:], {**at, axes[0]: u})

    def length(self, axis: str, at: dict | None = None) -> int:
        """The steps of ``axis``; of a nested inner axis, those of the word at ``at``'s outer step."""
        if axis not in self.lengths:
            raise Untranslatable("an axis no input brings", axis)
        outer = self.spec.inner.get(axis)
        if outer is not None:
            if at is None or outer not in at:
                raise Untranslatable("a nested inner axis read outside a word", axis)
            return self.lengths[axis][at[outer]]
        return self.lengths[axis]

    def position(self, axes: tuple, at: dict, what: str) -> dict:
        """``at`` cut down to ``axes`` (each of which it must give, within the example's length)."""
        missing = [a for a in axes if a not in at]
        if missing:
            raise Untranslatable("sequence read without a step", f"'{what}' outside any step on {missing}")
        for a in axes:
            if not 0 <= at[a] < self.length(a, at):
                raise AssertionError(f"step {at[a]} of '{what}' on {a} outside 0..{self.length(a, at) - 1}")
        return {a: at[a] for a in axes}

    # values by name
    def value(self, name: str, at: dict) -> torch.Tensor:
        spec = self.spec
        if name in spec.batch_level:
            return self.run.batch_value(name)
        axes = spec.axes.get(name, ())
        at = self.position(axes, at, name)
        key = (name, tuple(at[a] for a in axes))
        if key in self.memo:
            return self.memo[key]
        if key in self.busy:
            raise Untranslatable("value needing itself", f"'{name}' at {at} (a reduction inside a loop?)")
        self.busy.add(key)
        try:
            if name in spec.decls:
                v = self.run.feed(name, self.b, at)
            elif name in spec.equations:
                self.evaluating.append(name)
                try:
                    v = self.eval(spec.equations[name], at)
                finally:
                    self.evaluating.pop()
            else:
                v = self.run.param(name)
        finally:
            self.busy.discard(key)
        self.memo[key] = v
        return v

    def delayed(self, name: str, offset: int, at: dict) -> torch.Tensor:
        """``name[t+offset]``: a step along the outermost axis of ``name`` (its loop's axis), or along
        a nested inner axis (within the word: a loop over each word's characters)."""
        axes = self.spec.axes.get(name, ())
        axis = axes[-1] if axes and axes[-1] in self.spec.inner else (axes[0] if axes else None)
        if axis is None or axis not in at:
            raise Untranslatable("delayed read without a step", f"{name}[t{offset:+d}]")
        u = at[axis] + offset
        if 0 <= u < self.length(axis, at):
            return self.value(name, {**at, axis: u})
        return self.initial(name)

    def initial(self, name: str) -> torch.Tensor:
        key = (name, "initial")
        if key in self.memo:
            return self.memo[key]
        spec = self.spec
        if name in spec.initials:
            e = spec.initials[name]
            if spec.expr_seq(e):
                raise Untranslatable("initial state that is a sequence", name)
            v = self.eval(e, {})
            if v.is_floating_point() and v.dim() == 0:   # `initial h = 0.5`: every unit of the state
                v = v * torch.ones(self.spec.state_shape(name), dtype=DTYPE)
        elif name in spec.decls and spec.integer_input(name):
            # w[t-1] before the first word: nothing, id -1 (embeds to zeros), as shift pads
            v = torch.full((), -1, dtype=torch.long)
        else:
            v = torch.zeros(self.spec.state_shape(name), dtype=DTYPE)
        self.memo[key] = v
        return v

    # expressions
    def eval(self, e, at: dict) -> torch.Tensor:
        if isinstance(e, ast.Number):
            return torch.tensor(e.value, dtype=DTYPE)
        if isinstance(e, ast.ListLit):
            return torch.tensor(_literal(e), dtype=DTYPE)
        if isinstance(e, ast.Name):
            return self.value(e.name, at)
        if isinstance(e, ast.Delayed):
            return self.delayed(e.name, e.offset, at)
        if isinstance(e, ast.Neg):
            return -self.eval(e.operand, at)
        if isinstance(e, ast.BinOp):
            a, b = self.eval(e.left, at), self.eval(e.right, at)
            return _binary(e.op, a, b)
        if isinstance(e, ast.Call):
            return self.call(e, at)
        raise Untranslatable("expression", type(e).__name__)

    def steps(self, e, at: dict) -> list[torch.Tensor]:
        """``e`` at every real step of its innermost axis (the other axes where ``at`` says)."""
        axes = self.spec.expr_axes(e)
        if not axes:
            raise Untranslatable("reduction over time of a value that is not a sequence")
        return [self.eval(e, {**at, axes[-1]: u}) for u in range(self.length(axes[-1], at))]

    def call(self, e: ast.Call, at: dict) -> torch.Tensor:
        f = e.func
        if e.wrapper is not None:
            raise Untranslatable("wrapper left in the expanded spec", f)
        if f == "embed":
            ids = self.eval(e.args[0], at)
            table = self.run.param(self.run.table_name(e, self.evaluating[-1] if self.evaluating else None))
            return _embed(ids, table)
        if f not in REGISTRY:
            raise Untranslatable("unknown function", f)
        if f in LOSSES:
            raise Untranslatable("loss inside a value of one example", f)
        args, attrs = _attrs(e)
        if f in REDUCTIONS:
            xs = self.steps(args[0], at)
            if f == "last":
                return xs[-1]
            if f == "first":
                return xs[0]
            stacked = torch.stack(xs)
            return {"mean": lambda: stacked.mean(0), "sum": lambda: stacked.sum(0),
                    "max": lambda: stacked.amax(0)}[f]()
        if f == "softmax_steps":      # over the real steps of the innermost axis: padding has no weight
            axis = self.spec.expr_axes(args[0])[-1:]
            if not axis or axis[0] not in at:
                raise Untranslatable("softmax_steps outside a step of its axis")
            scores = torch.stack(self.steps(args[0], at))
            return torch.softmax(scores, dim=0)[at[axis[0]]]
        if f == "along":              # x beside every step of s: x itself at each of them
            return self.eval(args[0], at)
        if f == "shift":
            k = int(attrs["k"])
            axes = self.spec.expr_axes(args[0])
            if len(axes) != 1 or axes[0] not in at:
                raise Untranslatable("shift of a value that is not on one sequence axis")
            u = at[axes[0]] + k
            if 0 <= u < self.length(axes[0], at):
                return self.eval(args[0], {**at, axes[0]: u})
            like = self.eval(args[0], at)
            return torch.full_like(like, -1) if not like.is_floating_point() else torch.zeros_like(like)
        xs = [self.eval(a, at) for a in args]
        return _primitive(f, xs, attrs)


def _binary(op: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if op == "@":
        if a.dim() != 2:
            raise Untranslatable("matmul with a left operand that is not a matrix", str(tuple(a.shape)))
        if b.dim() == 0:      # a real number per example is a vector of one (W is [n, 1])
            b = b.reshape(1)
        return b @ a.T if b.dim() > 1 else a @ b
    if not (a.is_floating_point() and b.is_floating_point()):
        raise Untranslatable("arithmetic on ids")
    return {"+": torch.add, "-": torch.sub, "*": torch.mul, "/": torch.div}[op](a, b)


def _embed(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    if ids.is_floating_point():
        raise Untranslatable("embed of real values")
    if ids.dim() != 0:
        raise Untranslatable("embed of a vector of ids", str(tuple(ids.shape)))
    if int(ids) < 0:            # padding (-1) gives zeros
        return torch.zeros(table.shape[1], dtype=DTYPE)
    return table[int(ids)]


def _primitive(f: str, xs: list[torch.Tensor], attrs: dict) -> torch.Tensor:
    x = xs[0]
    if f == "argmax":
        return torch.argmax(x, dim=-1)
    if f in ("word_dropout", "dropout"):    # outside training, the identity (ids or reals)
        return x
    if not all(v.is_floating_point() for v in xs):
        raise Untranslatable("ids as real values", f)
    one = {
        "identity": lambda: x,
        "neg": lambda: -x,
        "tanh": lambda: torch.tanh(x),
        "sigmoid": lambda: torch.sigmoid(x),
        "relu": lambda: torch.relu(x),
        "softmax": lambda: torch.softmax(x, dim=-1),
        "log_softmax": lambda: torch.log_softmax(x, dim=-1),
        "softplus": lambda: torch.logaddexp(torch.zeros_like(x), x),
        "gelu": lambda: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
        "elu": lambda: torch.nn.functional.elu(x, alpha=attrs["alpha"]),   # (a where over expm1(x): 0 * inf = nan in its gradient)
        "leaky_relu": lambda: torch.where(x > 0, x, attrs["alpha"] * x),
        "hard_tanh": lambda: torch.clamp(x, -1.0, 1.0),
        "step": lambda: (x > 0).to(DTYPE),
        "abs": lambda: torch.abs(x),
        "exp": lambda: torch.exp(x),
        "log": lambda: torch.log(x),
        "sqrt": lambda: torch.sqrt(x),
        "square": lambda: x * x,
        "pow": lambda: x ** attrs["p"],
        "slice": lambda: x[..., int(attrs["start"]):(None if attrs["stop"] is None else int(attrs["stop"]))],
    }
    if f in one:
        return one[f]()
    two = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}
    if f in two:
        return two[f](xs[0], xs[1])
    if f == "matmul":
        return _binary("@", xs[0], xs[1])
    if f == "linear":
        return _binary("@", xs[0], xs[1]) + xs[2]
    if f == "dot":                    # over the features: one number per position
        return (xs[0] * xs[1]).sum(-1)
    if f == "sum_features":
        return x.sum(-1)
    if f == "concat":
        return torch.cat([v.reshape(-1) if v.dim() == 0 else v for v in xs], dim=-1)
    if f == "concat_rows":
        return torch.cat(xs, dim=0)
    raise Untranslatable("operation", f)


# ---- the batch -------------------------------------------------------------------------------

class _Run:
    def __init__(self, compiled, params, feeds, lengths):
        self.spec = _Spec(compiled)
        self.params = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True)
                       for k, v in params.items()}
        self.feeds: dict[str, torch.Tensor] = {}
        self.steps: dict[str, int] = {}        # axis -> its padded number of steps
        B = None
        for name, a in feeds.items():
            if name not in self.spec.decls:
                continue
            a = np.asarray(a)
            axes = self.spec.input_axes(name)
            if self.spec.integer_input(name):
                self.feeds[name] = torch.tensor(a.astype(np.int64))
            else:
                self.feeds[name] = torch.tensor(a.astype(np.float64), requires_grad=True)
            if axes and axes[-1] in self.spec.inner:   # (T_char, T * B): word t of example b in column t * B + b
                self.steps[axes[-1]] = a.shape[0]
            elif axes:
                self.steps[axes[0]], B = a.shape[0], a.shape[1]
            elif B is None:
                B = a.shape[0]
        missing = [n for n in self.spec.decls if n not in self.feeds]
        if missing:
            raise ValueError(f"no feed for {', '.join(missing)}")
        self.B = B
        self.T = self.steps.get(DEFAULT_AXIS)
        # lengths: one array (of the time axis, or of the only axis), or a dict axis -> array
        if lengths is not None and not isinstance(lengths, dict):
            only = DEFAULT_AXIS if DEFAULT_AXIS in self.steps or len(self.steps) != 1 else next(iter(self.steps))
            lengths = {only: lengths}
        lengths = dict(lengths or {})
        self.lengths = {axis: [int(n) for n in (np.asarray(lengths[axis]) if lengths.get(axis) is not None
                                                 else np.full(B, T))]
                        for axis, T in self.steps.items() if axis not in self.spec.inner}
        for inner, outer in self.spec.inner.items():   # each example's words' numbers of characters
            counts = np.asarray(lengths[inner]).reshape(-1, B)
            self.lengths[inner] = [[int(n) for n in counts[:self.lengths[outer][b], b]] for b in range(B)]
        self.examples = [_Example(self, b, {axis: ls[b] for axis, ls in self.lengths.items()}) for b in range(B)]
        self.batch_memo: dict[str, torch.Tensor] = {}
        self.tables: dict[int, str] = {}

    def feed(self, name: str, b: int, at: dict) -> torch.Tensor:
        a = self.feeds[name]
        axes = self.spec.input_axes(name)
        if len(axes) == 2 and axes[-1] in self.spec.inner:
            return a[at[axes[1]], at[axes[0]] * self.B + b]
        v = a[at[axes[0]], b] if axes else a[b]
        d = self.spec.decls[name]
        if not d.dims and v.is_floating_point() and v.dim() == 1 and v.shape[0] == 1:
            v = v[0]                       # a real scalar held as (..., 1)
        return v

    def param(self, name: str) -> torch.Tensor:
        if name in self.params:
            return self.params[name]
        if name in self.spec.literal_params:
            return torch.tensor(_literal(self.spec.literal_params[name]), dtype=DTYPE)
        raise Untranslatable("unknown name", name)

    def table_name(self, e: ast.Call, evaluating: str | None) -> str:
        """``e = embed(w, 8)`` has the table ``e.table``; an embed inside a larger expression has one
        named by the graph builder (``p#3.table``): found as the table whose ids are this call's.
        The same call may stand in several equations (a wrapper's directions, ``enc.fwd.x`` and
        ``enc.bwd.x``, each with a table of its own): ``evaluating`` is the equation being computed."""
        key = (id(e), evaluating)
        if key in self.tables:
            return self.tables[key]
        if evaluating is not None and self.spec.equations.get(evaluating) is e:
            name = f"{evaluating}.table"
        else:
            graph = self.spec.compiled.graph
            found = [i.id for i in graph.nodes() if i.kind == "param" and i.table_for is not None
                     and graph.info(i.id).span == e.span]
            if len(found) != 1:
                raise Untranslatable("embedding table of a nested embed", str(found))
            name = found[0]
        self.tables[key] = name
        return name

    # batch-level values: losses and what is computed from them
    def batch_value(self, name: str) -> torch.Tensor:
        if name not in self.batch_memo:
            self.batch_memo[name] = self.batch_eval(self.spec.equations[name])
        return self.batch_memo[name]

    def batch_eval(self, e) -> torch.Tensor:
        if isinstance(e, ast.Number):
            return torch.tensor(e.value, dtype=DTYPE)
        if isinstance(e, ast.Name) and e.name in self.spec.batch_level:
            return self.batch_value(e.name)
        if isinstance(e, ast.Neg):
            return -self.batch_eval(e.operand)
        if isinstance(e, ast.BinOp) and e.op != "@":
            return _binary(e.op, self.batch_eval(e.left), self.batch_eval(e.right))
        if isinstance(e, ast.Call) and e.func in LOSSES:
            return self.loss_term(e)
        if isinstance(e, ast.Call) and e.func in REGISTRY and REGISTRY[e.func].arity in (1, 2) \
                and e.func not in REDUCTIONS and e.func != "shift":
            args, attrs = _attrs(e)
            return _primitive(e.func, [self.batch_eval(a) for a in args], attrs)
        raise Untranslatable("a per-example value in a loss expression", type(e).__name__)

    def logits_form(self, func: str, args: list) -> tuple[str, list]:
        """A loss of its activation (``cross_entropy(softmax(z), y)``, directly or through a name)
        is the loss of the activation's input, computed exactly (docs/language.md §9)."""
        form = REGISTRY[func].logits_form if func in REGISTRY else None
        pred = args[0]
        if isinstance(pred, ast.Name) and pred.name in self.spec.equations:
            pred = self.spec.equations[pred.name]
        if form is not None and isinstance(pred, ast.Call) and pred.func == form[0] and len(pred.args) == 1 \
                and not pred.keywords and not isinstance(pred.args[0], ast.Delayed):
            return form[1], [pred.args[0]] + list(args[1:])
        return func, args

    def loss_term(self, e: ast.Call) -> torch.Tensor:
        """sum over every real position of every example / the number of positions that count."""
        args, _ = _attrs(e)
        total, count = torch.zeros((), dtype=DTYPE), 0
        axes: tuple = ()
        for a in args:
            axes = _combine(axes, self.spec.expr_axes(a))
        func, args = self.logits_form(e.func, args)
        for ex in self.examples:
            for at in ex.positions(axes):
                pred, target = ex.eval(args[0], at), ex.eval(args[1], at)
                s, n = _loss_elems(func, pred, target)
                total = total + s
                count += n
        return total / max(count, 1)

    # assembling outputs
    def layout(self, name: str) -> torch.Tensor:
        """A value of every example -> nnspec's array layout, (T_a1, ..., T_ak, B, ...) with zeros at
        padding (differentiable, for seeded gradients)."""
        axes = self.spec.axes.get(name, ())
        if any(a in self.spec.inner for a in axes):
            raise Untranslatable("an output on a nested inner axis", name)

        def block(ex: _Example, at: dict, rest: tuple) -> torch.Tensor:
            if not rest:
                return ex.value(name, at)
            real = [block(ex, {**at, rest[0]: u}, rest[1:]) for u in range(ex.length(rest[0]))]
            pad = [torch.zeros_like(real[0])] * (self.steps[rest[0]] - len(real))
            return torch.stack(real + pad)

        out = torch.stack([block(ex, {}, axes) for ex in self.examples], dim=len(axes))
        if out.is_floating_point() and out.dim() == len(axes) + 1:
            out = out.unsqueeze(-1)            # a real scalar is held as (..., 1)
        return out


def _loss_elems(f: str, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of the loss over this position, number of terms that count)."""
    if f in CLASS_LOSSES:
        if target.is_floating_point():
            raise Untranslatable("class loss against real targets")
        if pred.dim() != target.dim() + 1:
            raise Untranslatable("class loss shapes", f"{tuple(pred.shape)} vs {tuple(target.shape)}")
        K = pred.shape[-1]
        if target.numel() and int(target.max()) >= K:
            raise ValueError(f"{f}: class {int(target.max())} out of range for {K} classes")
        valid = target >= 0
        idx = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(-1)
        if f == "cross_entropy":
            terms = -torch.log(torch.clamp(torch.gather(pred, -1, idx)[..., 0], min=EPS))
        elif f == "cross_entropy_logits":
            terms = -torch.gather(torch.log_softmax(pred, -1), -1, idx)[..., 0]
        else:
            terms = -torch.gather(pred, -1, idx)[..., 0]
        return torch.where(valid, terms, torch.zeros_like(terms)).sum(), int(valid.sum())
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise Untranslatable("float loss of ids", f)
    p, y = torch.broadcast_tensors(pred, target)
    if f == "mse":
        terms = (p - y) ** 2
    elif f == "bce":
        pc = torch.clamp(p, EPS, 1 - EPS)
        terms = -(y * torch.log(pc) + (1 - y) * torch.log(1 - pc))
    elif f == "bce_logits":
        terms = torch.clamp(p, min=0) - p * y + torch.log1p(torch.exp(-torch.abs(p)))
    elif f == "hinge":
        terms = torch.clamp(1 - (2 * y - 1) * p, min=0)
    elif f == "perceptron":   # (step(z) - t) z
        terms = ((p > 0).to(DTYPE) - y) * p
    else:
        raise Untranslatable("a loss the oracle does not know", f)
    return terms.sum(), max(terms.numel(), 1)


def torch_run(compiled, params: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
              lengths: np.ndarray | None = None, seeds: dict[str, np.ndarray] | None = None) -> TorchResult:
    """Outputs, loss and gradients of a compiled spec at ``params`` and ``feeds`` (see the module doc)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20000))
    try:
        return _torch_run(compiled, params, feeds, lengths, seeds)
    except RecursionError:
        raise Untranslatable("too deep to evaluate step by step") from None
    finally:
        sys.setrecursionlimit(old)


def _torch_run(compiled, params, feeds, lengths, seeds) -> TorchResult:
    run = _Run(compiled, params, feeds, lengths)
    spec = run.spec
    laid_out = {name: run.layout(name) if name not in spec.batch_level
                else run.batch_value(name) for name in spec.outputs}
    outputs = {k: (v.detach().numpy() if isinstance(v, torch.Tensor) else v) for k, v in laid_out.items()}
    loss = None
    if spec.losses:
        total = None
        for e in spec.losses:
            term = run.batch_eval(e)
            total = term if total is None else total + term
        objective, loss = total, float(total.detach())
    else:
        objective = torch.zeros((), dtype=DTYPE)
        for name, v in laid_out.items():
            if not isinstance(v, torch.Tensor) or not v.is_floating_point() or not v.requires_grad:
                continue
            seed = torch.tensor(np.asarray(seeds[name], dtype=np.float64)) if seeds and name in seeds \
                else _real_positions(run, name, v)
            objective = objective + (v * seed).sum()
    leaves = {**run.params, **{k: v for k, v in run.feeds.items() if v.is_floating_point()}}
    grads = {}
    if objective.requires_grad:
        got = torch.autograd.grad(objective, list(leaves.values()), allow_unused=True)
        for (name, leaf), g in zip(leaves.items(), got):
            grads[name] = (torch.zeros_like(leaf) if g is None else g).detach().numpy()
    else:
        grads = {name: np.zeros(tuple(leaf.shape)) for name, leaf in leaves.items()}
    sequences = {n for n in list(spec.outputs) + list(spec.decls) if spec.seq.get(n, False)
                 and not any(a in spec.inner for a in spec.axes[n])}
    masks = {n: _mask(run, spec.axes[n]) for n in sequences}
    return TorchResult(outputs=outputs, loss=loss, grads=grads, sequences=sequences, masks=masks)


def _mask(run: _Run, axes: tuple) -> np.ndarray:
    """(T_a1, ..., T_ak, B) booleans: the real positions of a value on ``axes``."""
    real = np.ones((run.B,), dtype=bool)
    for axis in reversed(axes):
        steps = np.arange(run.steps[axis])[:, None] < np.asarray(run.lengths[axis])[None, :]   # (T, B)
        real = steps.reshape((run.steps[axis],) + (1,) * (real.ndim - 1) + (run.B,)) & real[None]
    return real


def _real_positions(run: _Run, name: str, v: torch.Tensor) -> torch.Tensor:
    """Ones on the real positions of an output (its padding on each axis zero), ones elsewhere."""
    seed = torch.ones_like(v)
    axes = run.spec.axes.get(name, ())
    for i, axis in enumerate(axes):
        for b, n in enumerate(run.lengths[axis]):
            seed[(slice(None),) * i + (slice(n, None),) + (slice(None),) * (len(axes) - i - 1) + (b,)] = 0
    return seed


def real_mask(lengths, T: int, B: int) -> np.ndarray:
    """(T, B) booleans: which steps are real, for comparing sequence outputs."""
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    return np.arange(T)[:, None] < lengths[None, :]


__all__ = ["TorchResult", "Untranslatable", "real_mask", "torch_run"]
