"""Parameters stacked by one op (``Op.stacks_rows``: the gates' weights that ``fuse_matmuls``
joins with ``concat_rows``) stored as consecutive blocks of one array, so that the stacked
value is a view of that array instead of a copy made at every pass.

``join_blocks`` lays the parameters out once (the model's parameters dict keeps one view per
parameter, updated in place by the optimisers as any other); ``stacked_view`` gives the stacked
value as a view when its inputs still are adjacent blocks, which the runtime checks at every
pass: a parameter replaced by another array (weights loaded, ``set_param``) only makes the
step copy again.
"""
from __future__ import annotations

import numpy as np

from ..ops import REGISTRY
from ..plan import OpStep, Plan


def join_blocks(plan: Plan, params: dict) -> None:
    """Store the parameters each stacking step reads (all parameters, each stacked once, same
    dtype and trailing shape, C-contiguous) as views of one array, in ``params`` itself."""
    placed: set[str] = set()
    for step in plan.steps:
        if not isinstance(step, OpStep) or not REGISTRY[step.op].stacks_rows or len(step.inputs) < 2:
            continue
        names = [src for src, d in step.inputs]
        if (any(d for _, d in step.inputs) or len(set(names)) != len(names) or placed & set(names)
                or not all(n in params for n in names)):
            continue
        arrays = [params[n] for n in names]
        first = arrays[0]
        if not all(isinstance(a, np.ndarray) and a.ndim >= 1 and a.dtype == first.dtype
                   and a.shape[1:] == first.shape[1:] for a in arrays):
            continue
        block = np.concatenate(arrays, axis=0)
        lo = 0
        for n, a in zip(names, arrays):
            params[n] = block[lo:lo + a.shape[0]]
            lo += a.shape[0]
        placed.update(names)


def stacked_view(xs: list) -> np.ndarray | None:
    """``concatenate(xs, axis=0)`` as a view, when the xs are adjacent row blocks of one
    C-contiguous array (in order), else None."""
    base = xs[0].base
    if base is None or not base.flags.c_contiguous:
        return None
    start = xs[0].__array_interface__["data"][0]
    pos, rows = start, 0
    for x in xs:
        if (x.base is not base or not x.flags.c_contiguous or x.dtype != base.dtype
                or x.shape[1:] != base.shape[1:] or x.__array_interface__["data"][0] != pos):
            return None
        pos += x.nbytes
        rows += x.shape[0]
    row_bytes = base.strides[0] if base.ndim else base.itemsize
    first = (start - base.__array_interface__["data"][0]) // row_bytes
    return base[first:first + rows]
