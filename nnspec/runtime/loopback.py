"""Fast loops, backward: backpropagation through time over a kept ``LoopRun``.

Only gradients that flow to values *inside* the loop are computed step by step; everything that
leaves the loop — a weight's gradient, a bias's, an input projection's — is one whole-sequence
VJP after the loop (``defer_grads``). Derivatives of sigmoid, tanh and the like are computed for
the whole sequence at once (``local_grads``), and the gradient of an ``add`` or a ``slice``
shares its buffer with its output's instead of being copied (``alias_grads``). A gradient sent
to another step goes through ``TimeAxis.send_to_step_into``, as the reference engine's does.
In a single-use pass, the gradient an op passes unchanged to a hoisted input projection is
computed straight into the projection's own array, which nothing in the backward pass reads
(``lend_dead``, ``GradSum.lend_part``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ops.linalg import unblocked
from ..ops.registry import NO_CTX, product_into, unbroadcast
from ..plan import LoopStep
from . import segments
from .blas import blas_threads
from .gradsum import GradSum
from .loopprogram import BackwardPlan, BodyOp, LoopProgram
from .loops import LoopRun
from .reference import send
from .reuse import distinct
from .tape import Tape


@dataclass(eq=False)
class LoopBackward:
    """A run's backward pass: gradient buffers and per-step actions, reused with the run."""

    gbuf: dict                  # value -> its gradient's array (views and aliases included)
    owners: list                # the arrays gbuf's entries are views of
    zeroed: list                # those zeroed before a pass (not the ones every step writes whole)
    ginit: dict                 # state -> gradient of its initial value
    local: dict                 # op id -> (array of D for all steps, D's per-step views)
    actions: list
    outer_step: dict
    tmps: list
    key: tuple = ()
    glists: dict = None         # value -> its gradient's per-step views (lists the actions read)
    lent: dict = None           # region -> the values whose gradient sits in it (a lent array's)
    plan: BackwardPlan = None
    segments: list = ()         # the fused elementwise segments among the actions (segments.py)
    prepared: list = ()         # the kernels with before_pass / after_pass (segments, products by weight blocks)
    # ring regions' gradients from after the loop, this pass: region -> [(member's ring, (T, B, ...))]
    incoming: dict = None

    def bind(self, region: str, arr: np.ndarray) -> None:
        """This pass's gradient array of a region that lives in a lent array (zeroed here, unless every
        step writes it whole: ``BackwardPlan.overwritten``)."""
        if region not in self.plan.overwritten:
            arr.fill(0)
        self.gbuf[region] = arr
        _derive(self.gbuf, self.plan, self.lent[region])
        for v in self.lent[region]:
            self.glists[v][:] = list(self.gbuf[v])

    def unbind(self) -> None:
        """Drop the lent arrays once the pass is over (they are the gradient dict's now)."""
        for members in self.lent.values():
            for v in members:
                self.gbuf[v] = None
                self.glists[v][:] = [None] * len(self.glists[v])

    def take_slot(self, region: str, ring: np.ndarray, u: int) -> None:
        """Step u's slot of a ring region: its gradient from after the loop, else zeros."""
        _take_slot(region, ring, u, self.incoming)

    def arrays(self) -> list:
        return (self.owners + list(self.ginit.values()) + [into for into, *_ in self.local.values()]
                + list(self.outer_step.values()) + self.tmps)

    def reset(self) -> None:
        for a in self.zeroed + list(self.ginit.values()) + list(self.outer_step.values()):
            a.fill(0)


