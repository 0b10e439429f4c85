"""Fused elementwise segments: on the NumPy loop path (``loops.py``, ``loopback.py``), a run of
consecutive elementwise steps as one call of a compiled kernel (``ExecOptions.fused_segments``).

Why: a float32 loop step makes one NumPy call per body op, 3-5 us each at the benchmark's sizes
(B 32, H 128), much of it call overhead; PyTorch's LSTM runs a cell's elementwise chain as one
vectorised kernel. Here a maximal run of body ops that have a scalar form (``Op.fused`` a
``ScalarForm``) and need no context (slices between them are views, no steps) becomes one kernel
numba compiles from those forms. It works example row by example row, op after op, each op over
1-D contiguous slices of its rows so that LLVM vectorises it, with the float32 maths of
``fastact.MATH``; every op's output still goes into its own buffer (the backward pass and NaN checks
read them). In the backward pass, consecutive per-step actions that are elementwise VJPs (``dest
(+)= G * D`` with D from ``local_grads``, or G times the op's partial derivative) become one kernel
call likewise, in the plan's order, with its aliases, rings and accumulate flags as they are; the
gradient of a state read at another step is written into a buffer of its own and sent to its step
after the kernel, in order.

An array reaches a kernel as a *lane*: a 1-D view from its first element at step 0, element
``[t, b, j]`` at ``(t mod m) st + b sb + j`` (st 0 for a value held for one step, m a ring's slots),
made from the per-step lists the NumPy steps read. The lanes of the run's own arrays are made when
the run is built and kept; those of arrays bound again at every pass (from outside the loop, lent
gradient arrays) when the pass starts, and dropped when it ends, so that nothing holds them
afterwards (``Segment``). A list a kernel cannot take (not float32, rows not contiguous) makes that
pass run the NumPy steps instead. Forms that call a function with no
vectorisable float32 form (log, log1p, expm1, a power other than a small whole one) end a segment:
numba's scalar libm call per element loses to NumPy's vectorised one beyond tiny sizes. float64
stays on NumPy (the differential tests compare exact float64 maths). Kernels are cached on disk
(``kernelcache.py``); they are made after ``AFTER_PASSES`` passes of a loop, as fused loops are.
"""
from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..ops.registry import ScalarForm
from . import fastact
from .fusedcode import NotFusable, scalar_text
from .kernelcache import load_module

AFTER_PASSES = fastact.AFTER_PASSES   # passes of a loop before its kernels are made: a short run never waits

CALLS = {"exp", "tanh", "sqrt", "abs", "min", "max"}   # what a float32 kernel computes vectorised
MAX_POWER = 4      # x ** k for a whole k up to this: k - 1 multiplications
# A segment replaces at least this many NumPy calls, or one op NumPy computes in several passes (one
# with a ``vectorised_step``: sigmoid). Measured in the benchmark's Elman net (H 128, B 32, CPU time):
# its step's add and tanh as a segment 5.1 us against NumPy's 2.0 + 3.2, and the forward pass 10%
# slower (NumPy's float32 tanh is vectorised too); its one backward action 6.1 us against 2.7 plus
# its share of the whole-sequence derivative
MIN_RUN = 3


class NotVectorised(Exception):
    """A form the float32 kernels do not compute vectorised: the op runs as its NumPy step."""


# ---- expressions ------------------------------------------------------------------------------------
def float32_expr(text: str) -> str:
    """A scalar form's expression for a float32 kernel: every literal a float32 (a float64 one would
    widen the whole chain), whole powers as products; NotVectorised for other calls and powers."""
    tree = ast.parse(text, mode="eval")
    return ast.unparse(_Float32().visit(tree))


