"""Sequence axes as part of every value's type.

A value lives on the batch (implicit, never reducible) and on zero or more named
*sequence axes*, outermost first: ``()`` for one vector per example, ``("src",)`` for an
encoder's states, ``("out", "src")`` for attention scores (a score for every step of the
decoder against every step of the encoder). Each sequence input brings its axis
(``input src : seq(src) of token``; a sequence whose type names no axis is on the
default axis ``time``, so specs with one time axis mean what they always meant).

The rules, checked here at compile time:

* operands combine when their axes line up from the inside out: the axes of one are the
  innermost axes of the other (``("src",)`` beside ``("out", "src")`` is the same keys for
  every decoder step; ``()`` goes with anything). Any other pair, ``("out",)`` beside
  ``("src",)``, is a located error naming both axes: relate them with an operation;
* ``along(x, s)`` relates them: ``x`` repeated along the innermost axis of ``s``;
* a reduction (``last``, ``sum``, ...) removes its argument's innermost axis, so
  ``last(enc)`` is one value per example, usable on any other axis (``initial dec = last(enc)``);
* a recurrent loop runs over one axis, the outermost of its values: at each step it reads a
  value on its axis at that step, and a value on other axes whole (attention inside a
  decoder's loop reads all of an encoder's states).

At run time the arrays follow the axes (runtime/axes.py): a value on axes ``(a1, ..., ak)`` is
``(T_a1, ..., T_ak, B, *shape)``, so NumPy broadcasting is this module's combination rule.
"""
from __future__ import annotations

from .errors import Diagnostics
from .graph import DEFAULT_AXIS, Graph, user_name
from .ops import REGISTRY


def show_axes(axes: tuple) -> str:
    return "(" + ", ".join(axes) + ")" if axes else "no sequence axis"


def combine(a: tuple, b: tuple) -> tuple | None:
    """The axes of a value made of values on axes ``a`` and ``b``, or None when they do not line up."""
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return long if long[len(long) - len(short):] == short else None


def input_axes(info) -> tuple:
    """An input's axes: a sequence's own, and a nested sequence's inner axis inside it."""
    if not info.sequence:
        return ()
    outer = (info.axis or DEFAULT_AXIS,)
    return outer + (info.inner_axis,) if info.inner_axis else outer


def nested_axes(graph: Graph) -> frozenset:
    """The inner axes of nested sequence inputs (``seq of seq(char) of char``: ``char``)."""
    return frozenset(i.inner_axis for i in graph.nodes() if i.inner_axis)


def loop_lead(result: tuple, nested: frozenset) -> tuple:
    """The axes a loop's values lead with, given one of its values' axes: a loop over a nested inner
    axis runs over every inner sequence at once (the outer axis's steps become rows of its batch),
    so its values lead with ``(outer, inner)``; any other loop runs over its values' outermost axis."""
    k = next((j for j, a in enumerate(result) if a in nested), None)
    return result[:k + 1] if k is not None else result[:1]


def loop_axis(axes: tuple, nested: frozenset) -> str:
    """The axis a loop whose values are on ``axes`` runs over."""
    lead = loop_lead(axes, nested)
    return lead[-1] if lead else DEFAULT_AXIS


def infer_axes(graph: Graph, order: list[str], components, diags: Diagnostics) -> dict[str, tuple]:
    """The axes of every value (``order``: a topological order of the graph without the delayed
    links inside loops). A loop's axis is the outermost axis of its values (for a loop over the
    characters of every word, the nested inner axis); since a loop's values may be visited before
    everything they read, passes repeat until the loops' axes settle (once more than the loops
    there are, at most); the errors are those of the pass that found nothing new (a pass after it
    would give the same axes and errors)."""
    comp_of = {n: i for i, c in enumerate(components) for n in c.nodes}
    nested = nested_axes(graph)
    loop_axes: list[tuple] = [() for _ in components]
    inner: list[set] = [set() for _ in components]     # axes along(...) adds inside each loop: not its own
    for _ in range(len(components) + 1):
        before = (list(loop_axes), [set(a) for a in inner])
        axes, found = _axes_pass(graph, order, comp_of, loop_axes, inner, nested, diags)
        if (loop_axes, inner) == before:
            break
    else:
        axes, found = _axes_pass(graph, order, comp_of, loop_axes, inner, nested, diags)
    for message, span in found:
        diags.error(message, span)
    return axes


def _axes_pass(graph: Graph, order, comp_of, loop_axes: list[tuple], inner: list[set], nested: frozenset,
               diags: Diagnostics) -> tuple[dict, list]:
    """One pass over the graph: every value's axes, and the errors found (message, span)."""
    walk = _AxesPass(graph, comp_of, loop_axes, inner, nested, diags)
    for n in order:
        walk.visit(n)
    # a loop that found no axis (it depends on no sequence: an error elsewhere) runs over the default one
    for n, i in comp_of.items():
        if not loop_axes[i]:
            walk.axes[n] = (DEFAULT_AXIS,) + walk.axes[n]
    return walk.axes, walk.found


