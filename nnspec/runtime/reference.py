"""The reference engine: what a plan means, step by step, using nothing but each op's ``forward``
and ``vjp``. Read this first; everything else in the runtime computes the same numbers faster,
and the tests and the differential tester compare it against this (``ExecOptions.reference()``).

A plan is a list of steps. A plain step (``OpStep``) computes one value for all its leading axes
at once; a loop step (``LoopStep``) runs its body once per time step, forwards or backwards in
time. Every read is a value at ``t + d``; where ``t + d`` is no real step of an example, the read
gives the fill (the initial state, or zeros): ``timeaxis.py`` defines it and its adjoint.

The backward pass walks the same steps in reverse: each op's ``vjp`` pulls the output's gradient
back to its inputs, and each input's gradient goes where the forward read came from (``send``).
"""
from __future__ import annotations

import numpy as np

from .. import chunks
from ..ops import REGISTRY
from ..ops.registry import unbroadcast
from ..plan import LoopStep, OpStep
from .facts import PlanFacts
from .gradsum import GradSum
from .axes import in_loop_op
from .tape import Tape, check_finite
from .timeaxis import carried_steps, initial_state, read_across_chunks, read_sequence


# ---- a plain step ---------------------------------------------------------------------------------

def read(tape: Tape, src: str, d: int) -> np.ndarray:
    """The value ``src`` at ``t + d`` for all steps at once."""
    return tape.values[src] if d == 0 else read_sequence(tape, src, d)


def send(facts: PlanFacts, tape: Tape, src: str, d: int, g: np.ndarray, grads: GradSum, need,
         owned: bool = False) -> None:
    """The adjoint of ``read``: ``g`` back to the steps read, and what the fill took to the value
    the state's ``initial`` names (none where the state came from the previous chunk: truncated BPTT)."""
    if d:
        init_id = facts.initial_of.get(src)
        if init_id in need and src in tape.initial_values and src not in tape.carry:
            g_init = tape.axis(src).fill_gradient(g, d, chunks.history_key(src) in tape.carry)
            if g_init is not None:
                grads.add(init_id, unbroadcast(g_init, tape.values[init_id].shape))
        g = tape.axis(src).read_adjoint(g, d)
    grads.add(src, g, owned)


def op_forward(facts: PlanFacts, step: OpStep, tape: Tape) -> None:
    xs = [read(tape, src, d) for src, d in step.inputs]
    op = facts.op_of(step)
    ctx = tape.context.ctx(tape.axis(step.inputs[0][0]) if step.inputs and step.inputs[0][0] in facts.seq else None)
    record(step, op, op.forward(xs, step.attrs, ctx), xs, ctx, tape)


def record(step: OpStep, op, out, xs, ctx, tape: Tape) -> None:
    """A plain step's value on the tape (checked, and read across a chunk's edge where the op reads
    other steps), with what its VJP needs."""
    if tape.context.check_finite and not step.integer:
        check_finite(out, step.id, step.span)
    if op.reads_across_chunks:
        out = read_across_chunks(out, step.inputs[0][0], int(step.attrs.get("k", 1)), tape)
    tape.values[step.id] = out
    tape.records[step.id] = (xs, ctx)


def op_backward(facts: PlanFacts, step: OpStep, tape: Tape, grads: GradSum, need) -> None:
    g = grads.grads.get(step.id)
    if g is None or step.integer or step.id not in tape.records:
        return
    wanted = [i for i, (src, _) in enumerate(step.inputs) if src in need and src not in facts.integer]
    if not wanted:
        return
    xs, ctx = tape.records[step.id]
    gs = facts.op_of(step).vjp(g, xs, tape.values[step.id], step.attrs, ctx)
    for i in wanted:
        if gs[i] is not None:
            send(facts, tape, *step.inputs[i], gs[i], grads, need)


# ---- a loop step ----------------------------------------------------------------------------------

def times(loop: LoopStep, T: int) -> range:
    return range(T) if loop.direction > 0 else range(T - 1, -1, -1)


def body_op(step: OpStep, inner: dict, tape: Tape | None):
    """A loop body op and (given the tape) its context: over an axis of its own within a step
    (``inner``: op id -> (that axis, how many)), folded over the innermost, with that axis's mask."""
    op = REGISTRY[step.op]
    if step.id not in inner:
        return op, None if tape is None else tape.context.ctx()
    axis, k = inner[step.id]
    return in_loop_op(op, k), None if tape is None else tape.context.ctx(tape.axes.get(axis))


