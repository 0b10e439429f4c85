"""Data sources: one reader per ``data NAME(...)`` form a spec can use.

Every reader has the signature ``(args, kwargs, fields, base_dir) -> RawData``
and is registered by name in ``SOURCES``. Paths are relative to ``base_dir`` (the
spec's folder) and ``.gz`` files are read transparently. Files without lines
(npz, inline data) report the 1-based example number where a line would go.
"""
from __future__ import annotations

import csv
import io
import math
import re
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DataError
from .fields import FieldKind, FieldSpec, TEXT_KINDS
from ..limits import READ_LIMIT_VARIABLE, format_size, read_limit
from .files import read_bytes, read_lines, read_text, resolve
from .raw import SPLITS, RawData

Reader = Callable[[list, dict, list[FieldSpec], Path], RawData]
SOURCES: dict[str, Reader] = {}


def _source(name: str):
    def register(reader: Reader) -> Reader:
        SOURCES[name] = reader
        return reader
    return register


def read_source(name: str, args: list, kwargs: dict, fields: list[FieldSpec], base_dir: Path) -> RawData:
    """Run the reader a spec's ``data NAME(args...)`` names."""
    if name not in SOURCES:
        raise DataError(f"unknown data source; known sources: {', '.join(sorted(SOURCES))}",
                        f"data {name}(...)")
    return SOURCES[name](list(args), dict(kwargs), list(fields), Path(base_dir))


def source_files(name: str, args: list, kwargs: dict, base_dir: Path) -> list[Path]:
    """The files a ``data NAME(...)`` statement reads, as its reader resolves them (none for inline)."""
    if name == "inline":
        return []
    if name == "lines":
        names = [a[0] for a in args if isinstance(a, (tuple, list)) and a]
    else:
        names = [a for a in args if isinstance(a, str)] + [kwargs[s] for s in SPLITS if s in kwargs]
    return [resolve(base_dir, n) for n in names if isinstance(n, (str, Path))]


# ---------------------------------------------------------------- argument helpers

def _arg_error(source: str, message: str) -> DataError:
    # Argument errors belong to the spec; the compiler knows where the call is.
    return DataError(message, f"data {source}(...)")


def _check_kwargs(source: str, kwargs: dict, allowed) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise _arg_error(source, f"unknown argument {', '.join(unknown)} (accepted: {accepted})")


def _split_paths(source: str, args: list, kwargs: dict) -> dict[str, str]:
    """One positional path (split "all") or train/dev/test paths; pops the latter."""
    named = {s: kwargs.pop(s) for s in SPLITS if s in kwargs}
    if len(args) > 1 or (args and named):
        raise _arg_error(source, "give one file, or train/dev/test files, not both")
    paths = {"all": args[0]} if args else named
    if not paths:
        raise _arg_error(source, "needs a file, or train/dev/test files")
    for path in paths.values():
        if not isinstance(path, (str, Path)):
            raise _arg_error(source, f"a file name must be a string, got {path!r}")
    return paths


def _assign(source: str, fields: list[FieldSpec],
            wants: dict[str, Callable[[FieldSpec], bool]]) -> dict[str, list[FieldSpec]]:
    """Sort the declared fields into what the source provides; each provision
    needs at least one field and every field must get data."""
    taken = {what: [f for f in fields if accepts(f)] for what, accepts in wants.items()}
    for what, got in taken.items():
        if not got:
            raise _arg_error(source, f"provides {what}, but no declared field takes it")
    for f in fields:
        if not any(f in got for got in taken.values()):
            provides = "; ".join(wants)
            raise _arg_error(source, f"has no data for field {f.describe()}; it provides {provides}")
    return taken


