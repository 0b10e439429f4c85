"""Expansion: lets, cells and wrappers turned into plain, fully named equations.

The output, a :class:`FlatSpec`, holds only equations over primitive ops; it is
what ``nnspec expand`` prints and what the graph builder reads.

Cells are closed: a cell body sees its inputs, its own values, size names and
global ``let`` constants, nothing else. Each use of a cell is an *instance*
named after the value it defines (``h1 = lstm(e, H = 8)`` makes ``h1``), and
every name the body defines or uses as a parameter is prefixed with it
(``h1.c``, ``h1.Wf``), so each use has fresh parameters. ``reverse(cell)``
flips every delay (``[t-1]`` becomes ``[t+1]``); ``bidirectional(cell)``
concatenates a forward and a reversed instance; ``stacked(cell, n)`` chains n.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Diagnostics, Span, did_you_mean
from .loader import Program
from .ops import REGISTRY
from .syntax import ast

WRAPPERS = ("reverse", "bidirectional", "stacked")
MAX_SIZE = 2**31 - 1    # the largest size of one axis (NumPy allocates nothing bigger in practice)
MAX_LAYERS = 100        # stacked(cell, n): each layer is expanded, so n is bounded
SPECIAL_FUNCTIONS = {"embed"}  # primitives whose parameters the graph builder creates


@dataclass
class FlatSpec:
    name: str
    file: str
    base_dir: Path
    decls: list[ast.Decl] = field(default_factory=list)
    equations: list[ast.Equation] = field(default_factory=list)
    params: list[ast.Param] = field(default_factory=list)
    initials: list[ast.Initial] = field(default_factory=list)
    losses: list[ast.Loss] = field(default_factory=list)
    data: ast.DataSource | ast.DataInline | None = None
    train: ast.Train | None = None
    sweep: ast.Sweep | None = None
    decode: ast.Decode | None = None     # checked against the plan by nnspec/decoding.py
    lets: dict[str, float] = field(default_factory=dict)
    instances: list[tuple[str, str]] = field(default_factory=list)  # (instance, cell)
    calls: dict[str, Span] = field(default_factory=dict)  # instance -> the call that made it
    call_sizes: dict[str, list[str]] = field(default_factory=dict)  # instance -> its cell's size names


class _Scope:
    """Name resolution inside the top level or one cell instance."""

    def __init__(self, prefix: str, rename: dict[str, str], lets: dict[str, float],
                 sizes: dict[str, ast.DimExpr], sign: int, cell: ast.Cell | None):
        self.prefix, self.rename, self.lets, self.sizes = prefix, rename, lets, sizes
        self.sign, self.cell = sign, cell
        self.counter = 0

    def qualify(self, name: str) -> str:
        if name in self.rename:
            return self.rename[name]
        return f"{self.prefix}.{name}" if self.prefix else name


class Expander:
    def __init__(self, program: Program, diags: Diagnostics):
        self.program, self.diags = program, diags
        self.flat = FlatSpec(name=Path(program.main_file).stem, file=program.main_file,
                             base_dir=program.base_dir)
        self.primitives = set(REGISTRY) | SPECIAL_FUNCTIONS
        self.depth = 0
        self._first_index: dict[str, int] = {}  # equation name -> index of its first equation
        self._indexed_equations = 0

    # ---- entry ------------------------------------------------------------
    def run(self) -> FlatSpec:
        top = _Scope("", {}, self.flat.lets, {}, +1, None)
        for stmt in self.program.statements:
            if isinstance(stmt, ast.Let):
                value = self.finite(self.const_value(stmt.value, top), stmt)
                if value is not None:
                    if stmt.name in self.flat.lets:
                        self.diags.error(f"'{stmt.name}' is defined twice by let", stmt.span)
                    self.flat.lets[stmt.name] = value
        for stmt in self.program.statements:
            self.statement(stmt, top)
        return self.flat

    def statement(self, stmt, scope: _Scope) -> None:
        f = self.flat
        if scope.cell is not None and isinstance(stmt, (ast.Network, ast.DataSource, ast.DataInline, ast.Train,
                                                    ast.Sweep, ast.Decode)):
            what = {ast.Network: "network", ast.Train: "train", ast.Sweep: "sweep",
                    ast.Decode: "decode"}.get(type(stmt), "data")
            self.diags.error(f"'{what}' belongs at the top level, not inside cell '{scope.cell.name}'", stmt.span)
            return
        if isinstance(stmt, ast.Network):
            f.name = stmt.name
        elif isinstance(stmt, ast.Let):
            if scope.cell is not None:
                value = self.finite(self.const_value(stmt.value, scope), stmt)
                if value is not None:
                    scope.lets[stmt.name] = value
        elif isinstance(stmt, ast.Decl):
            if scope.cell is not None:
                self.diags.error(f"'{stmt.role}' declarations belong at the top level, not inside cell "
                                 f"'{scope.cell.name}'", stmt.span)
                return
            update = {"dims": self.dims(stmt.dims, scope)}
            if stmt.type is not None and stmt.type.classes:  # class[K]
                update["type"] = stmt.type.model_copy(update={"classes": self.dims(stmt.type.classes, scope)})
            f.decls.append(stmt.model_copy(update=update))
        elif isinstance(stmt, ast.Equation):
            name = scope.qualify(stmt.name)
            value = self.expr(stmt.value, scope, owner=name, whole=True)
            dims = self.dims(stmt.dims, scope)
            if isinstance(value, ast.Name) and value.name == name:
                # the whole right side was a cell: its instance already defines `name`
                self._declare_size(name, dims, stmt.span)
            elif value is not None:
                f.equations.append(ast.Equation.model_construct(span=stmt.span, name=name, dims=dims, value=value))
        elif isinstance(stmt, ast.Param):
            value = self.expr(stmt.value, scope, owner=scope.qualify(stmt.name)) if stmt.value else None
            f.params.append(stmt.model_copy(update={"name": scope.qualify(stmt.name),
                                                    "dims": self.dims(stmt.dims, scope), "value": value}))
        elif isinstance(stmt, ast.Initial):
            name = scope.qualify(stmt.name)
            value = self.expr(stmt.value, scope, owner=f"{name}.initial")
            if value is not None:
                f.initials.append(ast.Initial.model_construct(span=stmt.span, name=name, value=value))
        elif isinstance(stmt, ast.Loss):
            if scope.cell is not None:
                self.diags.error("a loss belongs at the top level, not inside a cell", stmt.span)
                return
            value = self.expr(stmt.value, scope, owner=f"loss{len(f.losses) + 1}" if f.losses else "loss")
            if value is not None:
                f.losses.append(ast.Loss.model_construct(span=stmt.span, value=value))
        elif isinstance(stmt, (ast.DataSource, ast.DataInline)):
            if f.data is not None:
                self.diags.error("only one data statement is allowed", stmt.span, [("the first is here", f.data.span)])
            f.data = stmt
        elif isinstance(stmt, ast.Train):
            if f.train is not None:
                self.diags.error("only one train block is allowed", stmt.span, [("the first is here", f.train.span)])
            f.train = stmt
        elif isinstance(stmt, ast.Decode):
            if f.decode is not None:
                self.diags.error("only one decode declaration is allowed", stmt.span,
                                 [("the first is here", f.decode.span)])
            f.decode = stmt
        elif isinstance(stmt, ast.Sweep):
            if f.sweep is not None:
                self.diags.error("only one sweep block is allowed", stmt.span,
                                 [("the first is here", f.sweep.span)])
            f.sweep = stmt
        elif isinstance(stmt, (ast.Cell, ast.Include)):
            self.diags.error("cells and includes belong at the top level", stmt.span)

    def _declare_size(self, name: str, dims, span: Span) -> None:
        """``h[64] = lstm(x)``: the caller's size for a value a cell instance defines."""
        if not dims:
            return
        i = self._first_equation(name)
        if i is not None:
            eq = self.flat.equations[i]
            if eq.dims is None or _has_inferred(eq.dims):
                self.flat.equations[i] = eq.model_copy(update={"dims": dims})
            elif not _has_inferred(dims) and [d.value for d in dims] != [d.value for d in eq.dims]:
                self.diags.error(f"'{name}' is given size {format_dims(dims)} here, but its cell makes it "
                                 f"{format_dims(eq.dims)}", span, [("the cell's size", eq.span)])

    def _first_equation(self, name: str) -> int | None:
        """The index of the first equation defining ``name``. Equations are only appended (or
        replaced in place), so the index is extended with the new ones instead of searching them all
        for every sized cell call."""
        equations = self.flat.equations
        for i in range(self._indexed_equations, len(equations)):
            self._first_index.setdefault(equations[i].name, i)
        self._indexed_equations = len(equations)
        return self._first_index.get(name)

    # ---- constants and sizes ---------------------------------------------
    def finite(self, value: float | None, stmt: ast.Let) -> float | None:
        if value is not None and not math.isfinite(value):
            self.diags.error(f"let '{stmt.name}' is too large to be a number ({value})", stmt.value.span)
            return None
        return value

    def const_value(self, e, scope: _Scope) -> float | None:
        if isinstance(e, ast.Number):
            return e.value
        if isinstance(e, ast.Name):
            if e.name in scope.lets:
                return scope.lets[e.name]
            self.diags.error(f"'{e.name}' is not a constant{did_you_mean(e.name, scope.lets)}", e.span)
            return None
        if isinstance(e, ast.Neg):
            v = self.const_value(e.operand, scope)
            return None if v is None else -v
        if isinstance(e, ast.BinOp) and e.op in "+-*/":
            a, b = self.const_value(e.left, scope), self.const_value(e.right, scope)
            if a is None or b is None:
                return None
            if e.op == "/" and b == 0:
                self.diags.error("division by zero in a constant", e.span)
                return None
            return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else 0}[e.op]
        self.diags.error("expected a constant: a number, or arithmetic on numbers and lets", e.span)
        return None

    def dims(self, dims: list | None, scope: _Scope) -> list | None:
        if dims is None:
            return None
        return [self.dim(d, scope) for d in dims]

    def dim(self, d, scope: _Scope):
        """A size: an int, or (inside a cell) a size name left for shape inference."""
        if isinstance(d, ast.DimInt):
            if not 1 <= d.value <= MAX_SIZE:
                self.diags.error(f"a size must be a whole number from 1 to {MAX_SIZE}, not {d.value}", d.span)
                return d.model_copy(update={"value": 1})
            return d
        if isinstance(d, ast.DimName):
            if d.name.startswith("?"):  # already an inferred size of some instance
                return d
            if d.name in scope.sizes:
                return self.dim(scope.sizes[d.name], scope)
            if d.name in scope.lets:
                v = scope.lets[d.name]
                if not _is_size(v):
                    self.diags.error(f"size '{d.name}' must be a whole number from 1 to {MAX_SIZE}, not {v:g}",
                                     d.span)
                    return ast.DimInt.model_construct(span=d.span, value=1)
                return ast.DimInt.model_construct(span=d.span, value=int(v))
            if scope.cell is not None:  # inferred per instance, e.g. H when the caller gives none
                return ast.DimName.model_construct(span=d.span, name=f"?{scope.prefix}.{d.name}")
            self.diags.error(f"unknown size '{d.name}'; define it with 'let {d.name} = ...'"
                             f"{did_you_mean(d.name, scope.lets)}", d.span)
            return ast.DimInt.model_construct(span=d.span, value=1)
        left, right = self.dim(d.left, scope), self.dim(d.right, scope)
        if isinstance(left, ast.DimInt) and isinstance(right, ast.DimInt):
            v = {"+": left.value + right.value, "-": left.value - right.value, "*": left.value * right.value}[d.op]
            if not 1 <= v <= MAX_SIZE:
                self.diags.error(f"a size must be a whole number from 1 to {MAX_SIZE}, got {v}", d.span)
                v = 1
            return ast.DimInt.model_construct(span=d.span, value=v)
        self.diags.error("size arithmetic needs known sizes", d.span)
        return ast.DimInt.model_construct(span=d.span, value=1)

    # ---- expressions -------------------------------------------------------
    def expr(self, e, scope: _Scope, owner: str, whole: bool = False):
        if isinstance(e, (ast.Number, ast.Percent, ast.String)):
            return e
        if isinstance(e, ast.Name):
            if e.name in scope.lets and e.name not in scope.rename:
                v = scope.lets[e.name]
                return ast.Number.model_construct(span=e.span, value=float(v), text=f"{v:g}")
            return _updated(e, name=scope.qualify(e.name))
        if isinstance(e, ast.Delayed):
            return _updated(e, name=scope.qualify(e.name), offset=e.offset * scope.sign)
        if isinstance(e, ast.ListLit):
            return _updated(e, items=[self.expr(i, scope, owner) for i in e.items])
        if isinstance(e, ast.BinOp):
            return _updated(e, left=self.expr(e.left, scope, owner), right=self.expr(e.right, scope, owner))
        if isinstance(e, ast.Neg):
            return _updated(e, operand=self.expr(e.operand, scope, owner))
        if isinstance(e, ast.Call):
            return self.call(e, scope, owner, whole)
        raise TypeError(e)

    def cell_named(self, name: str) -> ast.Cell | None:
        return self.program.cells.get(name) or self.program.stdlib_cells.get(name)

    def call(self, e: ast.Call, scope: _Scope, owner: str, whole: bool):
        if e.wrapper is None and e.func in self.primitives:
            args = [self.expr(a, scope, owner) for a in e.args]
            kws = [_updated(k, value=self.expr(k.value, scope, owner)) for k in e.keywords]
            return _updated(e, args=args, keywords=kws)
        cell = self.cell_named(e.func)
        if cell is None and e.wrapper is not None and e.func in self.primitives:
            self.diags.error(f"{e.wrapper.func}(...) wraps a cell, but '{e.func}' is a function; "
                             f"write a cell that uses it", e.span)
            return None
        if cell is None:
            known = self.primitives | set(self.program.cells) | set(self.program.stdlib_cells)
            self.diags.error(f"unknown function '{e.func}'{did_you_mean(e.func, known)}", e.span)
            return None
        if whole:
            instance = owner
        else:
            scope.counter += 1
            instance = f"{owner}.{e.func}{scope.counter}"
        self.instantiate(e, cell, scope, instance)
        return ast.Name.model_construct(span=e.span, name=instance)

    def instantiate(self, e: ast.Call, cell: ast.Cell, scope: _Scope, instance: str) -> None:
        wrapper = e.wrapper.func if e.wrapper is not None else None
        if wrapper is not None and wrapper not in WRAPPERS:
            self.diags.error(f"unknown wrapper '{wrapper}'{did_you_mean(wrapper, WRAPPERS)} "
                             f"(wrappers are {', '.join(WRAPPERS)})", e.wrapper.span)
            return
        if wrapper == "bidirectional":
            inner = e.model_copy(update={"wrapper": None})
            back = e.model_copy(update={"wrapper": e.wrapper.model_copy(update={"func": "reverse", "keywords": []})})
            self.instantiate(inner, cell, scope, f"{instance}.fwd")
            self.instantiate(back, cell, scope, f"{instance}.bwd")
            self.flat.equations.append(ast.Equation.model_construct(
                span=e.span, name=instance, dims=None,
                value=ast.Call.model_construct(span=e.span, func="concat",
                                               args=[ast.Name.model_construct(span=e.span, name=f"{instance}.fwd"),
                                                     ast.Name.model_construct(span=e.span, name=f"{instance}.bwd")])))
            return
        if wrapper == "stacked":
            layers = self.wrapper_count(e.wrapper, scope)
            if layers is None:
                return
            previous = None
            for k in range(1, layers + 1):
                name = instance if k == layers else f"{instance}.layer{k}"
                layer = e.model_copy(update={"wrapper": None})
                if previous is not None:  # feed the layer below; its name is already qualified
                    placeholder = f"<layer {k - 1} of {instance}>"
                    scope.rename[placeholder] = previous
                    layer = layer.model_copy(update={"args": [ast.Name.model_construct(span=e.span, name=placeholder)]
                                                     + list(e.args[1:])})
                self.instantiate(layer, cell, scope, name)
                previous = name
            return
        sign = scope.sign * (-1 if wrapper == "reverse" else 1)
        self.expand_cell(e, cell, scope, instance, sign)

    def wrapper_count(self, wrapper: ast.Call, scope: _Scope) -> int | None:
        given = [k.value for k in wrapper.keywords if k.name == "layers"] + list(wrapper.args[1:2])
        if not given:
            self.diags.error("stacked(cell, n) needs the number of layers, as in stacked(lstm, 2)(x, H = 64)",
                             wrapper.span)
            return None
        v = self.const_value(given[0], scope)
        if v is None or not _is_size(v) or v > MAX_LAYERS:
            self.diags.error(f"the number of layers must be a whole number from 1 to {MAX_LAYERS}", wrapper.span)
            return None
        return int(v)

    def expand_cell(self, e: ast.Call, cell: ast.Cell, caller: _Scope, instance: str, sign: int) -> None:
        self.depth += 1
        if self.depth > 32:
            self.diags.error(f"cell '{cell.name}' expands into itself (recursion is not allowed)", e.span)
            self.depth -= 1
            return
        if len(e.args) != len(cell.inputs):
            self.diags.error(f"cell '{cell.name}' takes {len(cell.inputs)} input(s) "
                             f"({', '.join(cell.inputs)}), got {len(e.args)}", e.span,
                             [(f"'{cell.name}' is defined here", cell.span)])
            self.depth -= 1
            return
        rename = {cell.output: instance}
        for formal, actual in zip(cell.inputs, e.args):
            value = self.expr(actual, caller, owner=f"{instance}.{formal}")
            if value is None:
                continue
            if isinstance(value, ast.Name):
                rename[formal] = value.name
            else:  # an expression argument becomes a value of its own
                rename[formal] = f"{instance}.{formal}"
                self.flat.equations.append(ast.Equation.model_construct(span=actual.span, name=f"{instance}.{formal}",
                                                                        dims=None, value=value))
        sizes: dict[str, ast.DimExpr] = {}
        allowed = _size_names(cell) - set(self.flat.lets)
        given: set[str] = set()
        for kw in e.keywords:
            if kw.name in given:
                self.diags.error(f"size '{kw.name}' is given twice", kw.span)
                continue
            given.add(kw.name)
            if kw.name not in allowed:
                hint = f"; its sizes are {', '.join(sorted(allowed))}" if allowed else "; it takes no sizes"
                if kw.name in self.flat.lets and kw.name in _size_names(cell):
                    hint = f": the top-level 'let {kw.name}' sets it in every cell"
                self.diags.error(f"cell '{cell.name}' has no size '{kw.name}'{hint}", kw.span)
                continue
            passed = _size_expr(kw.value) if caller.cell is not None else None
            if passed is not None and _size_names_in(passed) - set(caller.lets):
                sizes[kw.name] = self.dim(passed, caller)
                continue  # a size of the calling cell, passed on (N = K or N = 2 * K)
            v = self.const_value(kw.value, caller)
            if v is not None and not _is_size(v):
                self.diags.error(f"size '{kw.name}' must be a whole number from 1 to {MAX_SIZE}, not {v:g}",
                                 kw.span)
            elif v is not None:
                sizes[kw.name] = ast.DimInt.model_construct(span=kw.span, value=int(v))
        scope = _Scope(instance, rename, dict(self.flat.lets), sizes, sign, cell)
        self.flat.instances.append((instance, cell.name))
        self.flat.calls.setdefault(instance, e.span)
        self.flat.call_sizes.setdefault(instance, sorted(allowed))
        defines_output = False
        for stmt in cell.body:
            if isinstance(stmt, ast.Equation) and stmt.name == cell.output:
                defines_output = True
                stmt = stmt.model_copy(update={"dims": stmt.dims or cell.output_dims})
            self.statement(stmt, scope)
        if not defines_output:
            self.diags.error(f"cell '{cell.name}' never defines its output '{cell.output}'", cell.span)
        self.depth -= 1