def _constant(node) -> float | None:
    """The value of a constant expression (``2.0``, ``-1.0``, ``3.0 - 1.0``), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _constant(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        a, b = _constant(node.left), _constant(node.right)
        if a is None or b is None:
            return None
        return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
    return None


class _Float32(ast.NodeTransformer):
    def visit_Constant(self, node):
        if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return ast.Call(ast.Name("f32", ast.Load()), [ast.Constant(float(node.value))], [])
        return node

    def visit_BinOp(self, node):
        if isinstance(node.op, ast.Pow):
            k = _constant(node.right)
            if k is None or k != int(k) or not 1 <= k <= MAX_POWER:
                raise NotVectorised(f"a power {ast.unparse(node.right)}")
            base = self.visit(node.left)
            out = base
            for _ in range(int(k) - 1):
                out = ast.BinOp(out, ast.Mult(), base)
            return out
        return self.generic_visit(node)

    def visit_Call(self, node):
        if not isinstance(node.func, ast.Name) or node.func.id not in CALLS or node.keywords:
            raise NotVectorised(f"a call of {ast.unparse(node.func)}")
        node.args = [self.visit(a) for a in node.args]
        return node


_exprs: dict = {}    # (op, form text, attributes) -> its float32 expression over x0, x1, ..., out
_OWN_NAMES = {f"x{i}": f"x{i}" for i in range(16)} | {"out": "out"}


def op_expr(op, text: str, attrs: dict, names: dict[str, str]) -> str:
    """One of the op's scalar-form expressions as float32 kernel code, its inputs (``x0`` ...,
    ``out``) named by ``names``; NotVectorised if it has none."""
    key = (op.name, text, repr(sorted(attrs.items())))
    if key not in _exprs:
        try:
            _exprs[key] = float32_expr(scalar_text(op, text, attrs, _OWN_NAMES))
        except (NotVectorised, NotFusable) as e:
            _exprs[key] = e
    found = _exprs[key]
    if isinstance(found, Exception):
        raise NotVectorised(str(found))
    return _rename(found, names)


def forward_form(b) -> bool:
    """Whether body op ``b`` may be in a forward segment: an elementwise op with a vectorisable
    scalar form, no context, a real vector."""
    op = b.op
    if not (b.fast and b.view_of is None and isinstance(op.fused, ScalarForm) and not b.step.integer
            and len(b.trail) == 1 and isinstance(b.trail[0], int)):
        return False
    try:
        op_expr(op, op.fused.value, b.step.attrs, {f"x{i}": f"x{i}" for i in range(len(b.step.inputs))})
    except NotVectorised:
        return False
    return True


# ---- kernels --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Write:
    """One elementwise write of a kernel, for every row: ``dest (+)= expr`` over ``width`` elements,
    ``expr`` naming lanes as ``L0``, ``L1`` ... (a lane of width 1 broadcasts); a destination of width
    1 gets the sum over the elements (an operand broadcast in the forward pass)."""
    dest: int
    width: int
    expr: str
    add: bool = False


def kernel_source(writes: list[Write], widths: list[int]) -> str:
    """The kernel's function: ``segment(t, rows, geom, a0, a1, ...)``, geom holding (m, st, sb) per lane."""
    return _source(tuple(writes), tuple(widths))


@lru_cache(maxsize=256)
def _source(writes: tuple, widths: tuple) -> str:
    n = len(widths)
    lines = ["", "", '@njit(cache=True, nogil=True, error_model="numpy", fastmath=FLAGS)',
             f"def segment(t, rows, geom, {', '.join(f'a{k}' for k in range(n))}):"]
    for k in range(n):
        lines.append(f"    p{k} = (t % geom[{3 * k}]) * geom[{3 * k + 1}]")
        lines.append(f"    s{k} = geom[{3 * k + 2}]")
    lines.append("    for b in range(rows):")
    for w in writes:
        used = sorted(_lanes(w.expr))
        env = {}
        for k in used:
            if widths[k] == 1 and w.width > 1:
                lines.append(f"        c{k} = a{k}[p{k} + b * s{k}]")
                env[f"L{k}"] = f"c{k}"
            else:
                lines.append(f"        r{k} = a{k}[p{k} + b * s{k}:p{k} + b * s{k} + {w.width}]")
                env[f"L{k}"] = f"r{k}[j]"
        expr = _rename(w.expr, env)
        op = "+=" if w.add else "="
        if widths[w.dest] == 1 and w.width > 1:
            lines += ["        acc = f32(0.0)", f"        for j in range({w.width}):", f"            acc += {expr}",
                      f"        a{w.dest}[p{w.dest} + b * s{w.dest}] {op} acc"]
        elif w.dest in used and widths[w.dest] == w.width:
            # (written in place: the slice read, so that LLVM sees one array and vectorises; two
            # slices of it would look like arrays that may overlap)
            lines += [f"        for j in range({w.width}):", f"            r{w.dest}[j] {op} {expr}"]
        else:
            lines += [f"        rd = a{w.dest}[p{w.dest} + b * s{w.dest}:p{w.dest} + b * s{w.dest} + {w.width}]",
                      f"        for j in range({w.width}):", f"            rd[j] {op} {expr}"]
    lines.append("    return 0")
    return "\n".join(lines) + "\n"


