"""Adam's step over a large parameter as one compiled loop (numba, the ``fast`` extra), with the
same numbers as ``optim.Adam``'s NumPy steps, bit for bit.

The NumPy form makes thirteen passes over the parameter, its gradient and two moment buffers,
with three temporaries; over a tagger's embedding table (a million float32 numbers and more) that
was 3.7 ms of a 29 ms training step. One loop makes one pass. Every product and sum is rounded to
the arrays' type in the order the NumPy steps round them (the scalars come in that type, numba does
not fuse a multiply and an add without fastmath, and sqrt and division are correctly rounded), so
the kernel and NumPy agree exactly (``tests/test_train_optim.py``): which one runs never changes a
training run. ``error_model="numpy"`` (a division by zero gives inf, as NumPy's does, not an exception)
lets LLVM vectorise the loop: 2.6 ms where NumPy's steps take 13.5 over two million float32 numbers.
"""
from __future__ import annotations

import numpy as np

from ..runtime.kernelcache import LazyKernel

# a parameter this large loads the kernel (a small net never waits for numba); once it is loaded
# it takes the small ones too: one call, 2-4 us, where NumPy's thirteen take 7-14
MIN_SIZE = 1 << 16

SOURCE = '''\
from numba import njit
import numpy as np


@njit(cache=True, nogil=True, error_model="numpy")
def adam_step(p, g, m, v, b1, c1, b2, c2, root, eps, scale):
    p1, g1, m1, v1 = p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)
    for i in range(p1.size):
        gi = g1[i]
        mi = m1[i] * b1
        mi = mi + c1 * gi
        m1[i] = mi
        vi = v1[i] * b2
        vi = vi + c2 * (gi * gi)
        v1[i] = vi
        d = np.sqrt(vi) / root
        d = d + eps
        s = mi / d
        s = s * scale
        p1[i] = p1[i] - s
'''

KERNEL = LazyKernel("nnspec_adam_2", SOURCE, "adam_step")


def applies(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray) -> bool:
    """Whether the compiled step takes these arrays (large, or the kernel loaded already; one float
    type, contiguous). Which one runs never changes the numbers."""
    return ((p.size >= MIN_SIZE or KERNEL.loaded) and p.dtype in (np.float32, np.float64)
            and all(isinstance(a, np.ndarray) and a.dtype == p.dtype and a.shape == p.shape
                    and a.flags.c_contiguous for a in (p, g, m, v))   # (a scalar's gradient may be a NumPy scalar)
            and p.flags.writeable and bool(KERNEL.get()))


def adam_step(p, g, m, v, beta1: float, beta2: float, root: float, eps: float, scale: float) -> None:
    """m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= scale * m / (sqrt(v) / root + eps),
    in place, every scalar in the arrays' type as NumPy takes a Python float against them."""
    t = p.dtype.type
    KERNEL.get()(p, g, m, v, t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(root), t(eps), t(scale))
