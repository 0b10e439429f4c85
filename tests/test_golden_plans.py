"""The plans of the library's cells are golden texts (tests/golden/plans/*.txt): a change to what
the compiler or its passes make of an LSTM, a GRU, ... shows in review as a diff. After a
deliberate change: ``python -m tests.golden --write``, and review the diff."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nnspec.plan import verify_plan
from tests.golden import SPECS, golden_text, path


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_plan_of_a_library_cell_is_its_golden_text(name):
    expected = path(name).read_text(encoding="utf-8") if path(name).exists() else ""
    assert golden_text(name) == expected, (
        f"the plan of '{name}' changed; if that is meant, run `python -m tests.golden --write` and "
        f"review the diff of {path(name).relative_to(path(name).parents[2])}")


def test_every_library_cell_has_a_golden_plan():
    """A cell added to nnspec/stdlib gets a golden text too."""
    stdlib = Path(__file__).resolve().parent.parent / "nnspec" / "stdlib"
    cells = {m for f in stdlib.glob("*.nn") for m in re.findall(r"^cell (\w+)\(", f.read_text(), re.M)}
    assert cells <= set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_golden_specs_verify(name):
    from nnspec.compiler import compile_text
    for optimized in (False, True):
        assert verify_plan(compile_text(SPECS[name], optimize=optimized).plan) == []