def _label(value, where: tuple[str, int | None]):
    """A class label as int or str (a whole float such as 1.0 counts as 1)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise DataError(f"class label must be an integer or a string, got {value!r}", *where)


# ---------------------------------------------------------------- inline

@_source("inline")
def read_inline(args: list, kwargs: dict, fields: list[FieldSpec], base_dir: Path) -> RawData:
    """``inline(x = [[0, 1], [1, 0]], y = [1, 0])``: examples written in the spec."""
    if args:
        raise _arg_error("inline", "takes only field = [examples...] arguments")
    _check_kwargs("inline", kwargs, [f.name for f in fields])
    missing = [f.name for f in fields if f.name not in kwargs]
    if missing:
        raise _arg_error("inline", f"no examples for field {', '.join(missing)}")
    not_lists = [f.name for f in fields if not isinstance(kwargs[f.name], list)]
    if not_lists:
        raise _arg_error("inline", f"{', '.join(not_lists)} must be a list of examples, e.g. "
                                   f"{not_lists[0]} = [[0, 1], [1, 0]]")
    columns = {f.name: list(kwargs[f.name]) for f in fields}
    counts = {name: len(values) for name, values in columns.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name}: {n}" for name, n in counts.items())
        raise _arg_error("inline", f"fields have different numbers of examples ({listed})")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise _arg_error("inline", "no examples")
    origins = [("<inline>", i + 1) for i in range(n)]
    for f in fields:
        if f.kind is FieldKind.class_:
            columns[f.name] = [_label(v, o) for v, o in zip(columns[f.name], origins)]
        elif f.kind is FieldKind.classes:
            columns[f.name] = [[_label(v, o) for v in seq] for seq, o in zip(columns[f.name], origins)]
    return RawData({"all": columns}, {"all": origins})


# ---------------------------------------------------------------- csv / tsv

_INT = re.compile(r"[+-]?\d+")


def _candidates(field: FieldSpec, mapping: dict) -> list[list[str]]:
    """The column sets that may hold a field, in order of preference."""
    if field.name in mapping:
        wanted = mapping[field.name]
        return [[wanted] if isinstance(wanted, str) else list(wanted)]
    x, n = field.name, field.size
    if field.kind is FieldKind.vector and n is not None:
        return [[f"{x}{i}" for i in range(1, n + 1)], [f"{x}.{i}" for i in range(1, n + 1)],
                [f"{x}[{i}]" for i in range(n)]]
    return [[x]]


def _check_mapping(source: str, field: FieldSpec, mapping: dict) -> None:
    wanted = mapping[field.name]
    names = [wanted] if isinstance(wanted, str) else wanted
    if not isinstance(names, (list, tuple)) or not all(isinstance(c, str) for c in names):
        raise _arg_error(source, f"{field.name} = ... must name a column or a list of columns")
    width = (field.size or 1) if field.kind is FieldKind.vector else 1
    if len(names) != width:
        raise _arg_error(source, f"{field.name} = ... maps {len(names)} columns to field "
                                 f"{field.describe()}, which takes {width}")


def _span(columns: list[str]) -> str:
    return f"{columns[0]}..{columns[-1]}" if len(columns) > 2 else ", ".join(columns)


def _find_columns(field: FieldSpec, mapping: dict, header: list[str], file: str, line: int) -> list[int]:
    where = {name: i for i, name in enumerate(header)}
    options = _candidates(field, mapping)
    for columns in options:
        if all(c in where for c in columns):
            return [where[c] for c in columns]
    expected = " or ".join(_span(c) for c in options)
    raise DataError(f"no column for field {field.describe()}: expected {expected}; "
                    f"the header has {', '.join(header)}", file, line)


def _number(cell: str, column: str, file: str, line: int) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise DataError(f"column '{column}': expected a number, got {cell.strip()!r}", file, line) from None
    if not math.isfinite(value):
        raise DataError(f"column '{column}': expected a finite number, got {cell.strip()!r}", file, line)
    return value


def _labels(cells: list[str]) -> list:
    """A label column is integers if every cell is one, else strings."""
    if all(_INT.fullmatch(c) for c in cells):
        return [int(c) for c in cells]
    return cells


def _table_rows(path: Path, source: str, delimiter: str,
                encoding: str) -> tuple[list[str], int, list[tuple[int, list[str]]]]:
    """Header, its line, and (line, cells) of each data row; blank lines skipped."""
    file = str(path)
    reader = csv.reader(io.StringIO(read_text(path, encoding), newline=""), delimiter=delimiter)
    header, header_line, rows, end = None, 0, [], 0
    try:
        for cells in reader:
            line, end = end + 1, reader.line_num  # a quoted cell may span lines
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header, header_line = [c.strip() for c in cells], line
            elif len(cells) != len(header):
                raise DataError(f"expected {len(header)} columns as in the header (line {header_line}), "
                                f"found {len(cells)}", file, line)
            else:
                rows.append((line, cells))
    except csv.Error as e:
        raise DataError(f"malformed {source}: {e}", file, reader.line_num) from None
    if header is None:
        raise DataError("empty file: expected a header row", file)
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise DataError(f"column {', '.join(duplicated)} appears twice in the header", file, header_line)
    if not rows:
        raise DataError("no data rows after the header", file, header_line)
    return header, header_line, rows


def _read_table_file(path: Path, source: str, delimiter: str, encoding: str, fields: list[FieldSpec],
                     mapping: dict) -> tuple[dict[str, list], list[tuple[str, int]]]:
    file = str(path)
    header, header_line, rows = _table_rows(path, source, delimiter, encoding)
    columns: dict[str, list] = {}
    for f in fields:
        idx = _find_columns(f, mapping, header, file, header_line)
        if f.kind is FieldKind.vector:
            values = [[_number(cells[i], header[i], file, line) for i in idx] for line, cells in rows]
            columns[f.name] = [v[0] for v in values] if f.size is None else values
        elif f.kind is FieldKind.class_:
            cells = [cells[idx[0]].strip() for _, cells in rows]
            for cell, (line, _) in zip(cells, rows):
                if not cell:
                    raise DataError(f"column '{header[idx[0]]}': empty class label", file, line)
            columns[f.name] = _labels(cells)
        elif f.kind is FieldKind.classes:
            seqs = [cells[idx[0]].split() for _, cells in rows]
            ints = all(_INT.fullmatch(t) for seq in seqs for t in seq)
            columns[f.name] = [[int(t) for t in seq] if ints else seq for seq in seqs]
        else:  # tokens / bag: the text, tokenized by the field's level when encoded
            columns[f.name] = [cells[idx[0]] for _, cells in rows]
    return columns, [(file, line) for line, _ in rows]


def _read_table(source: str, delimiter: str, args: list, kwargs: dict, fields: list[FieldSpec],
                base_dir: Path) -> RawData:
    kwargs = dict(kwargs)
    paths = _split_paths(source, args, kwargs)
    encoding = kwargs.pop("encoding", "utf-8")
    _check_kwargs(source, kwargs, [f.name for f in fields] + ["encoding", *SPLITS])  # the rest map columns
    for f in fields:
        if f.kind is FieldKind.vector_seq:
            raise _arg_error(source, f"a {source} file cannot hold field {f.describe()}; use npz")
        if f.name in kwargs:
            _check_mapping(source, f, kwargs)
    splits, origins = {}, {}
    for split, path in paths.items():
        splits[split], origins[split] = _read_table_file(resolve(base_dir, path), source, delimiter,
                                                         encoding, fields, kwargs)
    return RawData(splits, origins)


@_source("csv")
def read_csv(args: list, kwargs: dict, fields: list[FieldSpec], base_dir: Path) -> RawData:
    """``csv("iris.csv")``: one example per row, columns found by field name."""
    return _read_table("csv", ",", args, kwargs, fields, base_dir)


@_source("tsv")
def read_tsv(args: list, kwargs: dict, fields: list[FieldSpec], base_dir: Path) -> RawData:
    """``tsv("data.tsv")``: as csv, tab-separated."""
    return _read_table("tsv", "\t", args, kwargs, fields, base_dir)


# ---------------------------------------------------------------- npz

def _read_npz_file(path: Path, fields: list[FieldSpec], mapping: dict) -> tuple[dict[str, list], list]:
    file = str(path)
    try:
        archive = np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"not a valid .npz file: {e}", file) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError("expected an .npz archive of named arrays (np.savez), found a single array", file)
    columns: dict[str, list] = {}
    with archive:
        for f in fields:
            key = mapping.get(f.name, f.name)
            if key not in archive.files:
                raise DataError(f"no array '{key}' for field {f.describe()}; the file has "
                                f"{', '.join(archive.files) or 'no arrays'}", file)
            _check_npy_size(archive, key, file)
            try:
                array = archive[key]
            except ValueError as e:  # object arrays need pickle, which is refused
                raise DataError(f"array '{key}' cannot be loaded without pickle: {e}", file) from None
            if array.ndim == 0:
                raise DataError(f"array '{key}' is a scalar; expected one entry per example", file)
            # Float rows stay arrays (cheap to stack again); the rest become Python values.
            columns[f.name] = list(array) if array.dtype.kind in "fc" and array.ndim > 1 else array.tolist()
    counts = {name: len(values) for name, values in columns.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{mapping.get(n, n)}: {c}" for n, c in counts.items())
        raise DataError(f"arrays have different numbers of examples ({listed})", file)
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise DataError("no examples", file)
    origins = [(file, i + 1) for i in range(n)]
    for f in fields:
        if f.kind is FieldKind.class_:
            columns[f.name] = [_label(v, o) for v, o in zip(columns[f.name], origins)]
    return columns, origins


def _check_npy_size(archive, key: str, file: str) -> None:
    """Refuse an array whose header declares more bytes than the read limit, before NumPy allocates them
    (a small compressed archive can declare, and decompress to, any size)."""
    fmt = np.lib.format
    try:
        with archive.zip.open(f"{key}.npy") as f:
            version = fmt.read_magic(f)
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = reader(f)
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"array '{key}' is not a valid .npy entry: {e}", file) from None
    size = math.prod(shape) * dtype.itemsize
    limit = read_limit()
    if size > limit:
        raise DataError(f"array '{key}' {tuple(shape)} of {dtype} holds {format_size(size)}, more than the "
                        f"limit of {format_size(limit)}; set {READ_LIMIT_VARIABLE} to read larger arrays", file)


@_source("npz")
def read_npz(args: list, kwargs: dict, fields: list[FieldSpec], base_dir: Path) -> RawData:
    """``npz("mnist.npz")``: one array per field, by field name or ``x = "images"``."""
    kwargs = dict(kwargs)
    paths = _split_paths("npz", args, kwargs)
    _check_kwargs("npz", kwargs, [f.name for f in fields] + list(SPLITS))  # the rest name arrays
    for name, key in kwargs.items():
        if not isinstance(key, str):
            raise _arg_error("npz", f"{name} = ... must name an array, got {key!r}")
    splits, origins = {}, {}
    for split, path in paths.items():
        splits[split], origins[split] = _read_npz_file(resolve(base_dir, path), fields, kwargs)
    return RawData(splits, origins)


# ---------------------------------------------------------------- lines

@_source("lines")
def read_lines_source(args: list, kwargs: dict, fields: list[FieldSpec], base_dir: Path) -> RawData:
    """``lines("a.txt" -> 1, "b.txt" -> 0, encoding = "latin-1")``: each non-blank
    line is one example, its text for the text inputs, the file's label the target."""
    _check_kwargs("lines", kwargs, ["encoding"])
    encoding = kwargs.get("encoding", "utf-8")
    if not args:
        raise _arg_error("lines", 'needs "file" -> label pairs')
    for pair in args:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], (str, Path))):
            raise _arg_error("lines", f'expected "file" -> label, got {pair!r}')
    taken = _assign("lines", fields, {
        "the text of each line": lambda f: f.kind in TEXT_KINDS and f.role == "input",
        "a class label per file": lambda f: f.kind is FieldKind.class_ and f.role == "target",
    })
    text_fields, label_fields = taken.values()
    columns = {f.name: [] for f in fields}
    origins = []
    for path, label in args:
        path = resolve(base_dir, path)
        file = str(path)
        label = _label(label, ("data lines(...)", None))
        start = len(origins)
        for number, line in enumerate(read_lines(path, encoding), 1):
            if not line.strip():
                continue
            for f in text_fields:
                columns[f.name].append(line)
            for f in label_fields:
                columns[f.name].append(label)
            origins.append((file, number))
        if len(origins) == start:
            raise DataError("empty file: no lines to read", file)
    return RawData({"all": columns}, {"all": origins})


