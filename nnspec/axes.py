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
* a recurrent loop runs over exactly one axis; reading inside it a value on another axis is
  an error (for now: attention inside a loop is future work).

At run time the arrays follow the axes (runtime.py): a value on axes ``(a1, ..., ak)`` is
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
    return ((info.axis or DEFAULT_AXIS),) if info.sequence else ()


def infer_axes(graph: Graph, order: list[str], components, diags: Diagnostics) -> dict[str, tuple]:
    """The axes of every value (``order``: a topological order of the graph without the delayed
    links inside loops). A loop's axis is what its values read from outside it; since a loop's
    values may be visited before everything it reads, passes repeat until the loops' axes settle
    (once more than the loops there are, at most); the last pass reports the errors."""
    comp_of = {n: i for i, c in enumerate(components) for n in c.nodes}
    loop_axes: list[tuple] = [() for _ in components]
    for _ in range(len(components) + 1):
        before = list(loop_axes)
        _axes_pass(graph, order, comp_of, loop_axes, None)
        if loop_axes == before:
            break
    return _axes_pass(graph, order, comp_of, loop_axes, diags)


def _axes_pass(graph: Graph, order, comp_of, loop_axes: list[tuple], diags: Diagnostics | None) -> dict:
    axes: dict[str, tuple] = {}

    def error(message, span):          # (messages are made only in the last pass: ``message()``)
        if diags is not None:
            diags.error(message(), span)

    for n in order:
        info = graph.info(n)
        if info.kind in ("input", "target"):
            axes[n] = input_axes(info)
            continue
        if info.kind in ("param", "const"):
            axes[n] = ()
            continue
        op = REGISTRY[info.op]
        operands = [(src, axes.get(src, ())) for src, _ in info.inputs]
        if getattr(op, "adds_axis", False) and len(operands) == 2:
            (x, xa), (s, sa) = operands
            if not sa:
                error(lambda: f"{info.op}(x, s) repeats x along the sequence axis of s, but "
                              f"{user_name(graph.info(s), diags.sources)} is not a sequence", info.span)
                result = xa
            elif sa[-1] in xa:
                error(lambda: f"{info.op}(x, s): {user_name(graph.info(x), diags.sources)} is already on "
                              f"the axis {sa[-1]} of s", info.span)
                result = xa
            else:
                result = xa + (sa[-1],)
            info.attrs["at"] = len(xa)               # where the runtime inserts the new axis in x's array
            info.attrs["of"] = max(len(sa) - 1, 0)   # and which axis of s's array gives its length
        else:
            result = ()
            first = None
            for src, a in operands:
                both = combine(result, a)
                if both is None:
                    error(lambda: f"{user_name(graph.info(first), diags.sources)} is on the axes "
                                  f"{show_axes(result)} and {user_name(graph.info(src), diags.sources)} on "
                                  f"{show_axes(a)}: values on different sequence axes combine only through an "
                                  f"operation that relates them (along(x, s) repeats x along the axis of s; "
                                  f"last(x), mean(x), ... reduce one)", info.span)
                    break
                if len(a) >= len(result):
                    first = src
                result = both
            if op.reduces_time or op.scalar_output:
                result = result[:-1] if not op.scalar_output else ()
        i = comp_of.get(n)
        if i is not None:
            both = combine(result, loop_axes[i])
            if both is None or len(both) > 1:
                if len(loop_axes[i]) == 1 and both is None:
                    error(lambda: f"{user_name(info, diags.sources)} is computed in a loop that runs over the "
                                  f"axis {loop_axes[i][0]}, but reads values on {show_axes(result)}; a loop reads, "
                                  f"at each of its steps, only values on its own axis or on none", info.span)
                else:
                    error(lambda: f"{user_name(info, diags.sources)} is computed in a recurrent loop, which runs "
                                  f"over one sequence axis, but its value is on {show_axes(both or result)}",
                          info.span)
                both = loop_axes[i] or result[-1:]
            loop_axes[i] = both
            result = both
        axes[n] = result
    # a loop's values are on its axis, including those visited before the loop learned it
    for n, i in comp_of.items():
        axes[n] = loop_axes[i] or (DEFAULT_AXIS,)
    return axes
