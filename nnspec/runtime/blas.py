"""How many threads BLAS runs on during a pass (``blas_threads``)."""
from __future__ import annotations

_BLAS: list | None = None


def _blas_libs() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded (none without threadpoolctl)."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
            _BLAS = [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
        except Exception:  # not installed, or an unknown platform
            _BLAS = []
    return _BLAS


class blas_threads:
    """``with blas_threads(n):`` BLAS runs on n threads inside (None: unchanged).

    Sets the thread count of each BLAS library directly (a few microseconds), so
    it can wrap every loop of every pass."""

    def __init__(self, n: int | None):
        self.n = n
        self.saved: list = []

    def __enter__(self):
        if self.n is not None:
            for lib in _blas_libs():
                cur = lib.get_num_threads()
                if cur != self.n:
                    self.saved.append((lib, cur))
                    lib.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        for lib, n in self.saved:
            lib.set_num_threads(n)
        self.saved = []
        return False
