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

from .errors import Span
from .axes import combine, loop_axis, nested_axes
from .graph import DEFAULT_AXIS, Graph, closure
from .ops import REGISTRY
from .ops.registry import ProductForm
from .recurrence import Component
from .syntax.construct import TrustedConstruct, construct

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
    axes: list[str] = []   # its sequence axes (nnspec/axes.py); [] for a value of each example
    nested: bool = False   # a sequence of sequences: its last axis is inner (each word's characters)


class ParamSpec(BaseModel):
    name: str
    shape: list[Any]
    init: str = "default"
    init_args: dict[str, float] = {}
    frozen: bool = False
    value: Any = None      # literal values from the spec
    role: str = "weight"   # weight | recurrent | bias | table | initial


class OpStep(TrustedConstruct, BaseModel):   # model_construct: see syntax/construct.py
    kind: Literal["op"] = "op"
    id: str
    op: str
    inputs: list[Operand]
    attrs: dict[str, Any] = {}
    seq: bool = False
    integer: bool = False
    shape: list[Any] = []
    axes: list[str] = []   # its sequence axes, outermost first (nnspec/axes.py)
    # the equation (or sub-expression) this step computes, so a failure at run time points at the
    # source as a spec error does; a step an optimisation pass makes keeps the span of what it replaces
    span: Span | None = None


class LoopStep(TrustedConstruct, BaseModel):
    kind: Literal["loop"] = "loop"
    index: int
    direction: int                  # +1: t = 0..T-1, -1: t = T-1..0
    body: list[OpStep]
    states: list[str]               # values read at another step
    initials: dict[str, str] = {}   # state -> value holding its initial state
    axis: str = "time"              # the sequence axis it runs over (its T and lengths)


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

    def text(self) -> str:
        """The plan as text (``nnspec expand --plan``): see :func:`format_plan`."""
        return format_plan(self)

    def span_of(self, value: str) -> Span | None:
        """The source span of the step computing ``value`` (None for an input or a parameter)."""
        for s in self.steps:
            for b in (s.body if isinstance(s, LoopStep) else [s]):
                if b.id == value:
                    return b.span
        return None


def _op_step(graph: Graph, n: str) -> OpStep:
    info = graph.info(n)
    # built from the checked graph: no need to validate again (a 10,000-equation spec
    # spent most of its planning time in pydantic validation)
    return OpStep.model_construct(kind="op", id=n, op=info.op, inputs=[tuple(x) for x in info.inputs],
                                  attrs=dict(info.attrs), seq=bool(info.seq), integer=bool(info.integer),
                                  shape=list(info.shape or ()), axes=list(info.axes), span=info.span)


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
    nested = nested_axes(graph)
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
                                  initials={s: graph.initials[s] for s in comp.states if s in graph.initials},
                                  axis=loop_axis(graph.info(comp.nodes[0]).axes, nested)))
    steps = _order_loops(steps)
    # inputs, targets and parameters made from the checked graph as the steps are, without validation
    # (each a few hundred bytes less for the fields set all such models share: a model holds them)
    inputs = [construct(ValueSpec, dict(name=i.id, role=i.kind, shape=list(i.shape or ()), seq=bool(i.seq),
                                        integer=bool(i.integer), elem=i.elem, card=i.card,
                                        view=None if i.view is None else tuple(i.view), axes=list(i.axes),
                                        nested=bool(i.inner_axis)))
              for i in graph.nodes() if i.kind in ("input", "target")]
    params = []
    for p in graph.params():
        if p.id not in needed:
            continue
        init, args = p.init if p.init else ("default", {})
        fields = dict(name=p.id, shape=list(p.shape or ()), init=init, init_args=args, frozen=bool(p.frozen),
                      value=p.value.tolist() if p.value is not None else None, role=_param_role(graph, p.id))
        if all(type(a) in (int, float) for a in args.values()):   # (as pydantic's float fields take them)
            params.append(construct(ParamSpec, fields | {"init_args": {k: float(a) for k, a in args.items()}}))
        else:
            params.append(ParamSpec(**fields))
    consts = {i.id: i.value.tolist() for i in graph.nodes() if i.kind == "const" and i.id in needed}
    # made without validation, as its steps are: pydantic's would ask each step whether it is a
    # Mapping, filling the negative caches of every Mapping class (memory a model is charged for)
    plan = construct(Plan, dict(name=graph.flat.name, inputs=[v for v in inputs if v.role == "input"],
                                targets=[v for v in inputs if v.role == "target"], params=params, consts=consts,
                                steps=steps, outputs=list(graph.outputs), loss=graph.loss,
                                recurrent=bool(components), dtype="float32", passes=[]))
    # the shape rules are checked on the plan the runtime gets (the last pass's, or the compiler's)
    verify_plan(plan, stage="build_plan", shapes=False)
    return plan


