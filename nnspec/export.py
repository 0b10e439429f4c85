"""The compiled network as JSON, for tools that embed nnspec (editors, visualisers, other runtimes).

    >>> text = nnspec.compile_file("specs/chain_rule.nn").to_json()
    >>> doc = CompiledJSON.model_validate_json(text)      # the same document back, typed
    >>> doc.plan                                           # a nnspec.plan.Plan the Executor runs

The schema is these pydantic models; ``CompiledJSON.model_json_schema()`` gives it as JSON Schema.
Sizes that the data decides stay symbolic strings (``"vocab(w)"``) until compiled with them.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from .graph import Graph
from .plan import Plan
from .recurrence import Component

FORMAT = "nnspec-compiled"
VERSION = 1


class NodeJSON(BaseModel):
    """One node of the computation graph: a value the spec names, or a sub-expression."""
    id: str
    kind: Literal["input", "target", "param", "const", "op"]
    op: str | None = None                 # the operation (nnspec ops), for kind "op"
    inputs: list[tuple[str, int]] = []    # (operand id, time offset): -1 reads h[t-1], +1 h[t+1]
    shape: list[Any] | None = None        # per example, without the batch (and time) axes
    seq: bool = False                     # varies over time steps
    axes: list[str] = []                  # its sequence axes, outermost first (nnspec/axes.py)
    integer: bool = False                 # ids (tokens, classes) rather than reals
    named: bool = False                   # a name the user wrote (not a sub-expression)
    loop: int | None = None               # index into ``loops`` when the node is inside a recurrence
    source: str | None = None             # where the spec defines it: file:line:column


class EdgeJSON(BaseModel):
    source: str
    target: str
    delay: int = 0                        # time offset: 0 same step, -1 reads the source at t-1, +1 at t+1


class LoopJSON(BaseModel):
    """A recurrence: the nodes run once per time step, in this order."""
    direction: Literal[1, -1]             # +1 forward in time, -1 backward
    nodes: list[str]
    states: list[str]                     # values read at another time step


class CompiledJSON(BaseModel):
    format: Literal["nnspec-compiled"] = FORMAT
    version: int = VERSION
    name: str
    kind: Literal["feed-forward", "recurrent"]
    bindings: dict[str, int] = {}         # data-decided sizes, e.g. {"vocab(w)": 9}
    nodes: list[NodeJSON]
    edges: list[EdgeJSON]
    loops: list[LoopJSON]
    plan: Plan                            # the execution plan (nnspec.plan): what the runtime runs


def compiled_document(compiled) -> CompiledJSON:
    """The JSON document of a :class:`nnspec.compiler.Compiled`."""
    graph: Graph = compiled.graph
    nodes = [_node(graph, n) for n in graph.g.nodes]
    edges = [EdgeJSON(source=u, target=v, delay=d) for u, v, data in graph.g.edges(data=True)
             for d in sorted(data["delays"])]
    loops = [_loop(c) for c in compiled.components]
    return CompiledJSON(name=compiled.name, kind=compiled.kind, bindings=dict(compiled.bindings),
                        nodes=nodes, edges=edges, loops=loops, plan=compiled.plan)


def _node(graph: Graph, n: str) -> NodeJSON:
    info = graph.info(n)
    span = info.span
    return NodeJSON(id=n, kind=info.kind, op=info.op, inputs=[(u, d) for u, d in info.inputs],
                    shape=None if info.shape is None else list(info.shape), seq=bool(info.seq),
                    axes=list(info.axes), integer=bool(info.integer), named=info.named, loop=info.component,
                    source=f"{span.file}:{span.line}:{span.column}" if span else None)


def _loop(c: Component) -> LoopJSON:
    return LoopJSON(direction=c.direction, nodes=list(c.nodes), states=list(c.states))
