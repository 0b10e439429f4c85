"""The slow mode: ``python -m tests.difftest --count 20000 --seed-start 0`` checks that many random
specs against every oracle and prints a table: counts and the worst error per oracle, the known
bugs it excused, and every finding (the first few shrunk to a minimal spec)."""
from __future__ import annotations

import argparse
import sys

from . import campaign
from .oracles import EXTRA_ORACLES, ORACLES


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.difftest", description=__doc__)
    ap.add_argument("--count", type=int, default=20000, help="how many specs (default 20000)")
    ap.add_argument("--seed-start", type=int, default=0, help="the first seed (default 0)")
    ap.add_argument("--oracles", default=",".join(ORACLES),
                    help="a comma-separated subset of " + ", ".join(ORACLES + EXTRA_ORACLES))
    ap.add_argument("--shrink", type=int, default=5, help="shrink the first N findings (default 5)")
    args = ap.parse_args(argv)
    oracles = [o.strip() for o in args.oracles.split(",") if o.strip()]
    unknown = [o for o in oracles if o not in ORACLES + EXTRA_ORACLES]
    if unknown:
        ap.error(f"unknown oracle {unknown[0]!r}; the oracles are {', '.join(ORACLES + EXTRA_ORACLES)}")

    def progress(seed, s):
        if s.generated % 1000 == 0:
            print(f"  {s.generated} specs, {len(s.findings)} findings", file=sys.stderr, flush=True)

    summary = campaign.run(range(args.seed_start, args.seed_start + args.count), oracles, args.shrink, progress)
    print(summary.table())
    return 1 if summary.findings or summary.compile_rate < 0.99 else 0


if __name__ == "__main__":
    sys.exit(main())