# ---------------------------------------------------------------- conllu

CONLLU_COLUMNS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")
_WORD_ID = re.compile(r"\d+")
_SKIPPED_ID = re.compile(r"\d+-\d+|\d+\.\d+")  # multiword tokens, empty nodes


def _read_conllu_file(path: Path, column: int, encoding: str) -> tuple[list, list, list]:
    """Sentences as (words, tags, origins); the origin is the first word's line."""
    file = str(path)
    sentences, tag_lists, origins = [], [], []
    words: list[str] = []
    tags: list[str] = []
    start = 0

    def end_sentence() -> None:
        sentences.append(words)
        tag_lists.append(tags)
        origins.append((file, start))

    for number, line in enumerate(read_lines(path, encoding), 1):
        if line.startswith("#"):
            continue
        if not line.strip():
            if words:
                end_sentence()
                words, tags = [], []
            continue
        cells = line.split("\t")
        if len(cells) != 10:
            names = " ".join(c.upper() for c in CONLLU_COLUMNS)
            raise DataError(f"expected 10 tab-separated columns ({names}), found {len(cells)}", file, number)
        word_id = cells[0]
        if _SKIPPED_ID.fullmatch(word_id):
            continue
        if not _WORD_ID.fullmatch(word_id):
            raise DataError(f"ID {word_id!r} is not an integer (nor a range like 3-4 or an empty node "
                            f"like 8.1)", file, number)
        if int(word_id) != len(words) + 1:
            hint = " (a blank line must end each sentence)" if int(word_id) == 1 else ""
            raise DataError(f"word ID {word_id} out of sequence: expected {len(words) + 1}{hint}",
                            file, number)
        if not words:
            start = number
        words.append(cells[1])
        tags.append(cells[column])
    if words:  # the last sentence may lack its closing blank line
        end_sentence()
    if not sentences:
        raise DataError("empty file: no sentences", file)
    return sentences, tag_lists, origins