def _needed(graph: Graph) -> set[str]:
    """Everything the outputs and the loss depend on (initial states included)."""
    ends = set(graph.outputs) | ({graph.loss} if graph.loss else set())
    needed = closure(ends, graph.g.predecessors)
    pending = dict(graph.initials)
    while True:   # an initial state may make another loop needed, whose initial state comes earlier
        ready = [s for s in pending if s in needed]
        if not ready:
            return needed
        for state in ready:
            closure([pending.pop(state)], graph.g.predecessors, needed)


def _order_loops(steps: list) -> list:
    """Move each loop after every op step its body reads (they may come later in the node order)."""
    produced_by = {}
    for i, s in enumerate(steps):
        for vid in ([b.id for b in s.body] if isinstance(s, LoopStep) else [s.id]):
            produced_by[vid] = i
    result: list = []
    placed: set[int] = set()
    for i in range(len(steps)):
        _place(i, set(), steps, produced_by, placed, result)
    return result


def _place(i: int, stack: set[int], steps: list, produced_by: dict, placed: set[int], result: list) -> None:
    """Append step i to ``result`` after the steps it reads (a function of its own: a closure that
    calls itself is a reference cycle, left for the garbage collector with all it holds)."""
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
            _place(j, stack, steps, produced_by, placed, result)
    placed.add(i)
    result.append(s)


def plan_axes(plan: Plan) -> dict[str, tuple]:
    """The sequence axes of every input and step of a plan. Steps keep the axes the compiler
    inferred; a step an optimisation pass made (a fused product, a slice of it) has those of
    its operands."""
    axes: dict[str, tuple] = {v.name: tuple(v.axes) or ((DEFAULT_AXIS,) if v.seq else ())
                              for v in plan.inputs + plan.targets}

    def of(step: OpStep, loop_axis: str | None) -> tuple:
        if step.axes:
            return tuple(step.axes)
        if loop_axis is not None:
            return (loop_axis,)
        if not step.seq:
            return ()
        out: tuple = ()
        for src, _ in step.inputs:
            out = combine(out, axes.get(src, ())) or out
        return out or (DEFAULT_AXIS,)

    for s in plan.steps:
        for b in (s.body if isinstance(s, LoopStep) else [s]):
            axes[b.id] = of(b, s.axis if isinstance(s, LoopStep) else None)
    return axes


def plan_axis_names(plan: Plan) -> set[str]:
    """The sequence axes a plan's inputs bring: more than one, and each has its own T and lengths."""
    return {a for v in plan.inputs + plan.targets for a in (v.axes or ([DEFAULT_AXIS] if v.seq else []))}