def loop_backward(ex, prog: LoopProgram, tape: Tape, grads: GradSum, need, keep: bool) -> None:
    loop: LoopStep = prog.loop
    run: LoopRun = tape.loops[loop.index]
    env, T, bufs = tape.values, run.T, run.bufs
    pre = frozenset(b.id for b in prog.body if b.id in grads.grads and not b.step.integer)
    plan = prog.backward_plan(pre, need, keep, run.scratch)
    lent = _lent_regions(ex, prog, plan, grads, env, T, tape.rows(run.axis)) if grads.donors or grads.lent else {}
    key = (pre, id(need), keep, frozenset(lent))
    bw = run.backward if run.backward is not None and run.backward.key == key else None
    if bw is None:
        before = run.reuse.counts()
        bw = run.backward = build_backward(ex, prog, run, plan, need, env, tape.rows(run.axis), lent)
        bw.key = key
        local_grads(prog, run, bw, env)
        for f in bw.prepared:             # the lanes its segments keep, made now (see segments.Segment)
            f.before_pass()
            f.after_pass()
        run.reuse.absorb(before)          # its references to the run's arrays are the run's own
        tracked = {id(a) for a in run.reuse.arrays}
        new = [a for a in distinct(bw.arrays()) if id(a) not in tracked]
        run.reuse.track(new)
        del new
    else:
        bw.reset()
        local_grads(prog, run, bw, env)
    for region, arr in lent.items():
        bw.bind(region, arr)
    del lent
    gbuf, ginit = bw.gbuf, bw.ginit
    bw.incoming.clear()     # (a pass stopped by an exception leaves its own)
    for v in pre:
        r = plan.region[v]
        if r in plan.ring:     # each step's part goes into the ring as the pass reaches that step
            g = grads.grads.pop(v)
            bw.incoming.setdefault(r, []).append((gbuf[v], np.broadcast_to(g, (T,) + gbuf[v].shape[1:])))
        else:
            part = run.whole(gbuf[v])
            part += grads.grads.pop(v)
    times = range(T) if loop.direction > 0 else range(T - 1, -1, -1)
    order = list(reversed(times))
    for r, slots in plan.ring.items():          # the slots of the first steps the pass reaches
        for u in order[:slots - 1]:
            bw.take_slot(r, gbuf[r], u)
    for f in bw.prepared:       # this pass's arrays (lent ones included; a copy of a weight), held while the loop runs
        f.before_pass()
    try:
        with blas_threads(ex.options.loop_blas_threads):
            for t in order:
                for act in bw.actions:
                    act(t)
    finally:
        for f in bw.prepared:
            f.after_pass()
    bw.incoming.clear()
    # everything that leaves the loop: one whole-sequence VJP per edge
    for op_id, pos in plan.deferred:
        b = prog.by_id[op_id]
        src, d = b.step.inputs[pos]
        G, xs, out = run.whole(gbuf[op_id]), whole_inputs(prog, run, env, b), run.whole(bufs[op_id])
        keys = ex.fast_steps.stack_read(src, d, b.op)
        if keys is not None and grads.vjp_into_stack(keys, src, b.op, pos, G, xs, out, b.step.attrs):
            continue   # (a stack of parameters only this step reads: into their flat gradients' block)
        gi = b.op.vjp_one(pos, G, xs, out, b.step.attrs, NO_CTX)
        if gi is not None:
            send(ex.facts, tape, src, d if src in ex.facts.seq else 0, gi, grads, need)
    for (op_id, pos), g in bw.outer_step.items():
        src, d = prog.by_id[op_id].step.inputs[pos]
        seq = src in ex.facts.seq
        send(ex.facts, tape, src, d if seq else 0, run.whole(g) if seq else g, grads, need, owned=True)
    if keep:
        for b in prog.body:
            if b.id in gbuf:    # kept so callers can read gradients of recurrent values
                grads.grads[b.id] = gbuf[b.id] if plan.region.get(b.id) in plan.scratch else run.whole(gbuf[b.id])
                grads.disown(b.id)
    for s, g in ginit.items():
        if s in loop.initials and s not in tape.carry:   # (carried from the last chunk: truncated BPTT)
            init_id = loop.initials[s]
            grads.add(init_id, unbroadcast(g, env[init_id].shape))
    if bw.lent:
        bw.unbind()


def _lent_regions(ex, prog: LoopProgram, plan: BackwardPlan, grads: GradSum, env: dict, T: int,
                  B: int) -> dict:
    """Regions whose gradient is one deferred VJP passing it unchanged to a sequence a dead value
    lends its array to (``PlanFacts.lent_to_loops``): region -> that part of the lent array, in
    which the backward pass computes the region's gradient (no buffer of the loop's own, and no
    copy into the value's gradient afterwards)."""
    out = {}
    lends = ex.facts.lent_to_loops
    for op_id, pos in plan.deferred:
        b = prog.by_id[op_id]
        src, d = b.step.inputs[pos]
        if (src not in lends or d != 0 or pos not in b.op.passes_gradient or plan.region.get(op_id) != op_id
                or op_id in plan.scratch or op_id in out):
            continue
        members = [v for v, r in plan.region.items() if r == op_id]
        if any(v in prog.loop.states for v in members):
            continue       # (a state's gradient array is held by the actions that send to other steps)
        value, lo, hi = lends[src]
        whole = env.get(value)
        if (whole is None or whole.dtype != ex.dtype or whole.shape[:2] != (T, B)
                or whole.shape[2:-1] + (hi - lo,) != b.trail):
            continue
        part = grads.lend_part(value, lo, hi)
        if part is not None:
            out[op_id] = part
    return out


