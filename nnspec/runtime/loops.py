"""Fast loops, forward: a loop's run, made for one batch and kept for the next ones.

Every body value gets a ``(T, B, ...)`` buffer before the loop, and each step writes into it
with the op's in-place kernel (``Op.step_forward``); a ``slice`` is a view of its source's
buffer. A state read (``h[t-1]``) is a view of the state's own buffer, which has room for the
initial state before the first step; in a batch with padding it is copied, masked, into a read
buffer at every step instead (``TimeAxis.read_step_into``). The buffers, views and kernels (a
``LoopRun``) are kept for the next batch and used again when nothing outside holds any of their
arrays (``reuse.Reuse``); only the lists of inputs from outside the loop are bound again. A run
made with padding serves any later batch of as many rows and no more steps (its buffers' first
T steps; batches cut by length have a different T almost every time); one made without padding,
whose state reads are views with the initial state in front, serves only its own T, unpadded.
The backward pass is in ``loopback.py``.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import numpy as np

from ..ops.linalg import unblocked
from . import fastact, segments
from .blas import blas_threads
from .loopprogram import LoopProgram
from .reuse import Reuse, distinct
from .tape import Tape, check_finite
from .timeaxis import TimeAxis, carried_steps, initial_state, read_sequence


@dataclass(eq=False)
class LoopRun:
    """One loop's buffers, per-step views and step kernels, kept from batch to batch."""

    T: int                                       # this pass's steps (at most ``cap``)
    axis: TimeAxis                               # this pass's axis: the run's own object, which its
                                                 # actions hold, given each pass's lengths (``start_pass``)
    inits: dict
    scratch: frozenset = frozenset()             # values held for one step only: (B, ...) arrays
    bufs: dict = field(default_factory=dict)
    reads: dict = field(default_factory=dict)    # (src, delay) -> (T, B, ...) what each step read
    ins: dict = field(default_factory=dict)      # op id -> per input, its array at every step
    outs: dict = field(default_factory=dict)     # op id -> its output array at every step
    ctxs: dict = field(default_factory=dict)     # op id -> per step Ctx (ops that need one)
    fills: list = field(default_factory=list)    # state reads: (read views, state views, state, d)
    extended: dict = field(default_factory=dict)  # state -> (buffer with initial-state slots, index of step 0)
    init_slots: list = field(default_factory=list)  # (slots, state): where the initial state goes each pass
    outer: list = field(default_factory=list)    # (per-step list, source, delay, kind) bound every pass
    outer_views: list = field(default_factory=list)  # (value, source, start, stop): parts of outer sequences
    steps: list = field(default_factory=list)    # forward kernels f(t), in body order
    prepared: list = field(default_factory=list)  # the kernels with before_pass / after_pass
    segments: list = field(default_factory=list)  # the fused elementwise segments among them (segments.py)
    fused_segments: bool = False                 # whether its passes run segments (forward and backward)
    backward: object = None                      # loopback.LoopBackward, once built
    key: tuple = ()
    tape: object = None                          # weak reference to the tape that ran it last
    reuse: Reuse = field(default_factory=Reuse)  # the arrays reused from pass to pass
    cap: int = 0                                 # the steps its buffers and per-step lists have room for

    def fits(self, axis: TimeAxis) -> bool:
        """Whether a batch on ``axis`` (as many rows: the run's key) can use this run: no more steps,
        and without padding when its state reads are views of shifted buffers (``extended``)."""
        T = axis.steps
        if self.extended:
            return T == self.cap and axis.minlen == T
        return T <= self.cap

    def start_pass(self, axis: TimeAxis) -> None:
        self.T = axis.steps
        self.axis.assign(axis)

    def whole(self, a: np.ndarray) -> np.ndarray:
        """A (cap, B, ...) array of the run's as this pass's (T, B, ...) sequence."""
        return a if self.T == self.cap else a[:self.T]

    def seal(self) -> None:
        """Track the arrays the run reuses (its buffers and state reads)."""
        outer = {bid for bid, *_ in self.outer_views}
        self.reuse.track(distinct([a for k, a in self.bufs.items() if k not in outer]
                                  + [a for (src, d), a in self.reads.items() if src in self.bufs]))

    def free(self) -> bool:
        """Whether nobody but the run refers to its arrays (no tape, gradient or view of them
        outlives the pass that made it), so the next pass may overwrite them."""
        return (self.tape is None or self.tape() is None) and self.reuse.free()


