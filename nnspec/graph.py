"""FlatSpec -> computation graph (networkx).

Nodes are values: inputs, targets, parameters, constants and op applications;
an equation's value is the node of its top op, named after the equation.
Edges carry data flow from operand to op, with the set of time ``delays`` the
operand is read at (0, or -1 for ``h[t-1]``, +1 for ``h[t+1]``): recurrence
links are ordinary edges with a non-zero delay.

A name that no statement defines becomes a parameter when its place says what
it is — the left operand of ``@`` (a weight matrix) or an operand of an
elementwise op beside a computed value (a bias or gain of the same shape) —
and is an error anywhere else, so a typo is caught rather than trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx
import numpy as np

from .catalog import INITIALIZERS, NESTED_VIEWS, VIEWS
from .errors import Diagnostics, Span, did_you_mean
from .expand import MAX_SIZE, FlatSpec, name_prefixes
from .ops import REGISTRY
from .syntax import ast

_SPREADS = ("scale", "std", "gain")  # initialiser settings that are widths of a distribution

Kind = Literal["input", "target", "param", "const", "op"]
BINARY = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@": "matmul"}
ELEMENTWISE = {"add", "sub", "mul", "div"}
DEFAULT_AXIS = "time"   # the axis of every sequence whose type names none (`seq of token`)


@dataclass
class NodeInfo:
    id: str
    kind: Kind
    span: Span | None
    op: str | None = None
    inputs: list[tuple[str, int]] = field(default_factory=list)  # (operand id, delay)
    attrs: dict[str, Any] = field(default_factory=dict)
    named: bool = False                # a value the user named (not a sub-expression)
    declared: tuple | None = None      # declared per-example shape (ints / "?size" names)
    # inputs and targets
    sequence: bool = False
    axis: str | None = None            # a sequence's named axis (None: the default axis, `time`)
    inner_axis: str | None = None      # a nested sequence's inner axis (seq of seq(char) of char)
    elem: str = "real"                 # real | token | char | class | bag | char_bag
    classes: int | None = None         # declared class count
    view: tuple[str, str, int | None] | None = None  # (function, source input, argument)
    # parameters and constants
    value: np.ndarray | None = None
    init: tuple[str, dict] | None = None
    frozen: bool = False
    shape_like: str | None = None      # implicit bias/gain: same shape as this node
    matrix: bool = False               # implicit weight: rank 2
    recurrent: bool = False            # a weight applied to a delayed value
    table_for: str | None = None       # embedding table for these ids
    table_width: int | None = None
    initial_of: str | None = None      # this node is the initial state of a recurrent value
    # filled in by analysis
    shape: tuple | None = None
    seq: bool = False                  # on at least one sequence axis (bool(axes))
    axes: tuple = ()                   # its sequence axes, outermost first (the batch is implicit)
    integer: bool = False
    card: Any = None                   # number of distinct ids / classes of an integer value
    whole_batch: bool = False          # one value for the whole batch (a loss, arithmetic on losses)
    component: int | None = None       # recurrent component index

    @property
    def display(self) -> str:
        return self.id


@dataclass
class Graph:
    """The computation graph plus what the spec says about its ends."""

    g: nx.DiGraph
    flat: FlatSpec
    outputs: list[str] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    loss: str | None = None            # the total loss node
    initials: dict[str, str] = field(default_factory=dict)  # recurrent value -> initial-state node
    data_names: dict[str, str] = field(default_factory=dict)

    # ``g._node`` is the DiGraph's own dict of node attributes (networkx documents it for
    # subclasses): read directly, not through a NodeView, as every stage asks it thousands of times
    def info(self, n: str) -> NodeInfo:
        return self.g._node[n]["info"]

    def nodes(self) -> list[NodeInfo]:
        return [data["info"] for data in self.g._node.values()]

    def params(self) -> list[NodeInfo]:
        return [i for i in self.nodes() if i.kind == "param"]

    @property
    def inputs(self) -> list[NodeInfo]:
        return [i for i in self.nodes() if i.kind == "input"]

    @property
    def targets(self) -> list[NodeInfo]:
        return [i for i in self.nodes() if i.kind == "target"]

    def initial_statement(self, state: str):
        """The span of the ``initial`` statement of ``state`` (where an error about it points), or None."""
        return next((i.span for i in self.flat.initials if i.name == state), None)


class GraphBuilder:
    def __init__(self, flat: FlatSpec, diags: Diagnostics):
        self.flat, self.diags = flat, diags
        self.graph = Graph(nx.DiGraph(), flat)
        self.defined: dict[str, Span] = {}
        self.explicit_params: dict[str, ast.Param] = {p.name: p for p in flat.params}
        self.counter = 0

    # ---- helpers ----------------------------------------------------------
    def add(self, info: NodeInfo) -> str:
        self.graph.g.add_node(info.id, info=info)
        for src, delay in info.inputs:
            if self.graph.g.has_edge(src, info.id):
                self.graph.g.edges[src, info.id]["delays"].add(delay)
            else:
                self.graph.g.add_edge(src, info.id, delays={delay})
        return info.id

    def known(self, n: str) -> NodeInfo | None:
        """The node's info; None for a value whose equation comes later (or failed)."""
        return (self.graph.g.nodes.get(n) or {}).get("info")

    def fresh(self, owner: str) -> str:
        self.counter += 1
        return f"{owner}#{self.counter}"

    def own_name(self, name: str) -> str:
        """The id of a value the compiler adds (the loss, the sum of several): ``name``, unless the spec
        names a value so (``target loss``, ``loss1 = ...``), whose node it would replace; then a fresh one."""
        return self.fresh(name) if name in self.defined or self.graph.g.has_node(name) else name

    def declared(self, dims) -> tuple | None:
        if dims is None:
            return None
        return tuple(d.value if isinstance(d, ast.DimInt) else d.name for d in dims)

    # ---- build ----------------------------------------------------------------
    def build(self) -> Graph:
        f = self.flat
        for d in f.decls:
            if d.role == "output":
                continue
            self.define(d.name, d.span)
            t = d.type or ast.TypeSpec(span=d.span)
            classes = None
            if t.classes:
                c = t.classes[0]
                classes = c.value if isinstance(c, ast.DimInt) else None
            if t.elem == "class" and d.role == "input":
                self.diags.error(f"input '{d.name}' cannot be a class; use 'target {d.name} : class' "
                                 f"or 'input {d.name} : token'", d.span)
            if t.elem in ("token", "char", "class") and d.dims:
                self.diags.error(f"'{d.name}' holds {t.elem} ids and takes no size; its size comes from "
                                 f"the data", d.span)
            view = self.view(d, t)
            axis = self.axis_of(d, t) if t.sequence else None
            self.add(NodeInfo(id=d.name, kind=d.role, span=d.span, named=True, declared=self.declared(d.dims),
                              sequence=t.sequence, axis=axis, inner_axis=self.inner_axis(d, t, axis),
                              elem=t.elem, classes=classes, view=view))
        for eq in f.equations:
            self.define(eq.name, eq.span)
        declared_params: dict[str, Span] = {}
        for p in f.params:
            if p.name in declared_params:
                self.diags.error(f"parameter '{p.name}' is declared twice", p.span,
                                 [("first declared here", declared_params[p.name])])
                continue
            if p.name in self.defined:
                self.diags.error(f"'{p.name}' is a parameter and also defined as a value", p.span,
                                 [("defined here", self.defined[p.name])])
                continue
            declared_params[p.name] = p.span
            self.define(p.name, p.span)
        for p in f.params:
            self.param(p)
        for eq in f.equations:
            self.equation(eq)
        for ini in f.initials:
            self.initial(ini)
        for i, loss in enumerate(f.losses):
            owner = self.own_name("loss" if len(f.losses) == 1 else f"loss{i + 1}")
            node = self.expr(loss.value, owner, top=owner)
            if node is not None:
                self.graph.losses.append(node)
        self.outputs()
        self.total_loss()
        return self.graph

    def axis_of(self, d: ast.Decl, t: ast.TypeSpec) -> str | None:
        """A sequence's axis: the one its type names; a view's, the axis of the input it derives from."""
        if d.view is None:
            return t.axis
        source = next((x for x in self.flat.decls if x.name == d.view.source and x.role == "input"), None)
        axis = source.type.axis if source is not None and source.type is not None else None
        if t.axis is not None and t.axis != axis:
            self.diags.error(f"'{d.name}' is a view of '{d.view.source}', so it is on the axis of "
                             f"'{d.view.source}' ({axis or DEFAULT_AXIS}), not '{t.axis}'", t.span)
        return axis

    def inner_axis(self, d: ast.Decl, t: ast.TypeSpec, outer: str | None) -> str | None:
        """A nested sequence's inner axis (its type's name for it, else the input's own name): it holds
        characters, is derived from a token input by a nested view (``= chars(w)``), and its inner axis
        is its own, not another sequence's."""
        if not t.nested:
            return None
        inner = t.inner_axis or d.name
        if d.role != "input" or t.elem != "char":
            self.diags.error(f"a sequence of sequences holds the characters of each word: declare "
                             f"'input {d.name} : seq of seq of char = chars(w)'", t.span)
        elif d.view is None or d.view.func not in NESTED_VIEWS:
            self.diags.error(f"'{d.name}' is a sequence of sequences: derive it from a token input's words, "
                             f"e.g. 'input {d.name} : seq of seq of char = chars(w)'", d.span)
        if inner == (outer or DEFAULT_AXIS):
            self.diags.error(f"'{d.name}': its inner axis needs a name of its own, not its outer axis's "
                             f"'{inner}'", t.span)
        clash = next((x for x in self.flat.decls if x.type is not None and x.type.sequence and x.name != d.name
                      and ((x.type.axis or DEFAULT_AXIS) == inner or (x.type.nested and
                                                                      (x.type.inner_axis or x.name) == inner))), None)
        if clash is not None:
            self.diags.error(f"'{d.name}': its inner axis '{inner}' is already the axis of '{clash.name}'; "
                             f"name it, e.g. 'seq of seq({d.name}_chars) of char'", t.span)
        return inner

    def view(self, d: ast.Decl, t: ast.TypeSpec) -> tuple | None:
        """``input s : seq of token = suffix(w, 3)``: check the view and its source."""
        if d.view is None:
            return None
        v = d.view
        if v.func not in VIEWS:
            self.diags.error(f"unknown view '{v.func}'{did_you_mean(v.func, VIEWS)} (views are "
                             f"{', '.join(VIEWS)})", v.span)
            return None
        if d.role != "input" or t.elem not in ("token", "char"):
            self.diags.error(f"a view makes token inputs: declare 'input {d.name} : seq of token = ...'", v.span)
            return None
        if (v.func in NESTED_VIEWS) != t.nested:
            if t.nested:
                self.diags.error(f"'{v.func}' gives one token per word, but '{d.name}' is a sequence of "
                                 f"sequences; {', '.join(NESTED_VIEWS)} gives each word's characters", v.span)
            else:
                self.diags.error(f"'{v.func}({v.source})' gives each word's characters, a sequence of sequences: "
                                 f"declare 'input {d.name} : seq of seq of char = {v.func}({v.source})'", v.span)
            return None
        if v.arg is not None and v.func in NESTED_VIEWS and v.arg < 2:
            self.diags.error(f"'{v.func}({v.source}, {v.arg})' would keep fewer than 2 characters of a word; "
                             f"the number is the most characters a word keeps (its first and last ones)", v.span)
            return None
        source = next((x for x in self.flat.decls if x.name == v.source and x.role == "input"), None)
        if source is None or source.type is None or source.type.elem not in ("token",) or source.view is not None:
            self.diags.error(f"'{v.source}' is not a token input that a view can read"
                             f"{did_you_mean(v.source, [x.name for x in self.flat.decls])}", v.span)
            return None
        if source.type.sequence != t.sequence:
            self.diags.error(f"'{d.name}' and '{v.source}' must both be sequences, or both not", v.span)
            return None
        return (v.func, v.source, v.arg)

    def define(self, name: str, span: Span) -> None:
        if name in self.defined:
            self.diags.error(f"'{name}' is defined twice", span, [("first defined here", self.defined[name])])
        else:
            self.defined[name] = span

    def param(self, p: ast.Param) -> None:
        info = NodeInfo(id=p.name, kind="param", span=p.span, named=True, declared=self.declared(p.dims),
                        frozen=p.frozen)
        if p.value is not None:
            info.value = self.literal(p.value)
            if info.value is not None and info.declared is not None:
                if any(isinstance(d, str) for d in info.declared) or info.value.shape != tuple(info.declared):
                    self.diags.error(f"param '{p.name}' is declared with size {list(info.declared)} but its "
                                     f"value has shape {list(info.value.shape)}", p.span)
        if p.init is not None:
            info.init = (p.init.func, self.init_settings(p.init))
            if p.value is not None:
                self.diags.error(f"param '{p.name}' has both a value and an initialiser", p.span)
        self.add(info)

    def init_settings(self, init: ast.Call) -> dict[str, float]:
        """``init uniform(scale = 0.5)``: a known initialiser and the numeric settings it takes."""
        settings = INITIALIZERS.get(init.func)
        if settings is None:
            hint = did_you_mean(init.func, INITIALIZERS) or f"; initialisers are {', '.join(sorted(INITIALIZERS))}"
            self.diags.error(f"unknown initialiser '{init.func}'{hint}", init.span)
            return {}
        accepted = list(settings)
        if init.args:
            self.diags.error(f"give the settings of initialiser '{init.func}' by name, as in "
                             f"{init.func}({accepted[0] if accepted else 'scale'} = 0.5)", init.span)
        kwargs = {}
        for k in init.keywords:
            if k.name not in accepted:
                hint = did_you_mean(k.name, accepted) or (f"; it takes {', '.join(accepted)}" if accepted
                                                           else "; it takes no settings")
                self.diags.error(f"initialiser '{init.func}' has no setting '{k.name}'{hint}", k.span)
                continue
            v = self.literal(k.value)
            if v is not None and v.ndim != 0:
                self.diags.error(f"setting '{k.name}' of initialiser '{init.func}' must be a number", k.span)
            elif v is not None and not math.isfinite(float(v)):
                self.diags.error(f"setting '{k.name}' of initialiser '{init.func}' must be a finite number",
                                 k.span)
            elif v is not None and k.name in _SPREADS and float(v) < 0:
                self.diags.error(f"setting '{k.name}' of initialiser '{init.func}' is a spread, so it cannot be "
                                 f"negative (got {float(v):g})", k.span)
            elif v is not None:
                kwargs[k.name] = float(v)
        return kwargs

    def literal(self, e) -> np.ndarray | None:
        """A numeric literal: a number or a (nested) list of numbers, with a rectangular shape."""
        raw = self._literal_values(e)
        if raw is None or _has_none(raw):
            return None
        try:
            arr = np.array(raw, dtype=np.float64)
        except ValueError:
            arr = None
        if arr is None or arr.dtype == object:
            self.diags.error("the rows of this literal have different lengths; a literal must be rectangular",
                             e.span)
            return None
        if arr.size == 0:
            self.diags.error("an empty literal has no shape", e.span)
            return None
        return arr

    def _literal_values(self, x):
        """The numbers of a literal as nested lists (None where something else stands)."""
        if isinstance(x, ast.Number):
            return x.value
        if isinstance(x, ast.Neg):
            v = self._literal_values(x.operand)
            return None if v is None else (-np.asarray(v)).tolist()
        if isinstance(x, ast.ListLit):
            return [self._literal_values(i) for i in x.items]
        self.diags.error("expected a number or a list of numbers", x.span)
        return None

    def equation(self, eq: ast.Equation) -> None:
        node = self.expr(eq.value, eq.name, top=eq.name)
        if node is None:
            return
        info = self.graph.info(node)
        info.named = True
        info.span = eq.span
        info.declared = self.declared(eq.dims)

    def initial(self, ini: ast.Initial) -> None:
        if ini.name not in self.defined or self.graph.g.nodes.get(ini.name, {}).get("info") is None:
            self.diags.error(f"initial state for unknown value '{ini.name}'"
                             f"{did_you_mean(ini.name, self.defined)}", ini.span)
            return
        target = self.graph.info(ini.name)
        if isinstance(ini.value, ast.Name) and ini.value.name not in self.defined:
            # a new name: a learned initial state of the same shape
            pid = ini.value.name
            self.define(pid, ini.value.span)
            self.add(NodeInfo(id=pid, kind="param", span=ini.value.span, named=True, shape_like=target.id,
                              init=("zeros", {})))
            node = pid
        else:
            node = self.expr(ini.value, f"{ini.name}.initial", top=None)
        if node is None or self.known(node) is None:  # its equation failed, and said why
            return
        self.graph.info(node).initial_of = ini.name
        self.graph.initials[ini.name] = node

    # ---- expressions ----------------------------------------------------
    def expr(self, e, owner: str, top: str | None = None, role: str | None = None,
             beside: str | None = None) -> str | None:
        """Build the nodes of ``e``; returns its node id. ``top`` names the node of a whole equation."""
        nid = top if top is not None else None
        if isinstance(e, ast.Number):
            return self.add(NodeInfo(id=nid or self.fresh(owner), kind="const", span=e.span,
                                     value=np.array(e.value)))
        if isinstance(e, ast.ListLit):
            value = self.literal(e)
            if value is None:
                return None
            return self.add(NodeInfo(id=nid or self.fresh(owner), kind="const", span=e.span, value=value))
        if isinstance(e, (ast.Name, ast.Delayed)):
            ref = self.reference(e, role, beside)
            if ref is None:
                return None
            if nid is None and isinstance(e, ast.Name):
                return ref
            delay = e.offset if isinstance(e, ast.Delayed) else 0
            if isinstance(e, ast.Delayed) and nid is None:
                nid = self.fresh(owner)
            return self.add(NodeInfo(id=nid, kind="op", span=e.span, op="identity", inputs=[(ref, delay)]))
        if isinstance(e, ast.Neg):
            x = self.expr(e.operand, owner)
            if x is None:
                return None
            info = self.known(x)
            if info is not None and info.kind == "const" and not info.named:  # fold -3, not c = 3 itself
                info.value = -info.value
                if nid is None:
                    return x
                self.graph.g.remove_node(x)  # y = -3: the constant is the node y itself
                return self.add(NodeInfo(id=nid, kind="const", span=e.span, value=info.value))
            return self.add(NodeInfo(id=nid or self.fresh(owner), kind="op", span=e.span, op="neg",
                                     inputs=[(x, 0)]))
        if isinstance(e, ast.BinOp):
            return self.binop(e, owner, nid)
        if isinstance(e, ast.Call):
            return self.call(e, owner, nid)
        if isinstance(e, (ast.String, ast.Percent)):
            self.diags.error("a string or percentage is not a value here", e.span)
            return None
        raise TypeError(e)

    def operand(self, e, owner: str, role: str | None, beside: str | None) -> tuple[str, int] | None:
        """An operand reference (id, delay); delayed reads become edges with a delay, not nodes."""
        if isinstance(e, ast.Delayed):
            ref = self.reference(e, role, beside)
            return None if ref is None else (ref, e.offset)
        node = self.expr(e, owner, role=role, beside=beside)
        return None if node is None else (node, 0)

    def binop(self, e: ast.BinOp, owner: str, nid: str | None) -> str | None:
        op = BINARY[e.op]
        if op == "matmul":
            left = self.operand(e.left, owner, "matrix", None)
            right = self.operand(e.right, owner, None, None)
        elif self.is_undefined(e.left) and not self.is_undefined(e.right):
            right = self.operand(e.right, owner, None, None)
            # a bias beside an operand that failed (and said why) cannot take its shape: no second error
            left = self.operand(e.left, owner, "like", right[0]) if right else None
        else:
            left = self.operand(e.left, owner, None, None)
            cascade = left is None and self.is_undefined(e.right) and not self.is_undefined(e.left)
            right = None if cascade else self.operand(e.right, owner, "like", left[0] if left else None)
        if left is None or right is None:
            return None
        if op == "matmul" and right[1] != 0 and getattr(self.known(left[0]), "kind", None) == "param":
            self.graph.info(left[0]).recurrent = True   # U in U @ h[t-1]: initialised orthogonal
        return self.add(NodeInfo(id=nid or self.fresh(owner), kind="op", span=e.span, op=op,
                                 inputs=[left, right]))

    def is_undefined(self, e) -> bool:
        """A new name, or a declared parameter with no size yet: its place will give it a shape."""
        if not isinstance(e, ast.Name):
            return False
        if e.name not in self.defined and e.name not in self.graph.g:
            return True
        info = self.graph.g.nodes[e.name].get("info") if e.name in self.graph.g else None
        return (info is not None and info.kind == "param" and info.declared is None and info.value is None
                and not info.matrix and info.shape_like is None)

    def reference(self, e, role: str | None, beside: str | None) -> str | None:
        name = e.name
        if name in self.defined or name in self.graph.g:
            if isinstance(e, ast.Delayed) and name in self.explicit_params:
                self.diags.error(f"'{name}' is a parameter; only values computed over time can be read "
                                 f"at [t{e.offset:+d}]", e.span)
                return None
            info = self.graph.g.nodes[name].get("info") if name in self.graph.g else None
            if info is not None and info.kind == "param" and info.declared is None and info.value is None:
                # a declared parameter without a size takes its shape from its place, like an implicit one
                if role == "matrix":
                    info.matrix = True
                elif role == "like" and beside is not None and info.shape_like is None:
                    info.shape_like = beside
            return name
        if isinstance(e, ast.Name) and role == "matrix":
            self.add(NodeInfo(id=name, kind="param", span=e.span, named=True, matrix=True))
            return name
        if isinstance(e, ast.Name) and role == "like" and beside is not None:
            self.add(NodeInfo(id=name, kind="param", span=e.span, named=True, shape_like=beside))
            return name
        what = "value" if isinstance(e, ast.Delayed) else "name"
        self.diags.error(f"undefined {what} '{name}'{did_you_mean(name, self.defined)}", e.span)
        return None

    def call(self, e: ast.Call, owner: str, nid: str | None) -> str | None:
        if e.func == "embed":
            return self.embed(e, owner, nid)
        op = REGISTRY[e.func]
        attr_names = list(op.attrs)
        n_tensor = len(e.args) if op.arity is None else min(op.arity, len(e.args))
        if op.arity is not None and len(e.args) < op.arity:
            self.diags.error(f"{e.func} takes {op.arity} argument(s), got {len(e.args)}", e.span)
            return None
        attrs: dict[str, Any] = {}
        for extra, name in zip(e.args[n_tensor:], attr_names):
            attrs[name] = self.attr_value(extra, e.func)
        if len(e.args) - n_tensor > len(attr_names):
            self.diags.error(f"{e.func} takes {op.arity} argument(s)"
                             + (f" and the setting(s) {', '.join(attr_names)}" if attr_names else "")
                             + f", got {len(e.args)} arguments", e.span)
            return None
        for k in e.keywords:
            if k.name not in op.attrs:
                hint = did_you_mean(k.name, attr_names) or (
                    f"; it takes {', '.join(attr_names)}" if attr_names else "; it takes no settings")
                self.diags.error(f"{e.func} has no setting '{k.name}'{hint}", k.span)
                continue
            attrs[k.name] = self.attr_value(k.value, e.func)
        inputs = []
        for a in e.args[:n_tensor]:
            ref = self.operand(a, owner, None, None)
            if ref is None:
                return None
            inputs.append(ref)
        if op.arity is None and not inputs:
            self.diags.error(f"{e.func} needs at least one argument", e.span)
            return None
        return self.add(NodeInfo(id=nid or self.fresh(owner), kind="op", span=e.span, op=e.func,
                                 inputs=inputs, attrs=attrs))

    def attr_value(self, e, func: str):
        if isinstance(e, ast.Number) and not math.isfinite(e.value):
            self.diags.error(f"a setting of {func} must be a finite number", e.span)
            return None
        number = e.operand if isinstance(e, ast.Neg) and isinstance(e.operand, ast.Number) else e
        if isinstance(number, ast.Number) and abs(number.value) > MAX_SIZE:  # a count or offset NumPy can hold
            self.diags.error(f"a setting of {func} must be between -{MAX_SIZE} and {MAX_SIZE}, "
                             f"not {number.text}", e.span)
            return None
        if isinstance(e, ast.Number):
            return int(e.value) if e.value == int(e.value) and "." not in e.text and "e" not in e.text.lower() \
                else e.value
        if isinstance(e, ast.Neg) and isinstance(e.operand, ast.Number):
            return -e.operand.value
        if isinstance(e, ast.Percent):
            return e.value
        if isinstance(e, ast.String):
            return e.value
        self.diags.error(f"a setting of {func} must be a number or a string", e.span)
        return None

    def embed(self, e: ast.Call, owner: str, nid: str | None) -> str | None:
        """embed(ids, width): a lookup in a learned table of shape (number of ids, width)."""
        width = None
        if len(e.args) == 2 and isinstance(e.args[1], ast.Number):
            width = e.args[1].value
        for k in e.keywords:
            if k.name in ("dim", "width", "size") and isinstance(k.value, ast.Number):
                width = k.value.value
        if len(e.args) not in (1, 2) or width is None or not math.isfinite(width) or width != int(width) \
                or not 1 <= width <= MAX_SIZE:
            self.diags.error("embed takes the ids and a width, as in embed(w, 100)", e.span)
            return None
        ids = self.operand(e.args[0], owner, None, None)
        if ids is None:
            return None
        node = nid or self.fresh(owner)
        table = f"{node}.table"
        self.add(NodeInfo(id=table, kind="param", span=e.span, named=True, table_for=ids[0],
                          table_width=int(width)))
        return self.add(NodeInfo(id=node, kind="op", span=e.span, op="embed", inputs=[ids, (table, 0)]))

    # ---- ends -----------------------------------------------------------------
    def outputs(self) -> None:
        for d in self.flat.decls:
            if d.role != "output":
                continue
            if "info" not in self.graph.g.nodes.get(d.name, {}):
                if d.name not in self.defined:  # else its equation failed and has said why
                    self.diags.error(f"output '{d.name}' is never defined{did_you_mean(d.name, self.defined)}",
                                     d.span)
                continue
            info = self.graph.info(d.name)
            decl = self.declared(d.dims)
            if decl is not None:
                if info.declared is not None and info.declared != decl:
                    self.diags.error(f"output '{d.name}' is declared with size {list(decl)} but defined with "
                                     f"{list(info.declared)}", d.span, [("defined here", info.span)])
                info.declared = decl
            self.graph.outputs.append(d.name)

    def total_loss(self) -> None:
        losses = self.graph.losses
        if len(losses) == 1:
            self.graph.loss = losses[0]
        elif len(losses) > 1:
            total = losses[0]
            for i, other in enumerate(losses[1:]):
                nid = self.own_name("loss" if i == len(losses) - 2 else f"loss.sum{i}")
                total = self.add(NodeInfo(id=nid, kind="op", span=self.graph.info(other).span, op="add",
                                          inputs=[(total, 0), (other, 0)]))
            self.graph.loss = total