def loop_forward(facts: PlanFacts, loop: LoopStep, tape: Tape) -> None:
    env, axis = tape.values, tape.axes[facts.loop_axis[loop.index]]
    T = axis.steps
    body = {b.id for b in loop.body}
    inits = {b.id: initial_state(loop, b, tape, tape.carry, facts.dtype) for b in loop.body if b.id in loop.states}
    tape.initial_values.update(inits)
    before = carried_steps(loop, tape, facts.dtype)
    # values on other axes, read whole at every step; body ops over axes of their own within a step
    whole, inner = facts.across_axes.get(loop.index, ((), {}))
    # sequences made before the loop, read at another step: read whole, as outside loops
    shifted = {(src, d): read_sequence(tape, src, d) for b in loop.body for src, d in b.inputs
               if d and src not in body and src not in whole}
    bufs: dict[str, np.ndarray] = {}

    def at(src: str, d: int, t: int):
        if src in body:
            return bufs[src][t] if d == 0 else axis.read_step(bufs.get(src), t + d, inits[src], before.get(src))
        if src in facts.seq and src not in whole:
            return env[src][t] if d == 0 else shifted[(src, d)][t]
        return env[src]                                   # parameters, feed-forward values, other axes'

    for t in times(loop, T):
        for step in loop.body:
            xs = [at(src, d, t) for src, d in step.inputs]
            op, ctx = body_op(step, inner, tape)
            out = op.forward(xs, step.attrs, ctx)
            if step.id not in bufs:
                bufs[step.id] = np.empty((T,) + out.shape, dtype=out.dtype)
            bufs[step.id][t] = out
            tape.records[(step.id, t)] = (xs, ctx)
        if tape.context.check_finite:
            for step in loop.body:
                check_finite(bufs[step.id][t], step.id, step.span)
    env.update(bufs)
    last = T - 1 if loop.direction > 0 else 0
    for s in loop.states:
        tape.final_states[s] = bufs[s][last].copy()


def loop_backward(facts: PlanFacts, loop: LoopStep, tape: Tape, grads: GradSum, need) -> None:
    env, axis = tape.values, tape.axes[facts.loop_axis[loop.index]]
    T = axis.steps
    body = {b.id for b in loop.body}
    gbuf = {b.id: np.zeros_like(env[b.id]) for b in loop.body if not b.integer}
    for v in gbuf:
        if v in grads.grads:
            gbuf[v] += grads.grads.pop(v)
    ginit = {s: np.zeros_like(tape.initial_values[s], dtype=facts.dtype) for s in loop.states if s in gbuf}
    whole, inner = facts.across_axes.get(loop.index, ((), {}))
    outside: dict[tuple, np.ndarray] = {}   # (value from outside, delay) -> its gradient (per step for sequences)
    for t in reversed(times(loop, T)):
        for step in reversed(loop.body):
            if step.id not in gbuf:
                continue
            xs, ctx = tape.records[(step.id, t)]
            gs = body_op(step, inner, None)[0].vjp(gbuf[step.id][t], xs, env[step.id][t], step.attrs, ctx)
            for (src, d), gi in zip(step.inputs, gs):
                if gi is None or src in facts.integer:
                    continue
                if src in body:
                    if d == 0:
                        gbuf[src][t] += gi
                    else:
                        axis.send_to_step(gbuf[src], gi, t + d, ginit[src])
                elif src in facts.seq and src not in whole:
                    if (src, d) not in outside:
                        outside[(src, d)] = np.zeros_like(env[src], dtype=facts.dtype)
                    outside[(src, d)][t] += gi
                elif (src, 0) in outside:
                    outside[(src, 0)] = outside[(src, 0)] + gi
                else:
                    outside[(src, 0)] = gi.copy()      # (it may be a view of this step's gradient)
    for v, g in gbuf.items():
        grads.add(v, g)   # kept so callers can read gradients of recurrent values
    for (src, d), g in outside.items():
        send(facts, tape, src, d, g, grads, need)
    for s, g in ginit.items():
        if s in loop.initials and s not in tape.carry:   # (carried from the last chunk: truncated BPTT)
            grads.add(loop.initials[s], unbroadcast(g, env[loop.initials[s]].shape))
