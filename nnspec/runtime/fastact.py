"""A float32 sigmoid that LLVM vectorises, for the steps of a loop (``ExecOptions.fast_sigmoid``).

The NumPy loop step computes sigmoid in four passes (negate, exp, add 1, reciprocal: 13 us for the
benchmark LSTM's (32, 384) gates, 47 us at H 512). This kernel does it in one: 1 / (1 + e^-x) with
e^y as 2^n p(r) (Cephes' expf: n = round(y / ln 2), r = y - n ln 2 in two parts, a degree-7
polynomial, 2^n built from its exponent bits), with no call to a math function and numba's
``error_model="numpy"``, so LLVM vectorises it: 10 and 26 us there (CPU time, loaded 2-core machine).

Accuracy: within 1.2e-7 relative of the exact sigmoid over float32's normal range (NumPy's own is
1.9e-7); e^y is clamped below at e^-87 and is inf above ln(FLT_MAX), as NumPy's, so sigmoid(x) is
about 4e-39 for -88.72 < x < -88.38 where NumPy's gives exactly 0. The maths (``MATH``) is shared with
the loops' fused segments (``segments.py``). NaN stays NaN (no fast-math flag assumes finite values),
so checks for non-finite values still see it. float32 only: float64 keeps NumPy's libm exp (the
differential tests compare exact maths in float64).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .kernelcache import LazyKernel

# The float32 maths that LLVM vectorises, shared by this module's kernel and the loops' fused segments
# (``segments.py``): e^y as Cephes' expf, 2^n p(r) with n = round(y / ln 2), r = y - n ln 2 in two parts,
# a degree-7 polynomial and 2^n built from its exponent bits (e^y for y > ln(FLT_MAX) is inf, as NumPy's;
# y is clamped below at -87, giving ~1.6e-38 where NumPy gives a subnormal or 0); tanh as Eigen's 13/6
# rational (exact to float32 rounding on [-7.9, 7.9], clamped beyond, x itself for |x| < 4e-4). No call
# to a math function, no float64 literal (one would widen the chain to float64 and halve the vector
# width), numba's ``error_model="numpy"``; NaN stays NaN (no fast-math flag assumes finite values).
MATH = '''\
import numpy as np
from math import sqrt
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

f32 = np.float32
FLAGS = {"nsz", "arcp", "contract", "afn"}
LOG2E, LN2_HI, LN2_LO = f32(1.44269504088896341), f32(0.693359375), f32(-2.12194440e-4)
Y_MAX, Y_MIN, ROUND = f32(88.3762626647949), f32(-87.0), f32(12582912.0)   # 1.5 * 2^23 rounds to integer
LN_MAX, INF = f32(88.72283935546875), f32(np.inf)
P0, P1, P2 = f32(1.9875691500e-4), f32(1.3981999507e-3), f32(8.3334519073e-3)
P3, P4, P5 = f32(4.1665795894e-2), f32(1.6666665459e-1), f32(5.0000001201e-1)
ONE = f32(1.0)
T_MAX, T_TINY = f32(7.90531110763549805), f32(0.0004)
A13, A11, A9 = f32(-2.76076847742355e-16), f32(2.00018790482477e-13), f32(-8.60467152213735e-11)
A7, A5, A3, A1 = f32(5.12229709037114e-08), f32(1.48572235717979e-05), f32(6.37261928875436e-04), f32(4.89352455891786e-03)
B6, B4, B2, B0 = f32(1.19825839466702e-06), f32(1.18534705686654e-04), f32(2.26843463243900e-03), f32(4.89352518554385e-03)


@intrinsic
def float_of_bits(typingctx, bits):
    """The float32 whose bits are the int32 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(inline="always", error_model="numpy", fastmath=FLAGS)