class FastLoop:
    """One loop of the plan on the fast path: its program and the run it keeps."""

    def __init__(self, program: LoopProgram):
        self.program = program
        self._run: LoopRun | None = None
        self.passes = 0

    def cached_run(self, key: tuple, axis: TimeAxis) -> LoopRun | None:
        """The last run, if it was made for this key, fits this batch's steps and nothing else holds
        its arrays."""
        run = self._run
        if run is not None and run.key == key and run.fits(axis) and run.free():
            return run
        self._run = None
        return None

    def release_outer(self) -> None:
        """Before a pass: a kept run lets go of the last pass's arrays from outside the loop, so
        that the pool can hand their blocks to this pass (they are bound again when the loop runs)."""
        run = self._run
        if run is not None and run.free():
            for lst, *_ in run.outer:
                lst.clear()
            for bid, *_ in run.outer_views:
                run.bufs.pop(bid, None)
            for key in [k for k in run.reads if k[0] not in self.program.ids]:   # shifted outer sequences
                del run.reads[key]

    def forward(self, ex, tape: Tape) -> None:
        prog, loop = self.program, self.program.loop
        axis = tape.axes[ex.facts.loop_axis[loop.index]]
        T = axis.steps
        inits = {s: initial_state(loop, prog.steps[s], tape, tape.carry, ex.dtype) for s in loop.states}
        tape.initial_values.update(inits)
        before = carried_steps(loop, tape, ex.dtype)
        # values no backward step reads are kept for one step only (not while checking for NaN,
        # which looks at every step afterwards)
        scratch = frozenset() if tape.context.check_finite else prog.scratch
        self.passes += 1
        after, seg_after = ex.fast_sigmoid_after, ex.segments_after
        fast_sigmoid = after is not None and ex.dtype == np.float32 and self.passes > after
        fused_segments = seg_after is not None and ex.dtype == np.float32 and self.passes > seg_after
        key = (tape.rows(axis), scratch, fast_sigmoid, fused_segments)
        run = self.cached_run(key, axis)
        if run is None:
            run = build_run(ex, prog, tape, axis, scratch, fast_sigmoid, fused_segments)
            if prog.reusable:
                run.key = key
                run.seal()
                self._run = run
        else:
            run.start_pass(axis)
            bind_outer(run, tape)
        run.tape = weakref.ref(tape)
        run.inits = inits
        fills = [(Xl, Bl, inits[src], before.get(src), d) for Xl, Bl, src, d in run.fills]
        for slot, src in run.init_slots:
            np.copyto(slot, before[src][-len(slot):] if src in before else inits[src])
        times = range(T) if loop.direction > 0 else range(T - 1, -1, -1)
        read_into, steps = run.axis.read_step_into, run.steps
        quiet = np.errstate(over="ignore") if prog.quiet_overflow else contextlib.nullcontext()
        for f in run.prepared:       # (a copy of a weight; a segment's arrays, held while the loop runs)
            f.before_pass()
        try:
            with blas_threads(ex.options.loop_blas_threads), quiet:
                for t in times:
                    for Xl, Bl, init, pre, d in fills:
                        read_into(Xl[t], Bl, t + d, init, pre)
                    for f in steps:
                        f(t)
        finally:
            for f in run.prepared:
                f.after_pass()
        values = {k: run.whole(v) for k, v in run.bufs.items() if k not in run.scratch}
        if tape.context.check_finite:
            check_loop(prog, values, times)
        tape.values.update(values)
        tape.loops[loop.index] = run
        last = T - 1 if loop.direction > 0 else 0
        for s in loop.states:
            tape.final_states[s] = run.bufs[s][last].copy()


def allocate(ex, prog: LoopProgram, run: LoopRun, tape: Tape) -> None:
    """The run's buffers: one (T, B, ...) array per body value (with initial-state slots for
    states read at another step when there is no padding), views for slices, (B, ...) for scratch."""
    env, T, B, bufs = tape.values, run.cap, tape.rows(run.axis), run.bufs
    # Without padding, a state read at t + d is the state's own buffer shifted by d, with
    # room for the initial state before the first step: views, no copy at every step.
    slots: dict[str, int] = {}
    if run.axis.minlen == T:
        for src, d in prog.delayed:
            if src in prog.ids:
                slots[src] = max(slots.get(src, 0), abs(d))
    for b in prog.body:
        dtype = np.int64 if b.step.integer else ex.dtype
        if b.id in slots:
            k = slots[b.id]
            full = ex.pool.empty((T + k, B) + b.trail, dtype)
            first = prog.loop.direction > 0
            bufs[b.id] = full[k:] if first else full[:T]
            run.init_slots.append((full[:k] if first else full[T:], b.id))
            run.extended[b.id] = (full, k if first else 0)
        elif b.view_of is not None:
            src, lo, hi = b.view_of
            if src in prog.ids:
                bufs[b.id] = bufs[src][..., lo:hi]
            else:       # a part of a sequence from outside: bound with it
                run.outer_views.append((b.id, src, lo, hi))
                bufs[b.id] = env[src][..., lo:hi]
        elif b.id in run.scratch:
            bufs[b.id] = np.empty((B,) + b.trail, dtype=dtype)
        else:
            bufs[b.id] = ex.pool.empty((T, B) + b.trail, dtype)
    # state reads ([t-1] and the like): a (T, B, ...) buffer of what each step read
    for key in prog.delayed:
        src, d = key
        if src in run.extended:     # step t of this view is the state at t + d, or the initial state
            full, at = run.extended[src]
            run.reads[key] = full[at + d: at + d + T]
        elif src in prog.ids:
            run.reads[key] = X = ex.pool.empty(bufs[src].shape, bufs[src].dtype)
            run.fills.append((list(X), list(bufs[src]), src, d))


