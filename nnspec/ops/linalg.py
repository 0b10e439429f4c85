"""Linear algebra: dense layer product, concatenation, slicing, embedding lookup."""
from __future__ import annotations

import numpy as np

from .registry import JoinForm, NotALoss, Op, PartForm, ProductForm, ShapeError, register, show_shape, unbroadcast


@register
class Matmul(NotALoss, Op):
    name = "matmul"
    fused = ProductForm()
    arity = 2
    shared_inputs = (0,)   # W is read as (m, n): x's leading axes are the batch's and time's
    doc = "W x for a weight W (m, n) and input x (..., n): out (..., m)"
    elementwise = False
    saves_state = False
    reads_across_chunks = False
    scores_as = None
    passes_gradient = ()
    operator = '@'
    args = ('W', 'x')
    last_axis_view = False
    row_gradient_input = None

    def shape(self, shapes, attrs, dims):
        w, x = shapes
        if len(w) != 2 or len(x) == 0:
            raise ShapeError(f"matmul: need a weight (m, n) and an input (..., n), "
                             f"got {show_shape(w)} and {show_shape(x)}")
        try:
            dims.unify(w[1], x[-1], "matmul: weight columns = input size")
        except ShapeError as e:
            raise ShapeError(f"matmul: weight {show_shape(w)} does not fit input "
                             f"{show_shape(x)} ({e})") from None
        return tuple(x[:-1]) + (w[0],)

    needs_ctx = False
    vjp_reads = (0, 1)

    def forward(self, xs, attrs, ctx):
        w, x = xs
        return _rows_times(x, w.T)  # x carries the leading (batch / time) axes

    def forward_into(self, xs, out, attrs):
        w, x = xs
        _rows_times(x, w.T, out)

    def vjp(self, g, xs, out, attrs, ctx):
        return [self.vjp_one(0, g, xs, out, attrs, ctx), self.vjp_one(1, g, xs, out, attrs, ctx)]

    def vjp_one(self, i, g, xs, out, attrs, ctx):
        w, x = xs
        if i == 0:
            # All leading axes are just more rows: one (m, rows) @ (rows, n) product.
            return g.reshape(-1, w.shape[0]).T @ x.reshape(-1, w.shape[1])
        return _rows_times(g, w)

    def vjp_into(self, i, g, xs, out, attrs, dest, accumulate):
        _product_into(i, g, xs, dest, accumulate) or super().vjp_into(i, g, xs, out, attrs, dest, accumulate)

    def step_forward(self, xs, out, attrs):
        w, x = xs
        if any(wt is not w[0] for wt in w) or x[0].ndim != 2:
            return super().step_forward(xs, out, attrs)
        rows, inner = x[0].shape
        if transposed_copy_pays(rows):
            return TransposedWeightStep(w, x, out, product_blocks(rows, inner, w[0].shape[0], x[0].dtype))
        matmul = np.matmul   # one weight for every step (a parameter): w[t] is w[0]

        def f(t):
            matmul(x[t], w[t].T, out=out[t])
        return f

    def step_vjp(self, i, g, xs, out, attrs, dest, accumulate):
        w, x = xs
        if i != 1 or any(wt is not w[0] for wt in w) or dest[0].shape != x[0].shape or g[0].ndim != 2:
            return super().step_vjp(i, g, xs, out, attrs, dest, accumulate)
        rows, inner = g[0].shape
        blocks = product_blocks(rows, inner, w[0].shape[1], g[0].dtype)   # (by shape alone, as the forward's)
        if blocks != (1, 1):
            return WeightBlocksGradStep(w, g, dest, accumulate, blocks)
        matmul = np.matmul
        if accumulate:
            def f(t):
                d = dest[t]
                d += matmul(g[t], w[t])
        else:
            def f(t):
                matmul(g[t], w[t], out=dest[t])
        return f


