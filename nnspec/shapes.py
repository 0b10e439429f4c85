"""Shape inference by unification.

Every per-example size is a dim: a known int, a data-bound symbol such as
``vocab(w)`` (the vocabulary size, known once data is read; see
``bindings``), or an unknown variable. Op shape rules (in the op registry)
unify dims; sizes declared in the spec (``h[64]``) and parameter literals pin
them down. A parameter created by first use gets its shape from its place: a
matrix ``(m, n)`` left of ``@``, the shape of the value beside it in ``+ - * /``.

Recurrent values are read (at ``[t-1]``) before they are computed in graph
order; when inference is otherwise stuck, such a value provisionally takes the
shape of the value it is combined with, and its own equation checks it later.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Callable

from .errors import Diagnostics, SpecError
from .limits import format_size, size_setting
from .graph import Graph, NodeInfo, user_call, user_name, where
from .ops import REGISTRY, ShapeError
from .ops.registry import show_shape, unify_dims


class Sym(str):
    """A size named by the data, e.g. ``vocab(w)``; equal only to itself until bound."""


class Var:
    __slots__ = ("parent", "value", "hint")

    def __init__(self, hint: str = ""):
        self.parent: Var | None = None
        self.value: Any = None
        self.hint = hint

    def __repr__(self) -> str:
        return "?"


class Solver:
    """Union-find over dims (the ``DimSolver`` the op registry's shape rules use).

    ``on_change(var)``, when given, is called whenever an unknown root var is decided (gets a
    value) or merged into another."""

    def __init__(self, on_change=None):
        self.on_change = on_change

    def find(self, d):
        if not isinstance(d, Var):
            return d
        root = d
        while root.parent is not None:
            root = root.parent
        while d.parent is not None:  # path compression
            d.parent, d = root, d.parent
        return root.value if root.value is not None else root

    def fresh(self, hint: str = "") -> Var:
        return Var(hint)

    def value(self, d) -> int | None:
        v = self.find(d)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    def unify(self, a, b, why: str = ""):
        a, b = self.find(a), self.find(b)
        if isinstance(a, Var) and isinstance(b, Var):
            if a is not b:
                a.parent = b
                self._changed(a)
            return b
        if isinstance(a, Var):
            a.value = b
            self._changed(a)
            return b
        if isinstance(b, Var):
            b.value = a
            self._changed(b)
            return a
        if a != b:
            raise ShapeError(f"{_show_dim(a)} ≠ {_show_dim(b)}")
        return a

    def resolve(self, shape) -> tuple:
        return tuple(self.find(d) for d in shape)

    def _changed(self, root: Var) -> None:
        if self.on_change is not None:
            self.on_change(root)


def _show_dim(d) -> str:
    return "?" if isinstance(d, Var) else str(d)


def owner(n: str) -> str:
    """The user's name for a node: sub-expression ids (``y#3``) belong to the value ``y``."""
    return n.split("#", 1)[0]


def show(shape) -> str:
    return "[" + ", ".join(_show_dim(d) for d in shape) + "]"


def is_known(shape) -> bool:
    return all(not isinstance(d, Var) for d in shape)


class _Blocked:
    """Nodes that had every operand but could not be decided yet (an operand's size is still
    unknown), and which of them are worth retrying.

    Entries keep the order in which sweeps over a list of blocked nodes retried them: an entry
    stays in place while its node keeps failing; a node blocked while a sweep handles the
    success of an entry is placed right there (its key extends that entry's key), any other at
    the end. A sweep retries only the entries of *dirty* nodes, those for which one of the unknown
    dims of their operands was decided or merged since their last try: any other would fail
    again in the same way, with no effect. So a sweep costs what changed, not the length of the
    list (sweeping it all after every unstick was quadratic in the number of recurrent layers of
    a spec with sizes missing).
    """

    def __init__(self):
        self.entries: dict[str, list[tuple[tuple, int]]] = {}  # node -> [(key, serial number)]
        self.dirty: set[str] = set()
        self._watchers: dict[Var, list[str]] = {}  # unknown root dim -> the nodes to wake when it changes
        self._top = self._serial = self._children = 0
        self._inside: tuple | None = None          # key of the entry whose success is being handled
        self._ahead: list | None = None            # the current sweep's heap of entries to retry
        self._sweep_end = 0                        # entries numbered from here on came during the sweep
        self._at: tuple = ()                       # key of the entry the sweep is at

    def add(self, n: str, unknown_dims) -> None:
        if self._inside is None:
            self._top += 1
            key: tuple = (self._top,)
        else:
            self._children += 1
            key = self._inside + (self._children,)
        self.entries.setdefault(n, []).append((key, self._serial))
        self._serial += 1
        self.watch(n, unknown_dims)

    def watch(self, n: str, unknown_dims) -> None:
        self.dirty.discard(n)
        for d in unknown_dims:
            self._watchers.setdefault(d, []).append(n)

    def changed(self, d: Var) -> None:
        for n in self._watchers.pop(d, ()):
            if n in self.dirty or n not in self.entries:
                continue
            self.dirty.add(n)
            if self._ahead is not None:  # its entries the sweep has not passed yet are retried in this sweep
                for key, serial in self.entries[n]:
                    if serial < self._sweep_end and key > self._at:
                        heapq.heappush(self._ahead, (key, serial, n))

    def start_sweep(self) -> None:
        self._ahead = [(key, serial, n) for n in self.dirty for key, serial in self.entries.get(n, ())]
        heapq.heapify(self._ahead)
        self._sweep_end, self._at = self._serial, ()

    def next(self) -> tuple[tuple, str] | None:
        """The next entry of a dirty node, in order; None at the end of the sweep."""
        while self._ahead:
            key, _, n = heapq.heappop(self._ahead)
            if n in self.dirty:
                self._at = key
                return key, n
        self._ahead = None
        return None

    def decided(self, n: str) -> None:
        self.entries.pop(n, None)
        self.dirty.discard(n)

    def placing_after(self, key: tuple | None) -> None:
        """Nodes blocked from now on go right after ``key`` (None: at the end)."""
        self._inside, self._children = key, 0


class ShapeInference:
    """Decides the shapes of a graph's nodes in one pass over its dependencies.

    A node is tried as soon as every node it depends on has a shape, so a chain is
    decided in one go. Three worklists keep the whole run linear in the size of the
    spec (a sweep over all nodes per recurrent value was quadratic):

    * ``_missing``: per node, how many of the nodes it depends on still lack a shape;
    * ``_blocked``: nodes that had every operand but could not be decided yet (sizes
      still unknown), retried when one of those sizes changes (``_Blocked``);
    * ``_unstickable``: in graph order, the ops that read another op, the only nodes
      ``unstick`` can ever pick; a pointer moves past the ones that cannot be picked
      any more, since nodes only gain shapes.
    """

    def __init__(self, graph: Graph, order: list[str], diags: Diagnostics, bindings: dict[str, int]):
        self.graph, self.order, self.diags = graph, order, diags
        self.bindings = bindings
        self._blocked = _Blocked()
        self.solver = Solver(on_change=self._blocked.changed)
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.reported_calls: set[str] = set()  # cell calls already blamed for an error inside the cell
        self._info = dict(graph.g.nodes(data="info"))
        self._downstream_of_failed: set[str] = set()  # every node some failed node leads to
        self._expanded: set[str] = set()              # nodes whose successors are all in it
        self._failed_unexpanded: list[str] = []
        self._state_of = {init: state for state, init in graph.initials.items()}  # computed initial -> state

    def sym(self, name: str):
        return self.bindings.get(name, Sym(name))

    def declared(self, info: NodeInfo) -> tuple | None:
        if info.declared is None:
            return None
        out = []
        for d in info.declared:
            if isinstance(d, int):
                out.append(d)
            else:  # '?inst.H': a cell size the caller left to inference, one variable per instance
                out.append(self._named_vars.setdefault(d, self.solver.fresh(d)))
        return tuple(out)

    def run(self) -> None:
        self._named_vars: dict[str, Var] = {}
        self._index_dependencies()
        self._shaped = {n for n in self.order if self._info[n].shape is not None}
        self._waiting = set(self.order)
        self._unstickable = [n for n in self.order if self._info[n].kind == "op"
                             and any(self._info[src].kind == "op" for src, _ in self._info[n].inputs)]
        self._next_unstickable = 0
        progress = self._sweep(self.order)
        while self._waiting:
            if progress:
                progress = self._sweep_blocked()
                if progress:
                    continue
            target = self.unstick()
            if target is None:
                for n in self.order:
                    if n in self._waiting:
                        self.try_node(n, final=True)
                break
            before = len(self._waiting)
            self._retry_dependents(target)
            progress = True if len(self._waiting) < before or self._blocked.dirty else progress
        self.check_unresolved()

    def _sweep(self, nodes) -> bool:
        progress = False
        for n in nodes:
            if n in self._waiting and self._missing.get(n, 0) == 0:
                if self.try_node(n, final=False):
                    self._decided(n)
                    progress = True
                    self._retry_dependents(n)
                else:
                    self._block(n)
        return progress

    def _sweep_blocked(self) -> bool:
        """Retry the blocked nodes whose sizes changed; True if one was decided."""
        progress = False
        self._blocked.start_sweep()
        while (entry := self._blocked.next()) is not None:
            key, n = entry
            if n not in self._waiting:
                continue
            if self.try_node(n, final=False):
                self._decided(n)
                progress = True
                self._blocked.placing_after(key)
                self._retry_dependents(n)
                self._blocked.placing_after(None)
            else:  # the entry stays where it is
                self._blocked.watch(n, self._unknown_dims(n))
        return progress

    def _block(self, n: str) -> None:
        self._blocked.add(n, self._unknown_dims(n))

    def _decided(self, n: str) -> None:
        self._waiting.discard(n)
        self._blocked.decided(n)

    def _unknown_dims(self, n: str) -> list[Var]:
        """The unknown dims of n's operands (and of the number of classes they hold): nothing
        else can make a node that has all its operands decidable."""
        dims = []
        for src, _ in self._info[n].inputs:
            o = self._info[src]
            for d in self.solver.resolve(o.shape or ()) + (self.solver.find(o.card),):
                if isinstance(d, Var):
                    dims.append(d)
        return dims

    def _sources(self, n: str) -> list[str]:
        info = self._info[n]
        return [src for src, _ in info.inputs] + [src for src in (info.shape_like, info.table_for)
                                                     if src is not None]

    def _now_shaped(self, n: str) -> None:
        """n has a shape now (inferred or provisional): one operand fewer for its dependents."""
        if n in self._shaped or self._info[n].shape is None:
            return
        self._shaped.add(n)
        for d in set(self._dependents.get(n, ())):
            if d in self._missing:
                self._missing[d] -= 1

    def _index_dependencies(self) -> None:
        """``_dependents``: the nodes that may be decided once a node has its shape (its readers,
        and the parameters, biases and embedding tables, whose shape follows from it);
        ``_missing``: per node, how many of the nodes it depends on have no shape yet."""
        self._dependents: dict[str, list[str]] = {}
        self._missing: dict[str, int] = {}
        for n in self.order:
            sources = self._sources(n)
            for src in sources:
                self._dependents.setdefault(src, []).append(n)
            self._missing[n] = sum(1 for src in set(sources) if self._info[src].shape is None)

    def _retry_dependents(self, n: str) -> None:
        """Try at once the nodes waiting on n (and so on), instead of one layer per sweep: a
        sweep then decides a whole chain."""
        self._now_shaped(n)
        stack = [n]
        while stack:
            for d in self._dependents.get(stack.pop(), ()):
                if d in self._waiting and self._missing.get(d, 0) == 0:
                    if self.try_node(d, final=False):
                        self._decided(d)
                        self._now_shaped(d)
                        stack.append(d)
                    else:
                        self._block(d)

    def _fail(self, n: str) -> None:
        self.failed.add(n)
        self._failed_unexpanded.append(n)

    # a node is inferred once all its operands have shapes
    def try_node(self, n: str, final: bool) -> bool:
        info = self._info[n]
        if n in self.done or n in self.failed:
            return True
        try:
            shape = self.infer(info, final)
        except ShapeError as e:
            if not final and self.has_unknowns(info):
                return False  # may be decided once more sizes are known
            if not self.after_failure(n):  # else an operand's own error already explains it
                self.report(info, str(e))
            self._fail(n)
            return True
        if shape is None:
            if final:
                explained = info.kind == "const" or self.after_failure(n)
                self._fail(n)
                if not explained:
                    what = f"'{n}'" if "#" not in n else f"a part of '{owner(n)}'"
                    self.emit(n, f"cannot infer the size of {what}; "
                              + (self.param_hint(n, f"give it one, e.g. 'param {n}[4, 3]'") if info.kind == "param"
                                 else f"declare '{owner(n)}' with a size, e.g. '{owner(n)}[64] = ...'"))
            return False
        decl = self.declared(info)
        if decl is not None:
            try:
                shape = unify_dims(shape, decl, self.solver, f"'{n}'")
            except ShapeError:
                self.report(info, f"'{n}' is declared with size {show(decl)} but its value has size "
                                  f"{show(self.solver.resolve(shape))}")
                self._fail(n)
                return True
        shape = self._as_initial_state(n, shape)
        if info.shape is not None:  # provisional shape from a delayed read: check it now
            try:
                shape = unify_dims(shape, info.shape, self.solver, f"'{n}'")
            except ShapeError:
                self.report(info, f"'{n}' has size {show(self.solver.resolve(shape))}, but where it is used "
                                  f"it must have size {show(self.solver.resolve(info.shape))}")
                self._fail(n)
                return True
        info.shape = tuple(shape)
        self.done.add(n)
        return True

    def _as_initial_state(self, n: str, shape: tuple) -> tuple:
        """A computed initial state (``initial h = tanh(Q @ z)``) of a vector has the state's declared
        size, which may decide its unknown sizes (Q's rows). A mismatch is left to
        ``check_initial_states``, which names both."""
        state = self._state_of.get(n)
        decl = self.declared(self._info[state]) if state is not None else None
        if decl is None or len(decl) != len(shape) or len(shape) == 0:
            return shape
        try:
            return unify_dims(shape, decl, self.solver, f"the initial state of '{state}'")
        except ShapeError:
            return shape

    def after_failure(self, n: str) -> bool:
        """A value downstream of one already reported, or a parameter reported as unused: its own
        complaint would only repeat that one. Asked only of nodes that have not failed themselves."""
        if self._info[n].kind == "param" and self.graph.g.out_degree(n) == 0:
            return True
        self._spread_failures()
        return n in self._downstream_of_failed

    def _spread_failures(self) -> None:
        """Add what the failures since the last call lead to. Each node's successors are added once,
        so all questions together cost one walk of the graph (not one walk per question: a spec
        with one early mistake asks about every node after it)."""
        g, stack = self.graph.g, []
        for n in self._failed_unexpanded:
            if n not in self._expanded:
                self._expanded.add(n)
                stack.extend(g.successors(n))
        self._failed_unexpanded.clear()
        while stack:
            n = stack.pop()
            self._downstream_of_failed.add(n)
            if n not in self._expanded:
                self._expanded.add(n)
                stack.extend(g.successors(n))

    def has_unknowns(self, info: NodeInfo) -> bool:
        return any(self._info[s].shape is None or not is_known(self.solver.resolve(self._info[s].shape))
                   for s, _ in info.inputs)

    def operand_shape(self, src: str) -> tuple | None:
        return self._info[src].shape

    def infer(self, info: NodeInfo, final: bool) -> tuple | None:
        s = self.solver
        if info.kind in ("input", "target"):
            if info.elem in ("token", "char"):
                info.card = self.sym(f"vocab({info.id})")
                return ()
            if info.elem == "class":
                info.card = info.classes if info.classes is not None else self.sym(f"classes({info.id})")
                return ()
            if info.elem in ("bag", "char_bag"):
                return (self.sym(f"vocab({info.id})"),)
            return self.declared(info) or ()
        if info.kind == "const":
            return tuple(info.value.shape)
        if info.kind == "param":
            return self.param_shape(info)
        operands = [self.operand_shape(src) for src, _ in info.inputs]
        if any(o is None for o in operands):
            return None
        op = REGISTRY[info.op]
        shape = tuple(op.shape([s.resolve(o) for o in operands], info.attrs, s))
        self.cards(info)
        return shape

    def param_shape(self, info: NodeInfo) -> tuple | None:
        s = self.solver
        if info.value is not None:
            return tuple(info.value.shape)
        decl = self.declared(info)
        if decl is not None:
            return decl
        if info.table_for is not None:
            ids = self._info[info.table_for]
            if ids.shape is None:
                return None
            if not ids.integer:
                hint = f"; declare it 'input {ids.id} : seq of token'" if ids.kind == "input" else ""
                raise ShapeError(f"embed needs token ids, but {user_name(ids, self.diags.sources)} holds real "
                                 f"numbers{hint}")
            return (ids.card if ids.card is not None else s.fresh(), info.table_width)
        if info.matrix:
            return (s.fresh(f"rows of {info.id}"), s.fresh(f"columns of {info.id}"))
        if info.shape_like is not None:
            like = self._info[info.shape_like].shape
            return like  # shares the dims, so later constraints reach both
        return None

    def cards(self, info: NodeInfo) -> None:
        """Integer values carry their number of distinct ids (``card``): class losses need it."""
        operands = [self._info[src] for src, _ in info.inputs]
        if REGISTRY[info.op].target == "class" and len(operands) == 2 and operands[1].card is not None:
            pred = self.solver.resolve(operands[0].shape)
            try:
                self.solver.unify(pred[-1], operands[1].card)
            except ShapeError:
                raise ShapeError(f"{info.op}: the prediction has {_show_dim(pred[-1])} classes but the target "
                                 f"{user_name(operands[1], self.diags.sources)} has {_show_dim(self.solver.find(operands[1].card))}") from None
        elif operands and operands[0].integer and info.integer:  # ids pass through (shift, word_dropout)
            info.card = operands[0].card
        elif info.op == "argmax" and operands:
            info.card = self.solver.resolve(operands[0].shape)[-1]

    def unstick(self) -> str | None:
        """Give one delayed-read value a provisional shape so that inference can go on; returns it.
        The value is the first operand without a shape of the first undecided op (in graph order)
        that reads one."""
        while self._next_unstickable < len(self._unstickable):
            n = self._unstickable[self._next_unstickable]
            info = self._info[n]
            src = self._unshaped_op_operand(info) if n in self._waiting else None
            if src is not None:
                self._info[src].shape = self._provisional_shape(info, src)
                return src
            self._next_unstickable += 1  # nodes only gain shapes and only leave waiting: never a pick again
        return None

    def _provisional_shape(self, reader: NodeInfo, src: str) -> tuple:
        """The shape ``src`` is taken to have until its own equation is inferred (which checks it):
        beside a value of known shape in ``+ - * /``, that shape — but not a scalar's, which says
        nothing (``2 * h[t-1]`` scales a vector as well as a number); else one dimension of unknown
        size, which the declaration or the equation of ``src`` then decides."""
        op = REGISTRY.get(reader.op)
        if op is not None and op.elementwise and op.arity == 2:
            for k, _ in reader.inputs:
                shape = self._info[k].shape
                if k != src and shape is not None and len(shape) > 0:
                    return shape
        return (self.solver.fresh(f"size of {src}"),)

    def _unshaped_op_operand(self, info: NodeInfo) -> str | None:
        return next((src for src, _ in info.inputs if self._info[src].shape is None and self._info[src].kind == "op"),
                    None)

    def report(self, info: NodeInfo, message: str) -> None:
        notes = []
        for src in dict.fromkeys(src for src, _ in info.inputs):  # concat(e, e[t-1]): one note for e
            o = self._info[src]
            if o.shape is not None and o.span is not None and o.span != info.span:
                notes.append((f"{user_name(o, self.diags.sources)} has size {show(self.solver.resolve(o.shape))}", o.span))
        self.emit(info.id, message, notes[:3])

    def emit(self, n: str, message: str, notes=()) -> None:
        """Report at the value, or, inside a standard-library cell, at the user's call of the cell, and
        then only once per call: the other values of the cell would only repeat it."""
        span, inside = where(self.graph, n)
        if inside:
            inst = user_call(self.graph, n)
            if inst in self.reported_calls:
                return
            self.reported_calls.add(inst)
        self.diags.error(message, span, list(notes) + inside)

    def param_hint(self, n: str, otherwise: str) -> str:
        """How to size a parameter: a parameter of a cell gets its size from the cell's call."""
        inst = user_call(self.graph, n)
        sizes = self.graph.flat.call_sizes.get(inst, []) if inst else []
        if sizes:
            cell = next(c for i, c in self.graph.flat.instances if i == inst)
            return f"give '{cell}' its size where it is called, e.g. '{sizes[0]} = 64'"
        return otherwise

    def check_unresolved(self) -> None:
        reported: set[int] = set()
        for n in self.order:
            info = self._info[n]
            if n in self.failed or info.shape is None:
                if n not in self.failed and info.named and info.kind != "const" and not self.after_failure(n):
                    self.emit(n, f"cannot infer the size of '{owner(n)}'; declare it, e.g. "
                                 f"'{owner(n)}[64] = ...'")
                continue
            info.shape = self.solver.resolve(info.shape)
            if isinstance(info.card, Var):
                info.card = self.solver.find(info.card)
            unknown = [d for d in info.shape if isinstance(d, Var)]
            if unknown and (info.named or info.kind == "param") and not any(id(d) in reported for d in unknown) \
                    and not self.after_failure(n):
                reported.update(id(d) for d in unknown)
                if info.table_for is not None:   # an embed's table: named after its embed, not its node id
                    ids = user_name(self._info[info.table_for], self.diags.sources)
                    embed = self.diags.sources.snippet(info.span) if info.span is not None else None
                    embed = f"'{embed}'" if embed else "this embed"
                    self.emit(n, f"cannot infer the number of rows of the table of "
                                 f"{embed} ({show(info.shape)}): the number of "
                                 f"distinct ids in {ids} is unknown; embed token ids, classes or argmax of a "
                                 f"value of known size")
                    continue
                hint = (self.param_hint(n, f"give it a size, e.g. 'param {n}[...]'") if info.kind == "param"
                        else f"declare it, e.g. '{owner(n)}[64] = ...'")
                self.emit(n, f"cannot infer the size of '{owner(n)}' ({show(info.shape)}); {hint}")


def infer_shapes(graph: Graph, order: list[str], diags: Diagnostics, bindings: dict[str, int] | None = None) -> None:
    ShapeInference(graph, order, diags, bindings or {}).run()
    check_initial_states(graph, diags)


def check_initial_states(graph: Graph, diags: Diagnostics) -> None:
    """``initial h = v``: v is numbers (not token or class ids), a single number or of h's shape."""
    for state, init in graph.initials.items():
        if graph.info(init).integer:
            diags.error(f"the initial state of '{state}' is {user_name(graph.info(init), diags.sources)}, which holds "
                        f"token or class ids (whole numbers), not the numbers of a state; embed them first, "
                        f"e.g. 'initial {state} = tanh(W0 @ embed(ids, 8))'",
                        graph.initial_statement(state) or graph.info(init).span)
            continue
        s, i = graph.info(state).shape, graph.info(init).shape
        if s is None or i is None or tuple(i) == () or tuple(i) == tuple(s):
            continue
        diags.error(f"the initial state of '{state}' has size {show(i)}, but '{state}' has size {show(s)}",
                    graph.info(init).span)


# ---- memory: refuse before allocating --------------------------------------------------------

DEFAULT_MEMORY_LIMIT = 4 * 2**30
MEMORY_LIMIT_VARIABLE = "NNSPEC_MEMORY_LIMIT"
RAISE_MEMORY_LIMIT = (f"raise the limit with --memory-limit (e.g. --memory-limit 16GiB), "
                      f"{MEMORY_LIMIT_VARIABLE}=16GiB, or memory_limit_mb in the train block")


@dataclass(frozen=True)
class MemoryBudget:
    """What a run may allocate, and the run it is for: ``batch`` examples of ``steps`` steps at a time,
    training (values, gradients and the optimiser's two moments) or only running forward."""
    limit: int = DEFAULT_MEMORY_LIMIT
    batch: int = 1
    steps: int = 1
    itemsize: int = 4
    training: bool = False

    @classmethod
    def default(cls, **kw) -> "MemoryBudget":
        """The limit from ``NNSPEC_MEMORY_LIMIT`` (e.g. ``8GiB``), else 4 GiB."""
        return cls(limit=default_memory_limit(), **kw)


def default_memory_limit() -> int:
    """The memory a network may use: ``NNSPEC_MEMORY_LIMIT`` or 4 GiB."""
    try:
        return size_setting(MEMORY_LIMIT_VARIABLE, DEFAULT_MEMORY_LIMIT)
    except ValueError as e:
        raise SpecError.single(str(e)) from None


@dataclass
class MemoryCost:
    bytes: int
    node: NodeInfo
    describe: Callable[[], str]   # what it is, made only for an error message: ``what``
    largest_dim: int

    @property
    def what(self) -> str:
        """E.g. "parameter 'W' [100000000, 2] with its gradient and optimiser state"."""
        return self.describe()


def memory_costs(graph: Graph, budget: MemoryBudget, sources=None) -> list[MemoryCost]:
    """A lower bound on what running the network allocates, item by item (sizes still unknown count 0):
    every parameter, every value of a batch (``steps`` steps of a sequence), the history a delayed
    read keeps (``h[t-k]``: k more steps of h) and the tokens a stream keeps beyond a chunk for ``shift``."""
    costs = []
    per_param = 4 if budget.training else 1      # value, gradient, two Adam moments
    per_value = 2 if budget.training else 1      # value and its gradient
    batch = budget.batch

    def named(info) -> str:
        return f"{user_name(info, sources) if sources is not None else repr(info.id)} {show(info.shape)}"

    # (the descriptions are made only for the error: a big spec's check makes none)
    for info in graph.nodes():
        size = _count(info.shape)
        if size is None:
            continue
        largest = max((d for d in info.shape or () if isinstance(d, int)), default=1)
        if info.kind in ("param", "const"):
            extra = " with its gradient and optimiser state" if budget.training and info.kind == "param" else ""
            costs.append(MemoryCost(size * budget.itemsize * (per_param if info.kind == "param" else 1), info,
                                    lambda info=info, extra=extra: f"{info.kind} {named(info)}{extra}", largest))
            continue
        steps = budget.steps if info.seq else 1
        costs.append(MemoryCost(size * batch * steps * budget.itemsize * per_value, info,
                                lambda info=info: f"{named(info)} for a batch of {batch}", largest))
        delay = max((abs(d) for edge in graph.g.succ[info.id].values() for d in edge.get("delays", ())),
                    default=0)
        if delay > 1:
            costs.append(MemoryCost(size * batch * delay * budget.itemsize, info,
                                    lambda info=info, delay=delay: f"the {delay} past steps of {named(info)} that "
                                    f"a delayed read keeps, for a batch of {batch}", max(largest, delay)))
        reads_ahead = info.op in REGISTRY and REGISTRY[info.op].reads_across_chunks
        if reads_ahead and isinstance(info.attrs.get("k"), int) and abs(info.attrs["k"]) > 1:
            k = abs(info.attrs["k"])
            costs.append(MemoryCost(k * batch * 8, info, lambda info=info, k=k: f"the {k} tokens after each chunk "
                                    f"of a stream that shift(..., {info.attrs['k']}) reads, for a batch of {batch}", k))
    return costs


def check_memory(graph: Graph, diags: Diagnostics, budget: MemoryBudget) -> int:
    """Refuse, before anything is allocated, a network whose lower-bound memory exceeds the limit; the
    error points at the size in the spec that makes the largest item (or at that item). Returns the bytes."""
    costs = memory_costs(graph, budget, diags.sources)
    total = sum(c.bytes for c in costs)
    if total <= budget.limit:
        return total
    worst = max(costs, key=lambda c: c.bytes)
    diags.error(f"this network needs at least {format_size(total)} of memory, more than the limit of "
                f"{format_size(budget.limit)}: {worst.what} alone takes {format_size(worst.bytes)}; "
                f"{RAISE_MEMORY_LIMIT}", _size_span(graph, worst))
    return total


def _count(shape) -> int | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    n = 1
    for d in shape:
        n *= d
    return n


def _size_span(graph: Graph, cost: MemoryCost):
    """Where the spec writes the number that makes ``cost`` large: a size (h[100000000], class[...],
    H = ...), a delay (h[t-k]) or a shift equal to the item's largest dimension; else the item itself."""
    flat = graph.flat
    for group in (flat.decls, flat.params, flat.equations, flat.losses):
        for stmt in group:
            span = _find_number(stmt, cost.largest_dim)
            if span is not None and not span.file.startswith("<stdlib>"):
                return span
    return where(graph, cost.node.id)[0]


def _find_number(node, value: int):
    """The span of the first size, delay or number in an AST node equal to ``value``."""
    from pydantic import BaseModel
    if isinstance(node, (list, tuple)):
        for item in node:
            found = _find_number(item, value)
            if found is not None:
                return found
        return None
    if not isinstance(node, BaseModel):
        return None
    kind = getattr(node, "kind", None)
    if (kind == "int" and node.value == value) or (kind == "delayed" and abs(node.offset) == value) \
            or (kind == "number" and node.value == value):
        return node.span
    for name in type(node).model_fields:
        if name != "span":
            found = _find_number(getattr(node, name), value)
            if found is not None:
                return found
    return None


__all__ = ["DEFAULT_MEMORY_LIMIT", "MemoryBudget", "check_memory", "default_memory_limit", "infer_shapes",
           "memory_costs", "Sym", "show", "show_shape"]
