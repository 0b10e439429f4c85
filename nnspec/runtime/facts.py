"""What the runtime works out about a plan once, for every pass: which values are sequences (and
on which time axis), ids, one number for the batch, or free of batch and time axes; which steps
only the loss needs; which values a gradient must pass through to reach the wanted leaves."""
from __future__ import annotations

from .. import chunks
from ..ops import REGISTRY
from ..ops.registry import Op
from ..plan import LoopStep, OpStep, Plan, plan_axes, plan_axis_names
from . import axes as several
from .timeaxis import TIME


def vjp_reads(op: Op, what) -> bool:
    """Whether op's VJP reads the contents of input ``what`` (an int) or of its output ("out")."""
    r = op.vjp_reads
    return what in r or (what != "out" and "inputs" in r)


class PlanFacts:
    def __init__(self, plan: Plan, dtype):
        self.plan, self.dtype = plan, dtype
        self.specs = {v.name: v for v in plan.inputs + plan.targets}
        self.seq = {v.name for v in plan.inputs + plan.targets if v.seq}
        self.integer = {v.name for v in plan.inputs + plan.targets if v.integer}
        for s in plan.steps:
            for b in (s.body if isinstance(s, LoopStep) else [s]):
                if b.seq:
                    self.seq.add(b.id)
                if b.integer:
                    self.integer.add(b.id)
        # each value's sequence axes, outermost first (nnspec/axes.py); the time axis of each
        # sequence, by name: its innermost, the one its ops over time read; the axis each loop runs
        # along. The runtime reads a value's axis from here, it never assumes there is only one.
        # a nested sequence's values are arrays on its inner axis alone (``axes.runtime_axes``)
        self.nested = frozenset(v.axes[-1] for v in plan.inputs if v.nested and v.axes)
        self.axes = {v: several.runtime_axes(a, self.nested) for v, a in plan_axes(plan).items()}
        names = plan_axis_names(plan)
        # each word of a batch once through the character loops: exact when whatever leaves a nested
        # axis leaves it through a reduction (``axes.Unnested``), and no output or loss is on one
        self.distinct_words = bool(self.nested) and self._only_reductions_leave_nested(plan)
        self.multi_axis = len(names) > 1
        alone = next(iter(names)) if len(names) == 1 else TIME
        self.axis_of = {v: (self.axes.get(v) or (alone,))[-1] for v in self.seq}
        self.loop_axis = {s.index: s.axis if self.multi_axis else
                          next((self.axis_of[b.id] for b in s.body if b.id in self.axis_of), alone)
                          for s in plan.steps if isinstance(s, LoopStep)}
        # the axis the tape shows (``Tape.lengths``, ``mask``): the first output's innermost
        out = plan.outputs[0] if plan.outputs else None
        self.shown_axis = self.axis_of.get(out, alone) if self.multi_axis else alone
        # [several axes] loops that read values on other axes whole, or whose body ops work over
        # axes of their own within a step: index -> (those values, body op -> (its inner axis, how
        # many)); they run on the reference engine
        self.across_axes = {}
        if self.multi_axis:
            for s in plan.steps:
                if isinstance(s, LoopStep):
                    whole, inner = several.loop_reads(s, self.axes)
                    if whole or inner:
                        self.across_axes[s.index] = (whole, inner)
        # values with no batch or time axes (parameters, constants and what is made of them alone)
        self.static = set(plan.consts) | {p.name for p in plan.params}
        # each loop state with an ``initial``: the value it names
        self.initial_of = {s: init for step in plan.steps if isinstance(step, LoopStep)
                           for s, init in step.initials.items()}
        # what a chunk keeps for the next one to read (streams in chunks have one axis: with several,
        # nothing carries to a next chunk)
        self.lookback = {} if self.multi_axis else chunks.lookback_depths(plan)
        # steps that are one number for the whole batch: losses and arithmetic on them (a 0-d array)
        self.whole_batch: set[str] = set()
        for s in plan.steps:
            if isinstance(s, OpStep) and (REGISTRY[s.op].scalar_output
                                          or any(src in self.whole_batch for src, _ in s.inputs)):
                self.whole_batch.add(s.id)
            elif isinstance(s, OpStep) and s.inputs and all(src in self.static for src, _ in s.inputs):
                self.static.add(s.id)
        self.loss_only = self._only_for_the_loss()
        self.spendable = self._spendable()
        self._needed: dict[frozenset | None, set[str]] = {}

    def op_of(self, step: OpStep) -> Op:
        """The op a step outside loops runs: over time on a first operand with several axes, folded
        so that it works over the innermost (``axes.FoldedOp``)."""
        op = REGISTRY[step.op]
        if self.multi_axis and step.inputs:
            axes = self.axes.get(step.inputs[0][0], ())
            return several.unnested(several.folded(op, axes), axes, self.nested)
        return op

    def _only_reductions_leave_nested(self, plan: Plan) -> bool:
        def on_nested(v):
            a = self.axes.get(v, ())
            return bool(a) and a[-1] in self.nested
        if any(on_nested(o) for o in plan.outputs) or (plan.loss is not None and on_nested(plan.loss)):
            return False
        for s in plan.steps:
            for b in (s.body if isinstance(s, LoopStep) else [s]):
                if on_nested(b.id) or not any(on_nested(src) for src, _ in b.inputs):
                    continue
                if isinstance(s, LoopStep) or not REGISTRY[b.op].reduces_time or not on_nested(b.inputs[0][0]):
                    return False
        return True

    def skipped(self, step, need_loss: bool) -> bool:
        """Whether a pass without targets (``need_loss=False``) skips ``step``."""
        return not need_loss and (step.index if isinstance(step, LoopStep) else step.id) in self.loss_only

    def _only_for_the_loss(self) -> frozenset:
        """Steps (op ids, loop indices) that only the loss needs: the loss functions, arithmetic
        on them, and what feeds only them."""
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
                    and not vjp_reads(REGISTRY[p.op], "out")):
                out.add(s.id)
        return frozenset(out)

    def grad_needed(self, wrt) -> set[str]:
        """Values through which a gradient reaches one of the ``wrt`` leaves (None: every
        parameter and real input)."""
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
