"""What a command pays for before it starts: `nnspec run` on a tiny spec should take about a
second, so nothing imports what only some commands need, and matplotlib (0.45 s) loads in a
helper process while the network trains. The guards name modules, not timings."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("matplotlib", "PIL", "torch", "optuna", "distributed", "dask", "IPython", "nltk", "numba")


def loaded_after(code: str, modules=HEAVY + ("safetensors", "rich")) -> list[str]:
    """The ``modules`` a fresh interpreter has loaded after running ``code``."""
    code += f"\nimport sys, json\nprint(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_compiling_a_spec_and_running_its_model_load_no_plotting_training_or_optional_extras():
    code = ("import nnspec\n"
            "model = nnspec.Model.from_file('specs/xor_train.nn')\n"
            "model.forward({'x': [[0.0, 1.0]]})\n")
    assert loaded_after(code, HEAVY + ("safetensors", "rich", "nnspec.train", "nnspec.data")) == []


def test_parsing_builds_no_validator_of_the_syntax_tree():
    """The parser's nodes are made without validation (see nnspec/syntax/ast.py), so the schemas
    of the AST's models, a tenth of the start-up, are never built by a command that only compiles."""
    code = ("from nnspec.compiler import compile_file\n"
            "from nnspec.syntax import ast\n"
            "compile_file('specs/bilstm_tagger.nn')\n"
            "built = [c.__name__ for c in (ast.Module, ast.Call, ast.Equation, ast.Cell) if c.__pydantic_complete__]\n"
            "assert not built, built\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_parsed_nodes_are_what_validation_would_make():
    """What the parser makes without validation, validated again, is the same tree, field types
    included (repr tells 3 from 3.0): every spec and library file."""
    from nnspec.errors import Diagnostics
    from nnspec.loader import stdlib_sources
    from nnspec.syntax import ast, parser
    texts = {str(p): p.read_text(encoding="utf-8") for p in sorted(ROOT.glob("**/*.nn")) if ".venv" not in p.parts}
    texts.update(stdlib_sources())
    assert len(texts) > 30
    for file, text in texts.items():
        module = parser.parse(text, file, Diagnostics())
        if module is not None:
            assert repr(ast.Module.model_validate(module.model_dump())) == repr(module), file


def test_importing_the_command_line_leaves_plotting_and_torch_for_later():
    assert not set(loaded_after("import nnspec.cli\nnnspec.cli.build_parser()")) & set(HEAVY)


def test_nnspec_run_draws_its_plots_in_a_helper_process_and_a_tiny_net_waits_for_no_compiler(tmp_path):
    code = ("from nnspec.cli import main\n"
            f"assert main(['run', 'specs/xor_train.nn', '--runs', {str(tmp_path)!r}, '--quiet']) == 0\n")
    loaded = loaded_after(code)
    assert "matplotlib" not in loaded
    assert "numba" not in loaded     # (2,000 steps of arrays of 8 numbers: no compiled kernel pays)
    (run,) = tmp_path.iterdir()
    assert (run / "plots" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "results.json").exists() and (run / "last").is_dir()


def test_importing_nnspec_loads_nothing_until_a_name_is_asked_for():
    code = ("import sys, nnspec\n"
            "assert 'numpy' not in sys.modules and 'nnspec.compiler' not in sys.modules\n"
            "from nnspec import Model, compile_text\n"
            "assert Model.__module__ == 'nnspec.model' and 'nnspec.trained' not in sys.modules\n"
            "assert 'load' in dir(nnspec)\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_ctrl_c_while_the_command_line_loads_is_a_word_not_a_traceback():
    # the Ctrl-C lands while numpy is being imported, as it does in the first ~0.4 s of a command
    code = ("import builtins, sys\n"
            "real_import = builtins.__import__\n"
            "def interrupted_numpy(name, *args, **kwargs):\n"
            "    if name == 'numpy':\n"
            "        raise KeyboardInterrupt\n"
            "    return real_import(name, *args, **kwargs)\n"
            "builtins.__import__ = interrupted_numpy\n"
            "from nnspec.cli import main\n"
            "sys.exit(main(['check', 'specs/xor_train.nn']))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 130
    assert out.stderr.strip() == "interrupted"