def format_plan(plan) -> str:
    """The execution plan as text: one line per step, in the order the runtime runs them.

    Products, sums and slices are written as in the spec (``W @ x``, ``a + b``,
    ``x[0:128]``), so fused steps are easy to spot: ``concat_rows`` joins the
    weights of gates once per pass, one product serves them all, and each gate is
    a slice of it. The right margin says what a step runs over: ``once`` (per
    pass, parameters only), ``B`` (every example), ``T x B`` (every step of every
    sequence at once) or, inside a loop, ``per t``.
    """
    params = {p.name for p in plan.params} | set(plan.consts)
    static = set(params)
    seq = {v.name for v in plan.inputs + plan.targets if v.seq}
    for s in plan.steps:
        for b in (s.body if isinstance(s, LoopStep) else [s]):
            if b.seq or any(src in seq for src, _ in b.inputs):
                seq.add(b.id)
        if not isinstance(s, LoopStep) and s.inputs and all(src in static for src, _ in s.inputs):
            static.add(s.id)

    def ref(operand):
        src, d = operand
        return src + (f"[t{d:+d}]" if d else "")

    def shape(dims):
        return "[" + ", ".join(str(d) for d in dims) + "]" if len(dims) else ""

    def rhs(s):
        args, op = [ref(x) for x in s.inputs], REGISTRY[s.op]
        if op.operator and len(args) == 2:
            return f"{args[0]} {op.operator} {args[1]}"
        if isinstance(op.fused, ProductForm) and op.fused.bias:     # linear: W @ x + b in one step
            return f"{args[0]} @ {args[1]} + {args[2]}"
        if op.last_axis_view:
            stop = s.attrs.get("stop")
            return f"{args[0]}[{s.attrs.get('start', 0)}:{'' if stop is None else stop}]"
        attrs = [f"{k} = {v}" for k, v in s.attrs.items()]
        return f"{s.op}({', '.join(args + attrs)})"

    rows: list[tuple[str, str, str, str]] = []   # indent, lhs, rhs, margin

    named = plan_axis_names(plan) - {DEFAULT_AXIS}     # a plan with named axes shows them
    axes = plan_axes(plan) if named else {}

    def add_step(s, indent, in_loop):
        margin = "per t" if in_loop else ("once" if s.id in static else ("T x B" if s.id in seq else "B"))
        if named and not in_loop and s.id in seq:
            over = axes.get(s.id) or (axes.get(s.inputs[0][0]) if s.inputs else ()) or ("T",)
            margin = " x ".join(over) + " x B"   # a loss: over its first operand's steps
        rows.append((indent, f"{s.id}{shape(s.shape)}", rhs(s), margin))

    header = [f"plan {plan.name} ({'recurrent' if plan.recurrent else 'feed-forward'})"]
    if plan.passes:
        header.append(f"  optimised: {', '.join(plan.passes)}")
    for v in plan.inputs + plan.targets:
        header.append(f"  {v.role} {v.name}{shape(v.shape)}" + (" : seq" if v.seq else "")
                      + (f"({v.axes[-1]})" if named and v.seq and v.axes else ""))
    for p in plan.params:
        header.append(f"  param {p.name}{shape(p.shape)} init {p.init}" + (" frozen" if p.frozen else ""))
    lines: list = []
    for s in plan.steps:
        if isinstance(s, LoopStep):
            n_mm = sum(isinstance(REGISTRY[b.op].fused, ProductForm) for b in s.body)
            views = sum(REGISTRY[b.op].last_axis_view for b in s.body)
            over = f"loop over {s.axis}" if named else "loop over t"
            rows.append(("  ", f"{over} ({'forward' if s.direction > 0 else 'backward'} in time), "
                               f"states {', '.join(s.states)}: {len(s.body) - views} ops per step "
                               f"({n_mm} product{'s' if n_mm != 1 else ''}) and {views} slices", None, None))
            for b in s.body:
                add_step(b, "    ", True)
        else:
            add_step(s, "  ", False)
    width = max((len(i) + len(lhs) for i, lhs, r, _ in rows if r is not None), default=0)
    rwidth = max((len(r) for _, _, r, _ in rows if r is not None and len(r) <= 70), default=0)
    for indent, lhs, r, margin in rows:
        if r is None:
            lines.append(indent + lhs)
        else:
            lines.append(f"{(indent + lhs).ljust(width)} = {r.ljust(rwidth)}  {margin}")
    return "\n".join(header + lines)


# ---- the plan's invariants ------------------------------------------------------------------

class PlanInvariantError(Exception):
    """An internal error: a stage of the compiler (``stage``: ``build_plan`` or an optimisation
    pass) produced a plan that breaks an invariant. Never a user's mistake: a bug to report."""

    def __init__(self, stage: str, problems: list[str]):
        self.stage, self.problems = stage, problems
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        super().__init__(f"internal error: the plan after {stage} is broken "
                         f"(a bug in nnspec, please report it):\n  {shown}")


