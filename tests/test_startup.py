"""What a command pays for before it starts: `nnspec run` on a tiny spec should take about a
second, so the command line does not import what only some commands need."""
import subprocess
import sys


def test_importing_the_command_line_leaves_plotting_and_torch_for_later():
    code = ("import sys, nnspec.cli; "
            "print(sorted(m for m in ('matplotlib', 'torch', 'IPython') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
