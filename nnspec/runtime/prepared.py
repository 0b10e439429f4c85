"""Prepared passes: the steps outside loops kept per batch geometry, as a flat list.

On the second pass of a geometry (shapes of the feeds, lengths, whether the loss is computed)
the executor makes a flat list of the steps that wrote into an array of their own
(``Op.forward_into``), each with its output array (from the pool, then held by the run) and its
list of inputs made once: an input made by another such step is fixed in the list, the others
(parameters, feeds, loop outputs) are bound from the tape's values when the step runs. Loops and
the other steps go through the executor's general dispatch in between. The backward counterpart,
per set of wanted leaves, sends each VJP straight into a gradient array of the run's own when
it is the first gradient to reach its value. A run is used again only when the last pass's tape
is gone and no gradient or view still holds one of its arrays (``reuse.Reuse``).
"""
from __future__ import annotations

import weakref
from operator import is_
from dataclasses import dataclass, field

import numpy as np

from ..ops import REGISTRY
from ..ops.registry import NO_CTX
from ..plan import LoopStep
from . import plainkernels
from .gradsum import GradSum, Into
from .reuse import Reuse, Spare
from .tape import Tape


@dataclass(eq=False, slots=True)   # (kept per batch geometry: no instance dict)
class PassRun:
    """The steps of a pass outside loops for one batch geometry, as a flat list.

    ``fwd`` holds, in plan order, ``("step", step)`` for what goes through the general dispatch,
    and ``(id, forward_into, inputs, binds, out, attrs, record)`` for a step writing into an
    array of the run's own (``binds`` are filled from the tape's values when it runs). ``bwd``
    (per set of wanted leaves) is its backward counterpart."""

    key: tuple
    fwd: list = field(default_factory=list)
    by_id: dict = field(default_factory=dict)    # step id -> index in fwd
    outs: list = field(default_factory=list)     # the run's own arrays
    bound: list = field(default_factory=list)    # (inputs list, positions bound at every pass)
    bwd: dict = field(default_factory=dict)      # (need, leaves) key -> list of backward entries
    tape: object = None
    reuse: Reuse = field(default_factory=Reuse)  # its outputs, then its gradient arrays
    spent: set = field(default_factory=set)      # values whose array the step reading them computes into
    # compiled kernels (``ExecOptions.plain_kernels``): whether its steps have been given theirs
    # (``use_kernels``), and the VJPs (``vjp_into``) by step id of those that have one
    kernels: bool = False
    vjps: dict = field(default_factory=dict)

    def seal(self) -> None:
        """Track the run's arrays (once the builder's local names are gone)."""
        self.reuse.track(list(self.outs))

    def release_bound(self) -> None:
        """Once the tape of its last pass is gone: drop that pass's inputs (parameters, feeds,
        loop outputs), so that they do not look held to the loops' and the pool's checks."""
        if self.tape is not None and self.tape() is None:
            for xs, pos in self.bound:
                for i in pos:
                    xs[i] = None

    def free(self) -> bool:
        return (self.tape is None or self.tape() is None) and self.reuse.free()

    def grads_free(self) -> bool:
        """Whether nobody holds the gradient arrays of an earlier backward pass (a second
        backward over one tape must not write into the first one's results)."""
        return self.reuse.free(start=len(self.outs))


def build(ex, key: tuple, built: dict, need_loss: bool, spend: bool = False) -> PassRun:
    """A flat list of the forward pass's steps for this batch geometry: the steps that ran
    into an array of their own (``built``: their shapes) get one owned by the run, with their
    inputs' list made once; loops and the other steps go through the general dispatch.
    ``spend`` (single-use passes): a step that may spend its input (``PlanFacts.spendable``: an
    activation whose input nothing else reads) computes its output in that input's array."""
    run = PassRun(key=key)
    made: dict[str, np.ndarray] = {}
    spendable = ex.facts.spendable if spend else frozenset()
    stacks = ex.options.param_blocks and ex.options.fast_loops and ex.options.stacked_grads
    for step in ex.plan.steps:
        if ex.facts.skipped(step, need_loss):
            continue
        if (not isinstance(step, LoopStep) and stacks and REGISTRY[step.op].stacks_rows
                and not any(d for _, d in step.inputs)):
            # parameters stacked as a view of their block (``FastSteps.forward``): that view and its
            # record kept by the entry while the parameters are the same arrays
            run.fwd.append((step.id, tuple(src for src, _ in step.inputs), step, [None]))
            continue
        shape = None if isinstance(step, LoopStep) else built.get(step.id)
        if shape is None or REGISTRY[step.op].reads_across_chunks or any(d for _, d in step.inputs):
            run.fwd.append(("step", step))
            continue
        spent = made.get(step.inputs[0][0]) if step.id in spendable else None
        if spent is not None and spent.shape == tuple(shape) and spent.dtype == ex.dtype:
            out = spent                        # (an array of the run's already)
            run.spent.add(step.inputs[0][0])
        else:
            out = ex.pool.empty(shape, ex.dtype)   # held by the run: the pool leaves it alone
        xs: list = [None] * len(step.inputs)
        binds = []
        for i, (src, _) in enumerate(step.inputs):
            if src in made:
                xs[i] = made[src]
            else:
                binds.append((i, src))
        made[step.id] = out
        if out is not spent:
            run.outs.append(out)
        run.bound.append((xs, [i for i, _ in binds]))
        run.fwd.append((step.id, REGISTRY[step.op].forward_into, xs, tuple(binds), out, step.attrs, (xs, NO_CTX)))
        run.by_id[step.id] = len(run.fwd) - 1
    return run


