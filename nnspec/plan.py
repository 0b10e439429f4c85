"""Execution plan: the analysed graph as an ordered, serialisable program.

A plan is a list of steps. An ``OpStep`` computes one value over all its
leading axes at once (the whole batch, or every time step of a sequence). A
``LoopStep`` runs one recurrent component step by step in time; only the
values on the recurrent cycle are inside it — everything that does not depend
on the recurrence (input projections ``W @ x``, biases) was left outside and is
computed for all time steps at once. Plans are pydantic models, so a compiled
program can be saved as JSON, sent to another process, or exported.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field

from .graph import Graph, closure
from .recurrence import Component

Operand = tuple[str, int]  # (value id, time delay)


class ValueSpec(BaseModel):
    name: str
    role: Literal["input", "target"]
    shape: list[Any]
    seq: bool
    integer: bool
    elem: str
    card: Any = None       # vocabulary size / class count for integer values
    view: tuple[str, str, int | None] | None = None  # derived from another input's tokens


class ParamSpec(BaseModel):
    name: str
    shape: list[Any]
    init: str = "default"
    init_args: dict[str, float] = {}
    frozen: bool = False
    value: Any = None      # literal values from the spec
    role: str = "weight"   # weight | recurrent | bias | table | initial


class OpStep(BaseModel):
    kind: Literal["op"] = "op"
    id: str
    op: str
    inputs: list[Operand]
    attrs: dict[str, Any] = {}
    seq: bool = False
    integer: bool = False
    shape: list[Any] = []


class LoopStep(BaseModel):
    kind: Literal["loop"] = "loop"
    index: int
    direction: int                  # +1: t = 0..T-1, -1: t = T-1..0
    body: list[OpStep]
    states: list[str]               # values read at another step
    initials: dict[str, str] = {}   # state -> value holding its initial state


Step = Annotated[Union[OpStep, LoopStep], Field(discriminator="kind")]


class Plan(BaseModel):
    name: str
    inputs: list[ValueSpec]
    targets: list[ValueSpec]
    params: list[ParamSpec]
    consts: dict[str, Any] = {}
    steps: list[Step]
    outputs: list[str]
    loss: str | None = None
    recurrent: bool = False
    dtype: str = "float32"
    passes: list[str] = []   # optimisation passes applied (nnspec.optimize), in order

    def value_ids(self) -> list[str]:
        ids = []
        for s in self.steps:
            ids += [b.id for b in s.body] if isinstance(s, LoopStep) else [s.id]
        return ids

    def op_count(self) -> int:
        return len(self.value_ids())


def _op_step(graph: Graph, n: str) -> OpStep:
    info = graph.info(n)
    # built from the checked graph: no need to validate again (a 10,000-equation spec
    # spent most of its planning time in pydantic validation)
    return OpStep.model_construct(kind="op", id=n, op=info.op, inputs=[tuple(x) for x in info.inputs],
                                  attrs=dict(info.attrs), seq=bool(info.seq), integer=bool(info.integer),
                                  shape=list(info.shape or ()))


def _param_role(graph: Graph, n: str) -> str:
    info = graph.info(n)
    if info.table_for is not None:
        return "table"
    if info.initial_of is not None:
        return "initial"
    if info.recurrent and info.shape is not None and len(info.shape) == 2 and info.shape[0] == info.shape[1]:
        return "recurrent"
    return "weight" if info.shape is not None and len(info.shape) >= 2 else "bias"


def build_plan(graph: Graph, order: list[str], components: list[Component]) -> Plan:
    needed = _needed(graph)
    comp_of = {n: c for c in components for n in c.nodes}
    steps: list = []
    emitted: set[int] = set()
    for n in order:
        if n not in needed:
            continue
        info = graph.info(n)
        if info.kind != "op":
            continue
        comp = comp_of.get(n)
        if comp is None:
            steps.append(_op_step(graph, n))
        elif comp.index not in emitted:
            # a component runs where its first node falls in the order; the order
            # respects every delay-0 edge, so all its outside operands are ready
            emitted.add(comp.index)
            steps.append(LoopStep(index=comp.index, direction=comp.direction,
                                  body=[_op_step(graph, b) for b in comp.nodes], states=comp.states,
                                  initials={s: graph.initials[s] for s in comp.states if s in graph.initials}))
    steps = _order_loops(steps)
    inputs = [ValueSpec(name=i.id, role=i.kind, shape=list(i.shape or ()), seq=i.seq, integer=i.integer,
                        elem=i.elem, card=i.card, view=i.view)
              for i in graph.nodes() if i.kind in ("input", "target")]
    params = []
    for p in graph.params():
        if p.id not in needed:
            continue
        init, args = p.init if p.init else ("default", {})
        params.append(ParamSpec(name=p.id, shape=list(p.shape or ()), init=init, init_args=args,
                                frozen=p.frozen, value=p.value.tolist() if p.value is not None else None,
                                role=_param_role(graph, p.id)))
    consts = {i.id: i.value.tolist() for i in graph.nodes() if i.kind == "const" and i.id in needed}
    return Plan(name=graph.flat.name, inputs=[v for v in inputs if v.role == "input"],
                targets=[v for v in inputs if v.role == "target"], params=params, consts=consts,
                steps=steps, outputs=list(graph.outputs), loss=graph.loss, recurrent=bool(components))


def _needed(graph: Graph) -> set[str]:
    """Everything the outputs and the loss depend on (initial states included)."""
    ends = set(graph.outputs) | ({graph.loss} if graph.loss else set())
    needed = closure(ends, graph.g.predecessors)
    for state, init in graph.initials.items():
        if state in needed:
            closure([init], graph.g.predecessors, needed)
    return needed


def _order_loops(steps: list) -> list:
    """Move each loop after every op step its body reads (they may come later in the node order)."""
    produced_by = {}
    for i, s in enumerate(steps):
        for vid in ([b.id for b in s.body] if isinstance(s, LoopStep) else [s.id]):
            produced_by[vid] = i
    result: list = []
    placed: set[int] = set()

    def place(i: int, stack: set[int]) -> None:
        if i in placed or i in stack:
            return
        stack.add(i)
        s = steps[i]
        body_ids = {b.id for b in s.body} if isinstance(s, LoopStep) else {s.id}
        reads = [src for b in (s.body if isinstance(s, LoopStep) else [s]) for src, _ in b.inputs]
        reads += list(s.initials.values()) if isinstance(s, LoopStep) else []
        for src in reads:
            j = produced_by.get(src)
            if j is not None and src not in body_ids:
                place(j, stack)
        placed.add(i)
        result.append(s)

    for i in range(len(steps)):
        place(i, set())
    return result