def transposed_copy_pays(rows: int) -> bool:
    """Whether a loop's product ``x[t] @ W.T`` (W shared by every step) should multiply by a
    contiguous copy of W.T made once a pass. OpenBLAS multiplies a few rows by a transposed matrix
    1.2-1.9x slower than by a contiguous one (rows 2-256, H 16-512; at B 4 H 128, 7x), and the copy
    costs about one step's product at B 32; not for many rows, where both products run at full speed
    (measured here, float32, one thread). Decided by the rows alone, not the steps: a kept loop run
    serves batches of other lengths (``loops.LoopRun.fits``), and the two products round differently,
    so a choice by steps would make a pass's numbers depend on the batches before it. (A pass of
    fewer than a handful of steps pays for the copy: at most one product's time.)"""
    return 2 <= rows <= 256


# OpenBLAS's small-matrix sgemm kernels, used for a product with m * n * k <= 100^3
# (kernel/x86_64/sgemm_small_kernel_permit_skylakex.c; the SkylakeX family's kernels only).
SMALL_PRODUCT = 100 ** 3
_SMALL_KERNEL_ARCHS = {"skylakex", "cooperlake", "sapphirerapids"}
_small_kernels: bool | None = None


def blas_small_kernels() -> bool:
    """Whether NumPy's BLAS is an OpenBLAS whose kernel has small-matrix sgemm kernels (found once
    a process, from threadpoolctl: a machine's fact, like the kernel's rounding, not a timing)."""
    global _small_kernels
    if _small_kernels is None:
        try:
            from threadpoolctl import threadpool_info
            _small_kernels = any(lib.get("internal_api") == "openblas"
                                 and str(lib.get("architecture", "")).lower() in _SMALL_KERNEL_ARCHS
                                 for lib in threadpool_info() if lib.get("user_api") == "blas")
        except Exception:   # an unknown platform: the plain product
            _small_kernels = False
    return _small_kernels