def use_kernels(ex, run: PassRun) -> None:
    """Once the executor makes compiled kernels (``Executor.plain_kernels_after``): each float32
    one-input elementwise step of the run (an activation) computes by one kernel call each way
    (``plainkernels.Elementwise``), its backward entries too."""
    run.kernels = True
    if not ex.options.plain_kernels:
        return
    for step in ex.plan.steps:
        at = None if isinstance(step, LoopStep) else run.by_id.get(step.id)
        if at is None:
            continue
        sid, _, xs, binds, out, attrs, rec = run.fwd[at]
        kernel = (plainkernels.elementwise_kernel(REGISTRY[step.op], attrs, out.shape[-1], ex.dtype)
                  if out.ndim and plainkernels.pays(out) else None)
        if kernel is not None:
            run.fwd[at] = (sid, kernel.forward_into, xs, binds, out, attrs, rec)
            run.vjps[sid] = kernel.vjp_into
    for entries in run.bwd.values():
        for k, e in enumerate(entries):
            if len(e) == 8 and e[0] in run.vjps:
                entries[k] = (e[0], run.vjps[e[0]]) + e[2:]


def forward(ex, run: PassRun, tape: Tape) -> None:
    if not run.kernels and ex.plain_kernels_ready():
        use_kernels(ex, run)
    env, records, fresh = tape.values, tape.records, tape.fresh
    run.tape = weakref.ref(tape)
    tape.prepared = run
    check = tape.context.check_finite
    for e in run.fwd:
        n = len(e)
        if n == 2:
            ex.forward_step(e[1], tape)
            continue
        if n == 4:   # a stack of parameters: the kept view while they are the same arrays
            sid, srcs, step, kept = e
            k = kept[0]
            if k is not None and not check and all(map(is_, map(env.__getitem__, srcs), k[0])):
                env[sid] = k[1]
                records[sid] = k[2]
            else:
                ex.forward_step(step, tape)
                made = ex.fast_steps.kept_stack(sid, env[sid])
                kept[0] = None if made is None else (made[0], made[1], records[sid])
            continue
        sid, fn, xs, binds, out, attrs, rec = e
        for i, src in binds:
            xs[i] = env[src]
        fn(xs, out, attrs)
        env[sid] = out
        records[sid] = rec
        if fresh is not None:
            fresh.add(sid)
    if fresh is not None and run.spent:
        fresh.difference_update(run.spent)   # (their arrays hold their readers' values: lent or spare as those)


def backward(ex, run: PassRun, tape: Tape, grads: GradSum, need, leaves) -> None:
    """The backward pass of a prepared forward pass: its own steps' VJPs go straight into
    arrays of the run's own when they are the first gradient of their value."""
    share = tape.single_use and leaves is not None and ex.options.share_dead
    key = (id(need), None if leaves is None else frozenset(leaves), share)
    entries = run.bwd.get(key)
    if entries is None:
        before = run.reuse.counts()
        entries, dests = _build_backward(ex, run, need, leaves, share)
        run.bwd[key] = entries
        run.reuse.absorb(before)
        run.reuse.track(dests)
        del dests
    keep = leaves is None
    owned, values = grads.owned, grads.grads
    for e in entries:
        if len(e) == 3:
            step, dels, sid = e
            if sid is None or sid in values:   # (a plain step without a gradient has nothing to do)
                ex.backward_step(step, tape, grads, need, keep)
        else:
            sid, fn, op, xs, out, attrs, todo, dels = e
            g = values.get(sid)
            if g is not None:
                for i, src, dest in todo:
                    if dest is None:        # a part of g (a concatenation's): handed on as a view
                        grads.add(src, op.vjp_view(i, g, xs, attrs))
                    elif src in values:
                        grads.add_into(src, dest.shape, Into(op, i, g, xs, out, attrs))
                    else:
                        if type(dest) is Stacked and grads.vjp_into_stack(dest.keys, src, op, i, g, xs, out, attrs):
                            continue     # (into the stacked parameters' block of the flat gradients: its parts)
                        if isinstance(dest, Fresh):   # a parameter's slot of the flat gradients, else a new array
                            dest = grads._fresh(src, dest.shape, g.dtype, zero=False)
                        fn(i, g, xs, out, attrs, dest, False)
                        values[src] = dest
                        owned.add(src)
        for v in dels:
            if v in values:
                del values[v]