def _rename(expr: str, env: dict[str, str]) -> str:
    """``expr`` with the names in ``env`` replaced by their expressions."""
    return _renamed(expr, tuple(sorted(env.items())))


# (a loop run is built again for every batch geometry, by_length batches make many: parsing the same
# expressions again cost 5 ms a step)
@lru_cache(maxsize=4096)
def _renamed(expr: str, env: tuple) -> str:
    table = dict(env)

    class Rename(ast.NodeTransformer):
        def visit_Name(self, node):
            return ast.parse(table[node.id], mode="eval").body if node.id in table else node
    return ast.unparse(Rename().visit(ast.parse(expr, mode="eval")))


_kernels: dict[str, object] = {}    # source hash -> the compiled kernel, or None (numba refused it)


def compiled(source: str):
    """The kernel of this source (written under the cache directory once, numba's machine code
    beside it), or None when no directory is writable."""
    key = hashlib.sha256(source.encode()).hexdigest()[:20]
    if key not in _kernels:
        try:
            _kernels[key] = load_module(f"nnspec_segment_{key}", fastact.MATH + source).segment
        except OSError:
            _kernels[key] = None
    return _kernels[key]


# ---- lanes ----------------------------------------------------------------------------------------
def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def lane(steps: list, m: int, rows: int):
    """(1-D view, (m, st, sb), width, address at step 0) of a per-step list of float32 arrays
    (``(rows, w)``, one row ``(w,)`` or ``(1, w)`` for the batch, or a number) whose step t starts
    ``(t mod m) st`` elements after step 0's and whose rows are ``sb`` apart with contiguous
    elements; None if the list is not one."""
    a = steps[0] if steps else None
    if a is None or a.dtype != np.float32 or a.ndim > 2 or rows < 1 or a.size == 0:
        return None
    if a.ndim == 0:
        w, sb = 1, 0
    elif a.ndim == 1:
        w, sb = a.shape[0], 0
    else:
        if a.shape[0] not in (rows, 1):
            return None
        w, sb = a.shape[1], (a.strides[0] // 4 if a.shape[0] > 1 else 0)
        if a.shape[0] > 1 and (a.strides[0] % 4 or sb < w):
            return None
    if w > 1 and a.strides[-1] != 4:
        return None
    n = min(m, len(steps))
    base, st = _address(a), 0
    if n > 1:
        gap = _address(steps[1]) - base
        if gap < 0 or gap % 4 or _address(steps[n - 1]) != base + (n - 1) * gap:
            return None
        st = gap // 4
    span = (n - 1) * st + (rows - 1) * sb + w
    return as_strided(a, shape=(span,), strides=(4,)), (m, st, sb), w, base


def _clash(x, y, rows: int) -> bool:
    """Whether two lanes' elements at step 0 may overlap without being the same elements."""
    (_, (_, _, sbx), wx, ax), (_, (_, _, sby), wy, ay) = x[:4], y[:4]
    if ax == ay and sbx == sby and wx == wy:
        return False
    if ax + 4 * ((rows - 1) * sbx + wx) <= ay or ay + 4 * ((rows - 1) * sby + wy) <= ax:
        return False
    if sbx == sby and sbx > 0 and (ay - ax) % 4 == 0:   # columns of the same rows: apart unless they cross
        col = ((ay - ax) // 4) % sbx
        return not (wx <= col and col + wy <= sbx)
    return True


class Segment:
    """One kernel call a step for a run of elementwise steps, with their NumPy steps as the fallback:
    ``lists`` are the lanes' per-step lists (``moduli``: a ring's slots by list, else every step),
    ``after`` what runs after the kernel at each step (the sends of state reads' gradients).

    A lane is made again only when its list holds other arrays than it was made from; the lanes of
    ``volatile`` lists (arrays from outside the loop, lent gradient arrays: bound again at every pass)
    are dropped when a pass ends, so that nothing holds them afterwards. The others are made when the
    segment is built, before its run counts the references it holds itself (``reuse.Reuse``)."""

    def __init__(self, kernel, lists: list, widths: list[int], writes: list[Write], numpy_steps: list,
                 T: int, rows: int, moduli: dict | None = None, after: list = (), volatile: set = frozenset()):
        self.kernel, self.lists, self.widths, self.writes = kernel, lists, widths, writes
        self.numpy_steps, self.T, self.rows, self.after = numpy_steps, T, rows, list(after)
        self.moduli = [(moduli or {}).get(id(lst), T) for lst in lists]
        self.volatile = [k for k, lst in enumerate(lists) if id(lst) in volatile]
        self.pairs = [(w.dest, k) for w in writes for k in sorted(_lanes(w.expr)) if k != w.dest]
        self.lanes: list = [None] * len(lists)      # (view, (m, st, sb), width, address, first, last)
        self.geom = np.zeros(3 * len(lists), np.int64)
        self.args = None
        self.checked = None     # the lanes' (address, geometry, width) the overlap check last passed

    def before_pass(self) -> None:
        """This pass's lanes, or None (the NumPy steps run) when a list is not one a kernel takes."""
        new = []
        for k, lst in enumerate(self.lists):
            x = self.lanes[k]
            if x is None or not lst or lst[0] is not x[4] or lst[-1] is not x[5]:
                found = lane(lst, self.moduli[k], self.rows)
                if found is None or found[2] != self.widths[k]:
                    self.lanes[k] = self.args = None
                    return
                self.lanes[k] = found + (lst[0], lst[-1])
                self.geom[3 * k:3 * k + 3] = found[1]
                new.append(k)
        if new or self.args is None:
            fresh = set(new)
            lanes = self.lanes
            where = tuple(x[1:4] for x in lanes)      # (lanes bound again at the same places: checked already)
            if where != self.checked and any((d in fresh or k in fresh or self.args is None)
                                             and _clash(lanes[d], lanes[k], self.rows) for d, k in self.pairs):
                self.args = None
                return
            self.args = (self.rows, self.geom) + tuple(x[0] for x in lanes)
            if not probe(self.kernel, self.args):
                self.args = None
                return
            self.checked = where

    def after_pass(self) -> None:
        """After a pass: let go of the arrays bound for it alone."""
        if self.volatile:
            self.args = None
            for k in self.volatile:
                self.lanes[k] = None

    def __call__(self, t: int) -> None:
        args = self.args
        if args is None:
            for f in self.numpy_steps:
                f(t)
            return
        self.kernel(t, *args)
        for f in self.after:
            f(t)


class Builder:
    """Collects a segment's lanes (each per-step list once), writes and NumPy steps, then compiles it."""

    def __init__(self, T: int, rows: int, moduli: dict | None = None, volatile: set = frozenset()):
        self.T, self.rows, self.moduli, self.volatile = T, rows, moduli, volatile
        self.lists: list = []
        self.index: dict[int, int] = {}
        self.widths: list[int] = []
        self.writes: list[Write] = []
        self.numpy_steps: list = []
        self.after: list = []

    def lane_of(self, steps: list, width: int | None = None) -> str:
        """The kernel's name for a per-step list (``width``: its arrays' last axis; by default that
        of the arrays it holds now)."""
        k = self.index.get(id(steps))
        if k is None:
            if width is None:
                a = steps[0] if steps else None
                width = -1 if a is None else a.shape[-1] if a.ndim else 1
            k = self.index[id(steps)] = len(self.lists)
            self.lists.append(steps)
            self.widths.append(width)
        return f"L{k}"

    def build(self) -> Segment | None:
        """The segment, or None (its NumPy steps run) when a lane's width does not fit its writes, or
        the kernel cannot be compiled."""
        if not self.writes:
            return None
        for w in self.writes:
            if self.widths[w.dest] not in (w.width, 1) or any(self.widths[k] not in (w.width, 1) for k in _lanes(w.expr)):
                return None
        kernel = compiled(kernel_source(self.writes, self.widths))
        if kernel is None or _probed.get(id(kernel)) is False:
            return None
        return Segment(kernel, self.lists, self.widths, self.writes, self.numpy_steps, self.T, self.rows,
                       self.moduli, self.after, self.volatile)


@lru_cache(maxsize=4096)
def _names(expr: str) -> frozenset[str]:
    """The names an expression reads (a loop's backward pass is built again for every batch geometry)."""
    return frozenset(n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name))


@lru_cache(maxsize=4096)
def _lanes(expr: str) -> frozenset[int]:
    """The lanes an expression reads."""
    return frozenset(int(n[1:]) for n in _names(expr) if n[0] == "L" and n[1:].isdigit())


_probed: dict[int, bool] = {}    # id of a kernel -> whether numba compiled it


def probe(kernel, args: tuple) -> bool:
    """Compile the kernel for these arrays' types by running it on no rows; False if numba rejects
    the generated code (its steps then stay on NumPy), which would otherwise fail in the middle of a pass."""
    ok = _probed.get(id(kernel))
    if ok is None:
        from numba.core.errors import NumbaError
        try:
            kernel(0, 0, *args[1:])
            ok = True
        except NumbaError:
            ok = False
        _probed[id(kernel)] = ok
    return ok


# ---- the loops' steps -------------------------------------------------------------------------------
def forward_steps(run, steps: list, rows: int) -> tuple[list, list[Segment]]:
    """A run's forward steps with each maximal run of consecutive elementwise ops (``forward_form``)
    as one segment: ``steps`` are (body op, its NumPy step) in body order, views left out. Returns
    the steps and the segments among them."""
    def segment(group):
        worth = len(group) >= MIN_RUN or group[0][0].op.vectorised_step is not None
        return _forward_segment(run, group, rows) if worth else None

    out, segs = _runs_as_segments([(f, b) for b, f in steps], forward_form, segment, swap=True)
    for seg in segs:       # the lanes they keep, made now (see Segment)
        seg.before_pass()
        seg.after_pass()
    return out, segs


def _runs_as_segments(items: list, member, segment, swap: bool = False) -> tuple[list, list[Segment]]:
    """``items`` ((step, what it is) pairs) as steps, each maximal run of consecutive members
    (``member(what)``) as ``segment(run)`` where that gives one (None: the run's own steps stay).
    ``segment`` sees the run's pairs as (what, step) when ``swap``."""
    out, segs, group = [], [], []

    def flush():
        seg = segment([(w, f) for f, w in group] if swap else group) if group else None
        if seg is None:
            out.extend(f for f, _ in group)
        else:
            out.append(seg)
            segs.append(seg)
        group.clear()

    for f, what in items:
        if member(what):
            group.append((f, what))
        else:
            flush()
            out.append(f)
    flush()
    return out, segs


def _forward_segment(run, group: list, rows: int) -> Segment | None:
    builder = Builder(run.cap, rows, volatile={id(lst) for lst, *_ in run.outer})
    for b, f in group:
        names = {f"x{i}": builder.lane_of(lst) for i, lst in enumerate(run.ins[b.id])}
        expr = op_expr(b.op, b.op.fused.value, b.step.attrs, names)
        dest = builder.lane_of(run.outs[b.id], b.trail[0])
        builder.writes.append(Write(int(dest[1:]), b.trail[0], expr))
        builder.numpy_steps.append(f)
    return builder.build()


@dataclass
class BackwardItem:
    """A backward action as a segment sees it: ``dest (+)= G * D`` (``D`` a per-step list) or
    ``dest (+)= G * partial`` (op ``b``'s partial derivative for input ``pos``, over its per-step
    inputs ``ins`` and output ``out``); ``send``: for a state read at another step, what sends the
    gradient written into ``dest`` (a buffer of the action's own) to its step. ``remake``: not a
    gradient but op ``b``'s value made again into ``dest`` from ``ins`` (``LoopProgram.recomputed``)."""
    G: list
    dest: list
    dest_width: int
    accumulate: bool
    D: list | None = None
    b: object = None
    pos: int = -1
    ins: list | None = None
    out: list | None = None
    send: object = None
    remake: bool = False


def vjp_fusable(b, pos: int, held_one_step: frozenset) -> bool:
    """Whether the VJP of body op ``b`` for input ``pos`` may be in a backward segment: a vectorisable
    partial derivative that reads no value held for one step only (its buffer holds the last step's)."""
    if not (b.fast and isinstance(b.op.fused, ScalarForm) and len(b.trail) == 1):
        return False
    n = len(b.step.inputs)
    names = {f"x{i}": f"x{i}" for i in range(n)} | {"out": "out"}
    try:
        expr = op_expr(b.op, b.op.fused.partials[pos], b.step.attrs, names)
    except NotVectorised:
        return False
    reads = _names(expr)
    stale = [f"x{i}" for i, (src, d) in enumerate(b.step.inputs) if d == 0 and src in held_one_step]
    if b.id in held_one_step:
        stale.append("out")
    return not reads & set(stale)


def backward_choice(by_id: dict, actions: list, held_one_step: frozenset) -> tuple[dict[int, str], set]:
    """Which actions of a backward plan segments do, by index: "partial" (G times the op's partial
    derivative) or "local" (G times the derivative ``local_grads`` computed); and the ops whose every
    action a segment does by its partial, whose derivative is then not computed beforehand. A run of
    fewer than ``MIN_RUN`` such actions stays NumPy's."""
    how = {}
    for i, a in enumerate(actions):
        b = by_id[a.op_id]
        if a.kind not in ("vjp", "local") or len(b.trail) != 1 or len(by_id[b.step.inputs[a.pos][0]].trail) != 1:
            continue
        if vjp_fusable(b, a.pos, held_one_step):
            how[i] = "partial"
        elif a.kind == "local":
            how[i] = "local"
    kept, i = {}, 0
    while i < len(actions):
        j = i
        while j in how:
            j += 1
        if j - i >= MIN_RUN:
            kept.update((k, how[k]) for k in range(i, j))
        i = j + 1
    inline = {a.op_id for i, a in enumerate(actions) if a.kind == "local"}
    inline = {op for op in inline if all(kept.get(i) == "partial" for i, a in enumerate(actions) if a.op_id == op)}
    for i, a in enumerate(actions):
        if i in kept and a.kind == "local" and a.op_id not in inline:
            kept[i] = "local"
    return kept, inline


def backward_steps(actions: list, T: int, rows: int, moduli: dict, volatile: set) -> tuple[list, list[Segment]]:
    """A backward pass's per-step actions with each maximal run of consecutive elementwise ones as
    one segment: ``actions`` are (its NumPy action, a ``BackwardItem`` or None) in the plan's order;
    ``moduli``: ring gradients' slots by list; ``volatile``: the lists bound again at every pass."""
    return _runs_as_segments(actions, lambda item: item is not None,
                             lambda group: _backward_segment(group, T, rows, moduli, volatile))


def _backward_segment(group: list, T: int, rows: int, moduli: dict, volatile: set) -> Segment | None:
    builder = Builder(T, rows, moduli, volatile)
    for f, it in group:
        W = it.b.trail[0]
        if it.remake:
            names = {f"x{i}": builder.lane_of(lst) for i, lst in enumerate(it.ins)}
            expr = op_expr(it.b.op, it.b.op.fused.value, it.b.step.attrs, names)
            builder.writes.append(Write(int(builder.lane_of(it.dest, W)[1:]), W, expr))
            builder.numpy_steps.append(f)
            continue
        g = builder.lane_of(it.G, W)
        if it.D is not None:
            expr = f"{g} * {builder.lane_of(it.D, W)}"
        else:
            names = {f"x{i}": builder.lane_of(lst) for i, lst in enumerate(it.ins)}
            names["out"] = builder.lane_of(it.out, W)
            expr = f"{g} * ({op_expr(it.b.op, it.b.op.fused.partials[it.pos], it.b.step.attrs, names)})"
        dest = builder.lane_of(it.dest, it.dest_width)
        builder.writes.append(Write(int(dest[1:]), W, expr, add=it.accumulate))
        builder.numpy_steps.append(f)
        if it.send is not None:
            builder.after.append(it.send)
    return builder.build()