def _updated(node, **fields):
    """``node`` with ``fields`` replaced, or ``node`` itself when they are unchanged: AST nodes are
    immutable, so the top level of a spec (no prefix, no renames) shares its nodes instead of
    copying every one of them."""
    if all(_same(getattr(node, name), value) for name, value in fields.items()):
        return node
    return node.model_copy(update=fields)


def _same(old, new) -> bool:
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(a is b for a, b in zip(old, new))
    return old is new or (isinstance(old, (str, int)) and type(old) is type(new) and old == new)


def _size_expr(e) -> ast.DimExpr | None:
    """``2 * K`` written as an argument, as the size expression it means (None if it is not one)."""
    if isinstance(e, ast.Number) and math.isfinite(e.value) and e.value == int(e.value):
        return ast.DimInt.model_construct(span=e.span, value=int(e.value))
    if isinstance(e, ast.Name):
        return ast.DimName.model_construct(span=e.span, name=e.name)
    if isinstance(e, ast.BinOp) and e.op in ("+", "-", "*"):
        left, right = _size_expr(e.left), _size_expr(e.right)
        if left is not None and right is not None:
            return ast.DimBin.model_construct(span=e.span, op=e.op, left=left, right=right)
    return None


def _size_names_in(d) -> set[str]:
    if isinstance(d, ast.DimName):
        return {d.name}
    if isinstance(d, ast.DimBin):
        return _size_names_in(d.left) | _size_names_in(d.right)
    return set()


