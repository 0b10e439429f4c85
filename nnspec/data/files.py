"""Opening data files: paths relative to the spec, transparent gzip, decoding
errors reported with the file and line they occur on."""
from __future__ import annotations

import codecs
import gzip
from pathlib import Path

from .errors import DataError


def resolve(base_dir: Path, path: str | Path) -> Path:
    """A data path as written in a spec, relative to the spec's folder."""
    return Path(base_dir) / path


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when the name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError("no such file", str(path)) from None
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", str(path)) from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise DataError(f"not a valid gzip file: {e}", str(path)) from None


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The decoded text; a byte the encoding rejects is reported at its line."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"unknown encoding {encoding!r}", str(path)) from None
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
