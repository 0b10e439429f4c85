"""What a command pays for before it starts: `nnspec run` on a tiny spec should take about a
second, so nothing imports what only some commands need, and matplotlib (0.45 s) loads in a
helper process while the network trains. The guards name modules, not timings."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("matplotlib", "PIL", "torch", "optuna", "distributed", "dask", "IPython", "nltk")


def loaded_after(code: str, modules=HEAVY + ("safetensors", "rich")) -> list[str]:
    """The ``modules`` a fresh interpreter has loaded after running ``code``."""
    code += f"\nimport sys, json\nprint(json.dumps(sorted(m for m in {modules!r} if m in sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_compiling_a_spec_and_running_its_model_load_no_plotting_training_or_optional_extras():
    code = ("import nnspec\n"
            "model = nnspec.Model.from_file('specs/xor_train.nn')\n"
            "model.forward({'x': [[0.0, 1.0]]})\n")
    assert loaded_after(code) == []


def test_importing_the_command_line_leaves_plotting_and_torch_for_later():
    assert not set(loaded_after("import nnspec.cli\nnnspec.cli.build_parser()")) & set(HEAVY)


def test_nnspec_run_draws_its_plots_in_a_helper_process(tmp_path):
    code = ("from nnspec.cli import main\n"
            f"assert main(['run', 'specs/xor_train.nn', '--runs', {str(tmp_path)!r}, '--quiet']) == 0\n")
    assert "matplotlib" not in loaded_after(code)
    (run,) = tmp_path.iterdir()
    assert (run / "plots" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "results.json").exists() and (run / "last").is_dir()
