"""The documentation is tested like code.

* Every ```nn block in docs/language.md (and README.md, if it has any) is a
  complete spec and must compile, without reading data (as
  ``nnspec check --no-data`` would).
* Every ```nn-fragment block must at least parse.
* Every ```nn-error block must fail to compile, and each ``error:`` line of the
  ```text block right after it must be among the diagnostics it produces.
* The tables of operations (generated from the op registry) and of training
  settings (checked against ``TrainSettings``) must be complete and current.
* Every standard-library cell is shown in the reference exactly as it ships.

When an op is added or its doc string changes, regenerate the table with

    python tests/test_docs.py --write
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest

from nnspec import SpecError, compile_text
from nnspec.errors import Diagnostics
from nnspec.ops import REGISTRY
from nnspec.settings import Choice, TrainSettings
from nnspec.syntax.parser import parse

ROOT = Path(__file__).resolve().parent.parent
LANGUAGE = ROOT / "docs" / "language.md"
INTERNALS = ROOT / "docs" / "internals.md"
README = ROOT / "README.md"

OPS_START, OPS_END = "<!-- ops-table:start -->", "<!-- ops-table:end -->"
SETTINGS_START, SETTINGS_END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


# ---- extracting code blocks ----------------------------------------------------

@dataclass
class Block:
    lang: str
    text: str
    file: Path
    line: int          # line of the opening fence

    @property
    def where(self) -> str:
        return f"{self.file.name}@{self.line}"


_FENCE = re.compile(r"^```([\w-]*)\s*$")


def blocks(path: Path) -> list[Block]:
    """Fenced code blocks of a Markdown file, in order (fences at column 0)."""
    if not path.exists():
        return []
    out, lang, start, body = [], None, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = _FENCE.match(line)
        if lang is None and m:
            lang, start, body = m.group(1), number, []
        elif lang is not None and line.rstrip() == "```":
            out.append(Block(lang, "\n".join(body) + "\n", path, start))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{path.name}:{start}: code block never closed"
    return out


def doc_blocks(lang: str) -> list[Block]:
    return [b for path in (LANGUAGE, README) for b in blocks(path) if b.lang == lang]


def _id(b: Block) -> str:
    return b.where


def compile_block(b: Block):
    # Data paths in examples are relative to specs/, like the shipped specs; nothing is read.
    return compile_text(b.text, file=b.where, base_dir=ROOT / "specs")


# ---- specs in the docs ----------------------------------------------------------

def test_the_reference_has_examples():
    assert len(doc_blocks("nn")) >= 20
    assert len(doc_blocks("nn-fragment")) >= 10


@pytest.mark.parametrize("block", doc_blocks("nn"), ids=_id)
def test_every_nn_block_compiles(block: Block):
    try:
        compile_block(block)
    except SpecError as e:
        pytest.fail(f"the spec at {block.where} does not compile:\n{e.diagnostics.render()}")


@pytest.mark.parametrize("block", doc_blocks("nn-fragment"), ids=_id)
def test_every_fragment_parses(block: Block):
    diags = Diagnostics()
    assert parse(block.text, block.where, diags) is not None, \
        f"the fragment at {block.where} has syntax errors:\n{diags.render()}"


def _error_examples() -> list[tuple[Block, Block | None]]:
    pairs = []
    for path in (LANGUAGE, README):
        bs = blocks(path)
        for i, b in enumerate(bs):
            if b.lang == "nn-error":
                after = bs[i + 1] if i + 1 < len(bs) and bs[i + 1].lang == "text" else None
                pairs.append((b, after))
    return pairs


@pytest.mark.parametrize("spec,shown", _error_examples(), ids=[_id(b) for b, _ in _error_examples()])
def test_error_examples_fail_with_the_messages_shown(spec: Block, shown: Block | None):
    with pytest.raises(SpecError) as info:
        compile_block(spec)
    actual = [d.message for d in info.value.diagnostics.items]
    assert shown is not None, f"{spec.where}: an nn-error block must be followed by a text block of its errors"
    expected = [m.group(1).strip() for m in re.finditer(r"\berror: (.*)", shown.text)]
    assert expected, f"{shown.where}: no 'error:' lines"
    for message in expected:
        assert message in actual, (f"{spec.where}: the documented error\n  {message}\nis not what nnspec says "
                                   f"now:\n  " + "\n  ".join(actual))


# ---- completeness ---------------------------------------------------------------------

def language_text() -> str:
    return LANGUAGE.read_text(encoding="utf-8")


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_every_op_is_documented(op: str):
    assert re.search(rf"`{re.escape(op)}\b", language_text()), f"op '{op}' is not in docs/language.md"


@pytest.mark.parametrize("setting", list(TrainSettings.model_fields))
def test_every_training_setting_is_documented(setting: str):
    assert f"`{setting}`" in language_text(), f"training setting '{setting}' is not in docs/language.md"


def test_every_data_source_optimizer_schedule_and_initializer_is_documented():
    from nnspec.catalog import INITIALIZERS, OPTIMIZERS, SCHEDULES
    from nnspec.data import SOURCES
    text = language_text()
    for kind, names in (("data source", SOURCES), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                        ("initialiser", INITIALIZERS)):
        missing = [n for n in names if f"`{n}" not in text]
        assert not missing, f"{kind}s missing from docs/language.md: {', '.join(missing)}"


def test_every_cli_command_is_documented():
    from nnspec.cli import build_parser
    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    missing = [c for c in commands if f"nnspec {c}" not in language_text()]
    assert not missing, f"commands missing from docs/language.md: {', '.join(missing)}"


def _stdlib_cells() -> dict[str, str]:
    """Each stdlib cell's source text, from 'cell NAME' to its closing brace."""
    cells = {}
    for entry in resources.files("nnspec.stdlib").iterdir():
        if entry.name.endswith(".nn"):
            text = entry.read_text(encoding="utf-8")
            for m in re.finditer(r"^cell (\w+)\(.*?^\}", text, re.S | re.M):
                cells[m.group(1)] = m.group(0)
    return cells


