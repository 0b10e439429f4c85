"""One definition of time: reading a value at step ``t + d``, and its adjoint.

A sequence value is an array ``(T, B, ...)`` along a named time axis (``TimeAxis``: the axis's
name, its length ``T`` and each example's length). Step ``u`` of example ``b`` is *real* iff
``0 <= u < lengths[b]``. A read at ``t + d`` that falls on no real step gives a *fill* instead:
the loop state's initial value, else zeros (ids: -1, the id of no token); before the first step
of a chunk of a stream it gives the previous chunk's steps (``chunks.History``), which carry no
gradient back (truncated BPTT). The adjoint sends a gradient back to the step it was read from,
and what was read as the fill to the initial state (if the caller wants that gradient).

The reference engine, the fast loops and delayed reads outside loops all read time through this
module: whole sequences (``read``/``read_adjoint``, outside loops and for a loop's inputs made
before it) and one step at a time (``read_step``/``send_to_step`` and their in-place forms).
The runtime finds a value's axis by its name (``Tape.axes``, ``PlanFacts.axis_of``): a sequence
whose type names none is on ``TIME``; a value on several axes reads time on its innermost
(``axes.py``).
"""
from __future__ import annotations

import numpy as np

from .. import chunks
from ..graph import DEFAULT_AXIS

TIME = DEFAULT_AXIS   # the axis of every sequence whose type names none


def array_shape(shape, integer: bool) -> tuple:
    """The trailing array shape of a value (behind its leading time and batch axes): real scalars
    get an axis of 1, so that they broadcast against vectors."""
    shape = tuple(shape)
    return (1,) if (shape == () and not integer) else shape