@_source("conllu")
def read_conllu(args: list, kwargs: dict, fields: list[FieldSpec], base_dir: Path) -> RawData:
    """``conllu(train = "en-train.conllu", dev = ..., test = ..., column = "upos")``:
    one example per sentence, words (FORM) to the tokens inputs, the column's tags
    to the classes fields. Multiword tokens and empty nodes are skipped."""
    kwargs = dict(kwargs)
    column = kwargs.pop("column", "upos")
    encoding = kwargs.pop("encoding", "utf-8")
    paths = _split_paths("conllu", args, kwargs)
    _check_kwargs("conllu", kwargs, ["column", "encoding", *SPLITS])
    if column not in CONLLU_COLUMNS[1:]:
        raise _arg_error("conllu", f"column = {column!r} is not a CoNLL-U column; "
                                   f"expected one of {', '.join(CONLLU_COLUMNS[1:])}")
    taken = _assign("conllu", fields, {
        "the words": lambda f: f.kind is FieldKind.tokens and f.role == "input",
        f"the {column} tags": lambda f: f.kind is FieldKind.classes,
    })
    word_fields, tag_fields = taken.values()
    splits, origins = {}, {}
    for split, path in paths.items():
        words, tags, origins[split] = _read_conllu_file(resolve(base_dir, path),
                                                        CONLLU_COLUMNS.index(column), encoding)
        splits[split] = {f.name: words for f in word_fields} | {f.name: tags for f in tag_fields}
    return RawData(splits, origins)


