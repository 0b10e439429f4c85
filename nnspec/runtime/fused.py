"""Fused loops: a small loop body run by two compiled kernels (``fusedcode.py`` writes them, numba
compiles them), one for the forward recurrence and one for backpropagation through time.

Why: a tiny cell (an LSTM of 16 units, one sequence) spends its time in per-call overhead, one NumPy
call per op per step (about 1 µs each); a kernel of the whole body does a step in well under that.
At bigger sizes NumPy's vectorised exp/tanh and BLAS products win (numba's scalar exp is not
vectorised), so a loop is fused only while its work per step is small (``FUSE_MAX_WORK_PER_CALL``); the
NumPy path (``loops.py``, ``loopback.py``) stays the reference for everything else and the
fallback whenever numba is missing (the ``fast`` extra), an op has no fused form, or
``ExecOptions.fused_loops`` is off.

Compiled kernels are cached on disk (numba's ``cache=True`` on a module written once per kernel
source, under ``kernelcache.kernel_cache_dir()``), so a spec's second run does not wait for the compiler, and
numba is imported only when a loop is about to be fused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..ops import REGISTRY
from ..ops.registry import NO_CTX, PartForm, unbroadcast
from ..plan import LoopStep
from .fusedcode import Kernels, NotFusable, body_forms, generate, work_per_example
from .gradsum import GradSum
from .kernelcache import load_module, numba_available
from .loops import check_loop
from .reuse import Reuse
from .reference import send
from .tape import Tape
from .timeaxis import array_shape, carried_steps, initial_state, read_sequence

# Work of one step for the whole batch (multiply-adds and element operations, ``work_per_example`` x B)
# per NumPy call it replaces, up to which the fused kernel beats the NumPy path: the NumPy path costs
# about a microsecond a call, the kernel a few nanoseconds an operation (numba's scalar exp and naive
# products are not vectorised). Measured here (float32, T = 20, forward and backward, fused / NumPy):
# LSTM H16 B1 (480 an op) 0.56, H16 B4 0.65, H32 B1 (1,870) 0.90, GRU H32 B2 0.93, Elman H32 B4
# (1,450) 1.03, Elman H64 B1 1.15, LSTM H32 B4 (7,470) 1.47, GRU H64 B4 2.85, Elman H128 B4 6.8.
FUSE_MAX_WORK_PER_CALL = 1200

# A loop runs fused only after this many passes on NumPy: compiling its kernels costs about 3 s of CPU
# here the first time (then they are on disk: about 0.4 s, numba's import included), more than a short
# run (a check, a test, a prediction) would gain. The switch comes at a fixed pass whether or not the
# kernels are on disk, so a run stays a pure function of its spec, data, settings and seed (the fused
# kernels agree with the NumPy path to rounding, not bit for bit).
FUSE_AFTER_PASSES = 100

# The arrays of this many batch geometries (T, B) of a loop are kept for passes to come (``FusedLoops.kept``):
# a run of batches of one shape uses one set again and again; batches of many lengths hold no more.
KEPT_GEOMETRIES = 4

_modules: dict[str, object] = {}   # kernel source hash -> its compiled module, for this process


def compiled(kernels: Kernels):
    """The module holding the kernels compiled: written once under the cache directory (numba
    caches its machine code beside it), imported once per process."""
    mod = kernels.module or _modules.get(kernels.key)
    if mod is None:
        text = kernels.source.replace("\ndef ", "\n@_njit\ndef ")
        text = ("from numba import njit as _njit0\n"
                "_njit = _njit0(cache=True, nogil=True, error_model='numpy')\n" + text)
        try:
            mod = _modules[kernels.key] = load_module(f"nnspec_fused_{kernels.key}", text)
        except OSError:
            raise NotFusable("no writable directory for compiled kernels") from None
    kernels.module, kernels.source = mod, None   # (the source is not needed any more)
    return mod


def probe(mod, kernels: Kernels, args: dict, lengths: np.ndarray) -> bool:
    """Compile both kernels for these arrays' types by running them on no steps; False (the loop
    stays on NumPy) if numba rejects the generated code, which would otherwise fail a backward pass
    after a fused forward one."""
    from numba.core.errors import NumbaError

    def stand_in(kind, key):     # a gradient array: the type of the forward array it belongs to
        like = args[("value", key) if kind == "grad" else ("read", key)]
        return np.zeros(((1,) if kind == "ginit" else (1, 1)) + like.shape[2:], like.dtype)
    try:
        mod.forward(0, lengths, *[args[e] for e in kernels.layout.forward])
        mod.backward(0, lengths, *[args[e] if e in args else stand_in(*e) for e in kernels.layout.backward])
    except NumbaError:
        return False
    return True


@dataclass(eq=False)
class FusedRun:
    """What a fused loop's forward pass leaves on the tape for its backward pass."""
    kernels: object              # the compiled module
    layout: object
    args: dict                   # (kind, key) -> the array the kernels take there
    bufs: dict                   # body value -> (T, B, w)
    T: int
    lengths: np.ndarray
    inits: dict = field(default_factory=dict)
    arrays: "_Arrays | None" = None   # where bufs and the backward kernel's gradients live


