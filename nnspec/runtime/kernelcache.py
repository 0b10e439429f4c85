"""Compiled kernels kept on disk: a kernel module's source is written once under
``kernel_cache_dir()`` and imported from there, so numba's ``cache=True`` keeps its machine code
beside it and a second run does not wait for the compiler. numba is imported by the module itself,
only when a kernel is about to be used."""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def kernel_cache_dir() -> Path:
    """Where compiled kernels are kept: ``$NNSPEC_CACHE_DIR/kernels``, else the user's cache
    directory (``$XDG_CACHE_HOME/nnspec/kernels``, ``~/.cache/nnspec/kernels``)."""
    base = os.environ.get("NNSPEC_CACHE_DIR")
    if base:
        return Path(base) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "nnspec" / "kernels"


def load_module(name: str, text: str):
    """Import ``text`` as the module ``name``, written (once, atomically) under the cache directory,
    else the temporary directory; OSError when neither is writable."""
    for folder in (kernel_cache_dir(), Path(tempfile.gettempdir()) / "nnspec-kernels"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{name}.py"
            if not path.exists() or path.read_text() != text:
                tmp = folder / f".{name}.{os.getpid()}.tmp"
                tmp.write_text(text)
                os.replace(tmp, path)     # atomic: another process may be reading it
            break
        except OSError:
            continue
    else:
        raise OSError("no writable directory for compiled kernels")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


class LazyKernel:
    """A compiled function made at its first use: ``function`` of the module ``name`` compiled from
    ``text`` (``load_module``), or a tuple of them when ``function`` names several. ``get()`` gives
    it, or False when it cannot be had (numba missing, or no writable directory for it); ``loaded``
    says whether it has been made already. Tests set ``fn = False`` to run as where numba is missing."""

    __slots__ = ("name", "text", "function", "fn")

    def __init__(self, name: str, text: str, function: str | tuple[str, ...]):
        self.name, self.text, self.function = name, text, function
        self.fn = None     # not tried yet

    def get(self):
        if self.fn is None:
            self.fn = False
            if numba_available():
                try:
                    mod = load_module(self.name, self.text)
                except OSError:
                    return False
                f = self.function
                self.fn = getattr(mod, f) if isinstance(f, str) else tuple(getattr(mod, g) for g in f)
        return self.fn

    @property
    def loaded(self) -> bool:
        return bool(self.fn)
