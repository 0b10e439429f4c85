"""Row gradients: an embedding table's gradient touches the rows of the batch's ids only."""
from __future__ import annotations

import numpy as np

from .reuse import Reuse


# A sequence of a few ids (a sentence, a latency-bound step): sorted ids without repeats or padding
# are scattered as they are, with no argsort and no gathers (20 ids: 6 -> 3 us); a repeat or padding
# among them: the general way. Decided by the number of ids alone.
FEW_IDS = 64


class RowGrad(np.ndarray):
    """A dense gradient whose rows outside ``rows`` are zero (an embedding table's): optimisers
    may update just those rows. Arrays computed from it are plain arrays (no ``rows``)."""

    rows: np.ndarray | None = None

    @classmethod
    def of(cls, dense: np.ndarray, rows: np.ndarray) -> "RowGrad":
        g = dense.view(cls)
        g.rows = rows
        return g

    def __array_finalize__(self, obj):
        self.rows = None     # a view or a result of arithmetic: no promise about its rows


class TableGrads:
    """The gradients of the embedding tables, one dense array each, kept from pass to pass: the
    next pass zeroes just the rows the last one touched (not the whole table) if nobody holds it."""

    def __init__(self, shapes: dict[str, tuple], few_ids: int = FEW_IDS):
        self.shapes = shapes                       # table (a parameter) -> its shape
        self.few_ids = few_ids                     # up to this many ids: ``scatter_rows``'s plain path
        self.kept: dict[str, tuple[Reuse, np.ndarray]] = {}   # table -> (its array, the rows it touched)

    def gradient(self, table: str, ids: np.ndarray, g: np.ndarray) -> RowGrad:
        """The table's gradient from the gradient ``g`` of the rows looked up by ``ids``."""
        shape, dtype = self.shapes[table], g.dtype
        kept = self.kept.pop(table, None)
        if kept is not None and kept[0].free_at(0) and kept[0].arrays[0].shape == shape \
                and kept[0].arrays[0].dtype == dtype:
            reuse, rows = kept
            reuse.arrays[0][rows] = 0
        else:
            reuse = Reuse()
            reuse.track([np.zeros(shape, dtype)])
        buf = reuse.arrays[0]
        ids = ids.reshape(-1)
        rows = scatter_rows(buf, ids, g.reshape((len(ids),) + tuple(shape[1:])), self.few_ids)
        self.kept[table] = (reuse, rows)
        return RowGrad.of(buf, rows)


def scatter_rows(buf: np.ndarray, ids: np.ndarray, g: np.ndarray, few_ids: int = FEW_IDS) -> np.ndarray:
    """``buf[ids] += g`` with repeated ids summed, into rows of ``buf`` that are zero, negative ids
    (padding) left out; returns the rows touched, sorted. The ids are sorted once (the padding then
    comes first, found without a pass of its own): the first occurrence of each row is written
    (a plain scatter), and only the repeats go through ``np.add.at``. A batch of text repeats few
    of its ids, and ``add.at`` over all of them cost 1.8 ms where this costs 0.1 (800 ids of
    100 floats); ``np.add.reduceat`` over the sorted rows was 0.7."""
    if ids.size == 0:
        return ids
    if ids.size <= few_ids:
        rows = np.sort(ids)
        if rows[0] >= 0 and not (rows[1:] == rows[:-1]).any():
            buf[ids] = g         # (each row written once: the numbers of the general way)
            return rows
    order = np.argsort(ids, kind="stable")   # stable: repeats summed in the order of the ids
    ids = ids[order]
    if ids[0] < 0:   # padding
        keep = int(np.searchsorted(ids, 0))
        order, ids = order[keep:], ids[keep:]
        if ids.size == 0:
            return ids
    first = np.empty(len(ids), bool)
    first[0] = True
    np.not_equal(ids[1:], ids[:-1], out=first[1:])
    rows = ids[first]
    if len(rows) == len(ids):
        _put_rows(buf, rows, g, order)
    else:
        _put_rows(buf, rows, g, order[first])
        repeats = ~first
        at, src, n = ids[repeats], order[repeats], _chunk_rows(g)
        for lo in range(0, len(at), n):     # (in order: each row's repeats summed as before)
            np.add.at(buf, at[lo:lo + n], g[src[lo:lo + n]])
    return rows


CHUNK_BYTES = 1 << 16   # rows of g gathered at a time: not a copy of all of g at the step's peak


def _chunk_rows(g: np.ndarray) -> int:
    return max(CHUNK_BYTES // max(g[0].nbytes, 1), 1)


def _put_rows(buf: np.ndarray, rows: np.ndarray, g: np.ndarray, src: np.ndarray) -> None:
    """``buf[rows] = g[src]``, gathering a bounded number of g's rows at a time."""
    n = _chunk_rows(g)
    if len(rows) <= n:
        buf[rows] = g[src]
        return
    for lo in range(0, len(rows), n):
        buf[rows[lo:lo + n]] = g[src[lo:lo + n]]