class FusedLoops:
    """The fused kernels of a plan's loops, chosen loop by loop and batch by batch."""

    def __init__(self, ex):
        self.available = numba_available()
        self.fusable: dict[int, bool] = {}
        self.code: dict[tuple, Kernels | None] = {}   # (loop, batch, dtype, inputs' ranks and widths) -> kernels
        self.bodies: dict[int, _Body] = {}
        self.max_work_per_call = FUSE_MAX_WORK_PER_CALL
        self.integer = ex.facts.integer
        self.last: set[int] = set()     # the loops the last forward pass ran fused (the bench reports it)
        self.after = FUSE_AFTER_PASSES
        self.passes: dict[int, int] = {}   # loop -> passes run so far
        self.probed: set[tuple] = set()     # kernels known to compile
        self.reuse = ex.options.reuse_buffers   # a loop's arrays kept from pass to pass while nobody holds them
        self.ring = ex.options.ring_grads       # the backward kernel's gradients as rings where they may be
        self.kept: dict[int, dict] = {}   # loop -> (layout, T, B, dtype) -> its arrays of the last pass there
        self.edges: dict[tuple, tuple] = {}   # (loop, needed set) -> the edges leaving it to differentiate

    def chosen(self, loop: LoopStep, batch: int) -> bool:
        """Whether this loop runs fused at this batch size: numba is there, every body op has a
        fused form, and the work of a step is small enough to pay."""
        if not self.available:
            return False
        ok = self.fusable.get(loop.index)
        if ok is None:
            try:
                body_forms(loop, self.integer)
                ok = True
            except NotFusable:
                ok = False
            self.fusable[loop.index] = ok
        return ok

    def forward(self, ex, loop: LoopStep, tape: Tape) -> bool:
        """Run the loop fused and return True, or leave it to the NumPy path (False)."""
        index = loop.index
        self.last.discard(index)
        axis = tape.axes.get(ex.facts.loop_axis[index])
        rows = tape.batch if axis is None else tape.rows(axis)   # a nested inner axis: one row per word
        if not self.chosen(loop, rows):
            return False
        body = self.bodies.get(index)
        if body is None:
            body = self.bodies[index] = _Body(loop, ex.facts.seq)
        env = tape.values
        # (the inputs from outside as the kernel reads them: a sequence read at t + d shifted, a 0-d
        # value as one number)
        outer = ([env[src] for src in body.outer_ids] if body.unshifted else
                 [read_sequence(tape, src, d) if d != 0 and src in ex.facts.seq else env[src] for src, d in body.outer])
        if any([a.ndim == 0 for a in outer]):
            outer = [a.reshape(1) if a.ndim == 0 else a for a in outer]
        key = (index, rows, ex.dtype.str, *[(a.ndim, a.shape[-1]) for a in outer])   # (a list: no generator)
        code = self.code.get(key, False)
        if code is False:
            code = self.code[key] = self._kernels(loop, body, outer, rows, _read_outside(ex, loop))
        if code is None:
            return False
        passes = self.passes[index] = self.passes.get(index, 0) + 1
        if passes <= self.after:
            return False
        mod = code.module or compiled(code)
        if axis is None:
            axis = tape.axes[ex.facts.loop_axis[index]]
        T, B, dtype = axis.steps, rows, ex.dtype
        arrays = self._arrays(loop, code.layout, body, T, B, dtype)
        zeros, carry = arrays.zeros, tape.carry    # (a state that starts from zeros: kept zeros)
        if carry or loop.initials:
            inits = {s: zeros[s] if s not in carry and s not in loop.initials
                     else initial_state(loop, body.by_id[s], tape, carry, dtype) for s in loop.states}
        else:
            inits = zeros
        tape.initial_values.update(inits)
        before = carried_steps(loop, tape, dtype)
        bufs = arrays.bufs
        # a pass's inputs, in a dict of its own (not kept): outside values, initial states, the steps
        # of the chunk before
        args = dict(arrays.args)
        args.update(zip(body.outer_entries, [a if a.dtype == dtype else a.astype(dtype) for a in outer]))
        for entry in arrays.per_pass:
            kind, k = entry
            if kind == "init":
                a = inits[k[0]]
                if a is not zeros.get(k[0]):
                    shape = (B,) + body.trails[k[0]]
                    a = np.ascontiguousarray(a if a.shape == shape else np.broadcast_to(a, shape), dtype)
            else:   # "before"
                a = before.get(k[0]) if before else None
                a = np.ascontiguousarray(a, dtype) if a is not None and k[1] < 0 else arrays.no_steps[k[0]]
            args[entry] = a
        lengths = axis.lengths if axis.lengths.dtype == np.int64 else axis.lengths.astype(np.int64)
        if key not in self.probed:
            if not probe(mod, code, args, lengths):
                self.code[key] = None
                return False
            self.probed.add(key)
        fwd_args = arrays.fwd_args
        for i, e in arrays.per_pass_fwd:
            fwd_args[i] = args[e]
        try:
            mod.forward(T, lengths, *fwd_args)
        finally:
            for i, _ in arrays.per_pass_fwd:
                fwd_args[i] = None    # (the pass's inputs not held: the prepared pass's checks count them)
        if tape.context.check_finite:
            times = range(T) if loop.direction > 0 else range(T - 1, -1, -1)
            check_loop(ex.program(loop), bufs, times)
        env.update(bufs)
        tape.loops[index] = FusedRun(mod, code.layout, args, bufs, T, lengths, inits, arrays)
        self.last.add(index)
        last = T - 1 if loop.direction > 0 else 0
        final = tape.final_states
        for s in loop.states:
            final[s] = bufs[s][last].copy()
        return True

    def _kernels(self, loop: LoopStep, body: "_Body", outer: list, batch: int,
                 read_outside: frozenset = frozenset()) -> Kernels | None:
        """The kernels' source for this loop with these inputs, or None: it does not pay or cannot be."""
        shapes = {k: a.shape for k, a in zip(body.outer, outer)}
        calls = sum(1 for b in loop.body if not isinstance(REGISTRY[b.op].fused, PartForm))  # (a part is a view)
        if batch * work_per_example(loop, shapes) > self.max_work_per_call * max(calls, 1):
            return None
        try:
            return generate(loop, shapes, read_outside)
        except NotFusable:
            return None


    def _arrays(self, loop: LoopStep, layout, body: "_Body", T: int, B: int, dtype) -> "_Arrays":
        """The loop's arrays for this geometry: the last pass's again when nobody holds any of them
        any more (no tape, gradient or view: ``reuse.Reuse``), else new ones, kept for the next pass
        (``ExecOptions.reuse_buffers``; off: new ones every pass)."""
        if not self.reuse:
            return _Arrays(layout, body, loop.states, T, B, dtype, self.ring)
        key, mine = (id(layout), T, B, dtype.str), self.kept.setdefault(loop.index, {})
        kept = mine.get(key)
        if kept is not None and kept.layout is layout and kept.reuse.free():
            return kept
        mine.pop(key, None)
        while len(mine) >= KEPT_GEOMETRIES:   # batches of many lengths: the least recently made go
            del mine[next(iter(mine))]
        kept = mine[key] = _Arrays(layout, body, loop.states, T, B, dtype, self.ring)
        kept.reuse.track(kept.views())
        kept.tracked = True
        return kept


