"""A model's parameters stored as views of few arrays, so that the runtime and the optimisers
work on those arrays instead of on many small ones.

Parameters stacked by one op (``Op.stacks_rows``: the gates' weights that ``fuse_matmuls``
joins with ``concat_rows``) are consecutive blocks of one array, so that the stacked value is a
view of that array instead of a copy made at every pass (``stacked_view``).

``flatten`` stores a model's small dense parameters (not the frozen ones, not the embedding
tables whose gradients are a few rows, none larger than ``FLAT_MAX_SIZE``) as views of one flat array (``FlatArrays``), the stacked
groups adjacent and in order inside it; ``FlatGrads`` hands out their gradients as views of one
flat gradient array laid out alike, so that an optimiser updates all of them in one call
(``train/optim.py``). The model's parameters dict keeps one view per parameter, updated in place
by the optimisers as any other. A parameter replaced by another array (weights loaded, ``set``)
only turns these paths off: the runtime compares the arrays it is given with its views (``is``)
at every pass and the optimiser at every step.
"""
from __future__ import annotations

import math
import weakref
from operator import is_

import numpy as np

from ..ops import REGISTRY
from ..plan import OpStep, Plan
from .reuse import Reuse


def _stacked_groups(plan: Plan, params: dict) -> list[list[str]]:
    """The parameters each stacking step reads (all parameters, each stacked once, same dtype and
    trailing shape, C-contiguous), in the step's order."""
    groups, placed = [], set()
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
        groups.append(names)
        placed.update(names)
    return groups


def join_blocks(plan: Plan, params: dict, skip: frozenset = frozenset()) -> None:
    """Store each stacking step's parameters (none of them in ``skip``) as views of one array, in
    ``params`` itself."""
    for names in _stacked_groups(plan, params):
        if skip.intersection(names):
            continue
        arrays = [params[n] for n in names]
        block = np.concatenate(arrays, axis=0)
        lo = 0
        for n, a in zip(names, arrays):
            params[n] = block[lo:lo + a.shape[0]]
            lo += a.shape[0]


# flat array's id -> a weak reference to its FlatArrays, while that lives (it holds the array: the
# id stays its own); a plain dict, read at every step (a WeakValueDictionary's get is Python code)
_KNOWN: dict = {}


class FlatArrays:
    """Named arrays stored as views of one flat array ``flat``, in the order of ``names`` (``views``:
    the views, one a name); ``blocks``: the views of each group of ``groups`` stacked, a view of
    ``flat`` too (made here, once: a view made later would look like someone holding ``flat``).
    ``params``: for a gradient's, the parameters' it is laid out like."""

    __slots__ = ("flat", "names", "views", "slot", "params", "blocks", "__weakref__")

    def __init__(self, names: tuple, shapes: list, dtype, params: "FlatArrays | None" = None,
                 groups: tuple = ()):
        sizes = [math.prod(s) for s in shapes]
        self.flat = np.empty(sum(sizes), dtype)
        self.names = tuple(names)
        views, lo = [], 0
        for s, n in zip(shapes, sizes):
            views.append(self.flat[lo:lo + n].reshape(s))
            lo += n
        self.views = tuple(views)
        self.slot = dict(zip(self.names, self.views))    # name -> its view
        self.params = params
        self.blocks = {tuple(g): stacked_view([self.slot[n] for n in g]) for g in groups}
        key = id(self.flat)
        _KNOWN[key] = weakref.ref(self, lambda ref, key=key: _KNOWN.pop(key) if _KNOWN.get(key) is ref else None)

    def like(self) -> "FlatArrays":
        """Uninitialised arrays laid out as these (a gradient's for parameters)."""
        return FlatArrays(self.names, [v.shape for v in self.views], self.flat.dtype, params=self,
                          groups=tuple(self.blocks))

    def held_in(self, arrays: dict) -> bool:
        """Whether ``arrays`` holds these very views under their names."""
        return all(map(is_, map(arrays.get, self.names), self.views))   # (all in C: a step's check)


def known(a) -> FlatArrays | None:
    """The FlatArrays whose views ``a`` is one of, or None."""
    base = getattr(a, "base", None)
    if base is None:
        return None
    ref = _KNOWN.get(id(base))
    f = ref() if ref is not None else None
    return f if f is not None and f.flat is base else None


