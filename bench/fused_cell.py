"""An LSTM cell's elementwise step (after the gates' product), three ways: NumPy calls (what the
fast loops run), a numba kernel with libm's exp/tanh (what the fused loops generate: scalar calls,
not vectorised), and a numba kernel with a rational tanh (Eigen's float approximation) and
sigmoid(x) = 0.5 tanh(x/2) + 0.5, which LLVM vectorises.

    python bench/fused_cell.py                  # B 32, H 128 (the benchmark LSTM's step)
    python bench/fused_cell.py --batch 32 --hidden 512

Needs numba (the ``fast`` extra). What makes the third kernel vectorise: ``error_model="numpy"``
(Python's model checks every division for zero), no call to a math function, and each row's
arrays as 1-D views in the loop. Measured on the 2-core benchmark machine (loaded, CPU time, best
of 7, two runs): B 32 H 128, NumPy 26-33 us, libm kernel 145-190 us, rational kernel 7.7-7.8 us;
H 512: 82, 734 and 33 us; largest difference from NumPy 4.8e-7 (float32). The fused loops could
use this form to win at the sizes where they now leave the step to NumPy
(``fused.FUSE_MAX_WORK_PER_CALL``), with the products left to BLAS; not done yet.
"""
from __future__ import annotations

import argparse
import time
import timeit

import numpy as np

# Eigen's float tanh: a 13/6 rational approximation, exact to float32 rounding on [-7.9, 7.9]
_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
      1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def kernels():
    import numba as nb

    lim, half = np.float32(7.90531110763549805), np.float32(0.5)
    a13, a11, a9, a7, a5, a3, a1 = (np.float32(c) for c in _P)
    b6, b4, b2, b0 = (np.float32(c) for c in _Q)

    @nb.njit(fastmath=True, error_model="numpy", inline="always")
    def rtanh(v):
        v = v if v < lim else lim
        v = v if v > -lim else -lim
        x2 = v * v
        p = ((((((a13 * x2 + a11) * x2 + a9) * x2 + a7) * x2 + a5) * x2 + a3) * x2 + a1) * v
        return p / (((b6 * x2 + b4) * x2 + b2) * x2 + b0)

    @nb.njit(fastmath=True, error_model="numpy")
    def rational(z, cp, out):         # out (6, B, H): f, i, o, g, c, h
        B, H = cp.shape
        for b in range(B):
            zb, cb = z[b], cp[b]
            f_, i_, o_, g_, c_, h_ = out[0, b], out[1, b], out[2, b], out[3, b], out[4, b], out[5, b]
            for j in range(H):
                f = half * rtanh(half * zb[j]) + half
                i = half * rtanh(half * zb[H + j]) + half
                o = half * rtanh(half * zb[2 * H + j]) + half
                g = rtanh(zb[3 * H + j])
                c = f * cb[j] + i * g
                f_[j], i_[j], o_[j], g_[j], c_[j] = f, i, o, g, c
                h_[j] = o * rtanh(c)

    @nb.njit(fastmath=True, error_model="numpy")
    def libm(z, cp, out):
        B, H = cp.shape
        for b in range(B):
            for j in range(H):
                f = 1.0 / (1.0 + np.exp(-z[b, j]))
                i = 1.0 / (1.0 + np.exp(-z[b, H + j]))
                o = 1.0 / (1.0 + np.exp(-z[b, 2 * H + j]))
                g = np.tanh(z[b, 3 * H + j])
                c = f * cp[b, j] + i * g
                out[0, b, j], out[1, b, j], out[2, b, j], out[3, b, j], out[4, b, j] = f, i, o, g, c
                out[5, b, j] = o * np.tanh(c)

    return rational, libm


def numpy_cell(z, cp, out, tmp):
    H = cp.shape[1]
    f, i, o, g, c, h = out
    for k, dst in enumerate((f, i, o)):          # sigmoid as the runtime computes it
        np.negative(z[:, k * H:(k + 1) * H], out=dst)
        np.exp(dst, out=dst)
        dst += 1.0
        np.reciprocal(dst, out=dst)
    np.tanh(z[:, 3 * H:], out=g)
    np.multiply(f, cp, out=c)
    np.multiply(i, g, out=tmp)
    c += tmp
    np.tanh(c, out=h)
    h *= o


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--number", type=int, default=500)
    args = ap.parse_args(argv)
    B, H = args.batch, args.hidden
    rng = np.random.default_rng(0)
    z = (2 * rng.normal(size=(B, 4 * H))).astype(np.float32)
    cp = rng.normal(size=(B, H)).astype(np.float32)
    want, tmp = np.empty((6, B, H), np.float32), np.empty((B, H), np.float32)
    numpy_cell(z, cp, want, tmp)
    runs = {"numpy": lambda out: numpy_cell(z, cp, out, tmp)}
    try:
        rational, libm = kernels()
        runs["numba, libm exp/tanh"] = lambda out: libm(z, cp, out)
        runs["numba, rational tanh"] = lambda out: rational(z, cp, out)
    except ImportError:
        print("numba is not installed (pip install -e '.[fast]'): NumPy only")
    print(f"LSTM cell elementwise step, B {B}, H {H}, float32; CPU time, best of 7 x {args.number}")
    for name, run in runs.items():
        out = np.empty_like(want)
        run(out)                                # (compiles)
        best = min(timeit.repeat(lambda: run(out), number=args.number, repeat=7, timer=time.process_time))
        diff = float(np.abs(out - want).max())
        print(f"  {name:22s} {best / args.number * 1e6:8.1f} us   largest difference from NumPy {diff:.1e}")


if __name__ == "__main__":
    main()
