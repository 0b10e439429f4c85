"""Reading spec files: includes and the standard library of cells.

``include "other.nn"`` splices the statements of another file (relative to the
including file) in place, once. The standard library (``nnspec/stdlib/*.nn``)
is written in the language itself and its cells are always available; a cell
the user defines under the same name takes precedence.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import Diagnostics
from .gcpause import gc_paused
from .limits import SPEC_FILE_LIMIT, ReadRefused, read_regular_file
from .syntax import ast
from .syntax.parser import parse


@dataclass
class Program:
    """All statements of a spec and its includes, plus the cells in scope."""

    main_file: str
    statements: list = field(default_factory=list)
    cells: dict[str, ast.Cell] = field(default_factory=dict)
    stdlib_cells: dict[str, ast.Cell] = field(default_factory=dict)
    base_dir: Path = Path(".")
    files: list[str] = field(default_factory=list)  # every spec file read: the main one, then includes


def load_text(text: str, file: str, diags: Diagnostics, base_dir: Path | None = None,
              texts: dict[str, str] | None = None) -> Program:
    """``texts``: the included files' texts by path, read instead of the disk (see ``load_again``)."""
    base = base_dir if base_dir is not None else (Path(file).parent if file != "<string>" else Path("."))
    program = Program(main_file=file, base_dir=base)
    with gc_paused():
        program.stdlib_cells = stdlib_cells(diags)
        _splice(text, file, base, diags, program, seen=set(), texts=texts)
    return program


@dataclass(frozen=True)
class Origin:
    """Where a program was read from: what ``load_again`` needs, with the texts it read."""

    main_file: str
    base_dir: Path
    files: tuple[str, ...]


def origin(program: Program) -> Origin:
    return Origin(program.main_file, program.base_dir, tuple(program.files))


def load_again(where: Origin, diags: Diagnostics) -> Program:
    """The program read once before, parsed again from the texts that first reading left in
    ``diags.sources`` (not from the disk, where a file may have changed since)."""
    texts = dict(diags.sources.texts)
    program = load_text(texts[where.main_file], where.main_file, diags, base_dir=where.base_dir, texts=texts)
    program.files = list(where.files)
    return program


def load_file(path: str | Path, diags: Diagnostics) -> Program:
    path = Path(path)
    text = _read_spec(path, diags, None, f"no such spec file: {path}", f"cannot read spec file {path}", str(path))
    diags.raise_if_errors()
    program = load_text(text, str(path), diags, base_dir=path.parent)
    program.files.insert(0, str(path))
    return program


def _read_spec(path: Path, diags: Diagnostics, span, missing: str, cannot: str, not_text: str) -> str | None:
    """The text of a spec file: a regular file of at most SPEC_FILE_LIMIT bytes, in UTF-8."""
    try:
        data = read_regular_file(path, SPEC_FILE_LIMIT, "a spec is never that large")
    except FileNotFoundError:
        diags.error(missing, span)
        return None
    except ReadRefused as e:
        diags.error(f"{cannot}: {e}", span)
        return None
    except OSError as e:  # no permission, a loop of links, ...
        diags.error(f"{cannot}: {e.strerror or e}", span)
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        diags.error(f"{not_text}: not UTF-8 text ({e.reason} at byte {e.start})", span)
        return None


def _splice(text: str, file: str, base: Path, diags: Diagnostics, program: Program, seen: set,
            texts: dict[str, str] | None = None) -> None:
    module = parse(text, file, diags)
    if module is None:
        return
    for stmt in module.statements:
        if isinstance(stmt, ast.Include):
            _include(stmt, base, diags, program, seen, texts)
        elif isinstance(stmt, ast.Cell):
            if stmt.name in program.cells:
                prev = program.cells[stmt.name]
                diags.error(f"cell '{stmt.name}' is defined twice", stmt.span,
                            [("first defined here", prev.span)])
            program.cells[stmt.name] = stmt
        else:
            program.statements.append(stmt)


def _include(stmt: ast.Include, base: Path, diags: Diagnostics, program: Program, seen: set,
             texts: dict[str, str] | None = None) -> None:
    if "\0" in stmt.path or not stmt.path.endswith(".nn"):
        diags.error(f"an include names a spec file ending in .nn, not {stmt.path!r}", stmt.span)
        return
    try:
        path = (base / stmt.path).resolve()
    except (OSError, RuntimeError) as e:  # e.g. a loop of symbolic links
        diags.error(f"cannot read included file '{stmt.path}': {e}", stmt.span)
        return
    if path in seen:
        return  # included once, like a header guard
    seen.add(path)
    where = f"included file '{stmt.path}' (looked for {path})"
    if texts is not None and str(path) in texts:
        text = texts[str(path)]
    else:
        text = _read_spec(path, diags, stmt.span, f"cannot read {where}", f"cannot read {where}",
                          f"included file '{stmt.path}' is not a spec")
    if text is None:
        return
    program.files.append(str(path))
    _splice(text, str(path), path.parent, diags, program, seen, texts)


_STDLIB_CACHE: dict[str, ast.Cell] | None = None


def stdlib_cells(diags: Diagnostics) -> dict[str, ast.Cell]:
    """The cells of nnspec/stdlib/*.nn (parsed once per process)."""
    global _STDLIB_CACHE
    if _STDLIB_CACHE is None:
        cells: dict[str, ast.Cell] = {}
        for file, text in sorted(stdlib_sources().items()):
            module = parse(text, file, diags)
            for stmt in module.statements if module else []:
                if isinstance(stmt, ast.Cell):
                    cells[stmt.name] = stmt
        _STDLIB_CACHE = cells
    for file, text in stdlib_sources().items():  # so that spans inside stdlib cells can be shown
        diags.sources.add(file, text)
    return _STDLIB_CACHE


@functools.lru_cache(maxsize=1)
def stdlib_sources() -> dict[str, str]:
    """The text of each stdlib file by its display name, read once per process."""
    return {f"<stdlib>/{e.name}": e.read_text(encoding="utf-8")
            for e in resources.files("nnspec.stdlib").iterdir() if e.name.endswith(".nn")}
