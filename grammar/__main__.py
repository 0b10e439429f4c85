"""``python -m nnspec.grammar``: regenerate parser_tables.py after editing nnspec.lark."""
from pathlib import Path

from nnspec.syntax.parser import grammar_text, parser_tables_source

target = Path(__file__).with_name("parser_tables.py")
target.write_text(parser_tables_source(grammar_text()), encoding="utf-8")
print(f"wrote {target}")
