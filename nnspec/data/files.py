"""Opening data files: paths relative to the spec, transparent gzip, decoding
errors reported with the file and line they occur on."""
from __future__ import annotations

import codecs
import zlib
from pathlib import Path

from ..limits import READ_LIMIT_VARIABLE, ReadRefused, gunzip_capped, read_limit, read_regular_file

from .errors import DataError


def resolve(base_dir: Path, path: str | Path) -> Path:
    """A data path as written in a spec, relative to the spec's folder."""
    return Path(base_dir) / path


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when the name ends in ``.gz``; a regular file, at most
    ``NNSPEC_READ_LIMIT`` bytes (also after decompression; see nnspec.limits)."""
    raise_limit = f"set {READ_LIMIT_VARIABLE} (e.g. {READ_LIMIT_VARIABLE}=8GiB) to read larger files"
    try:
        limit = read_limit()
        raw = read_regular_file(path, limit, raise_limit)
    except FileNotFoundError:
        raise DataError("no such file", str(path)) from None
    except ReadRefused as e:
        raise DataError(str(e), str(path)) from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise DataError(f"cannot read the file: {getattr(e, 'strerror', None) or e}", str(path)) from None
    if path.suffix != ".gz":
        return raw
    try:
        return gunzip_capped(raw, limit, raise_limit)
    except ReadRefused as e:
        raise DataError(str(e), str(path)) from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"not a valid gzip file: {e}", str(path)) from None


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The decoded text; a byte the encoding rejects is reported at its line."""
    if not isinstance(encoding, str):
        raise DataError(f"an encoding is a name such as \"latin-1\", not {encoding!r}", str(path))
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}", str(path)) from None
    try:
        b"a".decode(encoding)  # rot13, base64, zlib, ... are codecs, but not from bytes to text
    except UnicodeDecodeError:
        pass  # a text encoding, e.g. utf-16, that needs more than one byte
    except LookupError:
        raise DataError(f"encoding {encoding!r} is not a text encoding (use e.g. \"utf-8\" or \"latin-1\")",
                        str(path)) from None
    data = read_bytes(path)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        hint = ' (if the file is Latin-1, add encoding = "latin-1" to the data source)'
        raise DataError(
            f"cannot decode byte 0x{data[e.start]:02x} at column {column} as {encoding}"
            + (hint if codecs.lookup(encoding).name == "utf-8" else ""),
            str(path), line,
        ) from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not content


def read_lines(path: Path, encoding: str = "utf-8") -> list[str]:
    """The file's lines without their line ends; index i is line i + 1.

    Splits on "\\n" only (not str.splitlines, which also breaks on form feeds and
    Unicode separators and would shift every line number after them).
    """
    text = read_text(path, encoding)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final line end does not start another line
    return [line.removesuffix("\r") for line in lines]