def _is_size(v: float) -> bool:
    return math.isfinite(v) and v == int(v) and 1 <= v <= MAX_SIZE


def _has_inferred(dims) -> bool:
    return any(isinstance(d, ast.DimName) for d in dims)


def _size_names(cell: ast.Cell) -> set[str]:
    """Names used as sizes anywhere in a cell: the keywords a caller may give."""
    names: set[str] = set()
    for d in cell.output_dims or []:
        names |= _size_names_in(d)
    for stmt in cell.body:
        for d in getattr(stmt, "dims", None) or []:
            names |= _size_names_in(d)
    return names


def expand(program: Program, diags: Diagnostics) -> FlatSpec:
    return Expander(program, diags).run()


# ---- printing --------------------------------------------------------------

def format_expr(e) -> str:
    return _fmt(e, 0)


_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "@": 3}


def _fmt(e, parent: int) -> str:
    if isinstance(e, ast.Number):
        return e.text if e.text else f"{e.value:g}"
    if isinstance(e, ast.Percent):
        return f"{e.value * 100:g}%"
    if isinstance(e, ast.String):
        return f'"{e.value}"'
    if isinstance(e, ast.Name):
        return e.name
    if isinstance(e, ast.Delayed):
        return f"{e.name}[t{'+' if e.offset > 0 else '-'}{abs(e.offset)}]"
    if isinstance(e, ast.ListLit):
        return "[" + ", ".join(_fmt(i, 0) for i in e.items) + "]"
    if isinstance(e, ast.Neg):
        return "-" + _fmt(e.operand, 4)
    if isinstance(e, ast.BinOp):
        p = _PREC[e.op]
        text = f"{_fmt(e.left, p)} {e.op} {_fmt(e.right, p + 1)}"
        return f"({text})" if p < parent else text
    if isinstance(e, ast.Call):
        args = [_fmt(a, 0) for a in e.args] + [f"{k.name} = {_fmt(k.value, 0)}" for k in e.keywords]
        args += [f'"{m.key}" -> {_fmt(m.value, 0)}' for m in e.mappings]
        head = f"{e.wrapper.func}({e.func})" if e.wrapper is not None else e.func
        return f"{head}({', '.join(args)})"
    raise TypeError(e)


