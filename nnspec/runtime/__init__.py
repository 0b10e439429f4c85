"""The NumPy runtime: forward and reverse mode over a plan (docs/internals.md, section 5).

Read ``reference.py`` first: what each step means, by each op's ``forward`` and ``vjp`` alone.
``timeaxis.py`` defines reading a value at another time step; ``executor.py`` sends each step to
the reference engine or to the fast paths beside it."""
from .blas import _blas_libs, blas_threads  # noqa: F401
from .executor import Executor  # noqa: F401
from .pool import BufferPool  # noqa: F401
from .rowgrad import RowGrad  # noqa: F401
from .tape import ExecOptions, RunContext, RuntimeFailure, Tape  # noqa: F401
from .timeaxis import TIME, TimeAxis, array_shape  # noqa: F401
