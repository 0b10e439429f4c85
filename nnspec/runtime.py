"""The NumPy runtime: forward and reverse mode over a plan.

Arrays: a feed-forward value is ``(B, *shape)``, a sequence ``(T, B, *shape)``
(time-major), a parameter or constant has no leading axes. A real-valued value
with per-example shape ``()`` is held as ``(..., 1)`` so that it broadcasts
against vectors.

Reverse mode walks the plan backwards. A loop step is run backwards in time
(BPTT): the gradient that reaches a value read at ``[t-1]`` flows into the
buffer of step ``t-1``, and what reaches a read before the first step flows
into the initial state. Padding is masked at those reads: a state read at a
step outside a sequence's real length yields the initial state instead, so
padding changes neither outputs nor gradients.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .ops import REGISTRY, Ctx
from .ops.registry import unbroadcast
from .plan import LoopStep, OpStep, Plan


class RuntimeFailure(Exception):
    """A numerical failure at run time (e.g. NaN), naming the value that produced it."""

    def __init__(self, message: str, node: str | None = None):
        super().__init__(message)
        self.node = node


def array_shape(shape, integer: bool) -> tuple:
    """The trailing array shape of a value: real scalars get an axis of 1."""
    shape = tuple(shape)
    return (1,) if (shape == () and not integer) else shape


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


class Executor:
    def __init__(self, plan: Plan, dtype=np.float32, check_finite: bool = False):
        self.plan = plan
        self.dtype = np.dtype(dtype)
        self.check_finite = check_finite
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
                need_loss: bool = True) -> Tape:
        env = self.prepare(feeds)
        batch, steps, lengths, mask = self._geometry(env, lengths)
        env.update(self.consts)
        env.update(params)
        tape = Tape(values=env, lengths=lengths, mask=mask, batch=batch, steps=steps)
        for step in self.plan.steps:
            if isinstance(step, LoopStep):
                self._loop_forward(step, tape, train, rng, carry or {})
            else:
                if not need_loss and step.id == self.plan.loss:
                    continue
                self._op_forward(step, tape, train, rng)
        return tape

    def _ctx(self, step: OpStep, tape: Tape, train, rng) -> Ctx:
        first_seq = bool(step.inputs) and step.inputs[0][0] in self.seq
        return Ctx(train=train, rng=rng, mask=tape.mask if first_seq else None,
                   lengths=tape.lengths if first_seq else None)

    def _op_forward(self, step: OpStep, tape: Tape, train, rng) -> None:
        env = tape.values
        xs = [self._read_whole(tape, src, d) for src, d in step.inputs]
        ctx = self._ctx(step, tape, train, rng)
        out = REGISTRY[step.op].forward(xs, step.attrs, ctx)
        if self.check_finite and not step.integer:
            self._check(out, step.id)
        env[step.id] = out
        tape.records[step.id] = (xs, ctx)

    def _check(self, out: np.ndarray, node: str) -> None:
        if not np.all(np.isfinite(out)):
            bad = "NaN" if np.isnan(out).any() else "an infinite value"
            raise RuntimeFailure(f"'{node}' produced {bad}", node)

    def _read_whole(self, tape: Tape, src: str, delay: int) -> np.ndarray:
        a = tape.values[src]
        if delay == 0:
            return a
        return _shift_in_time(a, delay, tape.lengths, np.zeros_like(a[0]))

    def _state_init(self, loop: LoopStep, tape: Tape, step: OpStep, carry) -> np.ndarray:
        if step.id in carry:
            return carry[step.id]
        shape = (tape.batch,) + array_shape(step.shape, step.integer)
        if step.id in loop.initials:
            init = tape.values[loop.initials[step.id]]
            return np.broadcast_to(init.astype(self.dtype, copy=False), shape)
        return np.zeros(shape, dtype=np.int64 if step.integer else self.dtype)

    def _loop_forward(self, loop: LoopStep, tape: Tape, train, rng, carry) -> None:
        env, T, B = tape.values, tape.steps, tape.batch
        body_ids = {b.id for b in loop.body}
        inits = {b.id: self._state_init(loop, tape, b, carry) for b in loop.body if b.id in loop.states}
        tape.initial_values.update(inits)
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
                    self._check(bufs[step.id][t], step.id)
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
        elif src in self.seq:
            src_arr = tape.values[src]
            if d == 0:
                return src_arr[t]
            init = np.zeros_like(src_arr[0])
        else:
            return tape.values[src]
        u = t + d
        if u < 0 or u >= tape.steps or src_arr is None:
            return init
        valid = tape.lengths > u
        if valid.all():
            return src_arr[u]
        return np.where(valid.reshape((-1,) + (1,) * (src_arr.ndim - 2)), src_arr[u], init)

    # ---- backward ------------------------------------------------------------
    def backward(self, tape: Tape, seeds: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Gradients of the loss (or of the given seeds) w.r.t. every value on the tape."""
        grads: dict[str, np.ndarray] = {}
        if seeds:
            for k, v in seeds.items():
                grads[k] = np.asarray(v, dtype=self.dtype)
        else:
            if self.plan.loss is None:
                raise ValueError("this network has no loss to differentiate")
            grads[self.plan.loss] = np.ones_like(tape.values[self.plan.loss])
        for step in reversed(self.plan.steps):
            if isinstance(step, LoopStep):
                self._loop_backward(step, tape, grads)
            else:
                self._op_backward(step, tape, grads)
        return grads

    def _op_backward(self, step: OpStep, tape: Tape, grads) -> None:
        g = grads.get(step.id)
        if g is None or step.id not in tape.records or step.integer:
            return
        xs, ctx = tape.records[step.id]
        gs = REGISTRY[step.op].vjp(g, xs, tape.values[step.id], step.attrs, ctx)
        for (src, d), gi in zip(step.inputs, gs):
            if gi is None or src in self.integer:
                continue
            if d:
                gi = _shift_in_time(gi, -d, tape.lengths, np.zeros_like(gi[0]), reverse_of=d)
            _accumulate(grads, src, gi)

    def _loop_backward(self, loop: LoopStep, tape: Tape, grads) -> None:
        env, T = tape.values, tape.steps
        body_ids = {b.id for b in loop.body}
        gbuf = {b.id: np.zeros_like(env[b.id]) for b in loop.body if not b.integer}
        for b in loop.body:
            if b.id in grads and b.id in gbuf:
                gbuf[b.id] += grads.pop(b.id)
        outer_seq: dict[str, np.ndarray] = {}
        outer: dict[str, np.ndarray] = {}
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
                        else:
                            self._to_step(outer_seq[src], None, gi, t + d, tape)
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