def format_dims(dims) -> str:
    """``[128]``; empty when a size is left to inference (it has no name a spec could use)."""
    if not dims or any(not isinstance(d, ast.DimInt) for d in dims):
        return ""
    return "[" + ", ".join(str(d.value) for d in dims) + "]"


def format_flat(flat: FlatSpec) -> str:
    """The expanded spec as plain equations (what ``nnspec expand`` prints); it parses as a spec again."""
    lines = [f"network {flat.name}", ""]
    for d in flat.decls:
        typ = ""
        if d.type is not None:
            t = d.type
            elem = {"real": "", "token": "token", "char": "char", "bag": "bag of token",
                    "char_bag": "bag of char"}.get(t.elem, "")
            if t.elem == "class":
                elem = "class" + format_dims(t.classes)
            seq = " : seq" + (f"({t.axis})" if t.axis else "")
            if t.nested:
                seq += " of seq" + (f"({t.inner_axis})" if t.inner_axis else "")
            typ = (seq + (f" of {elem}" if elem else "")) if t.sequence else (f" : {elem}" if elem else "")
            if t.nested and d.view is not None:   # a nested sequence is always derived: say from what
                typ += f" = {d.view.func}({d.view.source})"
        lines.append(f"{d.role} {d.name}{format_dims(d.dims)}{typ}")
    cells = {}
    for inst, cell in flat.instances:
        cells[inst] = cell
    lines.append("")
    current = None
    for eq in flat.equations:
        owner = _owner(eq.name, cells)
        if owner != current and owner is not None:
            lines.append(f"# {owner} = {cells[owner]}(...)")
        current = owner
        lines.append(f"{eq.name}{format_dims(eq.dims)} = {format_expr(eq.value)}")
    for ini in flat.initials:
        lines.append(f"initial {ini.name} = {format_expr(ini.value)}")
    for loss in flat.losses:
        lines.append(f"loss {format_expr(loss.value)}")
    params = [p for p in flat.params]
    if params:
        lines.append("")
    for p in params:
        text = f"param {p.name}{format_dims(p.dims)}"
        if p.value is not None:
            text += f" = {format_expr(p.value)}"
        if p.init is not None:
            text += f" init {format_expr(p.init)}" if p.init.keywords else f" init {p.init.func}"
        if p.frozen:
            text += " frozen"
        lines.append(text)
    return "\n".join(lines).rstrip() + "\n"


def _owner(name: str, cells: dict[str, str]) -> str | None:
    """The innermost cell instance a value belongs to, for section comments."""
    return next((p for p in reversed(name_prefixes(name)) if p in cells), None)


def name_prefixes(name: str) -> list[str]:
    """'h.fwd.c' -> ['h', 'h.fwd', 'h.fwd.c']: the instances a value of that name may belong to
    (looked up one by one, instead of testing every instance of a big spec against the name)."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