def exp(y):
    big = y > LN_MAX
    y = Y_MAX if y > Y_MAX else y      # NaN passes both
    y = Y_MIN if y < Y_MIN else y
    n = (y * LOG2E + ROUND) - ROUND
    r = y - n * LN2_HI - n * LN2_LO
    p = (((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5) * r * r + r + ONE
    p = p * float_of_bits((np.int32(n) + np.int32(127)) << np.int32(23))     # times 2^n
    return INF if big else p


@njit(inline="always", error_model="numpy", fastmath=FLAGS)
def tanh(v):
    x = T_MAX if v > T_MAX else v      # NaN passes both
    x = -T_MAX if x < -T_MAX else x
    x2 = x * x
    p = ((((((A13 * x2 + A11) * x2 + A9) * x2 + A7) * x2 + A5) * x2 + A3) * x2 + A1) * x
    q = ((B6 * x2 + B4) * x2 + B2) * x2 + B0
    return v if abs(v) < T_TINY else p / q
'''

# one kernel: rows of `width` values, `xstride` / `ostride` elements apart, in 1-D contiguous arrays
# (a 2-D slice's rows are not contiguous to numba, which then does not vectorise)
SOURCE = MATH + '''

@njit(cache=True, nogil=True, error_model="numpy", fastmath=FLAGS)
def sigmoid_rows(x, rows, width, xstride, out, ostride):
    for b in range(rows):
        xb = x[b * xstride:b * xstride + width]
        ob = out[b * ostride:b * ostride + width]
        for j in range(width):
            ob[j] = ONE / (ONE + exp(-xb[j]))
'''

# passes of a loop on NumPy's sigmoid before the kernel is compiled (about 1 s of CPU the first time,
# then loaded from disk), as fused loops wait (fused.FUSE_AFTER_PASSES): short runs never wait for numba
AFTER_PASSES = 100

# the row kernels ops name as their ``vectorised_step``, compiled at first use (then loaded from disk)
ROW_KERNELS = LazyKernel("nnspec_fastact_2", SOURCE, ("sigmoid_rows",))


def rows_of(a: np.ndarray):
    """(1-D contiguous view, rows, width, row stride) of a float32 array whose rows are contiguous,
    else None."""
    if a.dtype != np.float32:
        return None
    if a.ndim != 2:
        return (a.reshape(-1), 1, a.size, a.size) if a.flags.c_contiguous else None
    rows, width = a.shape
    if rows == 1 or a.flags.c_contiguous:
        return a.reshape(-1), rows, width, width
    if a.strides[1] != 4 or a.strides[0] % 4 or a.strides[0] < 4 * width:
        return None
    stride = a.strides[0] // 4
    return as_strided(a, shape=((rows - 1) * stride + width,), strides=(4,)), rows, width, stride


def vectorised_step(op, x: list, out: list, attrs: dict):
    """The loop step ``out[t] = op(x[t])`` by the op's kernel (``op.vectorised_step``); an array it
    cannot take (not float32, rows not contiguous) by the op's own NumPy step. Each step's views are
    made here, when the loop run is built (before it counts the references to its arrays it holds
    itself, ``reuse.Reuse``), and used while the step's arrays are the same ones (a kept run's own
    buffers are). None (NumPy's step then) when no directory is writable for the compiled kernel."""
    kernels = ROW_KERNELS.get()    # (False: numba missing, or no writable directory)
    if not kernels:
        return None
    kernel = kernels[ROW_KERNELS.function.index(op.vectorised_step)]
    numpy_step = op.step_forward([x], out, attrs)

    def plan(a, o):
        xr, orr = rows_of(a), rows_of(o)
        if xr is None or orr is None or xr[1:3] != orr[1:3] or not a.size:
            return None
        return xr[0], xr[1], xr[2], xr[3], orr[0], orr[3]

    memo = [(a, o, plan(a, o)) for a, o in zip(x, out)]

    def f(t):
        a, o = x[t], out[t]
        kept = memo[t]
        call = kept[2] if kept[0] is a and kept[1] is o else plan(a, o)
        if call is None:
            numpy_step(t)
        else:
            kernel(*call)
    return f
