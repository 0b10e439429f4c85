"""The one error type of the data layer: every message names where it comes from."""
from __future__ import annotations


class DataError(Exception):
    """A problem in a data file (or a data source's arguments).

    Rendered like a compiler diagnostic, ``file:line: error: message``, so that
    editors and terminals can jump to the offending line.
    """

    def __init__(self, message: str, file: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = str(file)
        self.line = line

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: error: {self.message}"
