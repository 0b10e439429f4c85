"""The NumPy runtime: forward and reverse mode over a plan (see docs/internals.md, section 5)."""
from .executor import (BufferPool, ExecOptions, Executor, RowGrad, RuntimeFailure, Tape, _blas_libs,  # noqa: F401
                       array_shape, blas_threads)