def closure(starts, neighbours, into: set[str] | None = None) -> set[str]:
    """``starts`` and everything reached from them through ``neighbours`` (``g.predecessors``: all
    they depend on; ``g.successors``: all that depends on them), in one walk however many starts
    there are (one ``nx.ancestors`` per output was quadratic in specs with many outputs). ``into``,
    when given, is extended in place; it must be closed already, so its nodes are not walked again."""
    out = set() if into is None else into
    stack = [n for n in starts if n not in out]
    out.update(stack)
    while stack:
        for m in neighbours(stack.pop()):
            if m not in out:
                out.add(m)
                stack.append(m)
    return out


def user_call(graph: Graph, node: str) -> str | None:
    """The cell instance, called from the user's own file, that ``node`` belongs to (None at top level)."""
    calls = graph.flat.calls
    return next((inst for inst in name_prefixes(node)
                 if inst in calls and not calls[inst].file.startswith("<stdlib>")), None)


def where(graph: Graph, node: str) -> tuple[Span | None, list[tuple[str, Span | None]]]:
    """Where to report a problem with ``node``, and notes: a value inside a standard-library cell is
    reported at the user's call of that cell, with a note pointing into the cell."""
    span = graph.info(node).span
    inst = user_call(graph, node)
    if span is None or not span.file.startswith("<stdlib>") or inst is None:
        return span, []
    cell = next(c for i, c in graph.flat.instances if i == inst)
    return graph.flat.calls[inst], [(f"inside cell '{cell}', here", span)]


def user_name(info: NodeInfo, sources) -> str:
    """A value as its author wrote it: its name, or for a sub-expression its source text (never an
    internal id such as 'y#1')."""
    if info.named or info.span is None:
        return f"'{info.id}'"
    text = sources.snippet(info.span)
    return f"'{text}'" if text else "this value"


def _has_none(x) -> bool:
    return x is None or (isinstance(x, list) and any(_has_none(i) for i in x))


def build_graph(flat: FlatSpec, diags: Diagnostics) -> Graph:
    return GraphBuilder(flat, diags).build()
