"""nnspec's modules form layers: a stage imports only its own stage, earlier stages and the leaf
layer, and no import (at the top of a module or inside a function) closes a cycle.

The stages, in order (docs/internals.md, section 1):

    leaf: errors, gcpause, limits, ops, catalog, initializers   (importable by every module)
    syntax < settings < loader (stdlib) < expand < graph (render, display) < recurrence < shapes
      < plan < optimize < compiler (export, decoding) < runtime (chunks) < data (dataset, baselines)
      < model (torch_weights; Model.from_file sizes a model from its data) < train < session < trained
      < sweep < onnx (export to ONNX) < the package nnspec (its API)
      < cli (nnspec.cli: output, arguments, plotting)
      < cli_commands (compile, train and model commands; onnx.commands)
      < cli_dispatch (the parser, nnspec.cli.main) < notebook

ALLOWED lists the one import against the order, with its reason.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nnspec"

LEAF = ("nnspec.errors", "nnspec.gcpause", "nnspec.limits", "nnspec.ops", "nnspec.catalog", "nnspec.initializers")
STAGES = [
    ("syntax", ("nnspec.syntax",)),
    ("settings", ("nnspec.settings",)),
    ("loader", ("nnspec.loader", "nnspec.stdlib")),
    ("expand", ("nnspec.expand",)),
    ("graph", ("nnspec.graph", "nnspec.render", "nnspec.display")),
    ("recurrence", ("nnspec.recurrence", "nnspec.axes")),
    ("shapes", ("nnspec.shapes",)),
    ("plan", ("nnspec.plan",)),
    ("optimize", ("nnspec.optimize",)),
    ("compiler", ("nnspec.compiler", "nnspec.export", "nnspec.decoding")),
    ("runtime", ("nnspec.runtime", "nnspec.chunks")),
    ("data", ("nnspec.data", "nnspec.dataset", "nnspec.baselines")),
    ("model", ("nnspec.model", "nnspec.torch_weights", "nnspec.decode")),
    ("train", ("nnspec.train",)),
    ("session", ("nnspec.session",)),
    ("trained", ("nnspec.trained",)),
    ("sweep", ("nnspec.sweep",)),
    ("onnx", ("nnspec.onnx",)),
    ("api", ("nnspec",)),
    ("cli", ("nnspec.cli", "nnspec.cli.output", "nnspec.cli.arguments", "nnspec.cli.plotting")),
    ("cli_commands", ("nnspec.cli.forward", "nnspec.cli.training", "nnspec.cli.folds", "nnspec.onnx.commands",
                      "nnspec.cli.compile_commands", "nnspec.cli.train_commands", "nnspec.cli.model_commands")),
    ("cli_dispatch", ("nnspec.cli.dispatch", "nnspec.cli.__main__")),
    ("notebook", ("nnspec.notebook",)),
]
ALLOWED = {  # (importer, imported): why
    ("nnspec", "nnspec.notebook"): "`%load_ext nnspec` calls the package's load_ipython_extension, which "
                                   "imports the cell magic only then, inside IPython",
    ("nnspec.cli", "nnspec.cli.dispatch"): "the package's main and build_parser (the console script's entry "
                                           "point) are looked up when asked for, so importing one of its "
                                           "modules (the notebook imports nnspec.cli.forward) builds no parser",
}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package under ``root`` by its dotted name (a package by its own name)."""
    found = {}
    for path in (root / "nnspec").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, mods: dict[str, Path]) -> set[str]:
    """The nnspec modules ``name`` imports anywhere in its text (functions included)."""
    path = mods[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for a in node.names:  # `from . import chunks` imports the module nnspec.chunks
                found.add(f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module)
    return {m for m in found if m in mods and m != name and (name, m) not in ALLOWED}


def stage(name: str) -> int:
    """-1 for the leaf layer, else the stage's position; the longest matching prefix decides."""
    best, rank = "", None
    for i, prefixes in [(-1, LEAF)] + [(i, p) for i, (_, p) in enumerate(STAGES)]:
        for prefix in prefixes:
            within = name.startswith(prefix + ".") and prefix != "nnspec"  # the package is only itself
            if (name == prefix or within) and len(prefix) > len(best):
                best, rank = prefix, i
    assert rank is not None, f"module {name} is in no stage: add it to STAGES or LEAF (and docs/internals.md)"
    return rank


def stage_name(name: str) -> str:
    return "leaf" if stage(name) < 0 else STAGES[stage(name)][0]


def loaded_with(name: str) -> set[str]:
    """The packages whose __init__ importing ``name`` runs too (not nnspec's own: every import
    runs it, and it sits above everything as the public API)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts))}


def upward_imports(mods: dict[str, Path]) -> list[str]:
    """Imports of a later stage, or by the leaf layer of anything but the leaf layer."""
    found = []
    for name in mods:
        for dep in imports(name, mods):
            for target in ({dep} | loaded_with(dep)) & set(mods):
                if stage(target) > stage(name) or (stage(name) < 0 <= stage(target)):
                    found.append(f"{name} ({stage_name(name)}) imports {target} ({stage_name(target)})")
    return sorted(found)


def import_cycles(mods: dict[str, Path]) -> list[list[str]]:
    graph = nx.DiGraph()
    graph.add_nodes_from(mods)
    graph.add_edges_from((m, d) for m in mods for d in imports(m, mods))
    return list(nx.simple_cycles(graph))


MODULES = modules()

# Inside the runtime: the reference engine reads only the core; the fast paths sit beside it (they
# may use its adjoint, never the reverse); the executor dispatches to both.
RUNTIME_LAYERS = [
    ("core", ("timeaxis", "axes", "reuse", "blas", "tape", "facts", "pool", "rowgrad", "gradsum", "paramblocks")),
    ("reference", ("reference",)),
    ("fast paths", ("steps", "loopprogram", "loops", "loopback", "prepared", "profile", "fusedcode", "fused",
                    "kernelcache", "fastact", "segments", "plainkernels")),
    ("executor", ("executor",)),
]


def test_every_module_is_in_a_stage():
    for name in MODULES:
        stage(name)


def test_no_module_imports_a_later_stage():
    upward = upward_imports(MODULES)
    assert not upward, "upward imports:\n  " + "\n  ".join(upward)


def test_no_import_cycle():
    cycles = import_cycles(MODULES)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles[:5])


def test_the_runtime_reference_engine_depends_on_no_fast_path():
    rank = {f"nnspec.runtime.{m}": i for i, (_, ms) in enumerate(RUNTIME_LAYERS) for m in ms}
    inside = {m for m in MODULES if m.startswith("nnspec.runtime.")}
    assert inside == set(rank), "add the module to RUNTIME_LAYERS"
    upward = [f"{m} imports {d}" for m in inside for d in imports(m, MODULES) if rank.get(d, -1) > rank[m]]
    assert not upward, upward


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    files = {"__init__.py": "", "errors.py": "from .graph import Graph\n",
             "graph.py": "def init():\n    from .train.init import INITIALIZERS\n",
             "train/__init__.py": "", "train/init.py": "",
             "cli/__init__.py": "", "cli/dispatch.py": "from .output import emit_json\n",
             "cli/output.py": "def f():\n    from .dispatch import main\n"}
    for rel, text in files.items():
        (tmp_path / "nnspec" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "nnspec" / rel).write_text(text)
    mods = modules(tmp_path)
    assert upward_imports(mods) == ["nnspec.cli.output (cli) imports nnspec.cli.dispatch (cli_dispatch)",
                                    "nnspec.errors (leaf) imports nnspec.graph (graph)",
                                    "nnspec.graph (graph) imports nnspec.train (train)",
                                    "nnspec.graph (graph) imports nnspec.train.init (train)"]
    assert sorted(map(sorted, import_cycles(mods))) == [["nnspec.cli.dispatch", "nnspec.cli.output"]]


def test_compiling_a_spec_with_a_train_block_loads_no_training_code():
    code = ("import sys, json, nnspec\n"
            "nnspec.Model.from_file('specs/xor_train.nn')\n"   # reads the train block: dtype, seed, init
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('nnspec', 'safetensors')))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "nnspec.graph" in loaded and "nnspec.settings" in loaded
    assert not [m for m in loaded if m.startswith(("nnspec.train", "safetensors"))], loaded


@pytest.mark.parametrize("kind", ["initializers", "optimizers", "schedules", "averages", "views"])
def test_the_catalog_matches_what_it_names(kind):
    import inspect

    from nnspec import catalog, initializers
    from nnspec.data.views import VIEWS
    from nnspec.train.optim import OPTIMIZERS
    from nnspec.train.schedule import SCHEDULES
    from nnspec.train.average import AVERAGES

    def settings(fn, skip):
        return {p.name: (catalog.REQUIRED if p.default is inspect.Parameter.empty else p.default)
                for p in inspect.signature(fn).parameters.values() if p.name not in skip}

    if kind == "views":
        assert catalog.VIEWS == tuple(VIEWS)
        return
    table, real, skip = {
        "initializers": (catalog.INITIALIZERS, initializers.INITIALIZERS, ("shape", "rng", "dtype")),
        "optimizers": (catalog.OPTIMIZERS, {k: c.__init__ for k, c in OPTIMIZERS.items()}, ("self",)),
        "schedules": (catalog.SCHEDULES, {k: c.__init__ for k, c in SCHEDULES.items()}, ("self", "lr")),  # lr: the optimizer's
        "averages": (catalog.AVERAGES, {k: c.__init__ for k, c in AVERAGES.items()}, ("self",)),
    }[kind]
    assert list(table) == list(real)
    for name, fn in real.items():
        assert table[name] == settings(fn, skip), f"catalog.{kind.upper()}[{name!r}] differs from the code"
