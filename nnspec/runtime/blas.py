"""How many threads BLAS runs on during a pass (``blas_threads``)."""
from __future__ import annotations

_BLAS: list | None = None
_HELD: int | None = None   # the thread count an enclosing blas_threads has set, if any


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
    it can wrap every loop of every pass; inside an enclosing ``blas_threads`` of the
    same n (the trainer holds one over each epoch) it costs nothing at all, which
    matters to a tiny network's step of a few hundred microseconds."""

    __slots__ = ("n", "saved", "held", "active")   # (one or three every pass: no instance dict)

    def __init__(self, n: int | None):
        self.n = n
        self.saved: list = []
        self.held: int | None = None
        self.active = False

    def __enter__(self):
        global _HELD
        if self.n is not None and self.n != _HELD:
            self.active, self.held, _HELD = True, _HELD, self.n
            for lib in _blas_libs():
                cur = lib.get_num_threads()
                if cur != self.n:
                    self.saved.append((lib, cur))
                    lib.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        global _HELD
        for lib, n in self.saved:
            lib.set_num_threads(n)
        self.saved = []
        if self.active:
            _HELD, self.active = self.held, False
        return False
