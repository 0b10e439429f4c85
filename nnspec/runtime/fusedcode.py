"""The source of a loop's fused kernels: one function for the forward recurrence (every step, every
body op) and one for backpropagation through time, generated from the loop's body and each op's
fused form (``Op.fused``: its maths on single numbers, or a product, a join, a part), for numba to
compile (``fused.py``). Pure Python: nothing here imports numba.

A kernel works on whole ``(T, B, w)`` arrays, one per body value, and loops over steps, examples
and elements itself, so a step of a small cell costs no Python call at all. A state read at ``t + d``
is copied into its own ``(T, B, w)`` array at the start of step t with the semantics of
``TimeAxis.read_step`` (the previous chunk's steps, the initial state, or the step), and its
gradient is sent back with those of ``TimeAxis.send_to_step``. Gradients that leave the loop (a
weight's, a bias's, an input's) are not computed here: the runtime makes them with one
whole-sequence VJP per edge after the kernel, as the NumPy path does (``loopback.py``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

from ..ops import REGISTRY
from ..ops.registry import JoinForm, PartForm, ProductForm, ScalarForm
from ..plan import LoopStep
from .timeaxis import array_shape

HEADER = "from math import exp, expm1, log, log1p, sqrt, tanh\n"

# A product's outputs computed this many at a time (``_Generator.op_forward``, ``op_backward``): the
# compiler keeps every sum in order (no fast-math), so one output's sum is a chain of dependent adds;
# four independent chains run side by side (an LSTM H16's backward kernel 15 -> 10 µs, forward 17 -> 15)
ROWS = 4


def _sums(outer: str, count: int, inner: str, length: int, start, hoist: str, term, store) -> list[str]:
    """Source of ``count`` sums over ``inner`` < ``length`` (a product's rows): sum e (``outer`` + r)
    starts at ``start(e)``, adds ``term(e)`` after the line ``hoist`` at each ``inner``, and ends in
    ``store(e, acc)``. ``ROWS`` sums at a time, each in its own accumulator added in the order one at
    a time would (the same numbers): independent chains of adds, not one waiting on itself; the sums
    left over one at a time."""
    q, lines = ROWS, []
    if count >= q:
        lines += [f"for {outer} in range(0, {count - count % q}, {q}):"]
        lines += [f"    acc{r} = {start(f'{outer} + {r}')}" for r in range(q)]
        lines += [f"    for {inner} in range({length}):", f"        {hoist}"]
        lines += [f"        acc{r} += {term(f'{outer} + {r}')}" for r in range(q)]
        lines += [f"    {store(f'{outer} + {r}', f'acc{r}')}" for r in range(q)]
    if count % q:
        lines += [f"for {outer} in range({count - count % q}, {count}):", f"    acc = {start(outer)}",
                  f"    for {inner} in range({length}):", f"        {hoist}", f"        acc += {term(outer)}",
                  f"    {store(outer, 'acc')}"]
    return lines


class NotFusable(Exception):
    """The loop has something a generated kernel does not do; it stays on the NumPy path."""


@dataclass
class Operand:
    """Where an op reads an input: a body value at this step ("value"), a body value at another
    step ("read", its read array), or an array from outside the loop ("outer": ``ndim`` 3 a
    sequence, 2 one row per example, 1 one row for the batch)."""
    kind: str
    name: str        # the kernel's name for the array
    width: int
    ndim: int = 3
    grad: str = ""   # the kernel's name for its gradient array ("" : none inside the kernel)
    offset: int = 0  # a part kept in its source's array (``part_aliases``): where it starts there
    slots: int = 0   # its gradient may be a ring of this many steps (``Layout.slots``); 0: all T steps

    def at(self, elem: str, width: int) -> str:
        """This operand's element ``elem`` where the op works on ``width`` elements (a width-1
        operand broadcasts)."""
        if self.width == width:
            j = elem
        elif self.width == 1:
            j = "0"
        else:
            raise NotFusable(f"an operand of width {self.width} against {width}")
        if self.ndim == 3:
            return self.element("t", j)
        return f"{self.name}[b, {j}]" if self.ndim == 2 else f"{self.name}[{j}]"

    def grad_at(self, elem: str, width: int) -> str:
        return self.element("t", elem if self.width == width else "0", self.grad)

    def element(self, t: str, j: str, name: str | None = None) -> str:
        """Element j of this body value (or of its gradient: ``name``) at step t (``t`` or ``u``: a
        gradient that may be a ring at that step's slot, ``at{slots}`` or ``au{slots}``)."""
        if name is not None and name == self.grad and self.slots:
            t = f"a{t}{self.slots}"
        return f"{name or self.name}[{t}, b, {f'{self.offset} + {j}' if self.offset else j}]"


@dataclass
class Layout:
    """The kernels' array arguments, in order, as (kind, key): ("value", id), ("read", (src, d)),
    ("init", (src, d)), ("before", (src, d)), ("outer", (src, d)); the backward kernel adds
    ("grad", id), ("gread", (src, d)), ("ginit", (src, d))."""
    forward: list = field(default_factory=list)
    backward: list = field(default_factory=list)
    # parts kept in their sources' arrays, and their gradients in the sources' gradients: part ->
    # (the value whose array holds it, start, stop); no array of their own, no copy (``part_aliases``)
    aliases: dict = field(default_factory=dict)
    # the backward kernel's gradients that may be rings: entry ("grad", id) or ("gread", key) -> the
    # steps a ring of it needs (1 + the furthest step back its value is read; a read's gradient: 1).
    # Not those read after the kernel (an edge leaving the loop, a value read outside the loop,
    # which gets a gradient from outside before it). The kernel takes either: a ring of
    # ``min(slots, T)`` steps, each slot zeroed when the pass moves past its step, or all T steps
    # (a pass keeping every gradient, ``fused.loop_backward``)
    slots: dict = field(default_factory=dict)

    @cached_property
    def gradients(self) -> list:
        """The backward kernel's gradient arguments ("grad", "gread"), worked out once."""
        return [e for e in self.backward if e[0] in ("grad", "gread")]

    @cached_property
    def ring_values(self) -> frozenset:
        """The body values whose gradient may be (a part of) a ring (``slots``)."""
        roots = {k for kind, k in self.slots if kind == "grad"}
        return frozenset(roots | {v for v, (root, _, _) in self.aliases.items() if root in roots})

    @cached_property
    def initial_gradients(self) -> list:
        """The backward kernel's initial-state gradient arguments ("ginit")."""
        return [e for e in self.backward if e[0] == "ginit"]


@dataclass
class Kernels:
    source: str | None   # None once compiled: the module is kept instead (its text is kilobytes)
    layout: Layout
    key: str          # hash of the source: the module's name in the cache
    module: object = None   # the compiled module (``fused.compiled``)


def body_forms(loop: LoopStep, integer: set) -> None:
    """Raise NotFusable unless every body op has a fused form and every body value is a real vector."""
    for s in loop.body:
        op = REGISTRY[s.op]
        if op.fused is None:
            raise NotFusable(f"{s.op} has no fused form")
        if s.integer or any(src in integer for src, _ in s.inputs):
            raise NotFusable("ids in the loop")
        trail = array_shape(s.shape, s.integer)
        if len(trail) != 1 or not isinstance(trail[0], int):
            raise NotFusable(f"{s.id} is not a vector of known size")


def work_per_example(loop: LoopStep, outer_shapes: dict) -> int:
    """Multiply-adds and element operations of one step for one example: what the choice between
    the fused kernel and the NumPy path is made on."""
    total = 0
    for s in loop.body:
        op, width = REGISTRY[s.op], array_shape(s.shape, False)[0]
        if isinstance(op.fused, ProductForm):
            w = outer_shapes.get(s.inputs[0][0])
            total += width * (w[-1] if w else width)
        elif isinstance(op.fused, ScalarForm):
            total += width
    return total


def generate(loop: LoopStep, outer_shapes: dict, read_outside: frozenset = frozenset()) -> Kernels:
    """The kernels' source for a loop whose body passed ``body_forms``; ``outer_shapes``: the array
    shape of every input from outside the loop, by (src, d); ``read_outside``: the body values that
    something outside the loop reads (or that are outputs)."""
    return _Generator(loop, outer_shapes, read_outside).kernels()


def part_aliases(loop: LoopStep, read_outside: frozenset) -> dict:
    """Parts (``x[..., lo:hi]`` at the same step) that need no array of their own: part -> (the
    value whose array holds it, lo, hi). A value qualifies when every reader is such a part, their
    ranges do not overlap, and nothing else reads it (no other step, no later step, nothing outside
    the loop): then each part's gradient is all its source's gradient holds in its columns, so the
    parts' readers may add straight into the source's gradient, in the order they added into the
    part's (the same numbers), and the kernel copies nothing (an LSTM's gates: a fifth of its arrays)."""
    ids = {s.id: s for s in loop.body}
    width = {s.id: array_shape(s.shape, False)[0] for s in loop.body}
    readers: dict[str, list] = {v: [] for v in ids}
    for s in loop.body:
        for src, d in s.inputs:
            if src in ids:
                readers[src].append((s, d))
    whole: set[str] = set()
    for v, rs in readers.items():
        if not rs or v in read_outside or v in loop.states:
            continue
        ranges = []
        for s, d in rs:
            if d != 0 or not isinstance(REGISTRY[s.op].fused, PartForm) or len(s.inputs) != 1:
                break
            lo = int(s.attrs.get("start", 0))
            ranges.append((lo, lo + width[s.id]))
        else:
            ranges.sort()
            if ranges[0][0] >= 0 and ranges[-1][1] <= width[v] and all(
                    a[1] <= b[0] for a, b in zip(ranges, ranges[1:])):
                whole.add(v)
    aliases: dict[str, tuple] = {}
    for s in loop.body:     # (in body order: a part's source comes before it)
        src = s.inputs[0][0] if s.inputs else None
        if src in whole:
            root, at = aliases[src][:2] if src in aliases else (src, 0)
            lo = at + int(s.attrs.get("start", 0))
            aliases[s.id] = (root, lo, lo + width[s.id])
    return aliases


class _Generator:
    def __init__(self, loop: LoopStep, outer_shapes: dict, read_outside: frozenset = frozenset()):
        self.loop = loop
        self.ids = {s.id for s in loop.body}
        self.width = {s.id: array_shape(s.shape, False)[0] for s in loop.body}
        self.layout = Layout(aliases=part_aliases(loop, read_outside))
        self.value: dict[str, Operand] = {}
        self.reads: dict[tuple, Operand] = {}
        self.outer: dict[tuple, Operand] = {}
        for i, s in enumerate(loop.body):
            alias = self.layout.aliases.get(s.id)
            if alias is not None:   # (its source's operand, from where it starts there)
                root = self.value[alias[0]]
                self.value[s.id] = Operand("value", root.name, self.width[s.id], grad=root.grad, offset=alias[1])
                continue
            self.value[s.id] = Operand("value", f"V{i}", self.width[s.id], grad=f"GV{i}")
            self.layout.forward.append(("value", s.id))
        for s in loop.body:
            for src, d in s.inputs:
                key = (src, d)
                if src in self.ids and d != 0 and key not in self.reads:
                    k = len(self.reads)
                    self.reads[key] = Operand("read", f"R{k}", self.width[src], grad=f"GR{k}")
                    self.layout.forward += [("read", key), ("init", key), ("before", key)]
                elif src not in self.ids and key not in self.outer:
                    shape = outer_shapes[key]
                    if len(shape) > 3 or len(shape) == 0:
                        raise NotFusable(f"{src}: an array of {len(shape)} axes")
                    self.outer[key] = Operand("outer", f"O{len(self.outer)}", shape[-1], len(shape))
                    self.layout.forward.append(("outer", key))
        self.ring_slots(read_outside)
        self.layout.backward = (list(self.layout.forward)
                                + [("grad", s.id) for s in loop.body if s.id not in self.layout.aliases]
                                + [(kind, key) for key in self.reads for kind in ("gread", "ginit")])

    def ring_slots(self, read_outside: frozenset) -> None:
        """Which gradients may be rings, and of how many steps (``Layout.slots``)."""
        loop, aliases = self.loop, self.layout.aliases
        root = {v: aliases[v][0] if v in aliases else v for v in self.ids}
        full, back = set(), {}   # roots read after the kernel; root -> furthest step back it is read
        for s in loop.body:
            if s.id in read_outside or any(src not in self.ids for src, _ in s.inputs):
                full.add(root[s.id])    # (read outside: a gradient from outside; an edge out: its VJP)
            for src, d in s.inputs:
                if src in self.ids and d != 0:
                    if d * loop.direction > 0:   # (a read ahead: not a step the pass has been past)
                        full.add(root[src])
                    back[root[src]] = max(back.get(root[src], 0), abs(d))
        for v, op in self.value.items():
            if v not in aliases and v not in full:
                self.layout.slots[("grad", v)] = op.slots = 1 + back.get(v, 0)
        for v, op in self.value.items():
            if v in aliases:
                op.slots = self.value[root[v]].slots
        for key, r in self.reads.items():
            self.layout.slots[("gread", key)] = r.slots = 1

    def operand(self, src: str, d: int) -> Operand:
        if src in self.ids:
            return self.value[src] if d == 0 else self.reads[(src, d)]
        return self.outer[(src, d)]

    def names(self, layout: list) -> list[str]:
        out = []
        for kind, key in layout:
            if kind == "value":
                out.append(self.value[key].name)
            elif kind == "grad":
                out.append(self.value[key].grad)
            elif kind == "outer":
                out.append(self.outer[key].name)
            else:
                r = self.reads[key].name[1:]
                out.append({"read": "R", "init": "I", "before": "P", "gread": "GR", "ginit": "GI"}[kind] + r)
        return out

    def kernels(self) -> Kernels:
        forward = self.forward_source()
        backward = self.backward_source()
        source = HEADER + "\n\n" + forward + "\n\n" + backward
        key = hashlib.sha256(source.encode()).hexdigest()[:20]
        return Kernels(source, self.layout, key)

    # ---- forward ------------------------------------------------------------------------------
    def steps_loop(self, reverse: bool) -> list[str]:
        forward_in_time = (self.loop.direction > 0) != reverse
        return ["    for s in range(T):",
                "        t = s" if forward_in_time else "        t = T - 1 - s"]

    def forward_source(self) -> str:
        lines = [f"def forward(T, lengths, {', '.join(self.names(self.layout.forward))}):",
                 "    B = lengths.shape[0]"]
        lines += self.steps_loop(reverse=False)
        lines.append("        for b in range(B):")   # examples are independent within a step
        for (src, d), r in self.reads.items():
            k, v, w = r.name[1:], self.value[src], r.width
            lines += [
                f"            u = t + {d}",
                f"            if u < 0 and P{k}.shape[0] > 0:",
                f"                for j in range({w}):",
                f"                    R{k}[t, b, j] = P{k}[P{k}.shape[0] + u, b, j]",
                "            elif u < 0 or u >= T or u >= lengths[b]:",
                f"                for j in range({w}):",
                f"                    R{k}[t, b, j] = I{k}[b, j]",
                "            else:",
                f"                for j in range({w}):",
                f"                    R{k}[t, b, j] = {v.element('u', 'j')}"]
        for s in self.loop.body:
            lines += ["            " + x for x in self.op_forward(s)]
        lines.append("    return 0")
        return "\n".join(lines)

    def op_forward(self, s) -> list[str]:
        if s.id in self.layout.aliases:
            return []    # (a part in its source's array: nothing to compute)
        op, out, w = REGISTRY[s.op], self.value[s.id].name, self.width[s.id]
        xs = [self.operand(src, d) for src, d in s.inputs]
        form = op.fused
        if isinstance(form, ScalarForm):
            expr = scalar_text(op, form.value, s.attrs, {f"x{i}": f"x{i}" for i in range(len(xs))})
            return ([f"for j in range({w}):"] + [f"    x{i} = {x.at('j', w)}" for i, x in enumerate(xs)]
                    + [f"    {out}[t, b, j] = {expr}"])
        if isinstance(form, ProductForm):
            W, x = xs[0], xs[1]
            if W.kind != "outer" or W.ndim != 2:
                raise NotFusable("a product whose weight is not one matrix for the batch")
            n = x.width

            def start(i):
                return xs[2].at(i, w) if form.bias else "0.0"
            return _sums("i", w, "k", n, start, f"xk = {x.at('k', n)}", lambda e: f"{W.name}[{e}, k] * xk",
                         lambda e, acc: f"{out}[t, b, {e}] = {acc}")
        if isinstance(form, JoinForm):
            lines, off = [], 0
            for x in xs:
                lines += [f"for j in range({x.width}):", f"    {out}[t, b, {off} + j] = {x.at('j', x.width)}"]
                off += x.width
            return lines
        if isinstance(form, PartForm):
            start = int(s.attrs.get("start", 0))
            return [f"for j in range({w}):", f"    {out}[t, b, j] = {xs[0].at(f'{start} + j', xs[0].width)}"]
        raise NotFusable(f"{s.op}: an unknown fused form")

    # ---- backward -----------------------------------------------------------------------------
    def backward_source(self) -> str:
        lines = [f"def backward(T, lengths, {', '.join(self.names(self.layout.backward))}):",
                 "    B = lengths.shape[0]"]
        # the gradients that may be rings, by their steps: each group's arrays all rings or all of T
        # steps (``Layout.slots``); ``at{n}``: step t's slot in them
        rings: dict[int, list] = {}
        for op in [*(self.value[v] for kind, v in self.layout.slots if kind == "grad"), *self.reads.values()]:
            rings.setdefault(op.slots, []).append(op)
        lines += [f"    slots{n} = {ops[0].grad}.shape[0]" for n, ops in rings.items()]
        lines += self.steps_loop(reverse=True)
        for n, ops in rings.items():    # the slot of the step before (in the pass's order) is for step t - n
            lines += [f"        at{n} = t % slots{n}",
                      f"        if slots{n} < T:",
                      f"            z = (t {'+' if self.loop.direction > 0 else '-'} 1) % slots{n}",
                      "            for b in range(B):"]
            for op in ops:
                lines += [f"                for j in range({op.width}):", f"                    {op.grad}[z, b, j] = 0.0"]
        lines.append("        for b in range(B):")
        for s in reversed(self.loop.body):
            lines += ["            " + x for x in self.op_backward(s)]
        for (src, d), r in self.reads.items():      # a read's gradient goes back to its step, or the fill
            k, v, w = r.name[1:], self.value[src], r.width
            lines += [
                f"            u = t + {d}",
                "            if 0 <= u and u < T and u < lengths[b]:"]
            if v.slots:
                lines.append(f"                au{v.slots} = u % slots{v.slots}")
            lines += [
                f"                for j in range({w}):",
                f"                    {v.element('u', 'j', v.grad)} += {r.element('t', 'j', r.grad)}",
                "            else:",
                f"                for j in range({w}):",
                f"                    GI{k}[b, j] += {r.element('t', 'j', r.grad)}"]
        lines.append("    return 0")
        return "\n".join(lines)

    def op_backward(self, s) -> list[str]:
        if s.id in self.layout.aliases:
            return []    # (its readers added straight into its source's gradient)
        op, me, w = REGISTRY[s.op], self.value[s.id], self.width[s.id]
        xs = [self.operand(src, d) for src, d in s.inputs]
        inside = [i for i, x in enumerate(xs) if x.kind != "outer"]
        if not inside:
            return []
        form = op.fused
        g = me.element("t", "j", me.grad)
        if isinstance(form, ScalarForm):
            names = {f"x{i}": f"x{i}" for i in range(len(xs))} | {"out": "out"}
            lines = [f"for j in range({w}):", f"    g = {g}", f"    out = {me.name}[t, b, j]"]
            lines += [f"    x{i} = {x.at('j', w)}" for i, x in enumerate(xs)]
            for i in inside:
                partial = scalar_text(op, form.partials[i], s.attrs, names)
                lines.append(f"    {xs[i].grad_at('j', w)} += g * ({partial})")
            return lines
        if isinstance(form, ProductForm):
            W, x = xs[0], xs[1]
            if x.kind == "outer":
                return []
            n = x.width     # (the input's gradient ``ROWS`` at a time, as forwards)
            return _sums("k", n, "i", w, lambda e: "0.0", f"g = {me.element('t', 'i', me.grad)}",
                         lambda e: f"g * {W.name}[i, {e}]", lambda e, acc: f"{x.grad_at(e, n)} += {acc}")
        if isinstance(form, JoinForm):
            lines, off = [], 0
            for i, x in enumerate(xs):
                if x.kind != "outer":
                    lines += [f"for j in range({x.width}):",
                              f"    {x.grad_at('j', x.width)} += {me.element('t', f'{off} + j', me.grad)}"]
                off += x.width
            return lines
        if isinstance(form, PartForm):
            start = int(s.attrs.get("start", 0))
            return [f"for j in range({w}):", f"    {xs[0].grad_at(f'{start} + j', xs[0].width)} += {g}"]
        raise NotFusable(f"{s.op}: an unknown fused form")


def attr_values(op, attrs: dict) -> dict[str, str]:
    """The op's attributes as literals for its scalar form."""
    out = {}
    for name in type(op).attrs:
        value = op.attr(attrs, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise NotFusable(f"{op.name}: attribute {name} is not a number")
        out[name] = repr(float(value))
    return out


def scalar_text(op, text: str, attrs: dict, names: dict[str, str]) -> str:
    """One of the op's scalar-form expressions (its value or a partial derivative) with the inputs
    (``x0``, ``x1`` ..., ``out``) named by ``names`` and its attributes as literals."""
    return text.format(**names, **attr_values(op, attrs))
