"""`python -m bench`: the suite runner (see bench/run.py)."""
import sys

from bench.harness import main

sys.exit(main())