# The most numbers a parameter (or a stacked group) may have to be stored in the flat array. One
# update call costs about as much as updating 2^13 numbers: the flat array pays for the many small
# parameters of a small net, not for a large one, whose gradient would then have an array of its
# own from pass to pass instead of one the backward pass frees or shares (a dead activation's):
# the H512 LSTM's step peak 46 -> 51 MiB with every parameter flat.
FLAT_MAX_SIZE = 1 << 15


def flatten(plan: Plan, params: dict, dtype, skip: frozenset = frozenset(),
            max_size: int = FLAT_MAX_SIZE) -> FlatArrays | None:
    """Store the parameters (arrays of ``dtype``, none in ``skip``, each or its stacked group of at
    most ``max_size`` numbers) as views of one flat array, in ``params`` itself, each stacking step's
    group adjacent and in order (``stacked_view``); the other groups as blocks of their own
    (``join_blocks``). None if fewer than two parameters qualify."""
    dtype = np.dtype(dtype)
    ok = {n for n, a in params.items()
          if n not in skip and type(a) is np.ndarray and a.dtype == dtype and a.ndim >= 1}
    groups = _stacked_groups(plan, params)
    group_of = {n: g for g in groups for n in g
                if all(m in ok for m in g) and sum(params[m].size for m in g) <= max_size}
    ok -= {n for g in groups for n in g if n not in group_of}    # (a block of their own, below)
    ok -= {n for n in ok if n not in group_of and params[n].size > max_size}
    join_blocks(plan, params, skip=frozenset(group_of))
    order, seen = [], set()
    for n in params:
        if n in ok and n not in seen:
            for m in group_of.get(n, (n,)):
                order.append(m)
                seen.add(m)
    if len(order) < 2:
        return None
    flat = FlatArrays(tuple(order), [params[n].shape for n in order], dtype,
                      groups=tuple({id(g): tuple(g) for g in group_of.values()}.values()))
    for n, v in zip(order, flat.views):
        np.copyto(v, params[n])
        params[n] = v
    return flat


class FlatGrads:
    """The parameters' gradients of a backward pass as views of one flat array laid out as the
    parameters (``FlatArrays.like``), kept from pass to pass and written again only while nobody
    holds it or one of its views (``reuse.Reuse``); else a new one."""

    def __init__(self, params: FlatArrays):
        self.params = params
        self.grads: FlatArrays | None = None
        self.reuse: Reuse | None = None

    def slots(self, values: dict) -> FlatArrays | None:
        """The flat gradient arrays for a pass whose parameters (``values``) are still the flat
        ones (``.slot``: name -> the array its gradient is to be written into); None otherwise."""
        if not self.params.held_in(values):
            return None
        g = self.grads
        if g is None or not self.reuse.free():
            g = self.grads = self.params.like()
            self.reuse = Reuse()
            self.reuse.track([g.flat, *g.views])
        return g

    def finish(self, grads: dict, slots: dict) -> None:
        """Put each parameter's gradient into its slot (those a step wrote there are already),
        when every one of them has a dense gradient of its shape; else leave them as they are."""
        todo = []
        for n, slot in slots.items():
            g = grads.get(n)
            if g is slot:
                continue
            if not (isinstance(g, np.ndarray) and getattr(g, "rows", None) is None and g.shape == slot.shape):
                return
            todo.append((n, slot, g))
        for n, slot, g in todo:
            np.copyto(slot, g)
            grads[n] = slot


def stacked_view(xs: list) -> np.ndarray | None:
    """``concatenate(xs, axis=0)`` as a view, when the xs are adjacent row blocks of one
    C-contiguous array (a block of ``join_blocks`` or the flat array of ``flatten``; in order),
    else None."""
    base = xs[0].base
    if base is None or not base.flags.c_contiguous:
        return None
    first = xs[0]
    start = first.__array_interface__["data"][0]
    pos, rows, trail = start, 0, first.shape[1:]
    for x in xs:
        if (x.base is not base or not x.flags.c_contiguous or x.dtype != base.dtype or x.ndim < 1
                or x.shape[1:] != trail or x.__array_interface__["data"][0] != pos):
            return None
        pos += x.nbytes
        rows += x.shape[0]
    lo = (start - base.__array_interface__["data"][0]) // base.itemsize
    return base.reshape(-1)[lo:lo + (pos - start) // base.itemsize].reshape((rows,) + trail)