def build_backward(ex, prog: LoopProgram, run: LoopRun, plan: BackwardPlan, need, env: dict,
                   B: int, lent: dict) -> LoopBackward:
    """Gradient buffers and per-step actions of a loop's backward pass, for one run; the regions
    in ``lent`` get their array from a lent one at every pass (``LoopBackward.bind``)."""
    T, integer, seq, dtype = run.cap, ex.facts.integer, ex.facts.seq, ex.dtype   # (lists for every step it may run)
    gbuf, owners, glists = _gradient_buffers(ex, prog, plan, lent, T, B)
    ginit = {s: np.zeros(run.inits[s].shape, dtype=dtype) for s in prog.loop.states
             if s in gbuf and s in need}
    axis = run.axis
    # derivatives of elementwise ops, for the whole sequence at once (filled every pass)
    # (over every step: the op's own buffer may be one step's scratch when its VJP reads only its input)
    # with fused segments, an op whose every action a kernel does by its partial derivative needs none
    # (a value made again at every step before the actions, ``LoopProgram.recomputed``, is this step's)
    remade = _remade(prog, run, plan)
    held_one_step = run.scratch - {b.id for b in remade}
    how, inline = segments.backward_choice(prog.by_id, plan.actions, held_one_step) if run.fused_segments else ({}, set())
    local = {}
    for bid in plan.local - inline:
        into = ex.pool.empty((T, B) + prog.by_id[bid].trail, dtype)
        local[bid] = (into, [], list(into))
    actions = [_zero_action(gbuf[r]) for r in plan.fill]
    incoming: dict = {}
    dt = 1 if prog.loop.direction > 0 else -1     # the order the forward pass ran its steps in
    actions += [_slot_action(r, gbuf[r], slots, dt, run, incoming) for r, slots in plan.ring.items()]
    tmps: dict = {}

    def tmp_pair(arr):
        key = (arr.shape[1:], arr.dtype)
        if key not in tmps:
            tmps[key] = (np.empty(arr.shape[1:], arr.dtype), np.empty(arr.shape[1:], arr.dtype))
        return tmps[key]

    outer_step: dict[tuple, np.ndarray] = {}   # (op id, pos) -> per-step gradients leaving the loop
    steps = []      # (action, what a fused segment needs to do it instead, or None)
    products = []   # the step kernels among them with before_pass / after_pass (a weight's blocks)

    def step_vjp(b, pos, G, ins, outs, attrs, dest, accumulate):
        kernel = b.op.step_vjp(pos, G, ins, outs, attrs, dest, accumulate)
        if not ex.options.blocked_products:
            kernel = unblocked(kernel)
        if hasattr(kernel, "before_pass"):
            products.append(kernel)
        return kernel

    for i, a in enumerate(plan.actions):
        b = prog.by_id[a.op_id]
        G, ins, outs, attrs = glists[a.op_id], run.ins[a.op_id], run.outs[a.op_id], b.step.attrs
        if a.kind == "generic":
            dests = []
            for pos, (src, d) in enumerate(b.step.inputs):
                if src in integer or src not in need:
                    dests.append(None)
                elif src in prog.ids:
                    dests.append(("body", glists[src], d, ginit.get(src), gbuf[src]))
                else:
                    outer_step[(a.op_id, pos)] = arr = np.zeros(env[src].shape, dtype=dtype)
                    dests.append(("outer", arr, src in seq))
            steps.append((_generic_backward(b.op, attrs, G, ins, outs, run.ctxs[a.op_id], dests, axis), None))
            continue
        src, d = b.step.inputs[a.pos]
        if a.kind == "outer_step":
            outer_step[(a.op_id, a.pos)] = arr = np.zeros(env[src].shape, dtype=dtype)
            steps.append((_outer_step_action(b.op, a.pos, attrs, G, ins, outs, arr, src in seq), None))
            continue
        D = local[a.op_id][1] if a.op_id in local else None
        fused, kD = i in how, (D if how.get(i) == "local" else None)
        item = None
        if d == 0:
            dest = glists[src]
            if D is not None:
                step = product_into(G, D, dest, a.accumulate)
            else:
                step = step_vjp(b, a.pos, G, ins, outs, attrs, dest, a.accumulate)
            if fused:
                item = segments.BackwardItem(G, dest, prog.by_id[src].trail[-1], a.accumulate, kD, b, a.pos, ins, outs)
        else:
            t1, t2 = tmp_pair(gbuf[src])
            first = (product_into(G, D, [t1] * T, False) if D is not None
                     else step_vjp(b, a.pos, G, ins, outs, attrs, [t1] * T, False))
            step = _delayed_action(first, glists[src], d, axis, ginit.get(src), t1, t2)
            if fused:       # the kernel writes the gradient into a buffer of this action's own; sent after it
                own = np.empty(t1.shape, t1.dtype)
                item = segments.BackwardItem(G, [own] * T, prog.by_id[src].trail[-1], False, kD, b, a.pos, ins, outs,
                                             send=_send_action(glists[src], d, axis, ginit.get(src), own, t2))
        steps.append((step, item))
    _remake_first(run, remade, steps)
    more, segs = _fuse_segments(run, plan, glists, lent, steps, T, B)
    actions += more
    whole = [gbuf[r] for r in plan.overwritten if r in gbuf and r not in lent]
    zeroed = [a for a in owners if not any(a is w for w in whole)]
    return LoopBackward(gbuf=gbuf, owners=owners, zeroed=zeroed, ginit=ginit, local=local, actions=actions,
                        segments=segs, prepared=products + segs,
                        outer_step=outer_step, tmps=[a for pair in tmps.values() for a in pair],
                        glists=glists, plan=plan, incoming=incoming,
                        lent={r: [b.id for b in prog.body if plan.region.get(b.id) == r] for r in lent})


