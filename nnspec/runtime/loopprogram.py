"""A loop's program for the fast path, worked out once per loop: which body ops run by their
in-place kernels, which are views (a ``slice`` of a body value), which values live for one step
only (scratch), and for the backward pass which gradients share a buffer, which are deferred to
one whole-sequence VJP after the loop, and what runs at every step (``BackwardPlan``)."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache

from ..ops import REGISTRY
from ..ops.registry import Op, ScalarForm
from ..plan import LoopStep, OpStep
from .facts import PlanFacts, vjp_reads
from .tape import ExecOptions
from .timeaxis import array_shape


@dataclass
class BodyOp:
    step: OpStep
    op: Op
    fast: bool
    trail: tuple
    view_of: tuple | None = None   # (source, start, stop): a slice that is a view of its source
    id: str = ""

    def __post_init__(self):
        self.id = self.step.id


@dataclass
class Action:
    op_id: str
    pos: int
    kind: str            # "vjp" | "local" | "generic" | "outer_step"
    accumulate: bool = True


@dataclass
class BackwardPlan:
    alias: dict          # value -> value whose gradient buffer it shares
    views: dict          # value -> (source, start, stop): gradient buffer is a view
    region: dict         # value -> the value that owns its gradient buffer
    scratch: set         # regions held for one step only
    fill: list           # scratch regions to zero at the start of every step
    actions: list        # per-step work, in backward order
    deferred: list       # (op id, input position): one whole-sequence VJP after the loop
    local: set           # op ids whose derivative is precomputed
    ring: dict = None    # region -> slots: its gradient lives in a ring of that many steps
    # regions every step's actions write whole, adding to nothing: no zeroing before a pass
    overwritten: frozenset = frozenset()




def runs_fast(loop: LoopStep) -> bool:
    """Whether a loop runs on a fast path (fused or ``LoopProgram``'s): every body value's trailing
    shape is known in numbers (else the reference engine runs it)."""
    return all(isinstance(d, int) for s in loop.body for d in array_shape(s.shape, s.integer))


class LoopProgram:
    """What a loop body needs at run time, worked out once per loop."""

    def __init__(self, facts: PlanFacts, options: ExecOptions, loop: LoopStep):
        # no reference to the executor: a cycle would keep the cached run's buffers alive
        self.loop, self.options, self.integer = loop, options, facts.integer
        opts = options
        self.steps = {b.id: b for b in loop.body}
        self.ids = set(self.steps)
        self.body: list[BodyOp] = []
        self.ok = runs_fast(loop)
        for s in loop.body:
            op = REGISTRY[s.op]
            trail = array_shape(s.shape, s.integer)
            view_of = None
            if op.last_axis_view:
                src, d = s.inputs[0]
                if d == 0 and (src in self.ids or src in facts.seq):
                    lo = int(s.attrs.get("start", 0))
                    width = trail[-1] if trail else None
                    view_of = (src, lo, lo + width) if isinstance(width, int) else None
            self.body.append(BodyOp(s, op, not op.needs_ctx, trail, view_of))
        self.by_id = {b.id: b for b in self.body}
        self.delayed = []
        for s in loop.body:
            for src, d in s.inputs:
                if d != 0 and (src in self.ids or src in facts.seq) and (src, d) not in self.delayed:
                    self.delayed.append((src, d))
        self._backward: dict = {}
        # readers of each body value inside the body: (op id, position, delay)
        self.readers: dict[str, list] = {v: [] for v in self.ids}
        for s in loop.body:
            for pos, (src, d) in enumerate(s.inputs):
                if src in self.ids:
                    self.readers[src].append((s.id, pos, d))
        # sequences whose gradient a single-use backward pass may compute in a dead value's array
        self.lendable = frozenset(facts.lent_to_loops) if opts.lend_dead else frozenset()
        self.leaves = frozenset(facts.plan.consts) | {p.name for p in facts.plan.params}   # weights, constants
        self.recomputed = frozenset()    # scratch values made again in the backward pass (``_recomputed``)
        self.scratch = self._scratch_values(facts, loop) if opts.scratch else frozenset()
        # runs with ops that need their context (dropout) are built every pass
        self.reusable = opts.reuse_buffers and all(b.fast for b in self.body)
        # overflow warnings are silenced while the steps run (see Op.quiet_overflow)
        self.quiet_overflow = any(b.op.quiet_overflow for b in self.body)

    def _scratch_values(self, facts: PlanFacts, loop: LoopStep) -> frozenset:
        """Body values needed only within their own step: nothing outside the loop reads them,
        they are no state, and no VJP reads them (an add's does not; a mul's reads both inputs)."""
        plan = facts.plan
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
            need = (v in seen_outside or not b.fast or b.step.integer or vjp_reads(b.op, "out")
                    or (b.view_of is not None and b.view_of[0] not in self.ids))
            for rid, pos, d in self.readers[v]:
                r = self.by_id[rid]
                if d != 0 or not r.fast or vjp_reads(r.op, pos) or (r.view_of is not None and needs[rid]):
                    need = True
            needs[v] = need
        out = set()
        for b in self.body:   # a view is scratch exactly when its source is
            if b.view_of is not None and b.view_of[0] in self.ids:
                if b.view_of[0] in out:
                    out.add(b.id)
            elif not needs[b.id]:
                out.add(b.id)
        if self.options.recompute:
            self.recomputed = self._recomputed(facts, out, seen_outside)
        return frozenset(out | self.recomputed)

    def _recomputed(self, facts: PlanFacts, scratch: set, seen_outside: set) -> frozenset:
        """Values kept only because a backward step reads them, that one exactly rounded operation
        (``one_rounding``) makes from values the loop keeps anyway, weights or constants: held for one step
        instead, and made again at each step of the backward pass, before its actions (the same
        numbers: one rounding of the same operands). Their readers' VJPs must read them step by step:
        no derivative computed for the whole sequence, no VJP after the loop."""
        out: set = set()
        for b in self.body:
            v = b.id
            if (v in scratch or v in seen_outside or not b.fast or b.step.integer or b.view_of is not None
                    or vjp_reads(b.op, "out") or not one_rounding(b.op)):
                continue
            operands_kept = all(   # (a value computed outside the loop may lend its array: not those)
                (src not in scratch and src not in out) if src in self.ids else src in self.leaves
                for src, d in b.step.inputs)
            if not operands_kept or not self.readers[v]:
                continue
            readers_step_by_step = True
            for rid, pos, d in self.readers[v]:
                r = self.by_id[rid]
                if d != 0 or not r.fast or r.view_of is not None:
                    readers_step_by_step = False
                elif vjp_reads(r.op, pos) and (r.op.local_grad is not None or
                                               any(src not in self.ids for src, _ in r.step.inputs)):
                    readers_step_by_step = False
            if readers_step_by_step:
                out.add(v)
        return frozenset(out)

    def backward_plan(self, pre: frozenset, need: set, keep: bool, fwd_scratch: frozenset) -> BackwardPlan:
        """The backward pass for gradients that reach the body from after the loop (``pre``),
        towards the values in ``need``; ``keep``: the body's gradients are kept for the caller."""
        key = (pre, id(need), keep, fwd_scratch)
        if key in self._backward:
            return self._backward[key]
        count = {v: len(r) + (1 if v in pre else 0) for v, r in self.readers.items()}
        alias, views, aliased_edges, into_views = self._shared_gradients(count)

        def root(v):
            while True:
                if v in alias:
                    v = alias[v]
                elif v in views:
                    v = views[v][0]
                else:
                    return v

        def writable(v: str) -> bool:
            """Whether an edge may write (not add) its gradient: the only contribution to that region."""
            if v in into_views:    # its gradient is the slice's, and the slice's only contribution
                return count[v] == 1 and writable(alias[v])
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

        actions, deferred, local = self._actions(need, views, aliased_edges, writable)
        region = {b.id: root(b.id) for b in self.body if not b.step.integer}
        scratch, ring = self._one_step_regions(region, pre, keep, deferred)
        overwritten = self._overwritten_every_step(region, views, alias, actions, pre)
        fill = sorted(r for r in scratch if r not in overwritten)
        plan = BackwardPlan(alias, views, region, scratch, fill, actions, deferred, local, ring, overwritten)
        self._backward[key] = plan
        return plan

    def _shared_gradients(self, count: dict) -> tuple[dict, dict, set, set]:
        """(alias, views, aliased edges, into views): a value whose gradient is its only reader's (an
        ``add``'s operand) shares that reader's buffer; a slice's gradient is a view of its source's;
        and (``grads_in_views``) a value whose op passes its gradient unchanged to a slice read by it
        alone shares that slice's gradient (the values aliased so: ``into views``)."""
        alias: dict[str, str] = {}
        views: dict[str, tuple] = {}
        aliased_edges, into_views = set(), set()
        if not self.options.alias_grads:
            return alias, views, aliased_edges, into_views
        for b in self.body:
            if b.view_of is not None and b.view_of[0] in self.ids:
                views[b.id] = b.view_of
        for b in self.body:
            if not b.fast:
                continue
            for pos in b.op.passes_gradient:
                src, d = b.step.inputs[pos]
                if (d != 0 or src not in self.ids or count[src] != 1 or src in alias
                        or self.steps[src].integer or self.by_id[src].trail != b.trail):
                    continue
                if src not in views:
                    alias[src] = b.id
                    aliased_edges.add((b.id, pos))
                elif (self.options.grads_in_views and b.id not in alias and b.id not in views
                        and not b.step.integer and not any(s in self.lendable for s, _ in b.step.inputs)):
                    # the other way round: the operand is a slice, whose gradient is a part of its
                    # source's, and it is b's alone: b's gradient is kept there (``into_views``);
                    # not when b's own would be a lent array's part (a hoisted projection's: no
                    # buffer at all, ``loopback._lent_regions``)
                    alias[b.id] = src
                    into_views.add(b.id)
                    aliased_edges.add((b.id, pos))
        return alias, views, aliased_edges, into_views

    def _actions(self, need: set, views: dict, aliased_edges: set, writable) -> tuple[list, list, set]:
        """(per-step actions in backward order, edges deferred to one VJP after the loop, ops whose
        derivative is computed for the whole sequence first)."""
        opts = self.options
        actions, deferred, local = [], [], set()
        for b in reversed(self.body):
            if b.step.integer or b.id not in need:
                continue
            if b.view_of is not None and b.id in views:
                continue  # its gradient already sits in its source's buffer
            if not b.fast:
                actions.append(Action(b.id, -1, "generic"))
                continue
            for pos, (src, d) in enumerate(b.step.inputs):
                if src in self.integer or src not in need or (b.id, pos) in aliased_edges:
                    continue
                if src not in self.ids:
                    if opts.defer_grads:
                        deferred.append((b.id, pos))
                    else:
                        actions.append(Action(b.id, pos, "outer_step"))
                    continue
                use_local = opts.local_grads and b.op.local_grad is not None
                if use_local:
                    local.add(b.id)
                acc = not (d == 0 and writable(src))
                actions.append(Action(b.id, pos, "local" if use_local else "vjp", acc))
        return actions, deferred, local

    def _one_step_regions(self, region: dict, pre: frozenset, keep: bool, deferred: list) -> tuple[set, dict]:
        """(gradient regions that live for one step only: nothing reads them after their step;
        regions kept in a ring of steps: region -> slots).

        A region read at another step (a state's, ``c[t-1]``), or reached from after the loop,
        is needed for max delay + 1 steps only: step t's gradient is complete once the step that
        reads it has sent its part, and is read at step t alone; from after the loop it gets
        step t's incoming gradient when its slot is taken (``ring_grads``). Not when something
        reads it whole after the loop (a deferred VJP, ``keep``), or an op needing its context
        sends to other steps through the whole array."""
        whole = set()
        if keep or not self.options.scratch:
            whole = set(region.values())
        for op_id, _ in deferred:
            whole.add(region[op_id])
        delay: dict[str, int] = {}      # region -> the farthest step its readers send to
        backwards = False               # a read ahead of the loop's direction (not a state's)
        for b in self.body:  # a delayed read sends gradient to another step
            for src, d in b.step.inputs:
                if d != 0 and src in region:
                    delay[region[src]] = max(delay.get(region[src], 0), abs(d))
                    backwards |= d * self.loop.direction > 0
        carried = {region[v] for v in pre | set(self.loop.states) if v in region}
        ring = {}
        if self.options.ring_grads and self.options.scratch and not backwards and all(b.fast for b in self.body):
            ring = {r: delay.get(r, 0) + 1 for r in (set(delay) | carried) - whole}
        whole |= (set(delay) | carried) - set(ring)
        return {r for r in set(region.values()) if r not in whole and r not in ring}, ring

    def _overwritten_every_step(self, region: dict, views: dict, alias: dict, actions: list,
                                pre: frozenset) -> frozenset:
        """The regions whose writers at every step cover them exactly and add to nothing (writes at
        the step itself, each over its own span): zeroing them, at every step for a one-step region or
        before a pass for the others (``LoopBackward.bind``, ``reset``), would be overwritten unread."""
        writes: dict[str, list] = {}
        added = {region[v] for v in pre if v in region}     # (the gradient from after the loop is added in)
        for a in actions:
            if a.kind in ("vjp", "local"):
                src, d = self.by_id[a.op_id].step.inputs[a.pos]
                if src in region:
                    writes.setdefault(region[src], []).append((src, a.accumulate or d != 0))
            elif a.kind == "generic":
                added |= {region[src] for src, _ in self.by_id[a.op_id].step.inputs if src in region}
        out = set()
        for r, ws in writes.items():
            width = self.by_id[r].trail[-1] if self.by_id[r].trail else None
            spans = sorted(_span(v, views, alias, width) for v, _ in ws)
            if (r not in added and width is not None and not any(accum for _, accum in ws)
                    and spans[0][0] == 0 and spans[-1][1] == width
                    and all(x[1] == y[0] for x, y in zip(spans, spans[1:]))):
                out.add(r)
        return frozenset(out)


def _span(v: str, views: dict, alias: dict, width) -> tuple:
    """The part (start, stop) of its region's last axis that a value's gradient takes."""
    while v in alias:
        v = alias[v]
    return views[v][1:] if v in views else (0, width)


@lru_cache(maxsize=None)
def one_rounding(op: Op) -> bool:
    """Whether an elementwise op's value is one exactly rounded operation (``+``, ``-``, ``*``) of its
    two inputs (its scalar form ``{x0} - {x1}`` and the like): made again from the same operands, by
    NumPy or a compiled kernel, it is the same number."""
    if not (op.elementwise and isinstance(op.fused, ScalarForm)):
        return False
    try:
        tree = ast.parse(op.fused.value.format(x0="x0", x1="x1"), mode="eval").body
    except (KeyError, IndexError, ValueError, SyntaxError):
        return False
    return (isinstance(tree, ast.BinOp) and isinstance(tree.op, (ast.Add, ast.Sub, ast.Mult))
            and [getattr(n, "id", None) for n in (tree.left, tree.right)] == ["x0", "x1"])
