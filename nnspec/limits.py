"""Bounds on what a spec can make nnspec read: nothing is read without a size limit.

Spec files and includes, and data files, are read only when they are regular
files (a FIFO, ``/dev/zero`` or ``/dev/urandom`` would never end) no larger than
a limit, and a gzip file is decompressed as a stream that stops at the same
limit (a small file can hold gigabytes of zeros). The limit for data files is
``NNSPEC_READ_LIMIT`` (e.g. ``NNSPEC_READ_LIMIT=8GiB``; default 2 GiB); spec
files are held to ``SPEC_FILE_LIMIT``. Memory is bounded by the ``memory_limit``
checks of nnspec.shapes and the training loop.
"""
from __future__ import annotations

import gzip
import io
import os
import re
import stat
from pathlib import Path

DEFAULT_READ_LIMIT = 2 * 2**30
SPEC_FILE_LIMIT = 16 * 2**20   # a spec of a million lines is still well below this
READ_LIMIT_VARIABLE = "NNSPEC_READ_LIMIT"

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")


class ReadRefused(Exception):
    """A file that is not read: not a regular file, or too large. The message says which and why."""


def parse_size(text: str) -> int:
    """A number of bytes with an optional unit: ``4GiB``, ``512 MB``, ``1000000``."""
    m = _SIZE.fullmatch(str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write e.g. 4GiB, 512MB or 1000000")
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"{text!r} is not a positive size")
    return value


def format_size(n: float) -> str:
    """Bytes in the largest binary unit that keeps the figure at or above 1: ``3.7 GiB``."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} bytes"


def size_setting(variable: str, default: int) -> int:
    """The size an environment variable sets (``8GiB``), else ``default``; a ValueError that names
    the variable when it is not a size."""
    text = os.environ.get(variable)
    if not text:
        return default
    try:
        return parse_size(text)
    except ValueError as e:
        raise ValueError(f"{variable}: {e}") from None


def read_limit() -> int:
    """The largest data file (after decompression) nnspec reads: ``NNSPEC_READ_LIMIT`` or 2 GiB."""
    try:
        return size_setting(READ_LIMIT_VARIABLE, DEFAULT_READ_LIMIT)
    except ValueError as e:
        raise ReadRefused(str(e)) from None


def read_regular_file(path: Path, limit: int, raise_limit: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes. ``raise_limit`` says how to allow more.

    Opens without blocking (a FIFO with no writer would block the open itself) and
    looks at what was opened, not at the name, so the answer holds for what is read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReadRefused(f"not a regular file ({_kind(info.st_mode)}); nnspec reads only regular files")
        if info.st_size > limit:
            raise ReadRefused(f"the file is {format_size(info.st_size)}, more than the limit of "
                              f"{format_size(limit)}; {raise_limit}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)  # the file may have grown since fstat
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ReadRefused(f"the file is larger than the limit of {format_size(limit)}; {raise_limit}")
    return data


def gunzip_capped(data: bytes, limit: int, raise_limit: str) -> bytes:
    """Decompress a gzip stream (all its members), stopping as soon as the output passes ``limit``."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
        out = g.read(limit + 1)
    if len(out) > limit:
        raise ReadRefused(f"decompressed, the file is larger than the limit of {format_size(limit)} "
                          f"(it is {format_size(len(data))} compressed); {raise_limit}")
    return out


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


__all__ = ["DEFAULT_READ_LIMIT", "SPEC_FILE_LIMIT", "ReadRefused", "format_size", "gunzip_capped", "parse_size",
           "read_limit", "read_regular_file"]