def product_blocks(rows: int, inner: int, cols: int, dtype) -> tuple[int, int]:
    """How a loop's per-step product (rows, inner) @ (inner, cols) by one weight runs fastest:
    (chunks, blocks), the inner axis cut into ``chunks`` parts and the columns into ``blocks``,
    all the (rows, inner / chunks) @ (inner / chunks, cols / blocks) products in one batched call by
    a stack of the weight's parts copied once a pass, the chunks' products then summed ((1, 1):
    whole). A pure function of the shape, the dtype and the machine's BLAS kernel, never of a timing.

    Measured with OpenBLAS 0.3.31 SkylakeX, float32, one thread, in us (whole -> parts): a
    product over OpenBLAS's small-kernel limit runs faster as parts under it, the fewest column
    blocks of at least 32 columns (narrower ones cost more than they save), cutting the inner axis
    into parts of at least 256 only where no such blocks fit: (32, 128) @ (128, 512) 52-58 -> 41-43
    in 4 blocks, its backward (32, 512) @ (512, 128) 51-56 -> 41 in 4, (32, 128) @ (128, 384) 38-41 -> 31 in 2,
    (64, 128) @ (128, 512) 94 -> 84 in 8, (32, 256) @ (256, 1024) 215-259 -> 167 in 16,
    (32, 512) @ (512, 2048) 1070-1110 -> 680 in 64, (16, 512) @ (512, 2048) 660 -> 340 in 32,
    (128, 128) @ (128, 512) 177-180 -> 175 in 16; (32, 2048) @ (2048, 512) 860-930 -> 640-720 in
    4 chunks x 16 blocks, (32, 1024) @ (1024, 256) 204 -> 160 in 2 x 8. Not with
    OPENBLAS_CORETYPE=Haswell, whose kernels have no small-matrix path: there every split
    measured slower."""
    if np.dtype(dtype) != np.float32 or not blas_small_kernels() or rows * inner * cols <= SMALL_PRODUCT:
        return (1, 1)
    chunks = 1
    while inner % chunks == 0 and (chunks == 1 or inner // chunks >= 256):   # (chunks of 256-512 measured)
        for k in range(2 if chunks == 1 else 1, cols // 32 + 1):
            if cols % k == 0 and rows * (inner // chunks) * (cols // k) <= SMALL_PRODUCT:
                return (chunks, k)
        chunks *= 2
    return (1, 1)


def column_parts(a: np.ndarray, parts: int) -> np.ndarray:
    """The (rows, cols) array a as (parts, rows, cols // parts), its equal column blocks: a view
    whatever a's strides (splitting one axis never copies), made in 0.5 us (as_strided: 5)."""
    return a.reshape(a.shape[0], parts, a.shape[1] // parts).transpose(1, 0, 2)


class StepProduct:
    """The step kernel ``out[t] (+)= a[t] @ M`` for M = W or W.T, W a weight shared by every step, in
    the parts ``product_blocks`` chose: M, or the stack of its parts, is copied contiguously before
    each pass (the weight changes between passes) and dropped after it, so no memory is held
    between passes."""

    def __init__(self, w: list, a: list, out: list, accumulate: bool, blocks: tuple[int, int], transposed: bool):
        self.w, self.a, self.out, self.accumulate = w, a, out, accumulate    # the run's per-step lists
        self.transposed = transposed
        self.blocks = blocks        # (chunks of the inner axis, column blocks)
        self.m = None               # M, (blocks, inner, cols / blocks), or (blocks, chunks, inner / chunks, ...)
        self.into: list = []        # per step, where the product goes (out[t] or a temporary, as blocks)
        self.ins: list = []         # chunks > 1: per step, a[t] as (1, chunks, rows, inner / chunks)
        self.parts = None           # chunks > 1: the chunks' products, summed into ``into``
        self.tmp = None             # accumulating: one step's product, added in

    def before_pass(self) -> None:
        m, (c, k), T = (self.w[0].T if self.transposed else self.w[0]), self.blocks, len(self.out)
        inner, cols = m.shape
        if self.accumulate:
            self.tmp = np.empty(self.out[0].shape, self.out[0].dtype)
        target = [self.tmp] * T if self.accumulate else self.out
        if (c, k) == (1, 1):
            self.m, self.into = np.ascontiguousarray(m), target
            return
        stack = m.reshape(c, inner // c, k, cols // k).transpose(2, 0, 1, 3)
        parts: dict = {}    # by array: a value held for one step is the same array at every step
        for o in target:
            if id(o) not in parts:
                parts[id(o)] = column_parts(o, k)
        self.into = [parts[id(o)] for o in target]
        if c == 1:
            self.m = np.ascontiguousarray(stack[:, 0])
            return
        self.m = np.ascontiguousarray(stack)
        self.ins = [column_parts(x, c)[None] for x in self.a]
        self.parts = np.empty((k, c, self.out[0].shape[0], cols // k), self.out[0].dtype)

    def after_pass(self) -> None:
        self.m, self.into, self.ins, self.parts, self.tmp = None, [], [], None, None

    def __call__(self, t: int) -> None:
        if self.parts is not None:
            np.matmul(self.ins[t], self.m, out=self.parts)
            np.sum(self.parts, axis=1, out=self.into[t])
        else:
            np.matmul(self.a[t], self.m, out=self.into[t])
        if self.accumulate:
            np.add(self.out[t], self.tmp, out=self.out[t])


class TransposedWeightStep(StepProduct):
    """The step kernel ``out[t] = x[t] @ W.T``: by a contiguous copy of W.T (OpenBLAS multiplies a
    few rows by a transposed matrix 1.2-1.9x slower, ``transposed_copy_pays``), or of its parts."""

    def __init__(self, w: list, x: list, out: list, blocks: tuple[int, int] = (1, 1)):
        super().__init__(w, x, out, False, blocks, transposed=True)


class WeightBlocksGradStep(StepProduct):
    """The step kernel of an input's gradient ``dest[t] (+)= g[t] @ W`` in parts of W."""

    def __init__(self, w: list, g: list, dest: list, accumulate: bool, blocks: tuple[int, int]):
        super().__init__(w, g, dest, accumulate, blocks, transposed=False)


def unblocked(kernel):
    """The kernel with its product in one piece (``ExecOptions(blocked_products=False)``)."""
    if isinstance(kernel, StepProduct):
        kernel.blocks = (1, 1)
    return kernel


def _product_into(i, g, xs, dest, accumulate) -> bool:
    """The gradient of a product's weight (i = 0) or input (i = 1) into dest; False if not done."""
    w, x = xs[0], xs[1]
    if i == 0 and dest.shape == w.shape and dest.flags.c_contiguous:
        g2, x2 = g.reshape(-1, w.shape[0]), x.reshape(-1, w.shape[1])
        if accumulate:
            dest += g2.T @ x2
        else:
            np.matmul(g2.T, x2, out=dest)
        return True
    if i == 1 and dest.shape == x.shape:
        if accumulate:
            dest += _rows_times(g, w)
        else:
            _rows_times(g, w, dest)
        return True
    return False


def _rows_times(x: np.ndarray, m: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """x @ m with every leading axis of x taken as more rows: one BLAS product
    instead of NumPy's loop of one product per leading index."""
    if x.ndim <= 2:
        return np.matmul(x, m) if out is None else np.matmul(x, m, out=out)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if out is None:
        return np.matmul(x2, m).reshape(lead + (m.shape[-1],))
    if out.flags.c_contiguous:
        np.matmul(x2, m, out=out.reshape(-1, m.shape[-1]))
    else:
        out[...] = np.matmul(x2, m).reshape(out.shape)
    return out


@register
class Linear(NotALoss, Op):
    name = "linear"
    fused = ProductForm(bias=True)
    arity = 3
    shared_inputs = (0, 2)
    needs_ctx = False
    vjp_reads = (0, 1)
    doc = "W x + b for a weight W (m, n), an input x (..., n) and a bias b (m,): matmul and add in one step"
    elementwise = False
    saves_state = False
    reads_across_chunks = False
    scores_as = None
    passes_gradient = ()
    operator = None
    args = ('W', 'x', 'b')
    last_axis_view = False
    row_gradient_input = None

    def shape(self, shapes, attrs, dims):
        w, x, b = shapes
        out = Matmul.shape(self, [w, x], attrs, dims)
        if len(b) != 1:
            raise ShapeError(f"linear: the bias must be a vector, got {show_shape(b)}")
        dims.unify(b[0], out[-1], "linear: bias size = weight rows")
        return out

    def forward(self, xs, attrs, ctx):
        w, x, b = xs
        out = _rows_times(x, w.T)
        out += b
        return out

    def forward_into(self, xs, out, attrs):
        w, x, b = xs
        _rows_times(x, w.T, out)
        out += b

    def vjp(self, g, xs, out, attrs, ctx):
        return [self.vjp_one(i, g, xs, out, attrs, ctx) for i in range(3)]

    def vjp_one(self, i, g, xs, out, attrs, ctx):
        w, x, b = xs
        if i == 0:
            return g.reshape(-1, w.shape[0]).T @ x.reshape(-1, w.shape[1])
        if i == 1:
            return _rows_times(g, w)
        return g.reshape(-1, w.shape[0]).sum(axis=0)

    def vjp_into(self, i, g, xs, out, attrs, dest, accumulate):
        if i == 2 and dest.shape == xs[2].shape:
            g2 = g.reshape(-1, dest.shape[0])
            if accumulate:
                dest += g2.sum(axis=0)
            else:
                np.add.reduce(g2, axis=0, out=dest)   # (np.sum's Python wrapper costs a microsecond)
            return
        _product_into(i, g, xs, dest, accumulate) or super().vjp_into(i, g, xs, out, attrs, dest, accumulate)


@register
class Concat(NotALoss, Op):
    name = "concat"
    fused = JoinForm()
    arity = None
    doc = "join inputs along the last axis (other dims must agree)"
    elementwise = False
    saves_state = False
    reads_across_chunks = False
    scores_as = None
    passes_gradient = ()
    operator = None
    args = ('x1', 'x2', '...')
    last_axis_view = False
    row_gradient_input = None

    def shape(self, shapes, attrs, dims):
        if not shapes or any(len(s) == 0 for s in shapes):
            raise ShapeError("concat: needs inputs with at least one axis, got "
                             + ", ".join(show_shape(s) for s in shapes))
        head = tuple(shapes[0][:-1])
        for s in shapes[1:]:
            if len(s) != len(shapes[0]):
                raise ShapeError(f"concat: shapes {show_shape(shapes[0])} and "
                                 f"{show_shape(s)} have different ranks")
            try:
                head = tuple(dims.unify(a, b, "concat") for a, b in zip(head, s[:-1]))
            except ShapeError as e:
                raise ShapeError(f"concat: shapes {show_shape(shapes[0])} and "
                                 f"{show_shape(s)} differ before the last axis ({e})") from None
        sizes = [dims.value(s[-1]) for s in shapes]
        for s, n in zip(shapes, sizes):
            if n is None:
                raise ShapeError(f"concat: the last axis of input {show_shape(s)} has no "
                                 f"known size yet; give it an explicit size")
        return head + (sum(sizes),)

    needs_ctx = False
    vjp_reads = ()

    def forward(self, xs, attrs, ctx):
        # Inputs may carry different leading axes (a parameter, a batch, a
        # sequence): broadcast those first, as elementwise ops would.
        lead = np.broadcast_shapes(*(x.shape[:-1] for x in xs))
        return np.concatenate([np.broadcast_to(x, lead + x.shape[-1:]) for x in xs], axis=-1)

    def vjp(self, g, xs, out, attrs, ctx):
        cuts = np.cumsum([x.shape[-1] for x in xs])[:-1]
        return [unbroadcast(gi, x.shape) for gi, x in zip(np.split(g, cuts, axis=-1), xs)]

    def forward_into(self, xs, out, attrs):
        if all(x.shape[:-1] == out.shape[:-1] for x in xs):
            np.concatenate(xs, axis=-1, out=out)
        else:
            np.copyto(out, self.forward(xs, attrs, None))

    def vjp_view(self, i, g, xs, attrs):
        lo = sum(x.shape[-1] for x in xs[:i])
        part = g[..., lo:lo + xs[i].shape[-1]]
        return part if part.shape == xs[i].shape else None    # (not when it sums over broadcast axes)

    def vjp_into(self, i, g, xs, out, attrs, dest, accumulate):
        lo = sum(x.shape[-1] for x in xs[:i])
        part = unbroadcast(g[..., lo:lo + xs[i].shape[-1]], dest.shape)
        if accumulate:
            dest += part
        else:
            np.copyto(dest, part)


@register
class Slice(NotALoss, Op):
    name = "slice"
    fused = PartForm()
    attrs = {"start": 0, "stop": None}
    needs_ctx = False
    vjp_reads = ()
    doc = "x[..., start:stop]: a part of the last axis (a view, no copy); the optimiser splits fused gates with it"
    elementwise = False
    saves_state = False
    reads_across_chunks = False
    scores_as = None
    passes_gradient = ()
    operator = None
    args = ('x',)
    last_axis_view = True
    row_gradient_input = None

    def _bounds(self, attrs, n):
        start, stop = int(self.attr(attrs, "start")), self.attr(attrs, "stop")
        stop = n if stop is None else int(stop)
        return start, stop

    def shape(self, shapes, attrs, dims):
        x = tuple(shapes[0])
        if len(x) == 0:
            raise ShapeError("slice: needs an input with at least one axis, got ()")
        n = dims.value(x[-1])
        start, stop = self._bounds(attrs, n)
        if n is None and self.attr(attrs, "stop") is None:
            if start == 0:
                return x
            # [start:] of an axis whose size is not known yet (a state read before its equation)
            raise ShapeError(f"slice: [{start}:] of an axis whose size is not known")
        if not (0 <= start < stop) or (n is not None and stop > n):
            raise ShapeError(f"slice: [{start}:{stop}] is not a non-empty part of an axis of size {n}")
        return x[:-1] + (stop - start,)

    def forward(self, xs, attrs, ctx):
        start, stop = self._bounds(attrs, xs[0].shape[-1])
        return xs[0][..., start:stop]

    def vjp(self, g, xs, out, attrs, ctx):
        start, stop = self._bounds(attrs, xs[0].shape[-1])
        dx = np.zeros(xs[0].shape, dtype=g.dtype)
        dx[..., start:stop] = g
        return [dx]

    def vjp_into(self, i, g, xs, out, attrs, dest, accumulate):
        start, stop = self._bounds(attrs, xs[0].shape[-1])
        if not accumulate:
            dest[...] = 0
        dest[..., start:stop] += g


@register
class ConcatRows(NotALoss, Op):
    name = "concat_rows"
    arity = None
    shared_inputs = "all"  # joined along axis 0, which is the batch's for a per-example value
    needs_ctx = False
    vjp_reads = ()
    doc = ("stack parameters along their first axis: matrices (m_i, n) -> (sum m_i, n), vectors -> one "
           "vector; the optimiser fuses the weights of gates with it, once per pass")
    elementwise = False
    saves_state = False
    reads_across_chunks = False
    scores_as = None
    passes_gradient = ()
    operator = None
    args = ('x1', 'x2', '...')
    last_axis_view = False
    row_gradient_input = None

    def shape(self, shapes, attrs, dims):
        if not shapes or any(len(s) == 0 for s in shapes):
            raise ShapeError("concat_rows: needs inputs with at least one axis, got "
                             + ", ".join(show_shape(s) for s in shapes))
        rest = tuple(shapes[0][1:])
        for s in shapes[1:]:
            if len(s) != len(shapes[0]):
                raise ShapeError(f"concat_rows: shapes {show_shape(shapes[0])} and {show_shape(s)} "
                                 f"have different ranks")
            try:
                rest = tuple(dims.unify(a, b, "concat_rows") for a, b in zip(rest, s[1:]))
            except ShapeError as e:
                raise ShapeError(f"concat_rows: shapes {show_shape(shapes[0])} and {show_shape(s)} "
                                 f"differ after the first axis ({e})") from None
        sizes = [dims.value(s[0]) for s in shapes]
        if any(n is None for n in sizes):
            raise ShapeError("concat_rows: every input needs a known number of rows")
        return (sum(sizes),) + rest

    stacks_rows = True

    def forward(self, xs, attrs, ctx):
        return np.concatenate(xs, axis=0)

    def vjp(self, g, xs, out, attrs, ctx):
        parts, lo = [], 0
        for x in xs:  # views of g: the parts do not overlap
            parts.append(g[lo:lo + x.shape[0]])
            lo += x.shape[0]
        return parts


@register
class Embed(NotALoss, Op):
    name = "embed"
    arity = 2
    shared_inputs = (1,)
    integer_inputs = (0,)
    doc = "row ids of a table (V, d): int ids (...) -> (..., d); id -1 (padding) gives zeros"
    elementwise = False
    saves_state = False
    reads_across_chunks = False
    scores_as = None
    passes_gradient = ()
    operator = None
    args = ('ids', 'width')
    last_axis_view = False
    row_gradient_input = 1

    def shape(self, shapes, attrs, dims):
        ids, table = shapes
        if len(table) != 2:
            raise ShapeError(f"embed: the table must be a matrix (V, d), got {show_shape(table)} "
                             f"(ids {show_shape(ids)})")
        return tuple(ids) + (table[1],)

    needs_ctx = False
    vjp_reads = (0,)

    def forward(self, xs, attrs, ctx):
        ids, table = xs
        if ids.size and ids.max() >= table.shape[0]:
            raise ValueError(f"embed: id {int(ids.max())} out of range for a table "
                             f"of {table.shape[0]} rows")
        pad = ids < 0
        out = table[np.where(pad, 0, ids)]
        out[pad] = 0  # padding embeds to zeros, so it cannot leak into sums
        return out

    def forward_into(self, xs, out, attrs):
        ids, table = xs
        # (the ufuncs' reductions, not the methods' Python wrappers: a microsecond each for a few ids)
        if (ids.size and 0 <= np.minimum.reduce(ids, axis=None) and np.maximum.reduce(ids, axis=None) < table.shape[0]
                and out.flags.c_contiguous):
            np.take(table, ids, axis=0, out=out, mode="clip")  # in range: "clip" clips nothing, and
            return                                             # unlike "raise" needs no buffer
        np.copyto(out, self.forward(xs, attrs, None))

    def vjp(self, g, xs, out, attrs, ctx):
        dtable = np.zeros(xs[1].shape, dtype=g.dtype)
        self.vjp_into(1, g, xs, out, attrs, dtable, True)
        return [None, dtable]

    def vjp_into(self, i, g, xs, out, attrs, dest, accumulate):
        if i == 0:
            return
        ids = xs[0].reshape(-1)
        g = g.reshape(len(ids), -1)
        if ids.size and ids.min() < 0:
            keep = ids >= 0
            ids, g = ids[keep], g[keep]
        if not accumulate:
            dest.fill(0)
        np.add.at(dest, ids, g)  # add.at: repeated ids accumulate
