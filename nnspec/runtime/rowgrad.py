"""Row gradients: an embedding table's gradient touches the rows of the batch's ids only."""
from __future__ import annotations

import numpy as np

from .reuse import Reuse


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

    def __init__(self, shapes: dict[str, tuple]):
        self.shapes = shapes                       # table (a parameter) -> its shape
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
        g = g.reshape(len(ids), -1)
        if ids.size and ids.min() < 0:   # padding
            keep = ids >= 0
            ids, g = ids[keep], g[keep]
        np.add.at(buf, ids, g)  # add.at: repeated ids accumulate
        rows = np.unique(ids)
        self.kept[table] = (reuse, rows)
        return RowGrad.of(buf, rows)