class _AxesPass:
    """One pass's state. Inside a loop over axis L, values are on (L, ...) (over a nested inner axis,
    on (outer, L, ...)): at each step the loop reads a value on L at that step, and a value on other
    axes (an encoder's states) whole, so the rules apply to the axes *within a step* (the loop's
    lead taken off the front), and the lead is put back."""

    def __init__(self, graph: Graph, comp_of: dict, loop_axes: list[tuple], inner: list[set],
                 nested: frozenset, diags: Diagnostics):
        self.graph, self.comp_of, self.loop_axes, self.inner, self.nested = graph, comp_of, loop_axes, inner, nested
        self.sources = diags.sources
        self.axes: dict[str, tuple] = {}
        self.batched: set[str] = set()    # values that differ from example to example (not parameters)
        self.found: list = []

    def name(self, n: str) -> str:
        return user_name(self.graph.info(n), self.sources)

    def visit(self, n: str) -> None:
        info = self.graph.info(n)
        if info.kind in ("input", "target"):
            self.axes[n] = input_axes(info)
            self.batched.add(n)
            return
        if info.kind in ("param", "const"):
            self.axes[n] = ()
            return
        op = REGISTRY[info.op]
        i = self.comp_of.get(n)
        lead = self.loop_axes[i] if i is not None else ()
        L = lead[-1] if lead else None
        operands = []
        for src, _ in info.inputs:
            a = self.axes.get(src)
            if a is None:   # a value of the same loop, not visited yet in this pass (read at t-1)
                a = lead if L is not None and self.comp_of.get(src) == i else ()
            operands.append((src, a))
        if any(src in self.batched or src not in self.axes for src, _ in info.inputs):
            self.batched.add(n)
        for (src, delay), (_, a) in zip(info.inputs, operands):
            # a read at another step shifts along one axis; on a value with several, which one is unclear
            if delay and len(a) > 1 and not (i is not None and self.comp_of.get(src) == i):
                self.error(f"{self.name(src)} is read at [t{delay:+d}], but it is on the axes {show_axes(a)}: a "
                           f"read at another step takes a value on one sequence axis (reduce or relate the "
                           f"others first)", info.span)
        if getattr(op, "adds_axis", False) and len(operands) == 2:
            result = self.along(info, operands, i, lead)
        else:
            result = self.combined(info, op, operands)
        if i is not None:
            result = self.in_loop(info, result, i, lead)
        self.axes[n] = result

    def error(self, message: str, span) -> None:
        self.found.append((message, span))

    def along(self, info, operands, i, lead) -> tuple:
        """``along(x, s)``: x repeated along the innermost axis of s."""
        (x, xa), (s, sa) = operands
        if not sa:
            self.error(f"{info.op}(x, s) repeats x along the sequence axis of s, but {self.name(s)} is not a "
                       f"sequence", info.span)
            result = xa
        elif sa[-1] in self.nested:
            self.error(f"{info.op}(x, s): {self.name(s)} is on the characters of each word ({sa[-1]}); repeating "
                       f"a value along them is not supported: reduce them to one vector per word first "
                       f"(last(...), mean(...))", info.span)
            result = xa
        elif sa[-1] in xa:
            self.error(f"{info.op}(x, s): {self.name(x)} is already on the axis {sa[-1]} of s", info.span)
            result = xa
        else:
            result = xa + (sa[-1],)
            if i is not None:
                self.inner[i].add(sa[-1])

        def in_step(a: tuple) -> int:
            """How many sequence axes a value on ``a`` has in its array here: in a loop's step, not its lead."""
            return len(a) - (len(lead) if lead and a[:len(lead)] == lead else 0)
        # where the runtime inserts the new axis in x's array, and which axis of s's array gives
        # its length (within a loop's step, arrays have no loop axis)
        info.attrs["at"] = in_step(xa)
        info.attrs["of"] = max(in_step(sa) - 1, 0)
        return result

    def combined(self, info, op, operands) -> tuple:
        """Any other op: its operands' axes combined (``combine``), less the innermost for a reduction."""
        result, first = (), None
        words = next((src for src, a in operands if any(x in self.nested for x in a)), None)
        for src, a in operands:
            # a nested value's rows are the words of the batch, not its examples
            if words is not None and not a and src in self.batched:
                self.error(f"{self.name(src)} is one value per example and {self.name(words)} is on "
                           f"{show_axes(self.axes[words])}, the characters of each word: a value on them "
                           f"combines only with parameters and values on the same axes; reduce the characters "
                           f"first (last(...), mean(...)) and combine on the words' axis", info.span)
                break
            both = combine(result, a)
            if both is None:
                self.error(f"{self.name(first)} is on the axes {show_axes(result)} and {self.name(src)} on "
                           f"{show_axes(a)}: values on different sequence axes combine only through an "
                           f"operation that relates them (along(x, s) repeats x along the axis of s; last(x), "
                           f"mean(x), ... reduce one)", info.span)
                break
            if len(a) >= len(result):
                first = src
            result = both
        if op.reduces_time or op.scalar_output:
            result = result[:-1] if not op.scalar_output else ()
        return result

    def in_loop(self, info, result: tuple, i: int, lead: tuple) -> tuple:
        """A value of loop i: the loop's axis found (its first value's outermost, unless along put it
        inside the loop), and the loop's lead put first."""
        L = lead[-1] if lead else None
        if L is None:
            own = tuple(a for a in result if a not in self.inner[i])
            lead = loop_lead(own, self.nested)
            L = lead[-1] if lead else None
            if L is not None:
                self.loop_axes[i] = lead
        if L is not None and L in result[len(lead):]:
            self.error(f"{user_name(info, self.sources)} is computed in a loop over the axis {L}, but its value "
                       f"is on {show_axes(result)}: inside its loop, a value has the loop's axis outermost",
                       info.span)
            result = tuple(a for a in result if a != L)
        if L is not None and result[:len(lead)] != lead:
            result = lead + tuple(a for a in result if a not in lead)
        return result