class _Arrays:
    """A fused loop's arrays for one geometry: the forward kernel's (the body's values over all steps,
    the shifted reads) as parts of one block, and, made on its first backward pass, the backward
    kernel's gradients as parts of another, zeroed at every backward pass."""

    ALIGN = 16   # elements: each part starts at a multiple of 64 bytes (float32)

    def __init__(self, layout, body: "_Body", states: list, T: int, B: int, dtype, ring: bool = False):
        self.layout, self.T, self.B, self.dtype = layout, T, B, dtype
        self.ring = ring    # the kept gradients: rings where they may be (``ExecOptions.ring_grads``)
        self.trails = body.trails
        aliases = layout.aliases
        shapes = {("value", v): (T, B) + trail for v, trail in body.trails.items() if v not in aliases}
        shapes.update({e: (T, B) + body.trails[e[1][0]] for e in layout.forward if e[0] == "read"})
        shapes.update({("zero", s): (B,) + body.trails[s] for s in states})
        self.block, parts = _parts(shapes, dtype, self.ALIGN)
        self.zeros = {k: parts.pop(("zero", k)) for k in states}   # initial states of zeros: only read
        self.no_steps = {e[1][0]: np.empty((0, B) + body.trails[e[1][0]], dtype)   # no steps of a chunk before
                         for e in layout.forward if e[0] == "before"}
        self.args = dict(parts)
        self.bufs = {k: a for (kind, k), a in parts.items() if kind == "value"}
        # a part kept in its source's array: a view of it (tracked as the loop's other arrays are)
        self.part_views = [(k, self.bufs[root][..., lo:hi]) for k, (root, lo, hi) in aliases.items()]
        self.bufs.update(self.part_views)
        self.per_pass = [e for e in layout.forward if e[0] in ("init", "before")]
        # the forward kernel's arguments: this geometry's arrays put in once, a pass's inputs (outside
        # values, initial states) at ``per_pass_fwd`` for the call and taken out after it
        self.fwd_args = [self.args.get(e) for e in layout.forward]
        self.per_pass_fwd = [(i, e) for i, e in enumerate(layout.forward) if e not in self.args]
        self.gblock = None
        self.grads: dict = {}
        # made with the kept gradients (once per geometry): each body value's gradient (``G`` of
        # loop_backward), the backward kernel's arguments (the pass's inputs put in at ``per_pass_bwd``)
        self.G: dict | None = None
        self.bwd_args: list | None = None
        self.per_pass_bwd: list = []
        self.reuse = Reuse()
        self.tracked = False   # kept by FusedLoops for the next pass (tracked by ``reuse``)

    def views(self) -> list:
        return [self.block, *self.args.values(), *self.zeros.values(), *(a for _, a in self.part_views)]

    def gradients(self, ring: bool) -> dict:
        """The backward kernel's gradient arrays, zeroed: the kept ones (arrays kept from pass to pass)
        when nobody holds any of them (a second backward pass over one tape must not overwrite the
        first one's results). ``ring``: those that may be rings are (``Layout.slots``), as the kept
        ones are when the executor's ``ring_grads`` is on; else all are of T steps."""
        if not self.tracked or ring != self.ring:
            return _parts(self._gradient_shapes(ring), self.dtype, self.ALIGN)[1]
        if self.gblock is None:
            before = self.reuse.counts()
            self.gblock, self.grads = _parts(self._gradient_shapes(ring), self.dtype, self.ALIGN)
            # (made before tracking, their references to the forward arrays absorbed: they count as
            # the owner's)
            self.G = gradient_views(self.layout, self.bufs, self.grads)
            self.bwd_args = [self.grads.get(e, self.args.get(e)) for e in self.layout.backward]
            self.per_pass_bwd = [(i, e) for i, e in enumerate(self.layout.backward)
                                 if e not in self.grads and e not in self.args]
            self.reuse.absorb(before)
            self.gstart = len(self.reuse.arrays)
            self.reuse.track([self.gblock, *self.grads.values()])
        elif not self.reuse.free(self.gstart):
            return _parts(self._gradient_shapes(ring), self.dtype, self.ALIGN)[1]
        else:
            self.gblock.fill(0)
        return self.grads

    def _gradient_shapes(self, ring: bool) -> dict:
        T, B = self.T, self.B
        slots = self.layout.slots if ring else {}
        shapes = {}
        for e in self.layout.gradients:
            kind, k = e
            shapes[e] = (min(slots.get(e, T), T), B) + self.trails[k if kind == "grad" else k[0]]
        for e in self.layout.initial_gradients:
            shapes[e] = (B,) + self.trails[e[1][0]]
        return shapes