# ---------------------------------------------------------------- conllu_words

MAX_WORD_CHARS = 1000   # a FORM or LEMMA longer than this is refused, not padded into every batch


def _read_conllu_words_file(path: Path, columns: dict[str, int], encoding: str, types: bool,
                            repeat: str | None = None, max_chars: int | None = None,
                            chars: tuple[str, ...] = ()) -> tuple[dict[str, list], list]:
    """One example per syntactic word: each field the cell of its column. With ``types``, each
    distinct combination of the cells once, at the line it first occurs on; with ``repeat = "log"``
    1 + floor(log2 n) times, n its number of occurrences (frequent words weigh more, not n times)."""
    file = str(path)
    out: dict[str, list] = {name: [] for name in columns}
    origins: list[tuple[str, int]] = []
    seen: set[tuple] = set()
    counts: dict[tuple, int] = {}
    for number, line in enumerate(read_lines(path, encoding), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) != 10:
            names = " ".join(c.upper() for c in CONLLU_COLUMNS)
            raise DataError(f"expected 10 tab-separated columns ({names}), found {len(cells)}", file, number)
        if _SKIPPED_ID.fullmatch(cells[0]):
            continue
        if not _WORD_ID.fullmatch(cells[0]):
            raise DataError(f"ID {cells[0]!r} is not an integer (nor a range like 3-4 or an empty node "
                            f"like 8.1)", file, number)
        values = tuple(cells[i] for i in columns.values())
        for name, i, value in zip(columns, columns.values(), values):
            if not value:
                raise DataError(f"column {CONLLU_COLUMNS[i].upper()} is empty ('{value}'): field '{name}' "
                                f"needs a value for every word", file, number)
            if len(value) > MAX_WORD_CHARS:
                raise DataError(f"column {CONLLU_COLUMNS[i].upper()} holds {len(value)} characters, more than "
                                f"{MAX_WORD_CHARS}", file, number)
        if max_chars is not None and any(len(v) > max_chars for name, v in zip(columns, values) if name in chars):
            continue
        if types:
            counts[values] = counts.get(values, 0) + 1
            if values in seen:
                continue
            seen.add(values)
        for name, value in zip(columns, values):
            out[name].append(value)
        origins.append((file, number))
    if not origins:
        raise DataError("empty file: no words", file)
    if types and repeat == "log":
        times = [counts[tuple(out[name][i] for name in columns)].bit_length() for i in range(len(origins))]
        out = {name: [v for v, k in zip(values, times) for _ in range(k)] for name, values in out.items()}
        origins = [o for o, k in zip(origins, times) for _ in range(k)]
    return out, origins


