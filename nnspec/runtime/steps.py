"""Fast plain steps: a step outside loops run into an array from the buffer pool
(``Op.forward_into``), its VJPs written straight into the gradients' arrays (``Op.vjp_into``), a
slice's gradient added into its part of the source's, an embedding table's kept as row gradients
(``rowgrad.py``). The reference engine's ``op_forward``/``op_backward`` compute the same."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ops.registry import NO_CTX, Op
from ..plan import OpStep
from . import plainkernels
from .gradsum import GradSum, Into
from .paramblocks import stacked_view
from .reference import record, send
from .tape import Tape
from .timeaxis import array_shape, read_sequence


def overrides(op: Op, method: str) -> bool:
    """Whether op has its own ``method`` (not the generic fallback of the base class)."""
    return getattr(type(op), method) is not getattr(Op, method)


@dataclass(slots=True)   # (one per step of a plan, kept: no instance dict)
class StepInfo:
    """How to run a step outside loops, worked out once."""

    op: Op
    pooled: bool      # forward into an array from the pool
    lead: str         # leading axes: "seq" (T, B), "batch" (B,) or "static" (none)
    trail: tuple
    into: bool        # its VJP can write into the gradient's array
    joint: bool       # no per-input VJP: compute them all at once
    first_seq: bool   # its first input is a sequence: its Ctx carries the mask
    seq_axes: tuple = ()  # a sequence on several axes: their names, outermost first (else its one axis's T)
    xent: bool = False    # a float32 softmax cross-entropy the compiled kernels may compute (``fast_loss``)


class FastSteps:
    """The fast path of the steps outside loops, with what it worked out per step."""

    def __init__(self, ex):
        self.facts = ex.facts
        self.stacked_grads = ex.options.stacked_grads
        self._info: dict[str, StepInfo] = {}
        self._todo: dict[tuple, list[int]] = {}    # (step, needed set) -> inputs to differentiate
        self._stacked: dict[str, tuple] = {}        # step -> (its inputs last pass, their stacked view)
        self.fast_loss = ex.options.fast_loss and ex.dtype == np.float32
        self._xent: dict[str, object] = {}          # op name -> its compiled forward and VJP (or the op)
        # a stack of parameters (concat_rows, no delays) that one VJP reads -> the names stacked: that
        # VJP may write the stack's gradient straight into their block of the flat gradient array
        # (``GradSum.first_stacked``, where ``ExecOptions.stacked_grads``)
        self.stacks: dict[str, tuple] = {
            s.id: tuple(src for src, _ in s.inputs) for s in ex.plan.steps
            if isinstance(s, OpStep) and self.facts.op_of(s).stacks_rows and not any(d for _, d in s.inputs)
            and self.facts.readers.get(s.id) == 1}

    def stack_read(self, src: str, d: int, op) -> tuple | None:
        """The parameters stacked as ``src`` when the VJP of ``op`` reading it (at delay ``d``) may
        write its gradient straight into their flat gradients' block (``GradSum.vjp_into_stack``),
        else None."""
        if d or op.needs_ctx or not self.stacked_grads:
            return None
        return self.stacks.get(src)

    def kept_stack(self, step_id: str, out) -> tuple | None:
        """(its inputs, the view) when ``out`` is the stacked view of parameters this step made last
        (a prepared pass keeps it while they are the same arrays), else None."""
        kept = self._stacked.get(step_id)
        return kept if kept is not None and kept[1] is out else None

    def info(self, step: OpStep) -> StepInfo:
        info = self._info.get(step.id)
        if info is None:
            facts = self.facts
            op = facts.op_of(step)   # over time on several axes: folded (axes.py)
            whole_batch = step.id in facts.whole_batch
            # one number for the batch (a loss, a regulariser of parameters): a 0-d array, like a scalar parameter
            number = whole_batch or (step.id in facts.static and tuple(step.shape) == ())
            trail = () if number else array_shape(step.shape, step.integer)
            info = self._info[step.id] = StepInfo(
                op=op,
                pooled=(not op.needs_ctx and not step.integer and overrides(op, "forward_into")
                        and all(isinstance(d, int) for d in trail)),
                lead="seq" if step.seq else ("static" if step.id in facts.static or whole_batch else "batch"),
                trail=trail, into=not op.needs_ctx and overrides(op, "vjp_into"),
                joint=type(op).vjp_one is Op.vjp_one,
                first_seq=bool(step.inputs) and step.inputs[0][0] in facts.seq,
                seq_axes=tuple(facts.axes.get(step.id, ())) if facts.multi_axis and step.seq else (),
                xent=self.fast_loss and isinstance(op, Op) and plainkernels.is_softmax_xent(op))   # (not folded)
        return info

    def xent(self, op):
        """The compiled forward and VJP of a softmax cross-entropy (``plainkernels.SoftmaxXent``), else
        the op itself (numba missing, no writable directory)."""
        found = self._xent.get(op.name)
        if found is None:
            found = self._xent[op.name] = plainkernels.softmax_xent(op, np.float32) or op
        return found

    def forward(self, ex, step: OpStep, tape: Tape) -> bool:
        """Run one step; True if it ran into an array of the pool (``forward_into``)."""
        xs = [tape.values[src] if d == 0 else read_sequence(tape, src, d) for src, d in step.inputs]
        o = self.info(step)
        op = o.op
        if op.stacks_rows and ex.options.param_blocks:
            # parameters stored as blocks of one array: no copy (the view kept while its inputs
            # are the same arrays: a parameter replaced by another array makes it look again)
            kept = self._stacked.get(step.id)
            if kept is not None and len(kept[0]) == len(xs) and all(a is b for a, b in zip(kept[0], xs)):
                out = kept[1]
            else:
                out = stacked_view(xs)
                self._stacked[step.id] = (xs, out)
            if out is not None:
                record(step, op, out, xs, NO_CTX, tape)
                return False
        out = None
        into = False
        if o.pooled and ex.pool.enabled:
            # into an array from the pool: no fresh allocation (and page faults) every pass
            if o.seq_axes:
                lead = tuple(tape.axes[a].steps for a in o.seq_axes) + (tape.rows(tape.axes[o.seq_axes[-1]]),)
            else:
                lead = ((tape.axis(step.id).steps, tape.rows(tape.axis(step.id))) if o.lead == "seq"
                        else (() if o.lead == "static" else (tape.batch,)))
            out = self._spent_input(ex, step, tape, xs, lead + o.trail)
            if out is None:
                out = ex.pool.empty(lead + o.trail, ex.dtype)
            try:
                op.forward_into(xs, out, step.attrs)
                ctx = NO_CTX
                into = True
            except ValueError:  # not the shape the plan says (broadcasting): the generic way
                out = None
        if out is None:
            ctx = (tape.context.ctx(tape.axis(step.inputs[0][0]) if o.first_seq else None, empty=ex.pool.empty,
                                    spend=(tape.fresh is not None and step.id in self.facts.spendable
                                           and step.inputs[0][0] in tape.fresh))
                   if op.needs_ctx else NO_CTX)
            kernel = o.xent and ex.plain_kernels_ready() and plainkernels.pays(xs[0])
            out = (self.xent(op) if kernel else op).forward(xs, step.attrs, ctx)
        record(step, op, out, xs, ctx, tape)
        return into and not op.reads_across_chunks

    def _spent_input(self, ex, step: OpStep, tape: Tape, xs: list, shape: tuple):
        """The first input's array, for a step that may compute in it (``PlanFacts.spendable``, a
        single-use pass) when the runtime made it (``Tape.fresh``), else None. The input is then no
        value of its own array any more (out of ``fresh``: neither lent nor spare)."""
        fresh = tape.fresh
        if fresh is None or step.id not in self.facts.spendable or not ex.options.spend_inputs:
            return None
        src, x = step.inputs[0][0], xs[0]
        if src in fresh and x.shape == shape and x.dtype == ex.dtype and x.flags.c_contiguous:
            fresh.discard(src)
            return x
        return None

    def backward(self, ex, step: OpStep, tape: Tape, grads: GradSum, need) -> None:
        g = grads.grads.get(step.id)
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
                                      if src in need and src not in self.facts.integer]
        if not todo:
            return
        o = self.info(step)
        op, out = o.op, tape.values[step.id]
        if op.last_axis_view and step.inputs[0][1] == 0:  # add into the part, no zero-padded copy
            lo = int(step.attrs.get("start", 0))
            grads.add_part(step.inputs[0][0], g, lo, lo + g.shape[-1], xs[0].shape)
            return
        table = op.row_gradient_input
        if table is not None and table in todo and step.inputs[table][0] in ex.tables.shapes:
            ids = xs[op.integer_inputs[0]]          # the rows looked up
            grads.add(step.inputs[table][0], ex.tables.gradient(step.inputs[table][0], ids, g))
            todo = [i for i in todo if i != table]
            if not todo:
                return
        if op.stacks_rows and grads.slots and len(todo) == len(step.inputs) and not any(d for _, d in step.inputs):
            # stacked parameters with slots in the flat gradient array (paramblocks): their
            # gradients in one copy, each its slot
            if grads.add_stacked(tuple(src for src, _ in step.inputs), g):
                return
        if o.into:
            # straight into the gradient's (pooled) array, adding in place; a first gradient that
            # is a part of g (a concatenation's) is handed on as that view (alias_grads)
            rest = []
            views = ex.options.alias_grads
            for i in todo:
                src, d = step.inputs[i]
                if d == 0:
                    view = op.vjp_view(i, g, xs, step.attrs) if views and src not in grads.grads else None
                    if view is not None:
                        grads.add(src, view)
                        continue
                    into = Into(op, i, g, xs, out, step.attrs)
                    # an activation that may spend its input writes that input's gradient over
                    # its own gradient when only it reads that (as ``prepared`` does: d *= h > 0)
                    if not (i == 0 and op.spends_input and not op.needs_ctx and ex.options.spend_inputs
                            and self.facts.readers.get(step.id) == 1 and g.shape == xs[0].shape
                            and grads.write_over(src, step.id, into)):
                        grads.add_into(src, xs[i].shape, into)
                else:
                    rest.append(i)
            todo = rest
            if not todo:
                return
        if o.xent and plainkernels.SoftmaxXent.KEY in ctx.saved:   # (its forward pass was the kernel's)
            gs = self.xent(op).vjp(g, xs, out, step.attrs, ctx)
        elif len(todo) > 1 and o.joint:
            gs = op.vjp(g, xs, out, step.attrs, ctx)
        else:
            gs = [None] * len(step.inputs)
            for i in todo:
                gs[i] = op.vjp_one(i, g, xs, out, step.attrs, ctx)
        for i in todo:
            if gs[i] is not None:
                send(self.facts, tape, *step.inputs[i], gs[i], grads, need)