def _remake_first(run: LoopRun, remade: list, steps: list) -> None:
    """The values made again at every step (``LoopProgram.recomputed``) go first, before the step's
    actions; inside the fused segment that starts the step, where there is one."""
    if not remade:
        return
    joins = (run.fused_segments and bool(steps) and steps[0][1] is not None
             and all(segments.forward_form(b) for b in remade))
    steps[:0] = [(b.op.step_forward(run.ins[b.id], run.outs[b.id], b.step.attrs),
                  segments.BackwardItem(None, run.outs[b.id], b.trail[-1], False, b=b, ins=run.ins[b.id],
                                        remake=True) if joins else None)
                 for b in remade]


def _fuse_segments(run: LoopRun, plan: BackwardPlan, glists: dict, lent: dict, steps: list, T: int,
                   B: int) -> tuple[list, list]:
    """(the per-step actions, the fused segments among them): runs of steps a segment can do as one
    kernel call each (``segments.backward_steps``), with fused segments on; else the steps as they are."""
    if not run.fused_segments:
        return [f for f, _ in steps], []
    rings = {id(glists[v]): plan.ring[plan.region[v]] for v in glists if plan.region.get(v) in plan.ring}
    volatile = {id(lst) for lst, *_ in run.outer} | {id(glists[v]) for r in lent
                                                      for v in glists if plan.region.get(v) == r}
    return segments.backward_steps(steps, T, B, rings, volatile)


def _remade(prog: LoopProgram, run: LoopRun, plan: BackwardPlan) -> list:
    """The body ops whose value, held for one step in the forward pass, the backward pass makes again
    at every step (``LoopProgram.recomputed``): those an action reads."""
    acting = {a.op_id for a in plan.actions}
    return [b for b in prog.body if b.id in prog.recomputed and b.id in run.scratch
            and any(rid in acting for rid, _, _ in prog.readers[b.id])]


def _gradient_buffers(ex, prog: LoopProgram, plan: BackwardPlan, lent: dict, T: int, B: int) -> tuple:
    """(value -> its gradient's array, the arrays the run owns, value -> its per-step views): one
    (T, B, ...) array per region, one (B, ...) array reused at every step where nothing reads the
    gradient after its step, a ring of slots, or a lent array (bound again at every pass); aliases
    and slices share their region's array. (No recursive closure here: a function referring to
    itself is a reference cycle, which would keep every buffer alive until a full GC.)"""
    gbuf: dict[str, np.ndarray] = {}
    for b in prog.body:
        if b.step.integer or b.id in plan.alias or b.id in plan.views:
            continue
        if b.id in plan.scratch:
            gbuf[b.id] = np.zeros((B,) + b.trail, dtype=ex.dtype)
        elif b.id in plan.ring:
            gbuf[b.id] = np.zeros((plan.ring[b.id], B) + b.trail, dtype=ex.dtype)
        elif b.id in lent:
            gbuf[b.id] = lent[b.id]        # (this pass's; bound again at every pass)
        else:
            gbuf[b.id] = ex.pool.zeros((T, B) + b.trail, ex.dtype)
    owners = [a for v, a in gbuf.items() if v not in lent]
    _derive(gbuf, plan, [b.id for b in prog.body])
    glists = {v: ([a] * T if plan.region[v] in plan.scratch
                  else [a[t % len(a)] for t in range(T)] if plan.region[v] in plan.ring else list(a))
              for v, a in gbuf.items()}
    return gbuf, owners, glists