class _Fresh:
    """An unknown dim a shape rule made up: it agrees with any dim."""

    __slots__ = ()


class _CheckDims:
    """The ``DimSolver`` a shape rule sees when its step is checked: every dim of a plan is already
    decided (an int or a size named by the data), so unifying only compares."""

    def unify(self, a, b, why: str = ""):
        if isinstance(a, _Fresh):
            return b
        if isinstance(b, _Fresh) or a == b:
            return a
        from .ops import ShapeError
        raise ShapeError(f"{a} != {b}" + (f" ({why})" if why else ""))

    def fresh(self, hint: str = ""):
        return _Fresh()

    def value(self, d):
        return d if isinstance(d, int) and not isinstance(d, bool) else None

    def resolve(self, d):
        return d


def verify_plan(plan: Plan, stage: str | None = None, shapes: bool = True) -> list[str]:
    """The invariants the runtime relies on, checked in one walk (O(steps)). Returns the problems
    found; with ``stage`` (what built the plan), raises :class:`PlanInvariantError` when there are any.

    * every value is defined once, and every operand is defined before the step reading it: an
      input, a target, a parameter, a constant, an earlier step, or (read at ``t-1``/``t+1`` inside
      a loop) one of that loop's states;
    * a loop runs forward (+1) or backward (-1); its states are values of its body, and their
      initial states are defined before the loop;
    * each step's op is in the registry, takes that many inputs, and (unless ``shapes`` is False:
      the shape rules are most of the cost) its shape rule gives the step's shape from its
      operands' shapes;
    * the outputs and the loss are values of the plan, and the loss is one number.
    """
    if not shapes and _structure_holds(plan):
        return []   # the common case, checked lean; a plan that fails is walked again below for the reasons
    check = _PlanCheck(plan, shapes)
    for s in plan.steps:
        if isinstance(s, LoopStep):
            check.loop(s)
        else:
            check.step(s, _NO_BODY, _NO_STATES)
    check.ends()
    if check.problems and stage is not None:
        raise PlanInvariantError(stage, check.problems)
    return check.problems