class Fresh:
    """A backward entry's destination made at every pass (``GradSum._fresh``: a parameter's slot of
    the flat gradient array, else a new array)."""

    __slots__ = ("shape",)

    def __init__(self, shape: tuple):
        self.shape = tuple(shape)


class Stacked(Fresh):
    """A backward entry's destination for the gradient of a stack of parameters that only it reads:
    their block of the flat gradient array (``GradSum.first_stacked``), else a new array."""

    __slots__ = ("keys",)

    def __init__(self, shape: tuple, keys: tuple):
        super().__init__(shape)
        self.keys = keys


def _build_backward(ex, run: PassRun, need, leaves, share: bool = False) -> tuple[list, list]:
    """The backward entries and the gradient arrays they write (``dests``). ``share`` (a single-use
    pass, only the leaves' gradients kept): an array of the run's own that nothing reads after its
    own step's backward entry (``Spare``) holds the gradients written after it."""
    entries, dests = [], []
    spare = Spare() if share else None
    spare_after = ex.facts.spare_after_own_step(frozenset(leaves or ()))
    # a value nothing in the backward pass reads lends its array of the run to its own gradient
    # (as ``GradSum.donors`` does on the general path): no array from the pool for it
    lend = ex.facts.dead_in_backward if share and ex.options.lend_dead else frozenset()
    # an activation that may spend its input (relu: ``Op.spends_input``) writes its input's gradient
    # over its own gradient when that is an array of the run's that only it reads: the gradient of
    # a value with one reader, written there by that reader's entry (``first``) — as a hand-written
    # step does ``d *= h > 0``
    readers = ex.facts.readers if share and ex.options.spend_inputs else {}
    first: dict[str, np.ndarray] = {}
    flat_leaves = (frozenset(ex.flat.names) & leaves if ex.flat is not None and ex.options.flat_params
                   and leaves is not None else None)
    for step in reversed(ex.plan.steps):
        ids = [b.id for b in step.body] if isinstance(step, LoopStep) else [step.id]
        dels = () if leaves is None else tuple(v for v in ids if v not in leaves)
        at = None if isinstance(step, LoopStep) else run.by_id.get(step.id)
        if (at is None or REGISTRY[step.op].last_axis_view or REGISTRY[step.op].row_gradient_input is not None
                or not ex.fast_steps.info(step).into):
            entries.append((step, dels, None if isinstance(step, LoopStep) else step.id))
            continue
        sid, _, xs, _, out, attrs, _ = run.fwd[at]
        todo = []
        op = REGISTRY[step.op]
        for i, (src, d) in enumerate(step.inputs):
            if src in need and src not in ex.facts.integer:
                if ex.options.alias_grads and op.vjp_view(i, out, xs, attrs) is not None:
                    todo.append((i, src, None))     # (its output has g's shape: a view of it will do)
                    continue
                keys = ex.fast_steps.stack_read(src, d, op) if flat_leaves else None
                if keys is not None and src not in leaves and all(k in flat_leaves for k in keys):
                    todo.append((i, src, Stacked(xs[i].shape, keys)))   # (written into the flat gradients)
                    continue
                own = run.by_id.get(src) if src in lend and src not in leaves else None
                if own is not None and run.fwd[own][4].shape == xs[i].shape:
                    todo.append((i, src, run.fwd[own][4]))   # (tracked already, as an output of the run)
                    continue
                g = first.get(sid) if op.spends_input and not op.needs_ctx and i == 0 else None
                if g is not None and g.shape == xs[i].shape and sid not in leaves:
                    todo.append((i, src, g))                  # (tracked already, as the reader's)
                    continue
                if flat_leaves and src in flat_leaves:
                    todo.append((i, src, Fresh(xs[i].shape)))   # (its slot in the flat gradients: GradSum.slots)
                    continue
                dest = spare.take(xs[i].shape, ex.dtype) if spare is not None else None
                if dest is None:
                    dest = ex.pool.empty(xs[i].shape, ex.dtype)
                todo.append((i, src, dest))
                dests.append(dest)
                if readers.get(src) == 1:
                    first[src] = dest
        entries.append((sid, run.vjps.get(sid, op.vjp_into), op, xs, out, attrs, tuple(todo), dels))
        if spare is not None and sid in spare_after and sid not in run.spent:
            spare.add(out)     # (its array read no more: the later gradients'; a spent value's is its reader's)
    return entries, dests