def _derive(gbuf: dict, plan: BackwardPlan, ids: list) -> None:
    """The gradient arrays of the values among ``ids`` (in body order) that are slices or aliases
    of a region's (a slice's source comes first)."""
    for v in ids:
        if v in plan.views:
            src, lo, hi = plan.views[v]
            gbuf[v] = _resolve(gbuf, plan.alias, src)[..., lo:hi]
    for v in ids:
        if v in plan.alias:
            gbuf[v] = _resolve(gbuf, plan.alias, plan.alias[v])


def local_grads(prog: LoopProgram, run: LoopRun, bw: LoopBackward, env: dict) -> None:
    """This pass's derivatives of the elementwise ops whose VJP multiplies by them."""
    for bid, (into, steps, own) in bw.local.items():
        b = prog.by_id[bid]
        part = run.whole(into)
        D = b.op.local_grad(whole_inputs(prog, run, env, b), run.whole(run.bufs[bid]), b.step.attrs, part)
        if D is not part:
            steps[:] = D
        elif not (steps and steps[0] is own[0]):   # (written into its own array: the same views as before)
            steps[:] = own


def whole_inputs(prog: LoopProgram, run: LoopRun, env: dict, b: BodyOp) -> list:
    """The inputs of body op b over all steps (scratch values only by shape: nothing reads them)."""
    def whole(src: str, d: int) -> np.ndarray:
        if d != 0:
            return run.whole(run.reads[(src, d)])
        if src not in prog.ids:
            return env[src]
        return run.bufs[src] if src in run.scratch else run.whole(run.bufs[src])
    return [whole(src, d) for src, d in b.step.inputs]


def _resolve(gbuf: dict, alias: dict, v: str) -> np.ndarray:
    while v not in gbuf:
        v = alias[v]
    return gbuf[v]


def _zero_action(arr):
    def act(t):
        arr.fill(0)
    return act


def _delayed_action(first, steps, d, axis, ginit, t1, t2):
    """Gradient of a state read at t + d: ``first(t)`` writes it into t1; it goes to that
    step (``steps``: the state's gradient at every step) where the step is real, else to the
    initial state."""
    send = _send_action(steps, d, axis, ginit, t1, t2)

    def act(t):
        first(t)
        send(t)
    return act


def _send_action(steps, d, axis, ginit, t1, t2):
    """At step t: the gradient in t1 of a state read at t + d to that step, or the initial state.
    (``axis``: the run's own, which takes each pass's lengths.)"""
    send, add = axis.send_to_step_into, np.add

    def act(t):
        u = t + d
        if 0 <= u < axis.minlen:   # a real step of every example (send's first case, inlined: it is most steps)
            add(steps[u], t1, out=steps[u])
        else:
            send(steps, t1, u, ginit, t2)
    return act


def _slot_action(region, ring, slots, dt, run, incoming):
    """At step t, before anything sends to it: the ring slot of the step the pass reaches
    ``slots - 1`` steps later (the one it held last is done with), filled with that step's
    gradient from after the loop, else zeroed (``LoopBackward.take_slot``). (``run``: its steps
    this pass.) ``dt``: +1 for a loop that runs forwards in time, -1 backwards."""
    ahead = (slots - 1) * dt

    def act(t):
        u = t - ahead
        if 0 <= u < run.T:
            _take_slot(region, ring, u, incoming)
    return act


def _take_slot(region, ring, u, incoming):
    slot = ring[u % len(ring)]
    parts = incoming.get(region)
    if parts and len(parts) == 1 and parts[0][0] is ring:
        np.copyto(slot, parts[0][1][u])
        return
    slot.fill(0)
    for member, g in parts or ():
        np.add(member[u % len(ring)], g[u], out=member[u % len(ring)])


def _outer_step_action(op, pos, attrs, G, ins, outs, acc_arr, seq):
    """Per-step gradient of a value from outside the loop (when deferring is switched off)."""
    def act(t):
        gi = op.vjp_one(pos, G[t], [x[t] for x in ins], outs[t], attrs, NO_CTX)
        if seq:
            acc_arr[t] += gi
        else:
            np.add(acc_arr, gi, out=acc_arr)
    return act


def _generic_backward(op, attrs, G, ins, outs, ctxs, dests, axis):
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
            else:
                axis.send_to_step(full, gi, t + d, ginit)
    return act