@pytest.mark.parametrize("cell", sorted(_stdlib_cells()))
def test_every_stdlib_cell_is_shown_as_it_ships(cell: str):
    source = _stdlib_cells()[cell]
    shown = "\n".join(b.text for b in blocks(LANGUAGE))
    assert source in shown, f"docs/language.md does not show stdlib cell '{cell}' as nnspec/stdlib has it"


# ---- the ops table -------------------------------------------------------------------

GROUPS = [  # module of the op classes -> heading
    ("activations", "Activations"),
    ("elementwise", "Elementwise arithmetic"),
    ("linalg", "Linear algebra"),
    ("sequence", "Sequence operations"),
    ("axes", "Sequence axes and attention"),
    ("losses", "Losses"),
    ("regularize", "Regularisation"),
]

def _number(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def usage(name: str) -> str:
    """How an op is called, from its facts ``args`` and ``operator``: ``a + b` or `add(a, b)``."""
    op = REGISTRY[name]
    args = ", ".join(op.args) + "".join(f", {k} = {_number(v)}" for k, v in op.attrs.items())
    text = f"`{name}({args})`"
    if op.operator:
        written = f" {op.operator} ".join(op.args) if len(op.args) == 2 else op.operator + op.args[0]
        text = f"`{written}` or " + text
    return text


def ops_table() -> str:
    """The Markdown of the generated op tables, one per group."""
    seen = set()
    parts = []
    for module, heading in GROUPS:
        names = sorted(n for n, op in REGISTRY.items() if type(op).__module__.endswith("." + module))
        if not names:
            continue
        seen.update(names)
        parts.append(_table(heading, names))
    rest = sorted(set(REGISTRY) - seen)
    if rest:
        parts.append(_table("Other", rest))
    return "\n\n".join(parts)


def _table(heading: str, names: list[str]) -> str:
    rows = [f"| {usage(n)} | {REGISTRY[n].doc.replace('|', chr(92) + '|')} |" for n in names]
    return f"**{heading}**\n\n| usage | what it computes |\n|---|---|\n" + "\n".join(rows)


def _between(text: str, start: str, end: str) -> str:
    assert start in text and end in text, f"markers {start} ... {end} are missing"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def test_ops_table_is_generated_from_the_registry():
    assert _between(language_text(), OPS_START, OPS_END) == ops_table(), \
        "the op tables in docs/language.md are stale: run  python tests/test_docs.py --write"


# ---- the losses table -----------------------------------------------------------------

LOSSES_START, LOSSES_END = "<!-- losses-table:start -->", "<!-- losses-table:end -->"
_PREDICTION = {"probabilities": "probabilities", "log_probabilities": "log-probabilities",
               "logits": "scores (logits)", "scores": "the input of a `step` unit", "reals": "reals"}
_TARGET = {"class": "a `class` or `seq of class`", "binary": "0/1 of the same shape",
           "real": "reals of the same shape"}


def losses_table() -> str:
    """Section 9's table, from each loss's facts: what it takes, and what accuracy counts."""
    rows = []
    for name in sorted(n for n, op in REGISTRY.items() if op.scalar_output):
        op = REGISTRY[name]
        pred = _PREDICTION[op.prediction] + (" `[K]`" if op.target == "class" else "")
        if op.logits_form:
            activation, fused = op.logits_form
            pred += f" (after `{activation}`; `{fused}` takes its input, stabler)"
        scored = {"class": "the largest score is the class", "real": "—",
                  "binary": f"1 when the prediction > {_number(op.threshold)}"}[op.target]
        rows.append(f"| {usage(name)} | {pred} | {_TARGET[op.target]} | {scored} |")
    return "| loss | prediction | target | accuracy |\n|---|---|---|---|\n" + "\n".join(rows)


def test_losses_table_is_generated_from_the_registry():
    assert _between(language_text(), LOSSES_START, LOSSES_END) == losses_table(), \
        "the losses table in docs/language.md is stale: run  python tests/test_docs.py --write"


# ---- the settings table -----------------------------------------------------------------

def render_default(value) -> str:
    """A setting's default as the table shows it."""
    if value is None or value == {}:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Choice):
        args = ", ".join(f"{k} = {_number(v)}" for k, v in value.args.items())
        return f"{value.name}({args})" if args else value.name
    return _number(value)


