"""The executor: runs a plan's steps forwards (a ``Tape``) and backwards (gradients), sending each
step to the reference engine (``reference.py``) or to its fast implementation beside it.

Arrays: a feed-forward value is ``(B, *shape)``, a sequence ``(T, B, *shape)`` (time-major) along
a named time axis (``timeaxis.py``; a value on several axes is ``(T_a1, ..., T_ak, B, *shape)``,
``axes.py``), a parameter or constant has no leading axes. A real-valued
value with per-example shape ``()`` is held as ``(..., 1)`` so that it broadcasts against
vectors. A whole-batch value (a loss, and arithmetic on losses with parameters and constants) is
a 0-d array: one number for the batch.

The fast paths, each switchable off in ``ExecOptions`` and tested against the reference:
plain steps into pooled arrays (``steps.py``), loops with kept runs (``loops.py``,
``loopback.py``, planned in ``loopprogram.py``), prepared passes (``prepared.py``), the buffer
pool (``pool.py``), row gradients (``rowgrad.py``); all reuse arrays by one rule (``reuse.py``)
and sum gradients one way (``gradsum.py``). A ``single_use`` forward pass (training) lets a loss
overwrite logits nothing else reads, and its tape refuses a second backward pass.
"""
from __future__ import annotations

import numpy as np

from .. import chunks
from ..ops import REGISTRY
from ..plan import LoopStep, Plan
from . import fastact, fused, loopback, plainkernels, prepared, reference, segments
from .blas import blas_threads
from .facts import PlanFacts
from .gradsum import GradSum
from .kernelcache import numba_available
from .loopprogram import LoopProgram, runs_fast
from .loops import FastLoop
from .paramblocks import FlatArrays, FlatGrads
from .pool import BufferPool
from .profile import profiled
from .reuse import Spare
from .rowgrad import FEW_IDS, TableGrads
from .steps import FastSteps
from .tape import ExecOptions, RunContext, Tape
from .timeaxis import TIME, TimeAxis


