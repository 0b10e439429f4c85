"""Diagnostics: spec errors collected with their source spans, rendered once at the edge.

Every stage appends to a :class:`Diagnostics` instead of raising on the first
problem, so a user sees all the errors of a file in one run. A stage that
cannot go on calls :meth:`Diagnostics.raise_if_errors`, which raises
:class:`SpecError`; the CLI renders it as

    spec.nn:3:9: error: unknown function 'tahn'; did you mean 'tanh'?
        h[2] = tahn(W @ x + c)
               ^~~~
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable, Literal

from pydantic import BaseModel, ConfigDict


class Span(BaseModel):
    """A region of a source file; lines and columns count from 1."""

    model_config = ConfigDict(frozen=True)
    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


Severity = Literal["error", "warning", "note"]


@dataclass
class Diagnostic:
    severity: Severity
    message: str
    span: Span | None = None
    notes: list[tuple[str, Span | None]] = field(default_factory=list)

    def to_json(self) -> dict:
        where = {"file": self.span.file, "line": self.span.line, "column": self.span.column} if self.span else {}
        return {"severity": self.severity, "message": self.message, **where,
                "notes": [{"message": m, **({"line": s.line, "column": s.column, "file": s.file} if s else {})}
                          for m, s in self.notes]}


class Sources:
    """The text of every file a compilation read, so that any span can be shown."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self._lines: dict[str, list[str]] = {}  # split once per file, not once per line shown

    def add(self, file: str, text: str) -> None:
        self.texts[file] = text
        self._lines.pop(file, None)

    @classmethod
    def from_file(cls, file: str) -> "Sources":
        """The text of one file as it is now on disk (none when it cannot be read)."""
        sources = cls()
        text = _read_small(file)
        if text is not None:
            sources.add(file, text)
        return sources

    def line(self, file: str, number: int) -> str | None:
        text = self.texts.get(file)
        if text is None:
            return None
        if file not in self._lines:  # as the parser counts lines: not splitlines(), which also breaks at \f, ...
            self._lines[file] = text.split("\n")
        lines = self._lines[file]
        return lines[number - 1].rstrip("\r") if 0 < number <= len(lines) else None

    def snippet(self, span: Span) -> str | None:
        """The source text of a one-line span, e.g. ``shift(w, 1)``."""
        text = self.line(span.file, span.line)
        if text is None or span.end_line != span.line:
            return None
        return text[span.column - 1:span.end_column - 1] or None


class Diagnostics:
    """An ordered collection of diagnostics for one compilation."""

    def __init__(self, sources: Sources | None = None) -> None:
        self.sources = sources or Sources()
        self.items: list[Diagnostic] = []
        self._errors: set[tuple] = set()  # (message, span, notes) of each error, to drop repeats in constant time

    def error(self, message: str, span: Span | None = None,
              notes: Iterable[tuple[str, Span | None]] = ()) -> None:
        d = Diagnostic("error", message, span, list(notes))
        key = (message, span, tuple(tuple(note) for note in d.notes))
        if key not in self._errors:  # e.g. both directions of bidirectional(cell) making the same mistake
            self._errors.add(key)
            self.items.append(d)

    def warning(self, message: str, span: Span | None = None,
                notes: Iterable[tuple[str, Span | None]] = ()) -> None:
        self.items.append(Diagnostic("warning", message, span, list(notes)))

    @property
    def errors(self) -> list[Diagnostic]:
        """In file order, as rendered (and as ``--json`` lists them)."""
        return sorted((d for d in self.items if d.severity == "error"), key=_position)

    @property
    def warnings(self) -> list[Diagnostic]:
        return sorted((d for d in self.items if d.severity == "warning"), key=_position)

    def raise_if_errors(self) -> None:
        if self.errors:
            raise SpecError(self)

    def render(self, color: bool = False) -> str:
        ordered = sorted(self.items, key=_position)
        return "\n".join(render_diagnostic(d, self.sources, color) for d in ordered)


def _position(d: Diagnostic) -> tuple:
    s = d.span
    return (s.file, s.line, s.column) if s else ("", 0, 0)


class SpecError(Exception):
    """The spec has errors; ``diagnostics`` holds all of them."""

    def __init__(self, diagnostics: Diagnostics) -> None:
        self.diagnostics = diagnostics
        super().__init__(diagnostics.render())

    @classmethod
    def single(cls, message: str, span: Span | None = None, sources: Sources | None = None) -> "SpecError":
        diags = Diagnostics(sources)
        diags.error(message, span)
        return cls(diags)


_COLORS = {"error": "\033[1;31m", "warning": "\033[1;35m", "note": "\033[1;36m"}


def render_diagnostic(d: Diagnostic, sources: Sources, color: bool = False) -> str:
    parts = [_render_one(d.severity, d.message, d.span, sources, color)]
    parts += [_render_one("note", m, s, sources, color) for m, s in d.notes]
    return "\n".join(parts)


def render_message(severity: Severity, message: str, span: Span | None, sources: Sources | None = None,
                   color: bool = False) -> str:
    """One message rendered as a diagnostic is, for a problem found after compiling (a run-time
    failure at a step of the plan): the source line comes from ``sources``, else from its file."""
    if span is not None and (sources is None or span.file not in sources.texts):
        sources = Sources.from_file(span.file)
    return _render_one(severity, message, span, sources or Sources(), color)


_MAX_SHOWN_FILE = 16 * 2**20   # a spec file is small: a span pointing into a huge file shows no line


def _read_small(file: str) -> str | None:
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read(_MAX_SHOWN_FILE + 1)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return text if len(text) <= _MAX_SHOWN_FILE else None


def _render_one(severity: str, message: str, span: Span | None, sources: Sources, color: bool) -> str:
    label = f"{_COLORS[severity]}{severity}\033[0m" if color else severity
    if span is None:
        return f"{label}: {message}"
    out = [f"{span}: {label}: {message}"]
    text = sources.line(span.file, span.line)
    if text is not None:
        width = (span.end_column - span.column) if span.end_line == span.line else len(text) - span.column + 1
        out.append("    " + text.rstrip("\n"))
        out.append("    " + _indent_like(text, span.column - 1) + "^" + "~" * max(width - 1, 0))
    return "\n".join(out)


def _indent_like(text: str, n: int) -> str:
    """Spaces under the first n characters, keeping tabs so the caret lines up."""
    return "".join("\t" if ch == "\t" else " " for ch in text[:n])


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the closest candidate, or "" when none is close."""
    close = difflib.get_close_matches(name, [c for c in candidates if c != name], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class UsageError(Exception):
    """A mistake in how a command was called (an option, a missing argument): the CLI prints it."""