def test_settings_table_lists_every_setting_with_its_default():
    table = _between(language_text(), SETTINGS_START, SETTINGS_END)
    rows = {}
    for line in table.splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|\s*`?([^|`]*?)`?\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    fields = TrainSettings.model_fields
    assert set(rows) == set(fields), (f"settings table rows differ from TrainSettings: missing "
                                      f"{sorted(set(fields) - set(rows))}, extra {sorted(set(rows) - set(fields))}")
    for name, f in fields.items():
        assert rows[name] == render_default(f.default), \
            f"setting '{name}': the table says the default is {rows[name]!r}, it is {render_default(f.default)!r}"


# ---- internals -------------------------------------------------------------------------

def test_internals_names_every_pipeline_module():
    text = INTERNALS.read_text(encoding="utf-8")
    for module in ("syntax/parser.py", "loader.py", "expand.py", "graph.py", "recurrence.py", "shapes.py",
                   "plan.py", "runtime/executor.py", "runtime/reference.py", "runtime/timeaxis.py", "ops/registry.py", "dataset.py", "session.py", "train/loop.py"):
        assert module in text, f"docs/internals.md does not mention nnspec/{module}"


def write_ops_table() -> None:
    text = language_text()
    for start, end, table in ((OPS_START, OPS_END, ops_table()), (LOSSES_START, LOSSES_END, losses_table())):
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = f"{before}{start}\n{table}\n{end}{after}"
    LANGUAGE.write_text(text, encoding="utf-8")
    print(f"wrote the op and losses tables into {LANGUAGE}")


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_ops_table()
    else:
        print(ops_table())
