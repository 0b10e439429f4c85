"""Reading across the edges of a chunk, when a long stream is run chunk by chunk.

A language model's stream is cut into chunks of ``bptt`` steps, and the
recurrent state flows on from one chunk to the next (``Tape.final_states`` ->
``carry``). Reads that reach past a chunk's edges must flow on as well, or a
chunk's first and last steps would see padding instead of the stream:

* looking back (``e[t-1]`` outside a loop, a pre-loop sequence read at
  ``[t-1]`` inside one, ``shift(w, -1)``): a chunk keeps the last steps of every
  value read that way as a :class:`History`, carried to the next chunk with
  the states, which its first steps read instead of zeros;
* looking ahead (``shift(w, 1)``, the next-token target): a future chunk's
  values are not computed yet, but an input's tokens are known — a stream batch
  carries the tokens after the chunk as ``w.ahead`` (``data.stream_batches``),
  and a shift of that input reads them past the chunk's end.

Gradients do not flow into a history (truncated backpropagation through time).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ops import REGISTRY
from .plan import LoopStep, OpStep, Plan


@dataclass(frozen=True)
class History:
    """The last ``P`` steps of a value in each column, the latest last: ``rows`` (P, B, ...),
    and which of them are real steps (``real`` (P, B); a stream's first chunk has none before it)."""

    rows: np.ndarray
    real: np.ndarray


def history_key(value: str) -> str:
    return f"{value}@history"


def ahead_key(value: str) -> str:
    return f"{value}.ahead"


def lookback_depths(plan: Plan) -> dict[str, int]:
    """How many steps before a chunk each value is read: delays and shifts into the past.
    A state its own forward loop reads at ``[t-1]`` is not counted (the loop carries its final
    value already); one read further back (``h[t-2]``) is, since the final value is not enough."""
    depth: dict[str, int] = {}

    def note(src: str, d: int) -> None:
        if d < 0:
            depth[src] = max(depth.get(src, 0), -d)

    for s in plan.steps:
        inner = {b.id for b in s.body} if isinstance(s, LoopStep) else set()
        forward = isinstance(s, LoopStep) and s.direction > 0
        for b in (s.body if isinstance(s, LoopStep) else [s]):
            for src, d in b.inputs:
                if src not in inner or (forward and d < -1):
                    note(src, d)
            if REGISTRY[b.op].reads_across_chunks:
                note(b.inputs[0][0], int(b.attrs.get("k", 1)))
    return depth


def lookahead_depth(plan: Plan) -> int:
    """How many tokens after a chunk a shift of an input reads (a stream batch's ``ahead``)."""
    inputs = {v.name for v in plan.inputs}
    return max([int(s.attrs.get("k", 1)) for s in plan.steps
                if isinstance(s, OpStep) and REGISTRY[s.op].reads_across_chunks and s.inputs[0][0] in inputs]
               + [1])


def next_history(old: History | None, a: np.ndarray, lengths: np.ndarray, depth: int) -> History:
    """The last ``depth`` real steps of each column of ``a`` (T, B, ...), after those of ``old``."""
    T, B = a.shape[:2]
    lo = max(0, int(lengths.min()) - depth)  # no column needs steps before this one
    before = old.rows[-depth:] if old is not None else np.zeros((depth,) + a.shape[1:], dtype=a.dtype)
    before_real = old.real[-depth:] if old is not None else np.zeros((depth, B), dtype=bool)
    rows = np.concatenate([before.astype(a.dtype, copy=False), a[lo:]])
    real = np.concatenate([before_real, np.arange(lo, T)[:, None] < lengths[None, :]])
    at = lengths[None, :] - lo + np.arange(depth)[:, None]           # (depth, B): the rows to keep
    return History(np.take_along_axis(rows, at.reshape(at.shape + (1,) * (a.ndim - 2)), axis=0),
                   np.take_along_axis(real, at, axis=0))


def carried_steps(history: History, init: np.ndarray) -> np.ndarray:
    """A loop state's values at steps -P..-1 of this chunk (P, B, ...), the latest last: the
    previous chunks' last steps where the stream had them, else its initial state ``init``."""
    keep = history.real.reshape(history.real.shape + (1,) * (history.rows.ndim - 2))
    return np.where(keep, history.rows.astype(init.dtype, copy=False), init[None])


def fill_from_history(out: np.ndarray, history: History, d: int, lengths: np.ndarray | None) -> np.ndarray:
    """``out`` read ``a[t + d]`` (d < 0), with padding where ``t + d < 0``: read the history there."""
    P = history.rows.shape[0]
    n = min(-d, out.shape[0], P)
    t = np.arange(n)
    rows, real = history.rows[P + d + t], history.real[P + d + t]     # row of step t + d
    if lengths is not None:
        real = real & (t[:, None] < lengths[None, :])
    keep = real.reshape(real.shape + (1,) * (out.ndim - 2))
    out[:n] = np.where(keep, rows.astype(out.dtype, copy=False), out[:n])
    return out


def fill_ahead(out: np.ndarray, ahead: np.ndarray, k: int, lengths: np.ndarray) -> np.ndarray:
    """``out = shift(x, k)`` (k > 0) of an input whose following tokens are ``ahead`` (A, B):
    the steps whose ``t + k`` is past a column's end read ``ahead[t + k - length]``."""
    T = out.shape[0]
    t = np.arange(T)[:, None]
    j = t + k - lengths[None, :]                                       # index into ahead
    reads = (t < lengths[None, :]) & (j >= 0) & (j < ahead.shape[0])
    tt, bb = np.nonzero(reads)
    out[tt, bb] = ahead[j[tt, bb], bb]
    return out


class Stream:
    """What a stream cut into chunks carries from one chunk to the next, for training, evaluation
    and sampling alike: the last chunk's final states and histories (``carry``, from its tape's
    ``final_states``), and how many tokens after a chunk its batch must bring (``ahead``)."""

    def __init__(self, plan: Plan):
        self.ahead = lookahead_depth(plan)
        self.carry: dict | None = None

    def carry_into(self, continues: bool) -> dict | None:
        """The carry for the next chunk: none when it starts a stream (``continues`` False)."""
        return self.carry if continues else None

    def advance(self, tape) -> None:
        """The chunk whose tape this is has run: the next one continues from it."""
        self.carry = dict(tape.final_states)