@_source("conllu_words")
def read_conllu_words(args: list, kwargs: dict, fields: list[FieldSpec], base_dir: Path) -> RawData:
    """``conllu_words(train = ..., dev = ..., test = ..., types = "train", repeat = "log")``: one
    example per syntactic word (multiword tokens and empty nodes skipped), each field the cell of the
    CoNLL-U column it is named after (``form``, ``lemma``, ``upos``, ...) or mapped to (``x = "form"``).
    ``types = "train"``: the training part holds each distinct combination of the fields' cells
    once, or with ``repeat = "log"`` 1 + floor(log2 n) times for n occurrences (the other parts keep
    every word). ``max_chars = N`` leaves out the words with a character field longer than N (an
    encoder-decoder with attention holds a (target x source) array per word)."""
    kwargs = dict(kwargs)
    encoding = kwargs.pop("encoding", "utf-8")
    types = kwargs.pop("types", None)
    repeat = kwargs.pop("repeat", None)
    max_chars = kwargs.pop("max_chars", None)
    paths = _split_paths("conllu_words", args, kwargs)
    _check_kwargs("conllu_words", kwargs, [f.name for f in fields])
    if types not in (None, "train"):
        raise _arg_error("conllu_words", f'types = "train" is the only choice (the training part\'s distinct '
                                         f'words), got {types!r}')
    if max_chars is not None and (isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1):
        raise _arg_error("conllu_words", f"max_chars = N leaves out the words with a character field longer "
                                         f"than N, N at least 1; got {max_chars!r}")
    if repeat not in (None, "log") or (repeat is not None and types is None):
        raise _arg_error("conllu_words", f'repeat = "log" (with types = "train") repeats a distinct word 1 + '
                                         f'floor(log2 n) times for its n occurrences; got {repeat!r}')
    names = CONLLU_COLUMNS[1:]
    columns = {}
    for f in fields:
        column = kwargs.get(f.name, f.name)
        if column not in names:
            how = (f"{f.name} = {column!r} is not" if f.name in kwargs
                   else f"field '{f.name}' is not named after")
            raise _arg_error("conllu_words", f"{how} a CoNLL-U column ({', '.join(names)}); "
                                             f"map it with {f.name} = \"form\"")
        if f.kind in (FieldKind.classes, FieldKind.vector, FieldKind.vector_seq) or (
                f.kind is FieldKind.tokens and f.level != "char"):
            raise _arg_error("conllu_words", f"field {f.describe()}: a word's column is read as characters "
                                             f"('seq of char'), one class ('class') or a bag ('bag of token')")
        columns[f.name] = CONLLU_COLUMNS.index(column)
    splits, origins = {}, {}
    for split, path in paths.items():
        splits[split], origins[split] = _read_conllu_words_file(
            resolve(base_dir, path), columns, encoding, types == "train" and split == "train", repeat, max_chars,
            tuple(f.name for f in fields if f.kind is FieldKind.tokens))
    return RawData(splits, origins)


