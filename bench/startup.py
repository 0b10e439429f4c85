"""How long a user waits for a tiny spec: ``nnspec run specs/xor_train.nn --no-save``, wall time
from a fresh interpreter to its exit, import included (issue #10 asks for under a second).

Each repeat runs the command as a user would (the ``nnspec`` script, else ``python -m nnspec.cli``,
in a new process, its output discarded), so the figure has the interpreter's start, the imports, compiling, 2,000 training
steps and printing what the network learned. One more process times those parts from inside.
Report the median and the range: this machine is shared and noisy.

    python bench/startup.py --repeats 9
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = "specs/xor_train.nn"

PARTS = r'''
import io, contextlib, time
t0 = time.perf_counter()
from nnspec.cli import main
from nnspec.session import open_session
from nnspec.train.loop import Trainer
t1 = time.perf_counter()
session = open_session({spec!r})
t2 = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    Trainer(session.model, session.data, session.settings, quiet=True).fit()
t3 = time.perf_counter()
print(f"{{t1 - t0:.3f}} {{t2 - t1:.3f}} {{t3 - t2:.3f}}")
'''


def run_once(spec: str) -> float:
    script = shutil.which("nnspec")
    command = [script] if script else [sys.executable, "-m", "nnspec.cli"]
    start = time.perf_counter()
    subprocess.run(command + ["run", spec, "--no-save"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def parts(spec: str) -> tuple[float, float, float]:
    """(import, compile and bind the data, train) seconds, from inside one process."""
    out = subprocess.run([sys.executable, "-c", PARTS.format(spec=spec)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return tuple(float(x) for x in out[-3:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--spec", default=SPEC)
    args = ap.parse_args(argv)
    run_once(args.spec)   # a first run compiles the bytecode and warms the file cache
    walls = sorted(run_once(args.spec) for _ in range(args.repeats))
    imp, session, train = parts(args.spec)
    print(f"nnspec run {args.spec} --no-save: median {statistics.median(walls):.2f} s wall, "
          f"range {walls[0]:.2f}-{walls[-1]:.2f} over {args.repeats} runs")
    print(f"one run from inside: import {imp:.2f} s, compile and data {session:.2f} s, training {train:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
