"""Run the benchmark suite from anywhere:

    python bench/run.py [--configs mlp,rnn] [--repeats N] [--json out.json]

(`python -m bench` from the repo root does the same; --help lists every option.)
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