class TimeAxis:
    """A sequence axis of one batch: ``name``, ``steps`` (T, the padded length) and ``lengths`` (B,)."""

    def __init__(self, name: str, steps: int, lengths: np.ndarray, dtype=np.float32):
        self.name, self.steps, self.lengths = name, steps, lengths
        self.mask = (np.arange(steps)[:, None] < lengths[None, :]).astype(dtype)   # (T, B): 1 at real steps
        self.minlen = int(lengths.min()) if len(lengths) else steps   # steps below it are real everywhere
        self._columns: dict = {}
        self.rows: tuple | None = None   # a nested inner axis: (T_outer, B), what its batch's rows are
        self.gather: np.ndarray | None = None   # ... its words deduplicated: row r's distinct word

    def assign(self, other: "TimeAxis") -> "TimeAxis":
        """This axis made ``other``'s (its steps and lengths): a kept loop run's own axis, which its
        per-step actions hold, takes each pass's batch this way."""
        self.__dict__.update(other.__dict__)
        return self

    @classmethod
    def copy_of(cls, other: "TimeAxis") -> "TimeAxis":
        return cls.__new__(cls).assign(other)

    @property
    def batch(self) -> int:
        """The rows this axis's sequences run in: the batch, or for a nested inner axis (the characters
        of every word), T_outer * B (word t of example b is row t * B + b)."""
        return len(self.lengths)

    def column(self, u: int, nd: int) -> np.ndarray:
        """(B, 1, ...) with ``nd`` trailing axes: which examples have a real step ``u``."""
        c = self._columns.get((u, nd))
        if c is None:
            c = self._columns[(u, nd)] = (self.lengths > u).reshape((-1,) + (1,) * nd)
        return c

    def real_reads(self, d: int) -> np.ndarray:
        """(T, B): whether the read at ``t + d`` falls on a real step."""
        u = np.arange(self.steps)[:, None] + d
        return (u >= 0) & (u < self.lengths[None, :])

    # ---- whole sequences ----------------------------------------------------------------
    def read(self, a: np.ndarray, d: int, fill: np.ndarray, history: chunks.History | None = None) -> np.ndarray:
        """``out[t] = a[t + d]`` where that is a real step, else ``fill`` (B, ...), else (before the
        chunk, d < 0) the previous chunk's step from ``history``."""
        T = a.shape[0]
        out = np.empty_like(a)
        out[...] = fill
        if abs(d) < T:
            if d > 0:
                out[:T - d] = a[d:]
            else:
                out[-d:] = a[:T + d]
        keep = self.real_reads(d)
        out = np.where(keep.reshape(keep.shape + (1,) * (a.ndim - 2)), out, fill)
        if d < 0 and history is not None:
            out = chunks.fill_from_history(out, history, d, self.lengths)
        return out

    def read_adjoint(self, g: np.ndarray, d: int) -> np.ndarray:
        """The gradient of ``a`` from the gradient ``g`` of ``read(a, d, ...)``: each step's gradient
        goes back to the step it was read from; what was read as the fill or history vanishes."""
        T = g.shape[0]
        valid = self.real_reads(d)
        g = g * valid.reshape(valid.shape + (1,) * (g.ndim - 2)).astype(g.dtype)
        out = np.zeros_like(g)
        if abs(d) < T:
            if d > 0:
                out[d:] = g[:T - d]
            else:
                out[:T + d] = g[-d:]
        return out

    def filled(self, d: int, history: bool) -> np.ndarray:
        """(T, B): the reads at ``t + d`` that gave the fill (the initial state), not a step."""
        took = ~self.real_reads(d)
        if d < 0 and history:
            took &= (np.arange(self.steps) + d >= 0)[:, None]
        return took

    def fill_gradient(self, g: np.ndarray, d: int, history: bool) -> np.ndarray | None:
        """The part of ``g`` (the gradient of a whole-sequence read) that reached the fill, summed
        over time; None if no read gave the fill."""
        took = self.filled(d, history)
        if not took.any():
            return None
        return (g * took.reshape(took.shape + (1,) * (g.ndim - 2)).astype(g.dtype)).sum(axis=0)

    # ---- one step ---------------------------------------------------------------------------
    def read_step(self, a, u: int, fill: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
        """The value at step ``u`` (``a``: the steps so far, an array or a list of steps): ``a[u]``
        where it is real, ``fill`` elsewhere; before a chunk (u < 0), ``before[u]`` if given."""
        if u < 0 and before is not None:
            return before[u]
        if u < 0 or u >= self.steps:
            return fill
        if u < self.minlen:
            return a[u]
        return np.where(self.column(u, np.ndim(fill) - 1), a[u], fill)

    def read_step_into(self, dst: np.ndarray, a, u: int, fill: np.ndarray, before: np.ndarray | None = None) -> None:
        """``read_step`` written into ``dst``."""
        if u < 0 and before is not None:
            np.copyto(dst, before[u])
        elif u < 0 or u >= self.steps:
            np.copyto(dst, fill)
        elif u < self.minlen:
            np.copyto(dst, a[u])
        else:
            np.copyto(dst, fill)
            np.copyto(dst, a[u], where=self.column(u, dst.ndim - 1))

    def send_to_step(self, ga: np.ndarray, gi: np.ndarray, u: int, ginit: np.ndarray | None) -> None:
        """The adjoint of ``read_step``: add ``gi`` to step ``u`` of ``ga`` where it was read there,
        to ``ginit`` (the initial state's gradient, if wanted) where it was the fill."""
        if 0 <= u < self.steps:
            if u < self.minlen:
                ga[u] += gi
                return
            v = self.column(u, gi.ndim - 1).astype(gi.dtype)
            ga[u] += gi * v
            if ginit is not None:
                ginit += gi * (1 - v)
        elif ginit is not None:
            ginit += gi

    def send_to_step_into(self, ga: np.ndarray, gi: np.ndarray, u: int, ginit: np.ndarray | None,
                          tmp: np.ndarray) -> None:
        """``send_to_step`` with no temporary array: ``tmp`` is scratch, and ``gi`` may be overwritten."""
        if 0 <= u < self.steps:
            if u < self.minlen:
                np.add(ga[u], gi, out=ga[u])
                return
            np.multiply(gi, self.column(u, gi.ndim - 1), out=tmp)
            np.add(ga[u], tmp, out=ga[u])
            if ginit is not None:
                np.subtract(gi, tmp, out=gi)
                np.add(ginit, gi, out=ginit)
        elif ginit is not None:
            np.add(ginit, gi, out=ginit)


def read_across_chunks(out: np.ndarray, src: str, k: int, tape) -> np.ndarray:
    """A ``shift`` by ``k`` past the chunk's start reads the previous chunk's steps; past its end,
    the input's following tokens (when the batch has them)."""
    history, lengths = tape.carry.get(chunks.history_key(src)), tape.axis(src).lengths
    if k < 0 and history is not None:
        return chunks.fill_from_history(out, history, k, lengths)
    if k > 0 and src in tape.ahead:
        return chunks.fill_ahead(out, tape.ahead[src], k, lengths)
    return out


def fill_of(tape, src: str) -> np.ndarray:
    """What a read of ``src`` outside its real steps gives: a loop state's initial value (B, ...),
    else zeros, and for ids -1, the id of no token (embeds to zeros, as ``shift`` pads), not 0,
    which is ``<pad>``, a learned row of the table."""
    init = tape.initial_values.get(src)
    if init is not None:
        return init
    first = tape.values[src][0]
    return np.full_like(first, -1) if np.issubdtype(first.dtype, np.integer) else np.zeros_like(first)


def read_sequence(tape, src: str, d: int) -> np.ndarray:
    """A sequence read at ``t + d`` from outside its loop (whole sequence)."""
    a = tape.values[src]
    if d == 0:
        return a
    return tape.axis(src).read(a, d, fill_of(tape, src), tape.carry.get(chunks.history_key(src)))


def initial_state(loop, step, tape, carry: dict, dtype) -> np.ndarray:
    """A loop state's value before the first step (B, ...): carried from the previous chunk, else the
    value its ``initial`` names, else zeros."""
    if step.id in carry:
        return carry[step.id]
    axis = tape.axes.get(loop.axis)
    shape = (tape.batch if axis is None else tape.rows(axis),) + array_shape(step.shape, step.integer)
    if step.id in loop.initials:
        init = tape.values[loop.initials[step.id]]
        return np.broadcast_to(init.astype(dtype, copy=False), shape)
    return np.zeros(shape, dtype=np.int64 if step.integer else dtype)


def carried_steps(loop, tape, dtype) -> dict[str, np.ndarray]:
    """States read further back than the previous step (``h[t-2]``) whose history the previous
    chunk left: their values at steps -P..-1, the stream's initial state before its start
    (``chunks.carried_steps``); kept on the tape (``before_chunk``)."""
    if not tape.carry or loop.direction < 0:
        return {}
    by_id = {b.id: b for b in loop.body}
    before = {s: chunks.carried_steps(tape.carry[chunks.history_key(s)],
                                      initial_state(loop, by_id[s], tape, {}, dtype))
              for s in loop.states if chunks.history_key(s) in tape.carry}
    tape.before_chunk.update(before)
    return before