class _PlanCheck:
    """One walk of ``verify_plan``: the values defined so far with their shapes, and the problems."""

    def __init__(self, plan: Plan, check_shapes: bool):
        self.plan, self.check_shapes = plan, check_shapes
        self.problems: list[str] = []
        self.shapes: dict[str, list] = {}      # every value defined so far -> its shape
        self.computed: set[str] = set()        # the values a step computes
        self.dims = _CheckDims()
        for v in plan.inputs + plan.targets:
            self.shapes[v.name] = list(v.shape)
        for p in plan.params:
            self._leaf(p.name, list(p.shape), "a parameter and an input")
        for c, value in plan.consts.items():
            self._leaf(c, _nested_shape(value), "a constant and an input or parameter")

    def _leaf(self, name: str, shape: list, kinds: str) -> None:
        if name in self.shapes:
            self.problems.append(f"'{name}' is defined twice ({kinds})")
        self.shapes[name] = shape

    def loop(self, s: LoopStep) -> None:
        problems = self.problems
        if s.direction not in (1, -1):
            problems.append(f"loop {s.index}: direction {s.direction} is neither +1 nor -1")
        body = {b.id: b.shape for b in s.body}
        for state in s.states:
            if state not in body:
                problems.append(f"loop {s.index}: state '{state}' is not a value of its body")
        for state, initial in s.initials.items():
            if state not in s.states:
                problems.append(f"loop {s.index}: '{state}' has an initial state but is not a state")
            if initial not in self.shapes:
                problems.append(f"loop {s.index}: the initial state '{initial}' of '{state}' is not "
                                f"defined before the loop")
        states = set(s.states)
        for b in s.body:
            self.step(b, body, states)

    def step(self, s: OpStep, body: dict[str, list], states: set[str] | frozenset) -> None:
        """Check one step (of a loop's ``body`` with its ``states``, or of the plan) and define its value."""
        shapes, problems, sid = self.shapes, self.problems, s.id
        if sid in shapes:
            problems.append(f"'{sid}' is defined twice")
        self.computed.add(sid)
        op = REGISTRY.get(s.op)
        if op is None:
            problems.append(f"'{sid}': unknown op '{s.op}'")
        elif op.arity is not None and len(s.inputs) != op.arity:
            problems.append(f"'{sid}': {s.op} takes {op.arity} input(s), the step has {len(s.inputs)}")
        for src, delay in s.inputs:
            if src in shapes:
                continue
            if delay != 0 and src in body:   # a loop state, read at another step
                if src not in states:
                    problems.append(f"'{sid}' reads '{src}' at t{delay:+d}, which is not a state of its loop")
            else:
                where = "in its loop or before" if body else "before it"
                problems.append(f"'{sid}' reads '{src}', which is not defined {where}")
                shapes[sid] = s.shape
                return
        if self.check_shapes and op is not None:
            self._shape(s, op, body)
        shapes[sid] = s.shape

    def _shape(self, s: OpStep, op, body: dict[str, list]) -> None:
        """Whether the op's shape rule gives the step's shape from its operands' shapes."""
        operand_shapes = [tuple(self.shapes[src] if src in self.shapes else body[src]) for src, _ in s.inputs]
        try:
            got = op.shape(operand_shapes, s.attrs, self.dims)
            if len(got) != len(s.shape):
                raise ValueError(f"rank {len(got)}")
            for a, b in zip(got, s.shape):
                self.dims.unify(a, b)
        except Exception as e:  # a shape rule's complaint, or a rank that differs
            detail = f": {e}" if str(e) else ""
            self.problems.append(f"'{s.id}': {s.op} of shapes {[list(o) for o in operand_shapes]} does not "
                                 f"give the step's shape {list(s.shape)}{detail}")

    def ends(self) -> None:
        """The outputs are values of the plan; the loss is computed by a step and is one number."""
        plan, problems = self.plan, self.problems
        for o in plan.outputs:
            if o not in self.shapes:
                problems.append(f"the output '{o}' is not a value of the plan")
        if plan.loss is not None:
            if plan.loss not in self.computed:
                problems.append(f"the loss '{plan.loss}' is not computed by a step")
            elif self.shapes[plan.loss] not in ([], [1]):   # a loss op, or a (weighted) sum of losses
                problems.append(f"the loss '{plan.loss}' has shape {self.shapes[plan.loss]}, not one number")


def _structure_holds(plan: Plan) -> bool:
    """True when ``verify_plan(plan, shapes=False)`` finds nothing: the same invariants, in one lean
    walk that answers yes or no (the optimiser checks the plan after each of its passes)."""
    defined = {v.name for v in plan.inputs + plan.targets}
    for group in ([p.name for p in plan.params], list(plan.consts)):
        if not defined.isdisjoint(group) or len(set(group)) != len(group):
            return False
        defined.update(group)
    arity = {name: op.arity for name, op in REGISTRY.items()}.get   # a name not there: an unknown op
    define, unknown = defined.add, _UNKNOWN
    no_states: frozenset[str] = frozenset()
    loss, loss_from_step = plan.loss, False
    for s in plan.steps:
        if type(s) is LoopStep:
            body, states = s.body, set(s.states)
            if s.direction not in (1, -1) or not states.issubset(b.id for b in body):
                return False
            if not (s.initials.keys() <= states and defined.issuperset(s.initials.values())):
                return False
        else:
            body, states = (s,), no_states
        for b in body:
            sid, inputs, takes = b.id, b.inputs, arity(b.op, unknown)
            if sid in defined or takes is unknown or (takes is not None and len(inputs) != takes):
                return False
            define(sid)
            for src, delay in inputs:
                if src not in defined and not (delay and src in states):
                    return False
            if sid == loss:
                loss_from_step = b.shape in ([], [1])
    if not defined.issuperset(plan.outputs):
        return False
    return loss is None or loss_from_step


_UNKNOWN = object()
_NO_BODY: dict[str, list] = {}
_NO_STATES: frozenset[str] = frozenset()


def _nested_shape(value) -> list:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape
