"""The pipeline, stage by stage: text -> AST -> flat equations -> graph -> checks -> plan.

Each stage reads the typed value the previous one made and appends its
problems to one :class:`Diagnostics`; a stage that cannot go on raises
:class:`SpecError` with everything found so far.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from .decoding import Decoder, check_decode
from .errors import Diagnostics, SpecError
from .expand import FlatSpec, expand, name_prefixes
from .gcpause import gc_paused
from .graph import Graph, NodeInfo, build_graph, closure, user_call, user_name
from .loader import Origin, Program, load_again, load_file, load_text, origin
from .ops import REGISTRY
from .optimize import optimize_plan
from .plan import OpStep, Plan, build_plan, verify_plan
from .recurrence import Component, find_components, infer_time_and_type
from .shapes import MemoryBudget, check_memory, infer_shapes


@dataclass
class Front:
    """The compiler's working state on the way to the plan: the flat equations, the graph with
    its shapes, its loops and their order. A pure function of (program, bindings, dropout), so a
    model need not keep it: :attr:`Compiled.graph` and the others make it again when asked."""

    flat: FlatSpec
    graph: Graph
    components: list[Component]
    order: list[str]


@dataclass
class Compiled:
    """Everything the compiler made, for the runtime and for people to inspect."""

    source: Program | Origin   # the parsed program, or where it was read from once dropped
    plan: Plan
    diags: Diagnostics
    bindings: dict[str, int] = field(default_factory=dict)
    decoder: Decoder | None = None   # the spec's decode declaration, checked (nnspec/decoding.py)
    dropout: dict[str, float] = field(default_factory=dict)   # the rates the graph was compiled with
    front: Front | None = None       # None once dropped (``without_front``): made again when read

    @property
    def program(self) -> Program:
        if isinstance(self.source, Origin):   # (parsed again from the texts read the first time)
            self.source = load_again(self.source, Diagnostics(self.diags.sources))
        return self.source

    @property
    def flat(self) -> FlatSpec:
        return self._front().flat

    @property
    def graph(self) -> Graph:
        return self._front().graph

    @property
    def components(self) -> list[Component]:
        return self._front().components

    @property
    def order(self) -> list[str]:
        return self._front().order

    def _front(self) -> Front:
        if self.front is None:   # (the stages passed once: they pass again, to the same graph)
            with gc_paused():
                self.front = build_front(self.program, Diagnostics(self.diags.sources), self.bindings,
                                         self.dropout)
        return self.front

    def without_front(self) -> "Compiled":
        """The same compiled spec without the compiler's working state (the parsed program, the flat
        equations and the graph, several times the plan's size): what a :class:`~nnspec.model.Model`
        keeps. Reading ``program``, ``flat``, ``graph``, ``components`` or ``order`` of it makes them
        again, from the texts the compilation read."""
        where = self.source
        texts = self.diags.sources.texts
        if isinstance(where, Program) and all(f in texts for f in [where.main_file, *where.files]):
            where = origin(where)   # (else kept parsed: its texts are not at hand to parse again)
        return dataclasses.replace(self, source=where, front=None)

    @property
    def kind(self) -> str:
        return "recurrent" if self.components else "feed-forward"

    @property
    def name(self) -> str:
        return self.flat.name

    def to_json(self, indent: int | None = None) -> str:
        """The graph, its loops, shapes and the plan as one JSON document (schema: nnspec.export)."""
        from .export import compiled_document
        return compiled_document(self).model_dump_json(indent=indent)

    @property
    def shapes(self) -> dict[str, tuple]:
        """The per-example shape (no batch or time axis) of each value the spec names and of each
        input, target and parameter; a size the data decides is a string such as ``"vocab(w)"``."""
        shown = {}
        for n in self.graph.g.nodes:
            info = self.graph.info(n)
            if (info.named or info.kind in ("input", "target", "param")) and info.shape is not None:
                shown[n] = tuple(info.shape)
        return shown

    def __repr__(self) -> str:   # the dataclass's own would print every field, the graph and the plan
        count = self.parameter_count()
        sized = all(isinstance(d, int) for p in self.plan.params for d in p.shape)
        params = f"{count:,} parameters" if sized else "parameters sized by its data"
        return f"<Compiled {self.name}: {self.kind}, {params}>"

    def draw(self, unroll: int = 0):
        """The computation graph as a picture (SVG, drawn without Graphviz): ``unroll=3`` draws
        three time steps. In a notebook it shows itself; ``.save("g.svg")`` writes it."""
        from .display import draw
        return draw(self, unroll=unroll)

    def _repr_html_(self) -> str:   # a notebook shows a table of the values and the graph
        from .display import compiled_html
        return compiled_html(self)

    def parameter_count(self) -> int:
        total = 0
        for p in self.plan.params:
            n = 1
            for d in p.shape:
                n *= d if isinstance(d, int) else 0
            total += n
        return total


def compile_program(program: Program, diags: Diagnostics, bindings: dict[str, int] | None = None,
                    dropout: dict[str, float] | None = None, optimize: bool = True,
                    timings: dict[str, float] | None = None, memory: MemoryBudget | None = None) -> Compiled:
    """``timings``, when given, receives the CPU seconds (process time, steady on a loaded machine)
    spent validating, planning and optimising.
    ``memory``: the budget the network must fit (default: one example, forward only, within
    ``NNSPEC_MEMORY_LIMIT`` or 4 GiB — a lower bound on any use, so what fails it cannot run)."""
    with gc_paused():
        return _compile(program, diags, bindings, dropout, optimize, timings, memory)


def _compile(program: Program, diags: Diagnostics, bindings: dict[str, int] | None, dropout: dict[str, float] | None,
             optimize: bool, timings: dict[str, float] | None, memory: MemoryBudget | None = None) -> Compiled:
    clock = time.process_time()
    diags.raise_if_errors()
    front = build_front(program, diags, bindings, dropout)
    check_memory(front.graph, diags, memory or MemoryBudget.default())
    diags.raise_if_errors()
    clock = _lap(timings, "validate", clock)
    plan = build_plan(front.graph, front.order, front.components)
    # A loss of its activation (cross_entropy(softmax(z), y)) means the loss of the logits, computed
    # exactly, optimised or not: through the probabilities it would be clipped at 1e-12, and the
    # optimiser would change the number (docs/language.md §9)
    if any(isinstance(s, OpStep) and REGISTRY[s.op].logits_form for s in plan.steps):
        plan = optimize_plan(plan, passes=("fuse_losses",))
        plan.passes = []        # the meaning of the loss, not an optimisation
    clock = _lap(timings, "plan", clock)
    if optimize:
        plan = optimize_plan(plan)   # checks the plan after each pass (nnspec.plan.verify_plan)
        _lap(timings, "optimise", clock)
    else:
        verify_plan(plan, stage="build_plan")
    decoder = check_decode(front.flat, front.graph, plan, diags)
    diags.raise_if_errors()
    return Compiled(program, plan, diags, dict(bindings or {}), decoder, dict(dropout or {}), front)


def build_front(program: Program, diags: Diagnostics, bindings: dict[str, int] | None = None,
                dropout: dict[str, float] | None = None) -> Front:
    """The stages before the plan: expand, graph, loops, dropout, time and types, shapes, and the
    checks of ends and losses; raises :class:`SpecError` with what a stage found."""
    flat = expand(program, diags)
    diags.raise_if_errors()
    graph = build_graph(flat, diags)
    diags.raise_if_errors()
    components = find_components(graph, diags)
    diags.raise_if_errors()
    if dropout:
        insert_dropout(graph, dropout, diags)
    order = infer_time_and_type(graph, components, diags)
    diags.raise_if_errors()
    check_ends(graph, diags)
    infer_shapes(graph, order, diags, bindings)
    diags.raise_if_errors()
    check_losses(graph, diags)
    diags.raise_if_errors()
    return Front(flat, graph, components, order)


def _lap(timings: dict | None, stage: str, since: float) -> float:
    now = time.process_time()
    if timings is not None:
        timings[stage] = now - since
    return now


def compile_text(text: str, file: str = "<string>", bindings: dict[str, int] | None = None,
                 base_dir: Path | None = None, dropout: dict[str, float] | None = None,
                 optimize: bool = True) -> Compiled:
    diags = Diagnostics()
    program = load_text(text, file, diags, base_dir=base_dir)
    return compile_program(program, diags, bindings, dropout, optimize)


def compile_file(path: str | Path, bindings: dict[str, int] | None = None,
                 dropout: dict[str, float] | None = None, optimize: bool = True) -> Compiled:
    diags = Diagnostics()
    program = load_file(path, diags)
    return compile_program(program, diags, bindings, dropout, optimize)


def check_ends(graph: Graph, diags: Diagnostics) -> None:
    """Every value must lead to an output or the loss; a network needs at least one of them."""
    ends = set(graph.outputs) | ({graph.loss} if graph.loss else set())
    if not ends:
        first = next((i.span for i in graph.nodes() if i.span is not None and i.span.file == graph.flat.file), None)
        where = first.model_copy(update={"end_line": first.line, "end_column": first.column + 1}) if first else None
        diags.error("the network has no output and no loss; declare 'output NAME' or add 'loss ...'", where)
        return
    for loss in graph.losses:
        reads = closure([loss], graph.g.predecessors)
        if not any(graph.info(n).kind in ("input", "target", "param") for n in reads):
            diags.error("this loss is a constant: it reads no input, target or parameter, so there is nothing "
                        "to learn; a loss compares a prediction with a target, e.g. 'loss cross_entropy(p, y)'",
                        graph.info(loss).span)
    useful = closure(list(ends) + list(graph.initials.values()), graph.g.predecessors)
    reported = set()    # library cells called and never used: one error each, at the user's call
    for info in graph.nodes():
        if info.id in useful or not info.named:
            continue
        call = user_call(graph, info.id) if info.span is not None and info.span.file.startswith("<stdlib>") else None
        # the value the user named (``enc`` of ``enc = bidirectional(lstm)(x)``, not ``enc.fwd``); one
        # written in the user's file is reported at its own place below
        top = next((n for n in name_prefixes(info.id) if graph.g.has_node(n) and n not in useful), None)
        if call is not None and top is not None:
            top_span = graph.info(top).span
            if top not in reported and (top_span is None or top_span.file.startswith("<stdlib>")):
                reported.add(top)
                diags.error(f"'{top}' is computed but never used: it reaches no output and no loss",
                            graph.flat.calls[call])
            continue
        if info.kind == "target":
            diags.error(f"target '{info.id}' is never used; compare it with a prediction in a loss, "
                        f"e.g. 'loss cross_entropy(p, {info.id})'", info.span)
        elif info.kind == "input":
            diags.error(f"input '{info.id}' is never used", info.span)
        elif info.kind == "param":
            diags.error(f"parameter '{info.id}' is never used", info.span)
        else:
            diags.error(f"'{info.id}' is computed but never used: it reaches no output and no loss", info.span)


def check_losses(graph: Graph, diags: Diagnostics) -> None:
    """A loss is one number for the whole batch: loss functions (the mean over the examples and
    their real steps), arithmetic on them with numbers and parameters, and terms of parameters
    alone (a regulariser). An output has a value per example, so it cannot be such a number."""
    for node in graph.losses:
        info = graph.info(node)
        # a loss function's mean, or a regulariser: a term of parameters alone (walked only then)
        one_number = info.whole_batch or not any(graph.info(a).kind in ("input", "target")
                                                 for a in closure([node], graph.g.predecessors))
        if not one_number:
            what = user_name(info, diags.sources)
            diags.error(f"a loss must be one number for the whole batch, but {what} has a value for each example"
                        f"{' and each step' if info.seq else ''}; compare a prediction with a target with a loss "
                        f"function, e.g. 'loss mse(pred, y)' or 'loss cross_entropy(p, y)'", info.span)
        elif tuple(info.shape or ()) != ():
            diags.error(f"a loss must be one number, but {user_name(info, diags.sources)} has size "
                        f"{list(info.shape)}", info.span)
    for name in graph.outputs:
        info = graph.info(name)
        if info.whole_batch:
            diags.error(f"output '{name}' is a loss, one number for the whole batch; an output has a value for "
                        f"each example (write 'loss {name}' to train on it)", info.span)


def insert_dropout(graph: Graph, rates: dict[str, float], diags: Diagnostics) -> None:
    """Dropout on a value: its readers at the same step (outside its own loop) see dropout(value)."""
    g = graph.g
    for name, p in rates.items():
        if name not in g:
            diags.error(f"dropout on unknown value '{name}'", graph.flat.train.span if graph.flat.train else None)
            continue
        src = graph.info(name)
        dropped = f"{name}.dropout"
        readers = [v for v in list(g.successors(name))
                   if (src.component is None or graph.info(v).component != src.component)]
        op = "word_dropout" if src.kind == "input" and src.elem in ("token", "char") else "dropout"
        info = NodeInfo(id=dropped, kind="op", span=src.span, op=op, inputs=[(name, 0)], attrs={"p": p})
        g.add_node(dropped, info=info)
        g.add_edge(name, dropped, delays={0})
        for v in readers:
            vi = graph.info(v)
            if any(s == name and d == 0 for s, d in vi.inputs):
                vi.inputs = [(dropped, d) if (s == name and d == 0) else (s, d) for s, d in vi.inputs]
                delays = g.edges[name, v]["delays"]
                delays.discard(0)
                if not delays:
                    g.remove_edge(name, v)
                g.add_edge(dropped, v, delays={0})


__all__ = ["Compiled", "compile_text", "compile_file", "compile_program", "SpecError"]
