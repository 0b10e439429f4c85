"""The parser is loaded from tables shipped with nnspec (grammar/parser_tables.py), not built at
every start: they must be generated from the grammar as it is, and parse as the grammar does."""
import hashlib
from pathlib import Path

import pytest
from lark.exceptions import UnexpectedInput

from nnspec.grammar import parser_tables
from nnspec.syntax import parser

ROOT = Path(__file__).resolve().parent.parent


def test_tables_are_generated_from_the_grammar_as_it_is():
    grammar = (ROOT / "grammar" / "nnspec.lark").read_text(encoding="utf-8")
    assert parser_tables.GRAMMAR_SHA256 == hashlib.sha256(grammar.encode("utf-8")).hexdigest(), (
        "grammar/nnspec.lark changed: run `python -m nnspec.grammar` to regenerate grammar/parser_tables.py")


def test_the_parser_is_loaded_from_the_tables():
    parser._lark.cache_clear()
    assert parser._lark().source_path == "<deserialized>"


def test_stale_tables_are_not_used(monkeypatch):
    monkeypatch.setattr(parser_tables, "GRAMMAR_SHA256", "0" * 64)
    parser._lark.cache_clear()
    try:
        assert parser._lark().source_path != "<deserialized>"
    finally:
        parser._lark.cache_clear()


def _outcome(lark, text):
    try:
        return lark.parse(text)
    except UnexpectedInput as e:
        return (type(e).__name__, e.line, e.column)


@pytest.mark.parametrize("broken", [False, True])
def test_loaded_and_built_parsers_agree_on_every_shipped_spec(broken):
    parser._lark.cache_clear()
    loaded, built = parser._lark(), parser.build_lark(parser.grammar_text())
    files = sorted(ROOT.glob("specs/**/*.nn")) + sorted((ROOT / "nnspec" / "stdlib").glob("*.nn"))
    assert files
    for f in files:
        text = f.read_text(encoding="utf-8") + "\n"
        if broken:  # and on the errors they report
            text = text.replace("]", "", 1).replace("=", "= =", 1)
        assert _outcome(loaded, text) == _outcome(built, text), f