# ---------------------------------------------------------------- text

EOS = "<eos>"


@_source("text")
def read_text_source(args: list, kwargs: dict, fields: list[FieldSpec], base_dir: Path) -> RawData:
    """``text("input.txt", level = "char", split = [0.9, 0.1])``: one token stream
    for language modelling, cut into consecutive train/dev(/test) parts.

    Word level ends every line with an ``<eos>`` token (as in the Penn Treebank
    language-modelling setup); char level keeps the newline characters. ``level``
    defaults to the field's; the spec compiler should give the field the same
    level so its vocabulary tokenizes new text the same way.
    """
    taken = _assign("text", fields, {
        "one token stream": lambda f: f.kind is FieldKind.tokens and f.role == "input"})
    streams = taken["one token stream"]
    if len(streams) > 1:
        raise _arg_error("text", f"provides one token stream, but {len(streams)} tokens inputs are declared")
    field = streams[0]
    if len(args) != 1 or not isinstance(args[0], (str, Path)):
        raise _arg_error("text", "needs one file name")
    _check_kwargs("text", kwargs, ["level", "split", "encoding"])
    level = kwargs.get("level", field.level)
    fractions = kwargs.get("split", [0.9, 0.1])
    encoding = kwargs.get("encoding", "utf-8")
    if level not in ("word", "char"):
        raise _arg_error("text", f'level must be "word" or "char", got {level!r}')
    if not (isinstance(fractions, (list, tuple)) and 1 <= len(fractions) <= len(SPLITS)
            and all(isinstance(p, (int, float)) and p > 0 for p in fractions)
            and abs(sum(fractions) - 1) < 1e-6):
        raise _arg_error("text", f"split must be 1 to 3 positive fractions summing to 1, got {fractions!r}")

    path = resolve(base_dir, args[0])
    file = str(path)
    text = read_text(path, encoding)
    if level == "char":
        tokens = list(text)
        line_starts = None
    else:
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        per_line = [line.split() + [EOS] for line in lines]
        tokens = [t for words in per_line for t in words]
        line_starts = np.cumsum([len(words) for words in per_line])  # first token of line i+2

    def line_of(position: int) -> int:
        if line_starts is None:
            return text.count("\n", 0, position) + 1
        return int(np.searchsorted(line_starts, position, side="right")) + 1

    if not tokens:
        raise DataError("empty file: no text", file)
    cuts = [0] + [round(c * len(tokens)) for c in np.cumsum(fractions)]
    cuts[-1] = len(tokens)
    splits, origins = {}, {}
    for name, a, b in zip(SPLITS, cuts, cuts[1:]):
        if b <= a:
            raise DataError(f"{len(tokens)} tokens are too few for a {name} part of "
                            f"split = {list(fractions)}", file)
        splits[name] = {field.name: [tokens[a:b]]}
        origins[name] = [(file, line_of(a))]
    return RawData(splits, origins, stream=True)