def _parts(shapes: dict, dtype, align: int) -> tuple[np.ndarray, dict]:
    """One zeroed block and, by key, a part of it of each shape (each part starting aligned)."""
    at, places = 0, []
    for shape in shapes.values():
        n = math.prod(shape)
        places.append((at, n))
        at += -(-n // align) * align
    block = np.zeros(max(at, 1), dtype)
    return block, {k: block[lo:lo + n].reshape(shape) for (k, shape), (lo, n) in zip(shapes.items(), places)}


class _Body:
    """What a loop's fused run looks up once: its body by id, each value's trailing shape, and the
    inputs from outside the loop."""

    def __init__(self, loop: LoopStep, seq: set):
        self.by_id = {b.id: b for b in loop.body}
        self.trails = {b.id: array_shape(b.shape, False) for b in loop.body}
        self.outer = []
        for b in loop.body:
            for src, d in b.inputs:
                if src not in self.by_id and (src, d) not in self.outer:
                    self.outer.append((src, d))
        self.outer_entries = [("outer", k) for k in self.outer]
        self.outer_ids = [src for src, _ in self.outer]
        self.unshifted = not any(d != 0 and src in seq for src, d in self.outer)   # (all read as they are)


def whole_input(run: FusedRun, env: dict, ids: set, src: str, d: int) -> np.ndarray:
    """An op's input over all steps, as the kernel read it (a sequence from outside read at t + d:
    shifted; a 0-d value as it is, so that its gradient keeps its shape)."""
    if src in ids:
        return run.bufs[src] if d == 0 else run.args[("read", (src, d))]
    return env[src] if env[src].ndim == 0 else run.args[("outer", (src, d))]


def loop_backward(ex, loop: LoopStep, run: FusedRun, tape: Tape, grads: GradSum, need, keep: bool) -> None:
    """BPTT by the backward kernel; then one whole-sequence VJP per edge leaving the loop."""
    env, bufs, arrays = tape.values, run.bufs, run.arrays
    ids = bufs   # (the body's values: its keys)
    pre = grads.grads
    # every gradient of the kernel: parts of one zeroed block (one allocation, not one per value),
    # the block of the last pass again when nobody holds it; rings where they may be, unless every
    # gradient is kept or one of those has a gradient from outside (seeds given for it)
    ring = arrays.ring and not keep and run.layout.ring_values.isdisjoint(pre)
    gs = arrays.gradients(ring)
    kept = gs is arrays.grads and arrays.G is not None and arrays.bufs is bufs
    if kept:   # the kept block: its views and the kernel's argument list made once
        G, bwd_args = arrays.G, arrays.bwd_args
        for i, e in arrays.per_pass_bwd:
            bwd_args[i] = run.args[e]
    else:
        args = {**run.args, **gs}
        G = gradient_views(run.layout, bufs, gs)
        bwd_args = [args[e] for e in run.layout.backward]
    for v in bufs:
        if v in pre:
            G[v] += pre.pop(v)
            grads.disown(v)
    run.kernels.backward(run.T, run.lengths, *bwd_args)
    if kept:
        for i, _ in arrays.per_pass_bwd:
            bwd_args[i] = None    # (the pass's inputs not held: the prepared pass's checks count them)
    for b, op, pos, src, d, keys in _edges_out(ex, loop, ids, need):
        xs = [whole_input(run, env, ids, s2, d2) for s2, d2 in b.inputs]
        if keys is not None and grads.vjp_into_stack(keys, src, op, pos, G[b.id], xs, bufs[b.id], b.attrs):
            continue   # (a stack of parameters only this edge reads: into their flat gradients' block)
        gi = op.vjp_one(pos, G[b.id], xs, bufs[b.id], b.attrs, NO_CTX)
        if gi is not None:
            send(ex.facts, tape, src, d, gi, grads, need)
    if keep:
        for v, g in G.items():
            grads.grads[v] = g
            grads.disown(v)
    ginit: dict = {}
    for entry in run.layout.initial_gradients:
        s = entry[1][0]
        ginit[s] = ginit[s] + gs[entry] if s in ginit else gs[entry]
    for s, g in ginit.items():
        if s in need and s in loop.initials and s not in tape.carry:
            init_id = loop.initials[s]
            grads.add(init_id, unbroadcast(g, env[init_id].shape))


def gradient_views(layout, bufs: dict, gs: dict) -> dict:
    """Each body value's gradient over all steps among the kernel's gradients ``gs`` (a part kept
    in its source's array: a view of its source's gradient, which holds just the part's there)."""
    G = {v: gs[("grad", v)] for v in bufs if v not in layout.aliases}
    G.update((v, G[root][..., lo:hi]) for v, (root, lo, hi) in layout.aliases.items())
    return G


def _read_outside(ex, loop: LoopStep) -> frozenset:
    """The loop's body values something outside its body reads, or that the plan keeps (outputs,
    the loss, what a next chunk looks back at)."""
    inside: dict[str, int] = {}
    for b in loop.body:
        for src, _ in b.inputs:
            inside[src] = inside.get(src, 0) + 1
    plan, facts = ex.plan, ex.facts
    kept = set(plan.outputs) | {plan.loss} | set(facts.lookback)
    return frozenset(b.id for b in loop.body
                     if facts.readers.get(b.id, 0) > inside.get(b.id, 0) or b.id in kept)


def _edges_out(ex, loop: LoopStep, ids: set, need) -> list:
    """The edges leaving a fused loop whose gradient is needed: ``(body op step, its op, input
    position, source outside, the delay its gradient goes back with, the parameters it stacks if
    its gradient may go straight into their flat gradients' block)``, worked out once per set of
    needed values."""
    key = (loop.index, id(need))
    kept = ex.fused.edges.get(key)
    if kept is not None and kept[0] is need:
        return kept[1]
    facts, edges = ex.facts, []
    for b in loop.body:
        op = REGISTRY[b.op]
        for pos, (src, d) in enumerate(b.inputs):
            if src in ids or src in facts.integer or src not in need:
                continue
            edges.append((b, op, pos, src, d if src in facts.seq else 0, ex.fast_steps.stack_read(src, d, op)))
    ex.fused.edges[key] = (need, edges)
    return edges
