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


def _readers(plan: Plan) -> dict[str, int]:
    """How many reads of each value the plan makes (loop bodies and initial states included)."""
    readers: dict[str, int] = {}
    for s in plan.steps:
        for b in (s.body if isinstance(s, LoopStep) else [s]):
            for src, _ in b.inputs:
                readers[src] = readers.get(src, 0) + 1
        if isinstance(s, LoopStep):
            for init in s.initials.values():
                readers[init] = readers.get(init, 0) + 1
    return readers


def _makes_own_array(op: Op) -> bool:
    """Whether op's value is written into an array of the runtime's own on the fast path (it has a
    ``forward_into``), not a view of an input's: an op without a context spends an input only in
    such an array (``prepared.build``)."""
    return not op.needs_ctx and type(op).forward_into is not Op.forward_into and not op.last_axis_view


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
        # (a value on no axis is left out: every reader asks ``axes.get(v)`` with an empty default)
        self.axes = {v: t for v, a in plan_axes(plan).items() if (t := several.runtime_axes(a, self.nested))}
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
        self.readers = _readers(plan)      # value -> how many reads of it the plan makes
        self.spendable = self._spendable()
        self.dead_in_backward = self._dead_in_backward()
        self.lent_to_loops = self._lent_to_loops()
        self._spare: dict[frozenset, frozenset] = {}
        self._needed: dict[frozenset | None, set[str]] = {}
        self._made_before: dict[tuple, frozenset] = {}

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

    def made_before(self, given: frozenset, need_loss: bool) -> frozenset:
        """Steps (op ids, loop indices) a pass given the values ``given`` need not run: the outputs
        (and the loss) are reached without them."""
        key = (given, need_loss)
        if key not in self._made_before:
            needed = set(self.plan.outputs) | ({self.plan.loss} if need_loss and self.plan.loss else set())
            self._made_before[key] = self._steps_not_needed(needed, given)
        return self._made_before[key]

    def _only_for_the_loss(self) -> frozenset:
        """Steps (op ids, loop indices) that only the loss needs: the loss functions, arithmetic
        on them, and what feeds only them."""
        if self.plan.loss is None:
            return frozenset()
        return self._steps_not_needed(set(self.plan.outputs) | set(self.lookback))

    def _steps_not_needed(self, needed: set, given: frozenset = frozenset()) -> frozenset:
        """Steps (op ids, loop indices) that make none of ``needed`` (other than values ``given``),
        directly or through what they feed: a closure from the plan's end back to its start."""
        skip = set()
        for step in reversed(self.plan.steps):
            body = step.body if isinstance(step, LoopStep) else [step]
            if not any(b.id in needed and b.id not in given for b in body):
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
        plan, readers = self.plan, self.readers
        made = {s.id: s for s in plan.steps if isinstance(s, OpStep)}
        keep = set(plan.outputs) | set(self.lookback)
        out = set()
        for s in plan.steps:
            if isinstance(s, LoopStep) or not s.inputs or not REGISTRY[s.op].spends_input:
                continue
            src, d = s.inputs[0]
            p = made.get(src)
            if (d == 0 and p is not None and readers.get(src) == 1 and src not in keep and not p.integer
                    and not vjp_reads(REGISTRY[p.op], "out")
                    and (REGISTRY[s.op].needs_ctx or _makes_own_array(REGISTRY[p.op]))):
                out.add(s.id)
        return frozenset(out)

    def _dead_in_backward(self) -> frozenset:
        """Values made by steps outside loops whose contents nothing in the backward pass reads:
        neither their own step's VJP nor any reader's, nor, through a slice (a view of them), any
        reader of that slice's; no output, no initial state, nothing a next chunk looks back at.
        In a single-use pass such a value may lend its array to its own gradient (the hoisted
        input projection of a recurrent layer, read by its loop only in the forward pass)."""
        plan = self.plan
        readers: dict[str, list] = {}
        made: dict[str, OpStep] = {}
        initials = set(self.initial_of.values())
        for s in plan.steps:
            for b in (s.body if isinstance(s, LoopStep) else [s]):
                for i, (src, d) in enumerate(b.inputs):
                    readers.setdefault(src, []).append((b, i, d, isinstance(s, OpStep)))
                if isinstance(s, OpStep):
                    made[b.id] = b
        keep = set(plan.outputs) | set(self.lookback) | initials | self.whole_batch | self.static
        verdict: dict[str, bool] = {}

        def dead(v: str) -> bool:
            if v in verdict:
                return verdict[v]
            verdict[v] = False          # (a value reaching itself is not dead: plans have no cycles anyway)
            p = made.get(v)
            ok = (p is not None and v not in keep and not p.integer and plan.loss != v
                  and not vjp_reads(REGISTRY[p.op], "out"))
            for r, i, d, outside in (readers.get(v, ()) if ok else ()):
                op = REGISTRY[r.op]
                # a reader whose forward is its own may hand out v's array or a view of it (a
                # slice, identity, dropout at evaluation): v is read wherever its output is
                may_alias = type(op).forward is not Op.forward
                # a reader that may spend v computes in v's array (an op with a context: wherever
                # it spends; one without: where the plan lets it, ``spendable``)
                spends = op.spends_input and (op.needs_ctx or r.id in self.spendable)
                ok = (not vjp_reads(op, i) and not spends
                      and (not may_alias or (outside and dead(r.id))))
                if not ok:
                    break
            verdict[v] = ok
            return ok

        found = frozenset(v for v, p in made.items() if not REGISTRY[p.op].last_axis_view and dead(v))
        dead = None   # (the recursive closure refers to itself: a cycle that would hold the tables until a collection)
        return found

    def _lent_to_loops(self) -> dict:
        """Sequences read by one loop op alone that passes them its gradient unchanged (the add of
        a hoisted projection), made of a value dead in the backward pass: the value itself or a
        slice of it at delay 0, each of whose parts is read so. src -> (that value, lo, hi): the
        loop's backward pass may write that gradient straight into ``[..., lo:hi]`` of the value's
        array (``GradSum.lend_part``): nothing else adds to it, so it is that part's gradient."""
        readers: dict[str, list] = {}
        made: dict[str, OpStep] = {}
        for s in self.plan.steps:
            for b in (s.body if isinstance(s, LoopStep) else [s]):
                for i, (src, d) in enumerate(b.inputs):
                    readers.setdefault(src, []).append((b, i, d, isinstance(s, LoopStep)))
                if isinstance(s, OpStep):
                    made[b.id] = b
            if isinstance(s, LoopStep):
                for init in s.initials.values():
                    readers.setdefault(init, []).append((None, 0, 0, False))

        def passed_in_loop(v: str) -> bool:
            rs = readers.get(v, [])
            return (len(rs) == 1 and rs[0][0] is not None and rs[0][3] and rs[0][2] == 0
                    and rs[0][1] in REGISTRY[rs[0][0].op].passes_gradient and v in self.seq)

        out = {}
        for v in self.dead_in_backward:
            width = made[v].shape[-1] if made[v].shape else None
            if not isinstance(width, int):
                continue
            if passed_in_loop(v):
                out[v] = (v, 0, width)
                continue
            parts = {}
            for r, i, d, in_loop in readers.get(v, []):
                op = None if r is None else REGISTRY[r.op]
                if op is None or in_loop or not op.last_axis_view or d != 0 or not passed_in_loop(r.id):
                    parts = None
                    break
                lo = int(r.attrs.get("start", 0))
                hi = r.attrs.get("stop")
                hi = width if hi is None else int(hi)
                if not 0 <= lo < hi <= width:
                    parts = None
                    break
                parts[r.id] = (v, lo, hi)
            if parts:
                out.update(parts)
        return out

    def spare_after_own_step(self, leaves: frozenset) -> frozenset:
        """Values made by steps outside loops whose arrays a single-use backward pass (wanting the
        gradients of ``leaves`` only) reads no more once their own step's VJPs have run: every
        reader of a value comes after its step, so its backward ran before. Not a value kept (an
        output, the loss, a leaf, a lookback's or a loop's initial state), nor one whose gradient
        may live in its array (spent, lent: ``dead_in_backward``) when its op may hand that gradient
        on as it is or as a view to its inputs."""
        done = self._spare.get(leaves)
        if done is None:
            plan = self.plan
            spent = {s.inputs[0][0] for s in plan.steps if isinstance(s, OpStep) and s.id in self.spendable}
            keep = (set(plan.outputs) | {plan.loss} | set(self.lookback) | set(self.initial_of.values())
                    | set(leaves))
            out = set()
            for s in plan.steps:
                if not isinstance(s, OpStep) or s.id in keep or s.integer:
                    continue
                op = REGISTRY[s.op]
                hands_on = (type(op).vjp_view is not Op.vjp_view or bool(op.passes_gradient)
                            or op.last_axis_view)
                if not (hands_on and (s.id in spent or s.id in self.dead_in_backward)):
                    out.add(s.id)
            done = self._spare[leaves] = frozenset(out)
        return done

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
