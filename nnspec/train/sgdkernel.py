"""SGD's ``p += a * g`` over a large array (a model's flat parameters, ``runtime/paramblocks.py``) as
one compiled loop (numba, the ``fast`` extra), with the same numbers as NumPy's two passes, bit for bit.

NumPy's ``g *= a; p += g`` reads the gradient twice and writes it once: over the benchmark MLP's
270 000 float32 parameters 43 us, where one loop that reads each array once takes 27. The product
is rounded to the arrays' type before the sum (``a`` comes in that type; numba does not fuse a
multiply and an add without fastmath), as NumPy rounds it, so which one runs never changes a
training run (``tests/test_flatparams.py``).
"""
from __future__ import annotations

import numpy as np

from ..runtime.kernelcache import LazyKernel

MIN_SIZE = 1 << 16    # smaller arrays stay with NumPy: a small net never waits for numba

SOURCE = '''\
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def sgd_step(p, g, a):
    p1, g1 = p.reshape(-1), g.reshape(-1)
    for i in range(p1.size):
        p1[i] = p1[i] + a * g1[i]
'''

KERNEL = LazyKernel("nnspec_sgd_1", SOURCE, "sgd_step")


def applies(p: np.ndarray, g) -> bool:
    """Whether the compiled step takes these arrays (large; one float type, the same shape,
    contiguous, a plain gradient). Which one runs never changes the numbers."""
    return (p.size >= MIN_SIZE and type(g) is np.ndarray and p.dtype in (np.float32, np.float64)
            and g.dtype == p.dtype and g.shape == p.shape and p.flags.c_contiguous
            and g.flags.c_contiguous and p.flags.writeable and bool(KERNEL.get()))


def sgd_step(p: np.ndarray, g: np.ndarray, a: float) -> None:
    """p += a * g in place, ``a`` in the arrays' type as NumPy takes a Python float against them."""
    KERNEL.get()(p, g, p.dtype.type(a))
