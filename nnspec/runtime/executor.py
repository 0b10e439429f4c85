"""The NumPy runtime: forward and reverse mode over a plan.

Arrays: a feed-forward value is ``(B, *shape)``, a sequence ``(T, B, *shape)``
(time-major), a parameter or constant has no leading axes. A real-valued value
with per-example shape ``()`` is held as ``(..., 1)`` so that it broadcasts
against vectors. A whole-batch value (a loss, and arithmetic on losses with
parameters and constants) is a 0-d array: one number for the batch.

Reverse mode walks the plan backwards. A loop step is run backwards in time
(BPTT): the gradient that reaches a value read at ``[t-1]`` flows into the
buffer of step ``t-1``, and what reaches a read before the first step flows
into the initial state. Padding is masked at those reads: a state read at a
step outside a sequence's real length yields the initial state instead, so
padding changes neither outputs nor gradients. The same holds for a state read
at another step from outside its loop (``concat(h, h[t-1])``, or in another loop).

Loops have two implementations with the same results:

* the reference interpreter (``ExecOptions(fast_loops=False)``): every op of
  the body at every step goes through the op's generic ``forward``/``vjp``;
* the fast path (the default). Per loop, a program is prepared once: every body
  value gets a ``(T, B, ...)`` buffer before the loop, and each step writes
  into it with the op's in-place kernel (``Op.forward_into``); a ``slice`` is
  a view of its source's buffer, so it costs nothing. State reads
  (``h[t-1]``) are views of the state's own buffer, which has room for the
  initial state before the first step; in a batch with padding they are
  copied, masked, into a read buffer instead. The backward pass reuses them.
  Backward, only gradients that flow to values *inside* the loop are
  computed step by step; everything that leaves the loop — a weight's
  gradient, a bias's, an input projection's — is one whole-sequence product or
  sum after the loop (``defer_grads``). Derivatives of sigmoid, tanh and the
  like are computed for the whole sequence at once (``local_grads``), and the
  gradient of an ``add`` or a ``slice`` shares its buffer with its output's
  instead of being copied (``alias_grads``).

  The buffers, per-step views, kernels and backward actions of a loop (a
  ``_LoopRun``) are kept for the next batch of the same shape and lengths, and
  used again if nothing outside holds any of their arrays any more (no tape,
  no gradient dict, no view: reference counts are compared with the run's
  own); only the lists of inputs from outside the loop are bound again. A
  tiny network spent more time preparing its loop than running it.

Steps outside loops are prepared the same way (``_PassRun``): from a geometry's second
pass on, a flat list of bound kernels writing into arrays the run holds, with a backward
counterpart whose VJPs go straight into the run's gradient arrays; reused under the same
reference-count rule. A ``single_use`` forward pass (training) lets a loss overwrite logits
nothing else reads, and its tape refuses a second backward pass.

An embedding table's gradient is a ``RowGrad``: a dense array whose rows
outside ``rows`` (the ids of the batch) are zero, kept from pass to pass and
re-zeroed row by row; the SGD optimiser updates just those rows.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from .. import chunks
from ..errors import Sources, Span, render_message
from ..ops import REGISTRY, Ctx
from ..ops.registry import NO_CTX, Op, product_into, unbroadcast
from ..plan import LoopStep, OpStep, Plan


class RuntimeFailure(Exception):
    """A numerical failure at run time (e.g. NaN), naming the value that produced it; ``span``:
    the source of its step, so that the failure renders as a spec error does (``render``)."""

    def __init__(self, message: str, node: str | None = None, span: Span | None = None,
                 sources: Sources | None = None):
        super().__init__(message)
        self.node, self.span, self.sources = node, span, sources

    def render(self, color: bool = False) -> str:
        """``spec.nn:4:8: error: ...``, the source line and a caret under the expression; without a
        span, ``error: ...``. The line comes from ``sources`` (the compiler's), else from the file."""
        return render_message("error", str(self), self.span, self.sources, color)


def array_shape(shape, integer: bool) -> tuple:
    """The trailing array shape of a value: real scalars get an axis of 1."""
    shape = tuple(shape)
    return (1,) if (shape == () and not integer) else shape


@dataclass
class ExecOptions:
    """Switches for the runtime's optimisations (all on by default; tests turn them off to compare)."""

    fast_loops: bool = True    # prepared loop programs with in-place kernels (else the reference interpreter)
    defer_grads: bool = True   # gradients leaving a loop: one whole-sequence VJP after it, not one per step
    local_grads: bool = True   # sigmoid'/tanh'/... for a whole sequence before the backward loop
    alias_grads: bool = True   # add / slice gradients share buffers instead of being copied
    scratch: bool = True       # values and gradients needed within their step only: one (B, ...) array
    reuse_buffers: bool = True  # big arrays come from a pool and are reused once nothing refers to them
    row_grads: bool = True     # an embedding table's gradient says which rows are non-zero (RowGrad)
    prepared: bool = True      # steps outside loops: a flat list of bound kernels, kept per batch geometry
    # BLAS threads for a whole forward or backward pass, and while a loop runs step by step.
    # nnspec's products are small (a step: (B, H) x (H, 4H)); measured on a 2-core machine,
    # a second OpenBLAS thread made every one of them slower, even the (1120 x 128) x
    # (128 x 1000) output layer (3.7 ms on 1 thread, 8 ms at best on 2), and a machine whose
    # other core is busy made it catastrophic (a step's product 0.08 ms -> 16 ms median; a
    # BiLSTM train step 60 ms -> 240 ms). None: leave BLAS as configured (big models on many
    # idle cores); the loop setting applies inside the pass setting.
    blas_threads: int | None = 1
    loop_blas_threads: int | None = 1


@dataclass
class Tape:
    """What the forward pass keeps for the backward pass."""

    values: dict[str, np.ndarray]
    records: dict = field(default_factory=dict)        # op id -> (inputs, ctx); loops: (id, t) -> ...
    lengths: np.ndarray | None = None
    mask: np.ndarray | None = None
    batch: int = 1
    steps: int = 0                                      # T (0 when no sequences)
    final_states: dict[str, np.ndarray] = field(default_factory=dict)
    initial_values: dict[str, np.ndarray] = field(default_factory=dict)
    loops: dict = field(default_factory=dict)           # loop index -> _LoopRun (fast path)
    carry: dict = field(default_factory=dict)           # the previous chunk's final states (nnspec.chunks)
    before_chunk: dict = field(default_factory=dict)    # state -> its values at steps -P..-1 (nnspec.chunks)
    ahead: dict = field(default_factory=dict)           # input -> the tokens after this chunk
    prepared: "_PassRun | None" = None                  # the prepared pass that made it (fast path)
    single_use: bool = False                            # for one backward pass (Executor.forward)
    used: bool = False                                  # a backward pass has run over it
    fresh: set | None = None                            # single use: values in arrays the runtime made


class Executor:
    def __init__(self, plan: Plan, dtype=np.float32, check_finite: bool = False,
                 options: ExecOptions | None = None):
        self.plan = plan
        self.dtype = np.dtype(dtype)
        self.check_finite = check_finite
        self.options = options or ExecOptions()
        self.consts = {k: np.asarray(v, dtype=self.dtype) for k, v in plan.consts.items()}
        self.specs = {v.name: v for v in plan.inputs + plan.targets}
        self.seq = {v.name for v in plan.inputs + plan.targets if v.seq}
        self.integer = {v.name for v in plan.inputs + plan.targets if v.integer}
        for s in plan.steps:
            for b in (s.body if isinstance(s, LoopStep) else [s]):
                if b.seq:
                    self.seq.add(b.id)
                if b.integer:
                    self.integer.add(b.id)
        self._programs: dict[int, _LoopProgram] = {}
        self._needed: dict[frozenset | None, set[str]] = {}
        self._outer: dict[str, _Outer] = {}        # per step outside loops: how to run it
        self._todo: dict[tuple, list[int]] = {}    # (step, needed set) -> inputs to differentiate
        self.pool = BufferPool(enabled=self.options.reuse_buffers)
        # embedding tables (parameters read by embed) -> shape; their row-sparse gradients
        self._tables = {s.inputs[1][0]: next(tuple(p.shape) for p in plan.params if p.name == s.inputs[1][0])
                        for s in plan.steps if isinstance(s, OpStep) and REGISTRY[s.op].row_gradient_input == 1
                        and s.inputs[1][0] in {p.name for p in plan.params}} if self.options.row_grads else {}
        self._table_grads: dict[str, tuple] = {}
        self._pass_run: _PassRun | None = None     # the prepared pass kept for the last batch geometry
        self._pass_seen: tuple | None = None       # (geometry, shapes of the steps that ran into arrays)
        # set to {} to collect seconds per step (and per part of a loop's backward pass)
        self.profile: dict | None = None
        # outer steps: which have no batch or time axes (parameters, constants and what is made of them)
        self._static = set(plan.consts) | {p.name for p in plan.params}
        # each loop state with an ``initial``: the value it names
        self._initial_of = {s: init for step in plan.steps if isinstance(step, LoopStep)
                            for s, init in step.initials.items()}
        self.lookback = chunks.lookback_depths(plan)  # what a chunk keeps for the next one to read
        self._loss_only = self._only_for_the_loss()
        self.spendable = self._spendable()
        # steps that are one number for the whole batch: losses and arithmetic on them (a 0-d array)
        self._whole_batch: set[str] = set()
        for s in plan.steps:
            if isinstance(s, OpStep) and (REGISTRY[s.op].scalar_output
                                          or any(src in self._whole_batch for src, _ in s.inputs)):
                self._whole_batch.add(s.id)
            elif isinstance(s, OpStep) and s.inputs and all(src in self._static for src, _ in s.inputs):
                self._static.add(s.id)

    def _only_for_the_loss(self) -> frozenset:
        """Steps (op ids, loop indices) that only the loss needs: skipped by a pass without targets
        (``need_loss=False``): the loss functions, arithmetic on them, and what feeds only them."""
        plan = self.plan
        if plan.loss is None:
            return frozenset()
        needed = set(plan.outputs) | set(self.lookback)
        skip = set()
        for step in reversed(plan.steps):
            body = step.body if isinstance(step, LoopStep) else [step]
            if not any(b.id in needed for b in body):
                skip.add(step.index if isinstance(step, LoopStep) else step.id)
                continue
            for b in body:
                needed.update(src for src, _ in b.inputs)
            if isinstance(step, LoopStep):
                needed.update(step.initials.values())
        return frozenset(skip)

    def _skipped(self, step, need_loss: bool) -> bool:
        return not need_loss and (step.index if isinstance(step, LoopStep) else step.id) in self._loss_only

    def _spendable(self) -> frozenset:
        """Steps outside loops that may overwrite their first input in a single-use pass: an op
        that can (``Op.spends_input``), reading at delay 0 a value made by a step outside loops
        whose VJP does not read its output, that no other step reads, and that is no output
        nor looked back at by the next chunk."""
        plan = self.plan
        readers: dict[str, int] = {}
        made: dict[str, OpStep] = {}
        for s in plan.steps:
            for b in (s.body if isinstance(s, LoopStep) else [s]):
                for src, _ in b.inputs:
                    readers[src] = readers.get(src, 0) + 1
                if isinstance(s, OpStep):
                    made[b.id] = b
            if isinstance(s, LoopStep):
                for init in s.initials.values():
                    readers[init] = readers.get(init, 0) + 1
        keep = set(plan.outputs) | set(self.lookback)
        out = set()
        for s in plan.steps:
            if isinstance(s, LoopStep) or not s.inputs or not REGISTRY[s.op].spends_input:
                continue
            src, d = s.inputs[0]
            p = made.get(src)
            if (d == 0 and p is not None and readers.get(src) == 1 and src not in keep and not p.integer
                    and not _reads(REGISTRY[p.op], "out")):
                out.add(s.id)
        return frozenset(out)

    # ---- inputs ---------------------------------------------------------------
    def prepare(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = {}
        for name, spec in self.specs.items():
            if name not in feeds:
                continue
            a = np.asarray(feeds[name])
            if spec.integer:
                a = a.astype(np.int64, copy=False)
            else:
                a = a.astype(self.dtype, copy=False)
                lead = 2 if spec.seq else 1
                if len(spec.shape) == 0 and a.ndim == lead:
                    a = a[..., None]
            env[name] = a
        return env

    def _geometry(self, env, lengths):
        batch, steps = 1, 0
        for name, a in env.items():
            if name in self.seq:
                steps, batch = a.shape[0], a.shape[1]
                break
            batch = a.shape[0]
        if steps and lengths is None:
            lengths = np.full(batch, steps, dtype=np.int64)
        mask = None
        if steps:
            mask = (np.arange(steps)[:, None] < lengths[None, :]).astype(self.dtype)
        return batch, steps, lengths, mask

    # ---- forward -------------------------------------------------------------
    def forward(self, params: dict[str, np.ndarray], feeds: dict[str, np.ndarray], *,
                lengths: np.ndarray | None = None, train: bool = False,
                rng: np.random.Generator | None = None, carry: dict[str, np.ndarray] | None = None,
                need_loss: bool = True, single_use: bool = False) -> Tape:
        """Run the plan on a batch. ``single_use``: the tape is for one backward pass (training):
        values that nothing but one op reads may be overwritten by it (the softmax of a
        ``cross_entropy_logits`` is computed over the logits), so ``tape.values`` does not
        show them any more, and a second backward over the tape is refused."""
        with blas_threads(self.options.blas_threads):
            tape = self._forward(params, feeds, lengths, train, rng, carry, need_loss, single_use)
        return tape

    def _forward(self, params, feeds, lengths, train, rng, carry, need_loss, single_use=False) -> Tape:
        self.pool.new_pass()
        run = self._pass_run
        if run is not None:
            run.release_bound()      # before the loops' check: its bound inputs may be their buffers
        for prog in self._programs.values():
            prog.release_outer()
        env = self.prepare(feeds)
        batch, steps, lengths, mask = self._geometry(env, lengths)
        key = None
        if self.options.prepared and not self.check_finite and self.profile is None:
            key = (steps, batch, None if lengths is None else lengths.tobytes(), need_loss,
                   tuple((k, a.shape, a.dtype.str) for k, a in env.items()))
            if run is not None and not (run.key == key and run.free()):
                run = self._pass_run = None
            if run is None and self._pass_seen is not None and self._pass_seen[0] == key:
                # the second pass of a geometry: made now rather than after the first, so that
                # its arrays come from the pool blocks the last pass's (dropped) tape used
                run = self._pass_run = self._build_pass_run(key, self._pass_seen[1], need_loss)
                run.seal()   # (here: the builder's local names are gone)
        else:
            run = None
        env.update(self.consts)
        env.update(params)
        tape = Tape(values=env, lengths=lengths, mask=mask, batch=batch, steps=steps, carry=carry or {},
                    ahead={n: np.asarray(feeds[chunks.ahead_key(n)]) for n in self.seq
                           if chunks.ahead_key(n) in feeds})
        if single_use:
            tape.single_use = True
            tape.fresh = set() if self.spendable else None
        if run is not None:
            self._run_prepared(run, tape, train, rng, carry)
        else:
            prof = self.profile
            built = {} if key is not None else None
            for step in self.plan.steps:
                t0 = time.perf_counter() if prof is not None else 0.0
                if self._skipped(step, need_loss):
                    continue
                if isinstance(step, LoopStep):
                    self._loop_step_forward(step, tape, train, rng, carry)
                else:
                    if self._op_forward(step, tape, train, rng):
                        if built is not None:
                            built[step.id] = tape.values[step.id].shape
                        if tape.fresh is not None:
                            tape.fresh.add(step.id)
                if prof is not None:
                    self._note("forward", step, time.perf_counter() - t0)
            if key is not None:
                self._pass_seen = (key, built)
        if steps:
            for src, depth in self.lookback.items():
                k = chunks.history_key(src)
                tape.final_states[k] = chunks.next_history(tape.carry.get(k), env[src], lengths, depth)
        return tape

    def _loop_step_forward(self, step: LoopStep, tape: Tape, train, rng, carry) -> None:
        if self.options.fast_loops and tape.steps > 0:
            self._fast_loop_forward(step, tape, train, rng, carry or {})
        else:
            self._loop_forward(step, tape, train, rng, carry or {})

    # ---- the prepared pass (fast path) ------------------------------------------
    def _build_pass_run(self, key: tuple, built: dict, need_loss: bool) -> "_PassRun":
        """A flat list of the forward pass's steps for this batch geometry: the steps that ran
        into an array of their own (``forward_into``) get one owned by the run, with their
        inputs' list made once (inputs made by such steps fixed, the others bound when the
        step runs); loops and the other steps go through the general path."""
        run = _PassRun(key=key)
        made: dict[str, np.ndarray] = {}
        for step in self.plan.steps:
            if self._skipped(step, need_loss):
                continue
            if isinstance(step, LoopStep):
                run.fwd.append(("loop", step))
                continue
            shape = built.get(step.id)
            if shape is None or REGISTRY[step.op].reads_across_chunks or any(d for _, d in step.inputs):
                run.fwd.append(("op", step))
                continue
            o = self._outer_info(step)
            out = self.pool.empty(shape, self.dtype)   # held by the run: the pool leaves it alone
            xs: list = [None] * len(step.inputs)
            binds = []
            for i, (src, _) in enumerate(step.inputs):
                if src in made:
                    xs[i] = made[src]
                else:
                    binds.append((i, src))
            made[step.id] = out
            run.outs.append(out)
            run.bound.append((xs, [i for i, _ in binds]))
            run.fwd.append((step.id, o.op.forward_into, xs, tuple(binds), out, step.attrs, (xs, NO_CTX)))
            run.by_id[step.id] = len(run.fwd) - 1
        return run

    def _run_prepared(self, run: "_PassRun", tape: Tape, train, rng, carry) -> None:
        env, records, fresh = tape.values, tape.records, tape.fresh
        run.tape = weakref.ref(tape)
        tape.prepared = run
        for e in run.fwd:
            if len(e) == 2:
                if e[0] == "loop":
                    self._loop_step_forward(e[1], tape, train, rng, carry)
                else:
                    self._op_forward(e[1], tape, train, rng)
                continue
            sid, fn, xs, binds, out, attrs, rec = e
            for i, src in binds:
                xs[i] = env[src]
            fn(xs, out, attrs)
            env[sid] = out
            records[sid] = rec
            if fresh is not None:
                fresh.add(sid)

    def _note(self, phase: str, step, seconds: float, part: str = "") -> None:
        """Add to ``self.profile``: seconds per (phase, op or 'loop', step id, part)."""
        what = "loop" if isinstance(step, LoopStep) else step.op
        sid = f"loop {step.index}" if isinstance(step, LoopStep) else step.id
        key = (phase, what, sid, part)
        self.profile[key] = self.profile.get(key, 0.0) + seconds

    def _ctx(self, step: OpStep, tape: Tape, train, rng) -> Ctx:
        first_seq = bool(step.inputs) and step.inputs[0][0] in self.seq
        return Ctx(train=train, rng=rng, mask=tape.mask if first_seq else None,
                   lengths=tape.lengths if first_seq else None)

    def _outer_info(self, step: OpStep) -> "_Outer":
        info = self._outer.get(step.id)
        if info is None:
            op = REGISTRY[step.op]
            whole_batch = step.id in self._whole_batch
            # one number for the batch (a loss, a regulariser of parameters): a 0-d array, like a scalar parameter
            number = whole_batch or (step.id in self._static and tuple(step.shape) == ())
            trail = () if number else array_shape(step.shape, step.integer)
            info = self._outer[step.id] = _Outer(
                op=op,
                pooled=(not op.needs_ctx and not step.integer and _overrides(op, "forward_into")
                        and all(isinstance(d, int) for d in trail)),
                lead="seq" if step.seq else ("static" if step.id in self._static or whole_batch else "batch"),
                trail=trail, into=not op.needs_ctx and _overrides(op, "vjp_into"),
                joint=type(op).vjp_one is Op.vjp_one,
                first_seq=bool(step.inputs) and step.inputs[0][0] in self.seq)
        return info

    def _op_forward(self, step: OpStep, tape: Tape, train, rng) -> bool:
        """Run one step outside loops; True if it ran into an array of the pool (``forward_into``)."""
        env = tape.values
        xs = [env[src] if d == 0 else self._read_whole(tape, src, d) for src, d in step.inputs]
        o = self._outer_info(step)
        op = o.op
        out = None
        into = False
        if o.pooled and self.pool.enabled:
            # into an array from the pool: no fresh allocation (and page faults) every pass
            lead = (tape.steps, tape.batch) if o.lead == "seq" else (() if o.lead == "static" else (tape.batch,))
            out = self.pool.empty(lead + o.trail, self.dtype)
            try:
                op.forward_into(xs, out, step.attrs)
                ctx = NO_CTX
                into = True
            except ValueError:  # not the shape the plan says (broadcasting): the generic way
                out = None
        if out is None:
            ctx = (Ctx(train=train, rng=rng, mask=tape.mask if o.first_seq else None,
                       lengths=tape.lengths if o.first_seq else None, empty=self.pool.empty,
                       spend=(tape.fresh is not None and step.id in self.spendable
                              and step.inputs[0][0] in tape.fresh))
                   if op.needs_ctx else NO_CTX)
            out = op.forward(xs, step.attrs, ctx)
        if self.check_finite and not step.integer:
            self._check(out, step.id, step.span)
        if op.reads_across_chunks:
            out = self._shift_across_chunks(step, out, tape)
        env[step.id] = out
        tape.records[step.id] = (xs, ctx)
        return into and not op.reads_across_chunks

    def _shift_across_chunks(self, step: OpStep, out: np.ndarray, tape: Tape) -> np.ndarray:
        """A shift past the chunk's start reads the previous chunk's steps; past its end, the input's
        following tokens (when the batch has them)."""
        src, k = step.inputs[0][0], int(step.attrs.get("k", 1))
        history = tape.carry.get(chunks.history_key(src))
        if k < 0 and history is not None:
            return chunks.fill_from_history(out, history, k, tape.lengths)
        if k > 0 and src in tape.ahead:
            return chunks.fill_ahead(out, tape.ahead[src], k, tape.lengths)
        return out

    def _check(self, out: np.ndarray, node: str, span: Span | None = None) -> None:
        if not np.all(np.isfinite(out)):
            bad = "NaN" if np.isnan(out).any() else "an infinite value"
            raise RuntimeFailure(f"'{node}' produced {bad}", node, span)

    def _read_whole(self, tape: Tape, src: str, delay: int) -> np.ndarray:
        """A sequence read at ``t + delay`` from outside its loop: where that is no real step, a
        loop's state reads its initial state (as inside the loop), any other sequence zeros."""
        a = tape.values[src]
        if delay == 0:
            return a
        out = _shift_in_time(a, delay, tape.lengths, self._before_first_step(tape, src))
        history = tape.carry.get(chunks.history_key(src))
        if delay < 0 and history is not None:  # the first steps read the previous chunk's last ones
            out = chunks.fill_from_history(out, history, delay, tape.lengths)
        return out

    def _before_first_step(self, tape: Tape, src: str) -> np.ndarray:
        """What a read of ``src`` outside the real steps gives: a state's initial value (B, ...),
        else nothing: zeros, and for ids -1, the id of no token (embeds to zeros, as ``shift`` pads),
        not 0, which is ``<pad>``, a learned row of the table."""
        init = tape.initial_values.get(src)
        if init is not None:
            return init
        first = tape.values[src][0]
        return np.full_like(first, -1) if np.issubdtype(first.dtype, np.integer) else np.zeros_like(first)

    def _initial_grad(self, tape: Tape, src: str, d: int, g: np.ndarray, acc, need) -> None:
        """The gradient of a read of ``src`` at ``t + d`` from outside its loop (``g``, per reading
        step) where the read gave the initial state: to the value the state's ``initial`` names
        (reads filled from the previous chunk carry none: truncated BPTT)."""
        init_id = self._initial_of.get(src)
        if init_id is None or init_id not in need or src not in tape.initial_values:
            return
        T = g.shape[0]
        took_initial = ~_valid_steps(T, d, tape.lengths)
        if d < 0 and chunks.history_key(src) in tape.carry:
            took_initial &= (np.arange(T) + d >= 0)[:, None]
        if not took_initial.any():
            return
        w = took_initial.reshape(took_initial.shape + (1,) * (g.ndim - 2)).astype(g.dtype)
        acc.add(init_id, unbroadcast((g * w).sum(axis=0), tape.values[init_id].shape))

    def _state_init(self, loop: LoopStep, tape: Tape, step: OpStep, carry) -> np.ndarray:
        if step.id in carry:
            return carry[step.id]
        shape = (tape.batch,) + array_shape(step.shape, step.integer)
        if step.id in loop.initials:
            init = tape.values[loop.initials[step.id]]
            return np.broadcast_to(init.astype(self.dtype, copy=False), shape)
        return np.zeros(shape, dtype=np.int64 if step.integer else self.dtype)

    # ---- loops: the reference interpreter -----------------------------------------
    def _loop_forward(self, loop: LoopStep, tape: Tape, train, rng, carry) -> None:
        env, T, B = tape.values, tape.steps, tape.batch
        body_ids = {b.id for b in loop.body}
        inits = {b.id: self._state_init(loop, tape, b, carry) for b in loop.body if b.id in loop.states}
        tape.initial_values.update(inits)
        self._carried_steps(loop, tape)
        bufs: dict[str, np.ndarray] = {}
        times = range(T) if loop.direction > 0 else range(T - 1, -1, -1)
        for t in times:
            for step in loop.body:
                xs = [self._read_step(tape, bufs, inits, body_ids, src, d, t) for src, d in step.inputs]
                ctx = Ctx(train=train, rng=rng)
                out = REGISTRY[step.op].forward(xs, step.attrs, ctx)
                if step.id not in bufs:
                    bufs[step.id] = np.empty((T,) + out.shape, dtype=out.dtype)
                bufs[step.id][t] = out
                tape.records[(step.id, t)] = (xs, ctx)
            if self.check_finite:
                for step in loop.body:
                    self._check(bufs[step.id][t], step.id, step.span)
        env.update(bufs)
        last = T - 1 if loop.direction > 0 else 0
        for s in loop.states:
            tape.final_states[s] = bufs[s][last].copy()

    def _read_step(self, tape, bufs, inits, body_ids, src, d, t):
        """The value of ``src`` at step ``t + d`` as seen from inside a loop."""
        if src in body_ids:
            if d == 0:
                return bufs[src][t]
            src_arr, init = bufs.get(src), inits[src]
            if t + d < 0 and src in tape.before_chunk:  # before the chunk: the previous one's step
                return tape.before_chunk[src][t + d]
        elif src in self.seq:
            src_arr = tape.values[src]
            if d == 0:
                return src_arr[t]
            if t + d < 0 and chunks.history_key(src) in tape.carry:  # before the chunk: the previous one's
                return self._read_whole(tape, src, d)[t]
            init = self._before_first_step(tape, src)   # another loop's state: its initial state
        else:
            return tape.values[src]
        u = t + d
        if u < 0 or u >= tape.steps or src_arr is None:
            return init
        valid = tape.lengths > u
        if valid.all():
            return src_arr[u]
        return np.where(valid.reshape((-1,) + (1,) * (src_arr.ndim - 2)), src_arr[u], init)

    # ---- loops: the fast path -----------------------------------------------------
    def _program(self, loop: LoopStep) -> "_LoopProgram":
        prog = self._programs.get(loop.index)
        if prog is None:
            prog = self._programs[loop.index] = _LoopProgram(self, loop)
        return prog

    def _fast_loop_forward(self, loop: LoopStep, tape: Tape, train, rng, carry) -> None:
        t_start = time.perf_counter() if self.profile is not None else 0.0
        prog = self._program(loop)
        if not prog.ok:
            return self._loop_forward(loop, tape, train, rng, carry)
        env, T, lengths = tape.values, tape.steps, tape.lengths
        inits = {s: self._state_init(loop, tape, prog.steps[s], carry) for s in loop.states}
        tape.initial_values.update(inits)
        before = self._carried_steps(loop, tape)
        # values no backward step reads are kept for one step only (not while checking for NaN,
        # which looks at every step afterwards)
        scratch = frozenset() if self.check_finite else prog.scratch
        key = (T, tape.batch, lengths.tobytes(), scratch)
        run = prog.cached_run(key)
        if run is None:
            run = self._build_loop_run(prog, tape, scratch, train, rng)
            prog.keep_run(key, run, tape)
        else:
            run.tape = weakref.ref(tape)
            self._bind_outer(run, tape)
        run.inits = inits
        fills = [(Xl, Bl, inits[src], before.get(src), d, nd) for Xl, Bl, src, d, nd in run.fills]
        for slot, src in run.init_slots:
            np.copyto(slot, before[src][-len(slot):] if src in before else inits[src])
        bufs, steps, vcols, minlen = run.bufs, run.steps, run.vcols, run.minlen
        times = range(T) if loop.direction > 0 else range(T - 1, -1, -1)
        copyto = np.copyto
        if self.profile is not None:
            t0 = time.perf_counter()
            self._note("forward", loop, t0 - t_start, "setup")
        quiet = np.errstate(over="ignore") if prog.quiet_overflow else contextlib.nullcontext()
        with blas_threads(self.options.loop_blas_threads), quiet:
            for t in times:
                for Xl, Bl, init, pre, d, nd in fills:
                    u = t + d
                    if u < 0 and pre is not None:   # before this chunk: the previous one's step
                        copyto(Xl[t], pre[u])
                    elif u < 0 or u >= T:
                        copyto(Xl[t], init)
                    elif u < minlen:
                        copyto(Xl[t], Bl[u])
                    else:
                        copyto(Xl[t], init)
                        copyto(Xl[t], Bl[u], where=vcols[(u, nd)])
                for f in steps:
                    f(t)
        if self.profile is not None:
            self._note("forward", loop, time.perf_counter() - t0, "steps")
        if self.check_finite:
            self._check_loop(prog, bufs, times)
        env.update({k: v for k, v in bufs.items() if k not in run.scratch})
        tape.loops[loop.index] = run
        last = T - 1 if loop.direction > 0 else 0
        for s in loop.states:
            tape.final_states[s] = bufs[s][last].copy()

    def _carried_steps(self, loop: LoopStep, tape: Tape) -> dict[str, np.ndarray]:
        """States read further back than the previous step (``h[t-2]``) whose history the previous
        chunk left: their values at steps -P..-1, the stream's initial state before its start
        (``chunks.carried_steps``). Kept on the tape for the reference interpreter."""
        if not tape.carry or loop.direction < 0:
            return {}
        by_id = {b.id: b for b in loop.body}
        before = {s: chunks.carried_steps(tape.carry[chunks.history_key(s)],
                                          self._state_init(loop, tape, by_id[s], {}))
                  for s in loop.states if chunks.history_key(s) in tape.carry}
        tape.before_chunk.update(before)
        return before

    def _build_loop_run(self, prog: "_LoopProgram", tape: Tape, scratch, train, rng) -> "_LoopRun":
        """Buffers, per-step views and step kernels of one loop for this batch's geometry.

        Inputs from outside the loop are bound afterwards (``_bind_outer``), into lists the
        kernels read at every step, so a run can be used again for the next batch of the
        same geometry."""
        env, T, B, lengths = tape.values, tape.steps, tape.batch, tape.lengths
        minlen = int(lengths.min()) if len(lengths) else T
        run = _LoopRun(T=T, minlen=minlen, inits={}, scratch=scratch)
        bufs = run.bufs
        # Without padding, a state read at t + d is the state's own buffer shifted by d, with
        # room for the initial state before the first step: views, no copy at every step.
        slots: dict[str, int] = {}
        if minlen == T:
            for src, d in prog.delayed:
                if src in prog.ids:
                    slots[src] = max(slots.get(src, 0), abs(d))
        for b in prog.body:
            dtype = np.int64 if b.step.integer else self.dtype
            if b.id in slots:
                k = slots[b.id]
                full = self.pool.empty((T + k, B) + b.trail, dtype)
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
            elif b.id in scratch:
                bufs[b.id] = np.empty((B,) + b.trail, dtype=dtype)
            else:
                bufs[b.id] = self.pool.empty((T, B) + b.trail, dtype)
        # state reads ([t-1] and the like): a (T, B, ...) buffer of what each step read
        for key in prog.delayed:
            src, d = key
            if src in run.extended:     # step t of this view is the state at t + d, or the initial state
                full, at = run.extended[src]
                run.reads[key] = full[at + d: at + d + T]
            elif src in prog.ids:
                run.reads[key] = X = self.pool.empty(bufs[src].shape, bufs[src].dtype)
                run.fills.append((list(X), list(bufs[src]), src, d, bufs[src].ndim - 2))
        vcols = run.vcols
        for (_, _, _, d, nd) in run.fills:
            for u in range(max(minlen, 0), T):
                if (u, nd) not in vcols:
                    vcols[(u, nd)] = (lengths > u).reshape((-1,) + (1,) * nd)
        # per value, its array at every step (the same array every step for scratch values);
        # lists of values from outside the loop are filled by _bind_outer
        seqs: dict = {}
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
                        if prog.by_id[src].view_of is not None and prog.by_id[src].view_of[0] not in prog.ids:
                            run.outer.append((lst, src, 0, "view"))
                        else:
                            lst.extend(bufs[src])
                    else:
                        run.outer.append((lst, src, d, "seq" if src in self.seq else "static"))
                ins.append(seqs[key])
            run.ins[b.id] = ins
            if (b.id, 0) not in seqs:
                seqs[(b.id, 0)] = lst = [bufs[b.id]] * T if b.id in scratch else []
                if b.id not in scratch:
                    if b.view_of is not None and b.view_of[0] not in prog.ids:
                        run.outer.append((lst, b.id, 0, "view"))
                    else:
                        lst.extend(bufs[b.id])
            run.outs[b.id] = seqs[(b.id, 0)]
        self._bind_outer(run, tape)
        for b in prog.body:
            if b.view_of is not None:
                continue
            if b.fast:
                run.steps.append(b.op.step_forward(run.ins[b.id], run.outs[b.id], b.step.attrs))
            else:
                ctxs = run.ctxs[b.id] = [None] * T
                run.steps.append(_generic_forward(b.op, b.step.attrs, run.ins[b.id], run.outs[b.id], ctxs,
                                                  train, rng))
        return run

    def _bind_outer(self, run: "_LoopRun", tape: Tape) -> None:
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
                lst[:] = [a] * run.T
                continue
            elif d != 0:  # a sequence computed before the loop, read at another step: shift it all at once
                a = run.reads[(src, d)] = self._read_whole(tape, src, d)
            else:
                a = env[src]
            lst[:] = a

    def _check_loop(self, prog, bufs, times) -> None:
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
            self._check(bufs[first[1]][first[2]], first[1], first[3])

    # ---- backward ------------------------------------------------------------
    def backward(self, tape: Tape, seeds: dict[str, np.ndarray] | None = None,
                 wrt=None) -> dict[str, np.ndarray]:
        """Gradients of the loss (or of the given seeds) w.r.t. the values on the tape.

        ``wrt`` names the leaves (parameters, inputs) whose gradients are wanted;
        by default all of them. Values that lead to none of them get no gradient.
        """
        with blas_threads(self.options.blas_threads):
            return self._backward(tape, seeds, wrt)

    def _backward(self, tape: Tape, seeds, wrt) -> dict[str, np.ndarray]:
        if tape.single_use:
            if tape.used:
                raise RuntimeError("this tape was made for one backward pass (forward(..., single_use=True), "
                                   "as in training) and has had it: some of its values were overwritten; "
                                   "run the forward pass again, or without single_use to keep them")
            tape.used = True
        grads: dict[str, np.ndarray] = {}
        acc = _Accumulator(grads, self.pool)
        if seeds:
            for k, v in seeds.items():
                grads[k] = np.asarray(v, dtype=self.dtype)
        else:
            if self.plan.loss is None:
                raise ValueError("this network has no loss to differentiate")
            grads[self.plan.loss] = np.ones_like(tape.values[self.plan.loss])
        need = self._grad_needed(wrt)
        leaves = None if wrt is None else set(wrt)
        prof = self.profile
        run = tape.prepared
        if run is not None and not seeds and prof is None and run.grads_free():
            self._run_prepared_backward(run, tape, grads, acc, need, leaves)
            return grads
        for step in reversed(self.plan.steps):
            t0 = time.perf_counter() if prof is not None else 0.0
            self._backward_step(step, tape, grads, acc, need, wrt is None)
            if leaves is not None:  # only the leaves were asked for: a value's gradient goes once used
                for v in ([b.id for b in step.body] if isinstance(step, LoopStep) else [step.id]):
                    if v not in leaves and v in grads:
                        del grads[v]
            if prof is not None:
                self._note("backward", step, time.perf_counter() - t0)
        return grads

    def _backward_step(self, step, tape: Tape, grads, acc: "_Accumulator", need, keep: bool) -> None:
        if isinstance(step, LoopStep):
            if step.index in tape.loops:
                self._fast_loop_backward(step, tape, grads, acc, need, keep=keep)
            else:
                self._loop_backward(step, tape, grads, need)
        else:
            self._op_backward(step, tape, grads, acc, need)

    def _run_prepared_backward(self, run: "_PassRun", tape: Tape, grads, acc: "_Accumulator", need,
                               leaves) -> None:
        """The backward pass of a prepared forward pass: its own steps' VJPs go straight into
        arrays of the run's own when they are the first gradient of their value."""
        key = (id(need), None if leaves is None else frozenset(leaves))
        entries = run.bwd.get(key)
        if entries is None:
            before = run.counts()
            entries, dests = self._build_pass_backward(run, need, leaves)
            run.bwd[key] = entries
            run.adjust(before)
            n = len(run.tracked)
            run.tracked += dests
            del dests                      # (before counting: the run's own references only)
            run.rest += run.counts()[n:]
        keep = leaves is None
        owned = acc.owned
        for e in entries:
            if len(e) == 2:
                step, dels = e
                self._backward_step(step, tape, grads, acc, need, keep)
            else:
                sid, fn, op, xs, out, attrs, todo, dels = e
                g = grads.get(sid)
                if g is not None:
                    for i, src, dest in todo:
                        if src in grads:
                            acc.add_into(src, dest.shape, _Into(op, i, g, xs, out, attrs))
                        else:
                            fn(i, g, xs, out, attrs, dest, False)
                            grads[src] = dest
                            owned.add(src)
            for v in dels:
                if v in grads:
                    del grads[v]

    def _build_pass_backward(self, run: "_PassRun", need, leaves) -> tuple[list, list]:
        entries, dests = [], []
        for step in reversed(self.plan.steps):
            ids = [b.id for b in step.body] if isinstance(step, LoopStep) else [step.id]
            dels = () if leaves is None else tuple(v for v in ids if v not in leaves)
            at = None if isinstance(step, LoopStep) else run.by_id.get(step.id)
            if (at is None or REGISTRY[step.op].last_axis_view or REGISTRY[step.op].row_gradient_input is not None
                    or not self._outer_info(step).into):
                entries.append((step, dels))
                continue
            sid, _, xs, _, out, attrs, _ = run.fwd[at]
            todo = []
            for i, (src, _) in enumerate(step.inputs):
                if src in need and src not in self.integer:
                    dest = self.pool.empty(xs[i].shape, self.dtype)
                    todo.append((i, src, dest))
                    dests.append(dest)
            op = self._outer_info(step).op
            entries.append((sid, op.vjp_into, op, xs, out, attrs, tuple(todo), dels))
        return entries, dests

    def _grad_needed(self, wrt) -> set[str]:
        """Values through which a gradient reaches one of the ``wrt`` leaves."""
        key = None if wrt is None else frozenset(wrt)
        if key in self._needed:
            return self._needed[key]
        if key is None:
            leaves = {p.name for p in self.plan.params}
            leaves |= {v.name for v in self.plan.inputs + self.plan.targets if not v.integer}
        else:
            leaves = set(key)
        need = set(leaves)

        def visit(s: OpStep) -> bool:
            if s.id not in need and not s.integer and any(src in need for src, _ in s.inputs):
                need.add(s.id)
                return True
            return False

        for step in self.plan.steps:
            if isinstance(step, LoopStep):
                changed = True
                while changed:
                    changed = False
                    for b in step.body:
                        changed |= visit(b)
                    for s, init in step.initials.items():
                        if init in need and s not in need:
                            need.add(s)
                            changed = True
            else:
                visit(step)
        self._needed[key] = need
        return need

    def _op_backward(self, step: OpStep, tape: Tape, grads, acc: "_Accumulator", need) -> None:
        g = grads.get(step.id)
        if g is None or step.integer:
            return
        rec = tape.records.get(step.id)
        if rec is None:
            return
        xs, ctx = rec
        key = (step.id, id(need))
        todo = self._todo.get(key)
        if todo is None:
            todo = self._todo[key] = [i for i, (src, _) in enumerate(step.inputs)
                                      if src in need and src not in self.integer]
        if not todo:
            return
        facts = REGISTRY[step.op]
        if facts.last_axis_view and step.inputs[0][1] == 0:  # add into the part, no zero-padded copy
            lo = int(step.attrs.get("start", 0))
            acc.add_part(step.inputs[0][0], g, lo, lo + g.shape[-1], xs[0].shape)
            return
        if facts.row_gradient_input == 1 and 1 in todo and step.inputs[1][0] in self._tables:
            self._table_grad(step.inputs[1][0], xs[0], g, acc)
            todo = [i for i in todo if i != 1]
            if not todo:
                return
        o = self._outer_info(step)
        op, out = o.op, tape.values[step.id]
        if o.into:
            # straight into the gradient's (pooled) array, adding in place
            rest = []
            for i in todo:
                src, d = step.inputs[i]
                if d == 0:
                    acc.add_into(src, xs[i].shape, _Into(op, i, g, xs, out, step.attrs))
                else:
                    rest.append(i)
            todo = rest
            if not todo:
                return
        if len(todo) > 1 and o.joint:
            gs = op.vjp(g, xs, out, step.attrs, ctx)
        else:
            gs = [None] * len(step.inputs)
            for i in todo:
                gs[i] = op.vjp_one(i, g, xs, out, step.attrs, ctx)
        for i in todo:
            gi = gs[i]
            if gi is None:
                continue
            src, d = step.inputs[i]
            if d:
                self._initial_grad(tape, src, d, gi, acc, need)
                gi = _shift_in_time(gi, -d, tape.lengths, np.zeros_like(gi[0]), reverse_of=d)
            acc.add(src, gi)

    def _table_grad(self, table: str, ids: np.ndarray, g: np.ndarray, acc: "_Accumulator") -> None:
        """The gradient of an embedding table (a parameter): dense, but only the rows this batch
        touched are non-zero, and it says which (``RowGrad.rows``). Its array is kept for the
        next pass, which zeroes just those rows (not the whole table) if nobody else holds it;
        the optimiser updates just those rows."""
        shape, dtype = self._tables[table], g.dtype
        buf, rows = self._table_grads.get(table, (None, None))
        if buf is not None and buf.shape == shape and buf.dtype == dtype and sys.getrefcount(buf) == 3:
            buf[rows] = 0           # (the entry in _table_grads, the name buf, getrefcount's argument)
        else:
            buf = np.zeros(shape, dtype)
        ids = ids.reshape(-1)
        g = g.reshape(len(ids), -1)
        if ids.size and ids.min() < 0:   # padding
            keep = ids >= 0
            ids, g = ids[keep], g[keep]
        np.add.at(buf, ids, g)  # add.at: repeated ids accumulate
        rows = np.unique(ids)
        self._table_grads[table] = (buf, rows)
        acc.add(table, RowGrad.of(buf, rows))

    def _loop_backward(self, loop: LoopStep, tape: Tape, grads, need=None) -> None:
        env, T = tape.values, tape.steps
        body_ids = {b.id for b in loop.body}
        gbuf = {b.id: np.zeros_like(env[b.id]) for b in loop.body if not b.integer}
        for b in loop.body:
            if b.id in grads and b.id in gbuf:
                gbuf[b.id] += grads.pop(b.id)
        outer_seq: dict[str, np.ndarray] = {}
        outer: dict[str, np.ndarray] = {}
        outer_init: dict[str, np.ndarray] = {}     # other loops' states: gradients of their initial states
        ginit = {s: np.zeros_like(tape.initial_values[s], dtype=self.dtype) for s in loop.states if s in gbuf}
        times = range(T) if loop.direction > 0 else range(T - 1, -1, -1)
        for t in reversed(times):
            for step in reversed(loop.body):
                if step.id not in gbuf:
                    continue
                g = gbuf[step.id][t]
                xs, ctx = tape.records[(step.id, t)]
                gs = REGISTRY[step.op].vjp(g, xs, env[step.id][t], step.attrs, ctx)
                for (src, d), gi in zip(step.inputs, gs):
                    if gi is None or src in self.integer:
                        continue
                    if src in body_ids:
                        if d == 0:
                            gbuf[src][t] += gi
                        else:
                            self._to_step(gbuf[src], ginit[src], gi, t + d, tape)
                    elif src in self.seq:
                        if src not in outer_seq:
                            outer_seq[src] = np.zeros_like(env[src], dtype=self.dtype)
                        if d == 0:
                            outer_seq[src][t] += gi
                        else:  # another loop's state read where it has no step gives its initial state
                            before_chunk = t + d < 0 and chunks.history_key(src) in tape.carry
                            if (src not in outer_init and not before_chunk and src in self._initial_of
                                    and (need is None or self._initial_of[src] in need)):
                                outer_init[src] = np.zeros_like(tape.initial_values[src], dtype=self.dtype)
                            self._to_step(outer_seq[src], None if before_chunk else outer_init.get(src),
                                          gi, t + d, tape)
                    else:
                        acc = outer.get(src)
                        outer[src] = gi.copy() if acc is None else _iadd(acc, gi)
        for b in loop.body:
            if b.id in gbuf:
                grads[b.id] = gbuf[b.id]  # kept so callers can read gradients of recurrent values
        for src, g in list(outer_seq.items()) + list(outer.items()):
            _accumulate(grads, src, g)
        for s, g in ginit.items():
            if s in loop.initials:
                init_id = loop.initials[s]
                _accumulate(grads, init_id, unbroadcast(g, env[init_id].shape))
        for s, g in outer_init.items():
            init_id = self._initial_of[s]
            _accumulate(grads, init_id, unbroadcast(g, env[init_id].shape))

    def _to_step(self, buf: np.ndarray, ginit, gi: np.ndarray, u: int, tape: Tape) -> None:
        """Send a gradient to step ``u``: to the buffer where u is a real step, else to the initial state."""
        if 0 <= u < tape.steps:
            valid = tape.lengths > u
            if valid.all():
                buf[u] += gi
                return
            v = valid.reshape((-1,) + (1,) * (gi.ndim - 1)).astype(gi.dtype)
            buf[u] += gi * v
            if ginit is not None:
                ginit += gi * (1 - v)
        elif ginit is not None:
            ginit += gi

    def _fast_loop_backward(self, loop: LoopStep, tape: Tape, grads, acc: "_Accumulator", need,
                            keep: bool) -> None:
        t_start = time.perf_counter() if self.profile is not None else 0.0
        prog = self._program(loop)
        run: _LoopRun = tape.loops[loop.index]
        env, T, bufs = tape.values, run.T, run.bufs
        pre = frozenset(b.id for b in prog.body if b.id in grads and not b.step.integer)
        plan = prog.backward_plan(pre, need, keep, run.scratch)
        key = (pre, id(need), keep)
        bw = run.backward if run.backward is not None and run.backward.key == key else None
        if bw is None:
            before = run.counts()
            bw = run.backward = self._build_loop_backward(prog, run, plan, need, env, tape.batch)
            bw.key = key
            self._local_grads(prog, run, bw, env)
            run.reseal(before, bw)
        else:
            bw.reset()
            self._local_grads(prog, run, bw, env)
        gbuf, ginit = bw.gbuf, bw.ginit
        for v in pre:
            gbuf[v] += grads.pop(v)
        times = range(T) if loop.direction > 0 else range(T - 1, -1, -1)
        prof = self.profile
        if prof is not None:
            t0 = time.perf_counter()
            self._note("backward", loop, t0 - t_start, "setup")
        with blas_threads(self.options.loop_blas_threads):
            for t in reversed(times):
                for act in bw.actions:
                    act(t)
        if prof is not None:
            t1 = time.perf_counter()
            self._note("backward", loop, t1 - t0, "steps")
        # everything that leaves the loop: one whole-sequence VJP per edge
        for op_id, pos in plan.deferred:
            b = prog.by_id[op_id]
            src, d = b.step.inputs[pos]
            gi = b.op.vjp_one(pos, gbuf[op_id], _whole(prog, run, env, b), bufs[op_id], b.step.attrs, NO_CTX)
            if gi is None:
                continue
            if d and src in self.seq:
                self._initial_grad(tape, src, d, gi, acc, need)
                gi = _shift_in_time(gi, -d, tape.lengths, np.zeros_like(gi[0]), reverse_of=d)
            acc.add(src, gi)
        for (op_id, pos), g in bw.outer_step.items():
            src, d = prog.by_id[op_id].step.inputs[pos]
            if src in self.seq and d:
                self._initial_grad(tape, src, d, g, acc, need)
                g = _shift_in_time(g, -d, tape.lengths, np.zeros_like(g[0]), reverse_of=d)
            acc.add(src, g, owned=True)
        if keep:
            for b in prog.body:
                if b.id in gbuf:
                    grads[b.id] = gbuf[b.id]  # kept so callers can read gradients of recurrent values
                    acc.disown(b.id)
        for s, g in ginit.items():
            if s in loop.initials:
                init_id = loop.initials[s]
                acc.add(init_id, unbroadcast(g, env[init_id].shape))
        if prof is not None:
            self._note("backward", loop, time.perf_counter() - t1, "after (whole-sequence VJPs)")

    def _build_loop_backward(self, prog: "_LoopProgram", run: "_LoopRun", plan: "_BackwardPlan", need,
                             env: dict, B: int) -> "_LoopBackward":
        """Gradient buffers and per-step actions of a loop's backward pass, for one run."""
        T, bufs = run.T, run.bufs
        # Gradient buffers: one (T, B, ...) array per region, or one (B, ...) array reused at
        # every step where nothing reads the gradient after its step; aliases and slices
        # share their region's array. (No recursive closure here: a function referring to
        # itself is a reference cycle, which would keep every buffer alive until a full GC.)
        gbuf: dict[str, np.ndarray] = {}
        for b in prog.body:
            if b.step.integer or b.id in plan.alias or b.id in plan.views:
                continue
            if b.id in plan.scratch:
                gbuf[b.id] = np.zeros((B,) + b.trail, dtype=self.dtype)
            else:
                gbuf[b.id] = self.pool.zeros((T, B) + b.trail, self.dtype)
        owners = list(gbuf.values())
        for b in prog.body:             # slice views: their source comes first
            if b.id in plan.views:
                src, lo, hi = plan.views[b.id]
                gbuf[b.id] = _resolve(gbuf, plan.alias, src)[..., lo:hi]
        for b in prog.body:
            if b.id in plan.alias:
                gbuf[b.id] = _resolve(gbuf, plan.alias, plan.alias[b.id])
        glists = {v: ([a] * T if plan.region[v] in plan.scratch else list(a)) for v, a in gbuf.items()}
        ginit = {s: np.zeros(run.inits[s].shape, dtype=self.dtype) for s in prog.loop.states
                 if s in gbuf and s in need}
        minlen, vcols = run.minlen, run.vcols
        # derivatives of elementwise ops, for the whole sequence at once (filled every pass)
        # (over every step: the op's own buffer may be one step's scratch when its VJP reads only its input)
        local = {bid: (self.pool.empty((T, B) + prog.by_id[bid].trail, self.dtype), []) for bid in plan.local}
        actions = [_zero_action(gbuf[r]) for r in plan.fill]
        tmps: dict = {}

        def tmp_pair(arr):
            key = (arr.shape[1:], arr.dtype)
            if key not in tmps:
                tmps[key] = (np.empty(arr.shape[1:], arr.dtype), np.empty(arr.shape[1:], arr.dtype))
            return tmps[key]

        outer_step: dict[tuple, np.ndarray] = {}   # (op id, pos) -> per-step gradients leaving the loop
        for a in plan.actions:
            b = prog.by_id[a.op_id]
            G, ins, outs, attrs = glists[a.op_id], run.ins[a.op_id], run.outs[a.op_id], b.step.attrs
            if a.kind == "generic":
                dests = []
                for pos, (src, d) in enumerate(b.step.inputs):
                    if src in self.integer or src not in need:
                        dests.append(None)
                    elif src in prog.ids:
                        dests.append(("body", glists[src], d, ginit.get(src), gbuf[src]))
                    else:
                        outer_step[(a.op_id, pos)] = arr = np.zeros(env[src].shape, dtype=self.dtype)
                        dests.append(("outer", arr, src in self.seq))
                actions.append(_generic_backward(b.op, attrs, G, ins, outs, run.ctxs[a.op_id], dests,
                                                 T, minlen, vcols))
                continue
            src, d = b.step.inputs[a.pos]
            if a.kind == "outer_step":
                outer_step[(a.op_id, a.pos)] = arr = np.zeros(env[src].shape, dtype=self.dtype)
                actions.append(_outer_step_action(b.op, a.pos, attrs, G, ins, outs, arr, src in self.seq))
                continue
            D = local[a.op_id][1] if a.kind == "local" else None
            if d == 0:
                dest = glists[src]
                if D is not None:
                    actions.append(product_into(G, D, dest, a.accumulate))
                else:
                    actions.append(b.op.step_vjp(a.pos, G, ins, outs, attrs, dest, a.accumulate))
            else:
                full = gbuf[src]
                t1, t2 = tmp_pair(full)
                first = (product_into(G, D, [t1] * T, False) if D is not None
                         else b.op.step_vjp(a.pos, G, ins, outs, attrs, [t1] * T, False))
                actions.append(_delayed_action(first, full, d, T, minlen, vcols, ginit.get(src), t1, t2))
        return _LoopBackward(gbuf=gbuf, owners=owners, ginit=ginit, local=local, actions=actions,
                             outer_step=outer_step, tmps=[a for pair in tmps.values() for a in pair])

    def _local_grads(self, prog: "_LoopProgram", run: "_LoopRun", bw: "_LoopBackward", env: dict) -> None:
        """This pass's derivatives of the elementwise ops whose VJP multiplies by them."""
        for bid, (into, steps) in bw.local.items():
            b = prog.by_id[bid]
            D = b.op.local_grad(_whole(prog, run, env, b), run.bufs[bid], b.step.attrs, into)
            if not (steps and D is into):   # (written into the same array as last pass: same views)
                steps[:] = D


def _whole(prog: "_LoopProgram", run: "_LoopRun", env: dict, b: "_BodyOp") -> list:
    """The inputs of body op b over all steps (scratch values only by shape: nothing reads them)."""
    return [run.reads[(src, d)] if d != 0 else (run.bufs[src] if src in prog.ids else env[src])
            for src, d in b.step.inputs]


# ---- the fast path's loop programs ------------------------------------------------------

@dataclass
class _Outer:
    """How to run a step outside loops, worked out once."""

    op: Op
    pooled: bool      # forward into an array from the pool
    lead: str         # leading axes: "seq" (T, B), "batch" (B,) or "static" (none)
    trail: tuple
    into: bool        # its VJP can write into the gradient's array
    joint: bool       # no per-input VJP: compute them all at once
    first_seq: bool   # its first input is a sequence: its Ctx carries the mask


@dataclass
class _PassRun:
    """The steps of a pass outside loops for one batch geometry, as a flat list (fast path).

    ``fwd`` holds, in plan order, ``("loop", step)`` / ``("op", step)`` for what goes through
    the general path, and ``(id, forward_into, inputs, binds, out, attrs, record)`` for a step
    writing into an array of the run's own: its list of inputs is made once (outputs of other
    such steps fixed in it; ``binds`` are filled from the tape's values when it runs). The
    backward counterpart (``bwd``, per set of wanted leaves) sends each gradient into an
    array of the run's own when it is the first to reach its value. Used again, like a
    ``_LoopRun``, only when no tape, gradient or view of the last pass holds any of its arrays.
    """

    key: tuple
    fwd: list = field(default_factory=list)
    by_id: dict = field(default_factory=dict)    # step id -> index in fwd
    outs: list = field(default_factory=list)     # the run's own arrays
    bound: list = field(default_factory=list)    # (inputs list, positions bound at every pass)
    bwd: dict = field(default_factory=dict)      # (need, leaves) key -> list of backward entries
    tape: object = None
    tracked: list = field(default_factory=list)
    rest: list = field(default_factory=list)

    def counts(self) -> list:
        return [sys.getrefcount(a) for a in self.tracked]

    def seal(self) -> None:
        self.tracked = list(self.outs)
        self.rest = self.counts()

    def adjust(self, before: list) -> None:
        """References the run added to its tracked arrays since ``before = counts()``."""
        self.rest = [r + now - b for r, now, b in zip(self.rest, self.counts(), before)]

    def release_bound(self) -> None:
        """Once the tape of its last pass is gone: drop that pass's inputs (parameters, feeds,
        loop outputs), so that they do not look held to the loops' and the pool's checks."""
        if self.tape is not None and self.tape() is None:
            for xs, pos in self.bound:
                for i in pos:
                    xs[i] = None

    def free(self) -> bool:
        return (self.tape is None or self.tape() is None) and self.counts() == self.rest

    def grads_free(self) -> bool:
        """Whether nobody holds the gradient arrays of an earlier backward pass (a second
        backward over one tape must not write into the first one's results)."""
        n = len(self.outs)
        return self.counts()[n:] == self.rest[n:]   # (a slice of tracked would hold them once more)


@dataclass
class _LoopRun:
    """One loop's buffers, per-step views and step kernels for one batch geometry (fast path).

    A run is kept for the next batch of the same geometry (``_LoopProgram.cached_run``):
    only the lists of inputs from outside the loop are bound again (``Executor._bind_outer``).
    """

    T: int
    minlen: int
    inits: dict
    scratch: frozenset = frozenset()             # values held for one step only: (B, ...) arrays
    bufs: dict = field(default_factory=dict)
    reads: dict = field(default_factory=dict)    # (src, delay) -> (T, B, ...) what each step read
    ins: dict = field(default_factory=dict)      # op id -> per input, its array at every step
    outs: dict = field(default_factory=dict)     # op id -> its output array at every step
    ctxs: dict = field(default_factory=dict)     # op id -> per step Ctx (ops that need one)
    vcols: dict = field(default_factory=dict)    # (u, extra dims) -> (B, 1...) bool: step u is real
    fills: list = field(default_factory=list)    # state reads: (read views, state views, state, d, dims)
    extended: dict = field(default_factory=dict)  # state -> (buffer with initial-state slots, index of step 0)
    init_slots: list = field(default_factory=list)  # (slots, state): where the initial state goes each pass
    outer: list = field(default_factory=list)    # (per-step list, source, delay, kind) bound every pass
    outer_views: list = field(default_factory=list)  # (value, source, start, stop): parts of outer sequences
    steps: list = field(default_factory=list)    # forward kernels f(t), in body order
    backward: "_LoopBackward | None" = None      # the backward pass's buffers and actions, once built
    key: tuple = ()
    tape: object = None                          # weak reference to the tape that ran it last
    tracked: list = field(default_factory=list)  # arrays reused from pass to pass ...
    rest: list = field(default_factory=list)     # ... and their reference counts when only the run holds them

    def counts(self) -> list:
        return [sys.getrefcount(a) for a in self.tracked]

    def seal(self) -> None:
        """Note which arrays the run reuses and how many references it holds to them itself."""
        outer = {bid for bid, *_ in self.outer_views}
        self.tracked = _distinct([a for k, a in self.bufs.items() if k not in outer]
                                 + [a for (src, d), a in self.reads.items() if src in self.bufs])
        self.rest = self.counts()

    def reseal(self, before: list, bw: "_LoopBackward") -> None:
        """After building the backward part: its references to the tracked arrays (counts now
        minus ``before``) are the run's own; its own arrays are tracked too."""
        self.rest = [r + now - b for r, now, b in zip(self.rest, self.counts(), before)]
        n = len(self.tracked)
        self.tracked = _distinct(self.tracked + bw.arrays())
        self.rest += self.counts()[n:]

    def free(self) -> bool:
        """Whether nobody but the run refers to its arrays (no tape, gradient or view of them
        outlives the pass that made it), so the next pass may overwrite them."""
        return (self.tape is None or self.tape() is None) and self.counts() == self.rest


def _distinct(arrays: list) -> list:
    """The arrays and the arrays they are views of, each once."""
    seen, out = set(), []
    for a in arrays:
        for x in (a, a.base):
            if x is not None and id(x) not in seen:
                seen.add(id(x))
                out.append(x)
    return out


@dataclass
class _LoopBackward:
    """A run's backward pass: gradient buffers and per-step actions, reused with the run."""

    gbuf: dict                  # value -> its gradient's array (views and aliases included)
    owners: list                # the arrays gbuf's entries are views of
    ginit: dict                 # state -> gradient of its initial value
    local: dict                 # op id -> (array of D for all steps, D's per-step views)
    actions: list
    outer_step: dict
    tmps: list
    key: tuple = ()

    def arrays(self) -> list:
        return (self.owners + list(self.ginit.values()) + [into for into, _ in self.local.values()]
                + list(self.outer_step.values()) + self.tmps)

    def reset(self) -> None:
        for a in self.owners + list(self.ginit.values()) + list(self.outer_step.values()):
            a.fill(0)


@dataclass
class _BodyOp:
    step: OpStep
    op: Op
    fast: bool
    trail: tuple
    view_of: tuple | None = None   # (source, start, stop): a slice that is a view of its source
    id: str = ""

    def __post_init__(self):
        self.id = self.step.id


@dataclass
class _Action:
    op_id: str
    pos: int
    kind: str            # "vjp" | "local" | "generic" | "outer_step"
    accumulate: bool = True


@dataclass
class _BackwardPlan:
    alias: dict          # value -> value whose gradient buffer it shares
    views: dict          # value -> (source, start, stop): gradient buffer is a view
    region: dict         # value -> the value that owns its gradient buffer
    scratch: set         # regions held for one step only
    fill: list           # scratch regions to zero at the start of every step
    actions: list        # per-step work, in backward order
    deferred: list       # (op id, input position): one whole-sequence VJP after the loop
    local: set           # op ids whose derivative is precomputed


def _reads(op: Op, what) -> bool:
    """Whether op's VJP reads the contents of input ``what`` (an int) or of its output ("out")."""
    r = op.vjp_reads
    return what in r or (what != "out" and "inputs" in r)


class _LoopProgram:
    """What a loop body needs at run time, worked out once per loop."""

    def __init__(self, ex: Executor, loop: LoopStep):
        # no reference to the executor: a cycle would keep the cached run's buffers alive
        self.loop, self.options, self.integer = loop, ex.options, ex.integer
        opts = ex.options
        self.steps = {b.id: b for b in loop.body}
        self.ids = set(self.steps)
        self.body: list[_BodyOp] = []
        self.ok = True
        for s in loop.body:
            op = REGISTRY[s.op]
            trail = array_shape(s.shape, s.integer)
            if not all(isinstance(d, int) for d in trail):
                self.ok = False
            view_of = None
            if op.last_axis_view:
                src, d = s.inputs[0]
                if d == 0 and (src in self.ids or src in ex.seq):
                    lo = int(s.attrs.get("start", 0))
                    width = trail[-1] if trail else None
                    view_of = (src, lo, lo + width) if isinstance(width, int) else None
            self.body.append(_BodyOp(s, op, not op.needs_ctx, trail, view_of))
        self.by_id = {b.id: b for b in self.body}
        self.delayed = []
        for s in loop.body:
            for src, d in s.inputs:
                if d != 0 and (src in self.ids or src in ex.seq) and (src, d) not in self.delayed:
                    self.delayed.append((src, d))
        self._backward: dict = {}
        # readers of each body value inside the body: (op id, position, delay)
        self.readers: dict[str, list] = {v: [] for v in self.ids}
        for s in loop.body:
            for pos, (src, d) in enumerate(s.inputs):
                if src in self.ids:
                    self.readers[src].append((s.id, pos, d))
        self.scratch = self._scratch_values(ex, loop) if opts.scratch else frozenset()
        # runs with ops that need their context (dropout) are built every pass
        self.reusable = opts.reuse_buffers and all(b.fast for b in self.body)
        # overflow warnings are silenced while the steps run (see Op.quiet_overflow)
        self.quiet_overflow = any(b.op.quiet_overflow for b in self.body)
        self._run: _LoopRun | None = None

    def cached_run(self, key: tuple) -> "_LoopRun | None":
        """The last run, if it was made for this geometry and nothing else holds its arrays."""
        run = self._run
        if run is not None and run.key == key and run.free():
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
            for key in [k for k in run.reads if k[0] not in self.ids]:   # shifted outer sequences
                del run.reads[key]

    def keep_run(self, key: tuple, run: "_LoopRun", tape: "Tape") -> None:
        if self.reusable:
            run.key = key
            run.seal()
            run.tape = weakref.ref(tape)
            self._run = run

    def _scratch_values(self, ex: Executor, loop: LoopStep) -> frozenset:
        """Body values needed only within their own step: nothing outside the loop reads them,
        they are no state, and no VJP reads them (an add's does not; a mul's reads both inputs)."""
        plan = ex.plan
        seen_outside = set(plan.outputs) | ({plan.loss} if plan.loss else set()) | set(loop.states)
        for s in plan.steps:
            for b in (s.body if isinstance(s, LoopStep) else [s]):
                if b.id in self.ids:
                    continue
                seen_outside |= {src for src, _ in b.inputs}
            if isinstance(s, LoopStep):
                seen_outside |= set(s.initials.values())
        needs: dict[str, bool] = {}
        for b in reversed(self.body):
            v = b.id
            need = (v in seen_outside or not b.fast or b.step.integer or _reads(b.op, "out")
                    or (b.view_of is not None and b.view_of[0] not in self.ids))
            for rid, pos, d in self.readers[v]:
                r = self.by_id[rid]
                if d != 0 or not r.fast or _reads(r.op, pos) or (r.view_of is not None and needs[rid]):
                    need = True
            needs[v] = need
        out = set()
        for b in self.body:   # a view is scratch exactly when its source is
            if b.view_of is not None and b.view_of[0] in self.ids:
                if b.view_of[0] in out:
                    out.add(b.id)
            elif not needs[b.id]:
                out.add(b.id)
        return frozenset(out)

    def backward_plan(self, pre: frozenset, need: set, keep: bool, fwd_scratch: frozenset) -> _BackwardPlan:
        key = (pre, id(need), keep, fwd_scratch)
        if key in self._backward:
            return self._backward[key]
        opts = self.options
        count = {v: len(r) + (1 if v in pre else 0) for v, r in self.readers.items()}
        alias: dict[str, str] = {}
        views: dict[str, tuple] = {}
        for b in self.body:
            if b.view_of is not None and b.view_of[0] in self.ids and opts.alias_grads:
                views[b.id] = b.view_of
        aliased_edges = set()
        if opts.alias_grads:
            for b in self.body:
                if not b.fast:
                    continue
                for pos in b.op.passes_gradient:
                    src, d = b.step.inputs[pos]
                    if (d != 0 or src not in self.ids or count[src] != 1 or src in views or src in alias
                            or self.steps[src].integer or self.by_id[src].trail != b.trail):
                        continue
                    alias[src] = b.id
                    aliased_edges.add((b.id, pos))

        def root(v):
            while True:
                if v in alias:
                    v = alias[v]
                elif v in views:
                    v = views[v][0]
                else:
                    return v

        # which edges may write (not add) their gradient: the only contribution to that region
        def writable(v: str) -> bool:
            if count[v] != 1 or v in alias:
                return False
            if v in views:
                parent, lo, hi = views[v]
                if parent in views or parent in pre or root(parent) != parent:
                    return False
                for rid, pos, d in self.readers[parent]:
                    r = self.by_id[rid]
                    if r.view_of is None or d != 0 or r.id not in views:
                        return False  # the parent has a reader that adds over its whole range
                    if r.id != v:
                        _, lo2, hi2 = views[r.id]
                        if lo2 < hi and lo < hi2:
                            return False
            return True

        actions, deferred, local = [], [], set()
        for b in reversed(self.body):
            if b.step.integer or b.id not in need:
                continue
            if b.view_of is not None and b.id in views:
                continue  # its gradient already sits in its source's buffer
            if not b.fast:
                actions.append(_Action(b.id, -1, "generic"))
                continue
            for pos, (src, d) in enumerate(b.step.inputs):
                if src in self.integer or src not in need or (b.id, pos) in aliased_edges:
                    continue
                if src not in self.ids:
                    if opts.defer_grads:
                        deferred.append((b.id, pos))
                    else:
                        actions.append(_Action(b.id, pos, "outer_step"))
                    continue
                use_local = opts.local_grads and b.op.local_grad is not None
                if use_local:
                    local.add(b.id)
                acc = not (d == 0 and writable(src))
                actions.append(_Action(b.id, pos, "local" if use_local else "vjp", acc))
        # gradient regions that live for one step only: nothing reads them after their step
        region = {b.id: root(b.id) for b in self.body if not b.step.integer}
        whole = set()
        if keep or not opts.scratch:
            whole = set(region.values())
        for v in pre | set(self.loop.states):
            if v in region:
                whole.add(region[v])
        for op_id, _ in deferred:
            whole.add(region[op_id])
        for b in self.body:  # a delayed read sends gradient to another step
            for src, d in b.step.inputs:
                if d != 0 and src in region:
                    whole.add(region[src])
        scratch = {r for r in set(region.values()) if r not in whole}
        # a scratch region is zeroed at every step unless its writers cover it exactly
        writes: dict[str, list] = {}
        for a in actions:
            if a.kind in ("vjp", "local"):
                src, d = self.by_id[a.op_id].step.inputs[a.pos]
                if d == 0 and src in region:
                    writes.setdefault(region[src], []).append((src, a.accumulate))
            elif a.kind == "generic":
                for src, _ in self.by_id[a.op_id].step.inputs:
                    if src in region:
                        writes.setdefault(region[src], []).append((src, True))
        fill = []
        for r in sorted(scratch):
            ws = writes.get(r, [])
            width = self.by_id[r].trail[-1] if self.by_id[r].trail else None
            spans = sorted(views[v][1:] if v in views else (0, width) for v, _ in ws)
            covered = (ws and not any(accum for _, accum in ws) and width is not None
                       and spans[0][0] == 0 and spans[-1][1] == width
                       and all(a[1] == b[0] for a, b in zip(spans, spans[1:])))
            if not covered:
                fill.append(r)
        plan = _BackwardPlan(alias, views, region, scratch, fill, actions, deferred, local)
        self._backward[key] = plan
        return plan


def _generic_forward(op, attrs, ins, outs, ctxs, train, rng):
    def run(t):
        ctx = Ctx(train=train, rng=rng)
        out = op.forward([x[t] for x in ins], attrs, ctx)
        np.copyto(outs[t], out)
        ctxs[t] = ctx
    return run


def _zero_action(arr):
    def act(t):
        arr.fill(0)
    return act


def _delayed_action(first, full, d, T, minlen, vcols, ginit, t1, t2):
    """Gradient of a state read at t + d: ``first(t)`` writes it into t1; it goes to that
    step where the step is real, else to the initial state."""
    nd = full.ndim - 2
    multiply, add, subtract = np.multiply, np.add, np.subtract

    def act(t):
        first(t)
        u = t + d
        if 0 <= u < T:
            if u < minlen:
                add(full[u], t1, out=full[u])
                return
            multiply(t1, vcols[(u, nd)], out=t2)
            add(full[u], t2, out=full[u])
            if ginit is not None:
                subtract(t1, t2, out=t1)
                add(ginit, t1, out=ginit)
        elif ginit is not None:
            add(ginit, t1, out=ginit)
    return act


def _outer_step_action(op, pos, attrs, G, ins, outs, acc_arr, seq):
    """Per-step gradient of a value from outside the loop (when deferring is switched off)."""
    def act(t):
        gi = op.vjp_one(pos, G[t], [x[t] for x in ins], outs[t], attrs, NO_CTX)
        if seq:
            acc_arr[t] += gi
        else:
            np.add(acc_arr, gi, out=acc_arr)
    return act


def _generic_backward(op, attrs, G, ins, outs, ctxs, dests, T, minlen, vcols):
    """An op that needs its context (dropout...): its generic vjp at every step."""
    def act(t):
        gs = op.vjp(G[t], [x[t] for x in ins], outs[t], attrs, ctxs[t])
        for gi, dest in zip(gs, dests):
            if gi is None or dest is None:
                continue
            if dest[0] == "outer":
                _, arr, seq = dest
                if seq:
                    arr[t] += gi
                else:
                    np.add(arr, gi, out=arr)
                continue
            _, views, d, ginit, full = dest
            if d == 0:
                views[t] += gi
                continue
            u = t + d
            if 0 <= u < T:
                if u < minlen:
                    full[u] += gi
                    continue
                v = vcols[(u, full.ndim - 2)].astype(gi.dtype)
                full[u] += gi * v
                if ginit is not None:
                    ginit += gi * (1 - v)
            elif ginit is not None:
                ginit += gi
    return act


class RowGrad(np.ndarray):
    """A dense gradient whose rows outside ``rows`` are zero (an embedding table's): optimisers
    may update just those rows. Arrays computed from it are plain arrays (no ``rows``)."""

    rows: np.ndarray | None = None

    @classmethod
    def of(cls, dense: np.ndarray, rows: np.ndarray) -> "RowGrad":
        g = dense.view(cls)
        g.rows = rows
        return g

    def __array_finalize__(self, obj):
        self.rows = None     # a view or a result of arithmetic: no promise about its rows


def _resolve(gbuf: dict, alias: dict, v: str) -> np.ndarray:
    while v not in gbuf:
        v = alias[v]
    return gbuf[v]


class _Into:
    """A VJP written into a given array: ``fn(dest, accumulate)``."""

    __slots__ = ("op", "i", "g", "xs", "out", "attrs")

    def __init__(self, op, i, g, xs, out, attrs):
        self.op, self.i, self.g, self.xs, self.out, self.attrs = op, i, g, xs, out, attrs

    def __call__(self, dest, accumulate):
        self.op.vjp_into(self.i, self.g, self.xs, self.out, self.attrs, dest, accumulate)


class _Accumulator:
    """Adds gradients into a dict, in place where the array is one it made itself."""

    def __init__(self, grads: dict, pool: "BufferPool | None" = None):
        self.grads = grads
        self.owned: set[str] = set()
        self.pool = pool or BufferPool(enabled=False)
        self.blank: dict[str, tuple] = {}  # key -> (its array, ranges of the last axis still all zeros)

    def _own(self, key: str, shape, dtype) -> np.ndarray:
        """Make the gradient of key an array of this accumulator's own (a pooled copy)."""
        self.blank.pop(key, None)
        acc = self.grads.get(key)
        if isinstance(acc, RowGrad):   # about to get other rows: no promise any more
            acc = self.grads[key] = np.asarray(acc)
        if acc is not None and key in self.owned and acc.shape == tuple(shape) and acc.dtype == dtype:
            return acc
        new = self.pool.zeros(shape, dtype) if acc is None else self.pool.empty(shape, dtype)
        if acc is not None:
            np.copyto(new, acc)  # broadcasts a smaller one
        self.grads[key] = new
        self.owned.add(key)
        return new

    def add(self, key: str, g: np.ndarray, owned: bool = False) -> None:
        self.blank.pop(key, None)
        acc = self.grads.get(key)
        if acc is None:
            self.grads[key] = g
            if owned:
                self.owned.add(key)
            return
        shape = np.broadcast_shapes(acc.shape, g.shape)
        target = self._own(key, shape, np.result_type(acc, g))
        target += g

    def add_into(self, key: str, shape, into: _Into) -> None:
        """Let ``into`` write (first gradient) or add (later ones) straight into key's gradient."""
        acc = self.grads.get(key)
        dtype = into.g.dtype
        if acc is None:
            dest = self.pool.empty(shape, dtype)
            into(dest, False)
            self.grads[key] = dest
            self.owned.add(key)
            return
        into(self._own(key, np.broadcast_shapes(acc.shape, tuple(shape)), np.result_type(acc, dtype)), True)

    def add_part(self, key: str, g: np.ndarray, lo: int, hi: int, shape: tuple) -> None:
        """Add g into ``[..., lo:hi]`` of the gradient of key (whose full shape is ``shape``).

        The parts of a gradient made of slices (the gates of a fused projection) are written,
        not added onto zeros, while they fall on parts nothing has written yet."""
        shape = tuple(shape)
        acc = self.grads.get(key)
        blanks = self.blank.pop(key, None)
        if acc is None:
            new = self.pool.empty(shape, g.dtype)
            np.copyto(new[..., lo:hi], g)
            new[..., :lo] = 0
            new[..., hi:] = 0
            self.grads[key] = new
            self.owned.add(key)
            self.blank[key] = (new, [(a, b) for a, b in ((0, lo), (hi, shape[-1])) if b > a])
            return
        if blanks and blanks[0] is acc and acc.shape == shape and acc.dtype == g.dtype:
            ranges = blanks[1]
            for i, (a, b) in enumerate(ranges):
                if a <= lo and hi <= b:
                    np.copyto(acc[..., lo:hi], g)
                    rest = ranges[:i] + [(x, y) for x, y in ((a, lo), (hi, b)) if y > x] + ranges[i + 1:]
                    if rest:
                        self.blank[key] = (acc, rest)
                    return
        self._own(key, shape, g.dtype)[..., lo:hi] += g

    def disown(self, key: str) -> None:
        self.owned.discard(key)
        self.blank.pop(key, None)


_BLAS: list | None = None


def _blas_libs() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded (none without threadpoolctl)."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
            _BLAS = [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
        except Exception:  # not installed, or an unknown platform
            _BLAS = []
    return _BLAS


class blas_threads:
    """``with blas_threads(n):`` BLAS runs on n threads inside (None: unchanged).

    Sets the thread count of each BLAS library directly (a few microseconds), so
    it can wrap every loop of every pass."""

    def __init__(self, n: int | None):
        self.n = n
        self.saved: list = []

    def __enter__(self):
        if self.n is not None:
            for lib in _blas_libs():
                cur = lib.get_num_threads()
                if cur != self.n:
                    self.saved.append((lib, cur))
                    lib.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        for lib, n in self.saved:
            lib.set_num_threads(n)
        self.saved = []
        return False


def _overrides(op: Op, method: str) -> bool:
    """Whether op has its own ``method`` (not the generic fallback of the base class)."""
    return getattr(type(op), method) is not getattr(Op, method)


class BufferPool:
    """Big arrays reused from one pass to the next, safely.

    An array is handed out again only once nothing but the pool refers to it
    (``sys.getrefcount``): values and gradients that a caller still holds — a
    tape, a gradient dict, a view of either — are never overwritten. Arrays are
    1-D blocks in size classes (steps of 2^(1/4)) handed out as reshaped views,
    so batches of different lengths share them; a block nobody took for a few
    passes is let go. Small arrays come from NumPy as usual.

    Why: on this kind of machine a fresh big array costs a page fault per 4 KiB
    page on first touch, and a step that frees its arrays at the end and makes
    them again next step spent a third of its time there.
    """

    MIN_BYTES = 1 << 16
    KEEP_PASSES = 3

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.blocks: dict[tuple, list] = {}   # (elements, dtype) -> [[block, last pass used]]
        self.pass_no = 0

    def new_pass(self) -> None:
        self.pass_no += 1
        for key in list(self.blocks):
            # a block that is free (only the entry refers to it) and unused lately goes
            kept = [e for e in self.blocks[key]
                    if self.pass_no - e[1] <= self.KEEP_PASSES or sys.getrefcount(e[0]) > 2]
            if kept:
                self.blocks[key] = kept
            else:
                del self.blocks[key]

    _classes: dict[int, int] = {}

    @classmethod
    def _size_class(cls, n: int) -> int:
        c = cls._classes.get(n)
        if c is None:
            c = 1 if n <= 1 else max(n, int(math.ceil(2.0 ** (math.ceil(4 * math.log2(n)) / 4))))
            cls._classes[n] = c
        return c

    def empty(self, shape, dtype) -> np.ndarray:
        return self._take(tuple(shape), np.dtype(dtype), zero=False)

    def zeros(self, shape, dtype) -> np.ndarray:
        return self._take(tuple(shape), np.dtype(dtype), zero=True)

    def _take(self, shape: tuple, dtype: np.dtype, zero: bool) -> np.ndarray:
        n = math.prod(shape)
        if not self.enabled or n * dtype.itemsize < self.MIN_BYTES:
            return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
        key = (self._size_class(n), dtype.str)
        entries = self.blocks.setdefault(key, [])
        for e in entries:
            if sys.getrefcount(e[0]) == 2:   # the entry and this call: nobody else can see it
                e[1] = self.pass_no
                a = e[0][:n].reshape(shape)
                if zero:
                    a.fill(0)
                return a
        block = (np.zeros if zero else np.empty)(key[0], dtype)
        entries.append([block, self.pass_no])
        return block[:n].reshape(shape)


def _iadd(acc: np.ndarray, g: np.ndarray) -> np.ndarray:
    if acc.shape == g.shape:
        acc += g
        return acc
    return acc + g


def _accumulate(grads: dict, key: str, g: np.ndarray) -> None:
    acc = grads.get(key)
    grads[key] = g if acc is None else acc + g


def _shift_in_time(a: np.ndarray, d: int, lengths: np.ndarray | None, fill: np.ndarray,
                   reverse_of: int | None = None) -> np.ndarray:
    """``out[t] = a[t + d]`` where ``t + d`` is a real step of that sequence, else ``fill``.

    With ``reverse_of`` set, this is the adjoint of that shift: gradients land back
    on the steps they were read from, and those that were read as ``fill`` vanish.
    """
    T = a.shape[0]
    out = np.empty_like(a)
    out[...] = fill
    if reverse_of is None:
        src_valid = _valid_steps(T, d, lengths)                          # (T, B): t + d is real
        if abs(d) < T:
            if d > 0:
                out[:T - d] = a[d:]
            else:
                out[-d:] = a[:T + d]
        keep = src_valid.reshape(src_valid.shape + (1,) * (a.ndim - 2))
        return np.where(keep, out, fill)
    # adjoint: grad at step t (read from t + reverse_of) goes to step t + reverse_of
    r = reverse_of
    valid = _valid_steps(T, r, lengths)
    g = a * valid.reshape(valid.shape + (1,) * (a.ndim - 2)).astype(a.dtype)
    out[...] = 0
    if abs(r) < T:
        if r > 0:
            out[r:] = g[:T - r]
        else:
            out[:T + r] = g[-r:]
    return out


def _valid_steps(T: int, d: int, lengths: np.ndarray | None) -> np.ndarray:
    t = np.arange(T)[:, None] + d
    if lengths is None:
        return (t >= 0) & (t < T)
    return (t >= 0) & (t < lengths[None, :])