def build_run(ex, prog: LoopProgram, tape: Tape, axis: TimeAxis, scratch,
              fast_sigmoid: bool = False, fused_segments: bool = False) -> LoopRun:
    """Buffers, per-step views and step kernels of one loop for this batch's geometry (a sigmoid's
    by ``fastact``'s compiled kernel when ``fast_sigmoid``; runs of elementwise ops as one compiled
    kernel each when ``fused_segments``, ``segments.py``).

    Inputs from outside the loop are bound afterwards (``bind_outer``), into lists the
    kernels read at every step, so a run can be used again for the next batches
    (``LoopRun.fits``)."""
    T = axis.steps
    run = LoopRun(T=T, axis=TimeAxis.copy_of(axis), inits={}, scratch=scratch, cap=T)
    allocate(ex, prog, run, tape)
    bufs, seq = run.bufs, ex.facts.seq
    # per value, its array at every step (the same array every step for scratch values);
    # lists of values from outside the loop are filled by bind_outer
    seqs: dict = {}

    def outer_view(v: str) -> bool:        # a part of a sequence from outside the loop
        view_of = prog.by_id[v].view_of
        return view_of is not None and view_of[0] not in prog.ids

    for b in prog.body:
        ins = []
        for src, d in b.step.inputs:
            key = (src, d)
            if key not in seqs:
                seqs[key] = lst = []
                if d != 0 and src in prog.ids:
                    lst.extend(run.reads[key])
                elif d == 0 and src in scratch:
                    lst.extend([bufs[src]] * T)
                elif d == 0 and src in prog.ids:
                    if outer_view(src):
                        run.outer.append((lst, src, 0, "view"))
                    else:
                        lst.extend(bufs[src])
                else:
                    run.outer.append((lst, src, d, "seq" if src in seq else "static"))
            ins.append(seqs[key])
        run.ins[b.id] = ins
        if (b.id, 0) not in seqs:
            seqs[(b.id, 0)] = lst = [bufs[b.id]] * T if b.id in scratch else []
            if b.id not in scratch:
                if outer_view(b.id):
                    run.outer.append((lst, b.id, 0, "view"))
                else:
                    lst.extend(bufs[b.id])
        run.outs[b.id] = seqs[(b.id, 0)]
    bind_outer(run, tape)
    steps = []
    for b in prog.body:
        if b.view_of is not None:
            continue
        kernel = fastact.vectorised_step(b.op, run.ins[b.id][0], run.outs[b.id], b.step.attrs) if (
            b.fast and fast_sigmoid and b.op.vectorised_step is not None
            and not (fused_segments and segments.forward_form(b))) else None   # (a segment's then)
        if kernel is not None:
            steps.append((b, kernel))
        elif b.fast:
            kernel = b.op.step_forward(run.ins[b.id], run.outs[b.id], b.step.attrs)
            steps.append((b, kernel if ex.options.blocked_products else unblocked(kernel)))
        else:
            ctxs = run.ctxs[b.id] = [None] * T
            steps.append((b, generic_forward(b.op, b.step.attrs, run.ins[b.id], run.outs[b.id], ctxs,
                                             tape.context)))
    run.fused_segments = fused_segments
    if fused_segments:
        run.steps, run.segments = segments.forward_steps(run, steps, tape.rows(axis))
    else:
        run.steps = [f for _, f in steps]
    run.prepared = [f for f in run.steps if hasattr(f, "before_pass")]
    return run


def bind_outer(run: LoopRun, tape: Tape) -> None:
    """Point a run's per-step lists at this pass's arrays from outside the loop."""
    env = tape.values
    for bid, src, lo, hi in run.outer_views:
        run.bufs[bid] = env[src][..., lo:hi]
    for lst, src, d, kind in run.outer:
        if kind == "view":
            a = run.bufs[src]
        elif kind == "static":
            a = env[src]
            if lst and lst[0] is a:
                continue
            lst[:] = [a] * run.cap
            continue
        elif d != 0:  # a sequence computed before the loop, read at another step: shift it all at once
            a = run.reads[(src, d)] = read_sequence(tape, src, d)
        else:
            a = env[src]
        lst[:] = a


def check_loop(prog: LoopProgram, bufs: dict, times: range) -> None:
    """Name the value that first went bad, in time order then body order (as the reference does)."""
    first = None
    for i, b in enumerate(prog.body):
        if b.step.integer:
            continue
        a = bufs[b.id]
        bad = ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
        if bad.any():
            ts = np.nonzero(bad)[0]
            t = int(ts.min()) if times.step > 0 else int(ts.max())
            rank = (times.index(t), i)
            if first is None or rank < first[0]:
                first = (rank, b.id, t, b.step.span)
    if first is not None:
        check_finite(bufs[first[1]][first[2]], first[1], first[3])


def generic_forward(op, attrs, ins, outs, ctxs, context):
    """An op that needs its context (dropout...): its generic forward at every step."""
    def run(t):
        ctx = context.ctx()
        out = op.forward([x[t] for x in ins], attrs, ctx)
        np.copyto(outs[t], out)
        ctxs[t] = ctx
    return run