class Executor:
    def __init__(self, plan: Plan, dtype=np.float32, check_finite: bool = False,
                 options: ExecOptions | None = None):
        self.plan = plan
        self.dtype = np.dtype(dtype)
        self.check_finite = check_finite
        self.options = options or ExecOptions()
        self.facts = PlanFacts(plan, self.dtype)
        self.consts = {k: np.asarray(v, dtype=self.dtype) for k, v in plan.consts.items()}
        self.pool = BufferPool(enabled=self.options.reuse_buffers)
        self.tables = TableGrads(self._table_shapes() if self.options.row_grads else {},
                                 few_ids=FEW_IDS if self.options.few_ids else 0)
        self.fast_steps = FastSteps(self)
        self.fast_loops: dict[int, FastLoop] = {}   # the loops the NumPy path has run (made then)
        self._fast_loop_ok: dict[int, bool] = {}    # loop -> whether a fast path may run it
        self.fused = fused.FusedLoops(self) if self.options.fused_loops else None   # small loops compiled
        # float32 loop steps' sigmoid compiled after this many passes of each loop (fastact.py)
        self.fast_sigmoid_after = fastact.AFTER_PASSES if self.options.fast_sigmoid and numba_available() else None
        # float32 loop steps' elementwise runs compiled after this many passes of each loop (segments.py)
        self.segments_after = segments.AFTER_PASSES if self.options.fused_segments and numba_available() else None
        # float32 plain steps' kernels (activations in a prepared pass, the softmax cross-entropy) compiled
        # after this many passes of the executor (plainkernels.py)
        self.plain_kernels_after = (plainkernels.AFTER_PASSES if (self.options.plain_kernels or self.options.fast_loss)
                                    and self.options.fast_loops and numba_available() else None)
        self.passes = 0     # forward passes run
        # which compiled kernels this executor may use at all (settle_kernels never turns on one that is not)
        self._kernels = (self.fast_sigmoid_after is not None, self.segments_after is not None,
                         self.plain_kernels_after is not None)
        self._pass_run: prepared.PassRun | None = None   # the prepared pass kept for the last batch geometry
        self._pass_seen: tuple | None = None    # (geometry, shapes of the steps that ran into arrays)
        self.profile: dict | None = None        # set to {} to collect seconds per step
        self._whole_axes: dict[tuple, TimeAxis] = {}   # (axis, T, B) -> a batch's axis with every step real
        self._leaf_set: frozenset | None = None   # the wanted leaves of the last backward pass (read only)
        # the model's dense parameters as views of one flat array (``paramblocks.flatten``, set by
        # Model): their gradients then come out as views of one flat array too (``FlatGrads``)
        self.flat: FlatArrays | None = None
        self._flat_grads: FlatGrads | None = None

    def settle_kernels(self, planned_passes: int) -> None:
        """Compiled kernels (fused loops, the fast sigmoid, fused segments, plain steps') round differently from
        NumPy's steps. By default each starts after a loop's first passes, so that a short run never
        waits for numba; but then a run resumed from a checkpoint, whose executor counts its passes
        anew, rounds differently from the run it continues. A training run settles it once from the
        passes it plans instead (its epochs' steps, which a resumed run plans alike): compiled from
        the first pass when they outnumber that wait, else never."""
        now = planned_passes > max(fused.FUSE_AFTER_PASSES, fastact.AFTER_PASSES, segments.AFTER_PASSES,
                                   plainkernels.AFTER_PASSES)
        if self.fused is not None:
            self.fused.after = 0 if now else float("inf")
        fast_sigmoid, fused_segments, plain = self._kernels
        self.fast_sigmoid_after = 0 if now and fast_sigmoid else None
        self.segments_after = 0 if now and fused_segments else None
        self.plain_kernels_after = 0 if now and plain else None

    def plain_kernels_ready(self) -> bool:
        """Whether the plain steps' compiled kernels are in use by now (``plainkernels.py``: after
        ``plain_kernels_after`` passes; never where that is None)."""
        after = self.plain_kernels_after
        return after is not None and self.passes > after

    def _table_shapes(self) -> dict[str, tuple]:
        """Embedding tables (parameters whose gradient is a few rows) -> their shapes."""
        params = {p.name: tuple(p.shape) for p in self.plan.params}
        tables = {}
        for s in self.plan.steps:
            i = None if isinstance(s, LoopStep) else REGISTRY[s.op].row_gradient_input
            if i is not None and s.inputs[i][0] in params:
                tables[s.inputs[i][0]] = params[s.inputs[i][0]]
        return tables

    def _runs_fast(self, loop: LoopStep) -> bool:
        ok = self._fast_loop_ok.get(loop.index)
        if ok is None:
            ok = self._fast_loop_ok[loop.index] = runs_fast(loop)
        return ok

    def program(self, loop: LoopStep) -> LoopProgram:
        fast = self.fast_loops.get(loop.index)
        if fast is None:
            fast = self.fast_loops[loop.index] = FastLoop(LoopProgram(self.facts, self.options, loop))
        return fast.program

    # ---- inputs ---------------------------------------------------------------
    def prepare(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        env = {}
        for name, spec in self.facts.specs.items():
            if name not in feeds:
                continue
            a = feeds[name]
            if type(a) is not np.ndarray:
                a = np.asarray(a)
            # (a training batch's arrays are mostly of the wanted type already: no call then)
            if spec.integer:
                if a.dtype != np.int64:
                    a = a.astype(np.int64)
            else:
                if a.dtype != self.dtype:
                    a = a.astype(self.dtype)
                lead = 2 if spec.seq else 1
                if len(spec.shape) == 0 and a.ndim == lead:
                    a = a[..., None]
            env[name] = a
        return env

    def _geometry(self, env, lengths) -> tuple[int, dict[str, TimeAxis]]:
        """The batch size and the batch's time axes by name: an axis's length from a feed along it,
        its examples' lengths from ``lengths`` (a dict by axis name; or an array: those of the one
        axis of a plan with one, else of ``TIME``), else all of it. A feed on axes ``(a1, ..., ak)``
        is ``(T_a1, ..., T_ak, B, ...)``."""
        facts = self.facts
        if not facts.seq:   # no sequences (a feed-forward network): the batch of the first feed, no axes
            return next((a.shape[0] for a in env.values()), 1), {}
        one = None if facts.multi_axis else facts.shown_axis
        batch, found = 1, False
        for name, a in env.items():
            if name in facts.seq and (facts.axes.get(name) or (TIME,))[-1] not in facts.nested:
                batch, found = a.shape[len(facts.axes.get(name) or (TIME,))], True
                break
        if not found:
            batch = next((a.shape[0] for a in env.values()), 1)
        axes: dict[str, TimeAxis] = {}
        for name, a in env.items():
            if name not in facts.seq:
                continue
            own = facts.axes.get(name) or (facts.axis_of[name],)
            for k, axis in enumerate(own if facts.multi_axis else (facts.axis_of[name],)):
                if axis in axes:
                    continue
                if isinstance(lengths, dict):
                    given = lengths.get(axis)
                else:
                    given = lengths if axis in (TIME, one) else None
                rows = a.shape[k + 1] if axis in facts.nested else batch   # a nested axis: T_outer * B rows
                if given is None and axis not in facts.nested and self.options.prepared:
                    axes[axis] = self._whole_axis(axis, a.shape[k], rows)
                    continue
                if given is None:
                    given = np.full(rows, a.shape[k], dtype=np.int64)
                axes[axis] = TimeAxis(axis, a.shape[k], np.asarray(given, dtype=np.int64)
                                      if not isinstance(given, np.ndarray) else given, self.dtype)
                if axis in facts.nested:
                    axes[axis].rows = (rows // max(batch, 1), batch)
        return batch, axes

    def _whole_axis(self, name: str, steps: int, rows: int) -> TimeAxis:
        """The axis of a batch whose sequences all have every step, kept per (axis, T, B) with its
        mask and lengths read only (a pass's tape shows them; nothing may write them)."""
        key = (name, steps, rows)
        axis = self._whole_axes.get(key)
        if axis is None:
            if len(self._whole_axes) > 64:   # batches of many shapes: start over rather than grow
                self._whole_axes.clear()
            axis = self._whole_axes[key] = TimeAxis(name, steps, np.full(rows, steps, dtype=np.int64), self.dtype)
            axis.lengths.flags.writeable = axis.mask.flags.writeable = False
        return axis

    def _distinct_words(self, env, axes) -> None:
        """Each nested feed as its batch's distinct words (``axes.distinct_words``): its axis's rows
        become those words, and ``gather`` puts each word's reduction back at its places."""
        from .axes import distinct_words
        for v in self.facts.specs.values():
            if v.nested and v.name in env and v.axes[-1] in axes:
                axis = axes[v.axes[-1]]
                if axis.gather is not None:
                    continue
                ids, lengths, gather = distinct_words(env[v.name], axis.lengths)
                env[v.name] = ids
                new = TimeAxis(axis.name, ids.shape[0], lengths, self.dtype)
                new.rows, new.gather = axis.rows, gather
                axes[axis.name] = new

    # ---- forward -------------------------------------------------------------
    def forward(self, params: dict[str, np.ndarray], feeds: dict[str, np.ndarray], *,
                lengths: np.ndarray | None = None, train: bool = False,
                rng: np.random.Generator | None = None, carry: dict[str, np.ndarray] | None = None,
                need_loss: bool = True, single_use: bool = False, context: RunContext | None = None,
                given: dict[str, np.ndarray] | None = None) -> Tape:
        """Run the plan on a batch. ``context`` (else ``train``, ``rng`` and the executor's
        ``check_finite``): how the pass runs. ``carry``: the previous chunk's final states.
        ``given``: values an earlier pass computed for this batch (an encoder's states, when
        decoding step by step): the steps that make them, and those only they need, are not run
        again.
        ``single_use``: the tape is for one backward pass (training): values that nothing but one
        op reads may be overwritten by it (the softmax of a ``cross_entropy_logits`` is computed
        over the logits), so ``tape.values`` does not show them any more; its backward pass may
        write gradients into arrays it reads no more (lent, ``share_dead``); and a second backward
        over the tape is refused."""
        context = context or RunContext(train=train, rng=rng, check_finite=self.check_finite)
        with blas_threads(self.options.blas_threads):
            return self._forward(params, feeds, lengths, context, carry, need_loss, single_use, given)

    def _forward(self, params, feeds, lengths, context, carry, need_loss, single_use, given=None) -> Tape:
        self.passes += 1
        self.pool.new_pass()
        if self._pass_run is not None:
            self._pass_run.release_bound()   # before the loops' check: its bound inputs may be their buffers
        for fast in self.fast_loops.values():
            fast.release_outer()
        env = self.prepare(feeds)
        batch, axes = self._geometry(env, lengths)
        if self.options.distinct_words and self.facts.distinct_words:
            self._distinct_words(env, axes)
        time = axes.get(self.facts.shown_axis) or next(iter(axes.values()), None)   # what the tape shows
        key, run = (None, None) if given else self._prepared_run(env, axes, need_loss, context, single_use)
        env.update(self.consts)
        env.update(params)
        env.update(given or {})
        tape = Tape(values=env, lengths=None if time is None else time.lengths,
                    mask=None if time is None else time.mask, batch=batch, steps=0 if time is None else time.steps,
                    carry=carry or {}, context=context, axes=axes, axis_of=self.facts.axis_of,
                    ahead=self._ahead(feeds))
        if single_use:
            tape.single_use = True
            tape.fresh = set() if self.facts.spendable or self.facts.dead_in_backward else None
        if run is not None:
            prepared.forward(self, run, tape)
        else:
            run_step = self.forward_step if self.profile is None else profiled(self.profile, "forward",
                                                                                 self.forward_step)
            built = {} if key is not None else None
            unneeded = self.facts.made_before(frozenset(given), need_loss) if given else frozenset()
            for step in self.plan.steps:
                if given and (step.index if isinstance(step, LoopStep) else step.id) in unneeded:
                    continue
                if not self.facts.skipped(step, need_loss) and run_step(step, tape) and built is not None:
                    built[step.id] = tape.values[step.id].shape
            if key is not None:
                self._pass_seen = (key, built)
        for src, depth in self.facts.lookback.items():
            if self.facts.axis_of.get(src) in axes:
                k = chunks.history_key(src)
                tape.final_states[k] = chunks.next_history(tape.carry.get(k), env[src], tape.axis(src).lengths, depth)
        return tape

    def _ahead(self, feeds) -> dict[str, np.ndarray]:
        """The tokens after a stream chunk, by sequence (the feeds ``NAME.ahead``): looked for among
        the few feeds, not the plan's many sequences."""
        specs = self.facts.specs
        if all(k in specs for k in feeds):   # (only inputs and targets: nothing ahead)
            return {}
        return {n: np.asarray(feeds[chunks.ahead_key(n)]) for n in self.facts.seq if chunks.ahead_key(n) in feeds}

    def _prepared_run(self, env, axes, need_loss, context, single_use=False) -> tuple:
        """(geometry key, the prepared pass to run): none for the reference engine, a profiled or
        checked pass; made on the second pass of a geometry, so that its arrays come from the
        pool blocks the last pass's (dropped) tape used."""
        opts = self.options
        if not (opts.prepared and opts.fast_loops) or context.check_finite or self.profile is not None:
            return None, None
        spend = bool(single_use and opts.spend_inputs and self.facts.spendable)   # (prepared.build)
        key = (tuple([(n, ax.steps, ax.lengths.tobytes()) for n, ax in axes.items()]), need_loss,
               tuple([(k, a.shape, a.dtype) for k, a in env.items()]), spend)   # (lists: no generators)
        run = self._pass_run
        if run is not None and not (run.key == key and run.free()):
            run = self._pass_run = None
        if run is None and self._pass_seen is not None and self._pass_seen[0] == key:
            # (the key of the pass that saw the geometry: one tuple held for it, not two equal ones)
            run = self._pass_run = prepared.build(self, self._pass_seen[0], self._pass_seen[1], need_loss, spend)
            run.seal()
        return key, run

    def forward_step(self, step, tape: Tape) -> bool:
        """Run one step; True if it ran into an array of the pool (a prepared pass keeps those)."""
        if isinstance(step, LoopStep):
            if (self.options.fast_loops and self.facts.loop_axis[step.index] in tape.axes
                    and step.index not in self.facts.across_axes and self._runs_fast(step)):
                if self.fused is None or not self.fused.forward(self, step, tape):
                    self.program(step)   # (made when the NumPy path first runs the loop: a fused loop needs none)
                    self.fast_loops[step.index].forward(self, tape)
            else:
                reference.loop_forward(self.facts, step, tape)
            return False
        if not self.options.fast_loops:
            reference.op_forward(self.facts, step, tape)
            return False
        into = self.fast_steps.forward(self, step, tape)
        if into and tape.fresh is not None:
            tape.fresh.add(step.id)
        return into

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
        total = GradSum(grads, self.pool)
        leaves = None if wrt is None else self._leaves(wrt)
        total.leaves = leaves
        if seeds:
            for k, v in seeds.items():
                grads[k] = np.asarray(v, dtype=self.dtype)
        else:
            if self.plan.loss is None:
                raise ValueError("this network has no loss to differentiate")
            loss = tape.values[self.plan.loss]
            one = grads[self.plan.loss] = np.empty(loss.shape, loss.dtype)   # (np.ones, np.ones_like: slow wrappers)
            one.fill(1)
        need = self.facts.grad_needed(leaves)   # (the kept set: no second set of the same names as its key)
        run = tape.prepared
        if tape.fresh is not None and leaves is not None and self.options.lend_dead:
            # dead values in arrays the runtime made (the pool's, a prepared pass's) lend them to
            # their gradients (only when a value's gradient goes once used: never handed out)
            values = tape.values
            total.donors = {v: values[v] for v in self.facts.dead_in_backward & tape.fresh if v not in leaves}
        flat = self._grad_slots(tape) if leaves is not None and not seeds else None
        if flat is not None:
            total.slots, total.flat = flat.slot.copy(), flat
        if run is not None and not seeds and self.profile is None and run.grads_free():
            prepared.backward(self, run, tape, total, need, leaves)
        else:
            self._backward_steps(tape, total, need, leaves)
        if flat is not None and total.slots:   # (slots not handed out: their gradients copied in)
            self._flat_grads.finish(grads, flat.slot)
        return grads

    def _backward_steps(self, tape: Tape, total: GradSum, need, leaves) -> None:
        """The backward pass step by step, the plan's steps in reverse (``backward_step``)."""
        grads = total.grads
        run_step = self.backward_step if self.profile is None else profiled(self.profile, "backward",
                                                                              self.backward_step)
        spare = None
        if tape.fresh is not None and leaves is not None and self.options.share_dead:
            # arrays of the runtime's own that nothing reads after their step's VJPs: later gradients'
            spare = self.facts.spare_after_own_step(frozenset(leaves)) & tape.fresh
            total.spare = Spare()
        for step in reversed(self.plan.steps):
            run_step(step, tape, total, need, leaves is None)
            if leaves is not None:  # only the leaves were asked for: a value's gradient goes once used
                for v in ([b.id for b in step.body] if isinstance(step, LoopStep) else [step.id]):
                    if v not in leaves and v in grads:
                        del grads[v]
            if spare and not isinstance(step, LoopStep) and step.id in spare:
                total.spare.add(tape.values[step.id])

    def _leaves(self, wrt) -> frozenset:
        """The set of the wanted leaves, the last pass's again when they are the same (a training step
        asks for the same ones each time: not two new sets of every parameter's name held through
        its backward pass)."""
        kept = self._leaf_set
        if kept is None or len(wrt) != len(kept) or not kept.issuperset(wrt):
            kept = self._leaf_set = frozenset(wrt)
        return kept

    def _grad_slots(self, tape: Tape) -> FlatArrays | None:
        """The flat parameters' gradient arrays for this pass (views of one flat array), if its
        parameters are the flat ones (``FlatGrads.slots``)."""
        flat = self.flat
        if flat is None or not self.options.flat_params:
            return None
        fg = self._flat_grads
        if fg is None or fg.params is not flat:
            fg = self._flat_grads = FlatGrads(flat)
        return fg.slots(tape.values)

    def backward_step(self, step, tape: Tape, grads: GradSum, need, keep: bool) -> None:
        """One step's VJPs; ``keep``: a loop leaves its body values' gradients in the dict."""
        if isinstance(step, LoopStep):
            run = tape.loops.get(step.index)
            if isinstance(run, fused.FusedRun):
                fused.loop_backward(self, step, run, tape, grads, need, keep)
            elif run is not None:
                loopback.loop_backward(self, self.program(step), tape, grads, need, keep)
            else:
                reference.loop_backward(self.facts, step, tape, grads, need)
        elif self.options.fast_loops:
            self.fast_steps.backward(self, step, tape, grads, need)
        else:
            reference.op_backward(self.facts, step, tape, grads, need)
