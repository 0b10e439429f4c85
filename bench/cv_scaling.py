"""How the wall time of a cross-validation scales from 1 to 2 Dask workers: the same folds, the same
settings, run on a local cluster of one worker process and then of two, alternately, ``--repeats``
times each. Every fold is a pure function of (spec, settings, seed, fold), so both do the same work
(the script checks that their per-fold figures agree).

    python bench/cv_scaling.py                                       # specs/sentiment_ngrams.nn, 4 folds
    python bench/cv_scaling.py --spec specs/sentiment_bow.nn --folds 4 --set epochs=2 --repeats 2
    python bench/cv_scaling.py --json scaling.json

The load average (1 minute, before and after each run) is printed beside each time: on a shared
machine other processes take cores too, and a speed-up below 2 is often theirs, not Dask's.
Needs the sweep extra (pip install -e '.[sweep]').
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one_run(spec: str, folds: int, workers: int, overrides: list[str]) -> dict:
    from nnspec.sweep.cluster import dask_client
    from nnspec.sweep.cv import cross_validate
    load_before = os.getloadavg()[0]
    with dask_client(workers=workers) as client:   # cluster start-up is not timed: only the folds
        start = time.perf_counter()
        summary = cross_validate(spec, folds, client=client, overrides=overrides, save=False, quiet=True)
        seconds = time.perf_counter() - start
    return {"workers": workers, "seconds": round(seconds, 2), "load_before": load_before,
            "load_after": os.getloadavg()[0], "per_fold": summary["test_accuracy_per_fold"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default=str(ROOT / "specs" / "sentiment_ngrams.nn"))
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--set", action="append", default=[], metavar="SETTING")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    print(f"{args.folds}-fold cross-validation of {args.spec} {' '.join(args.set)}; "
          f"{os.cpu_count()} cores", flush=True)
    runs = []
    for _ in range(args.repeats):
        for workers in (1, 2):
            run = one_run(args.spec, args.folds, workers, args.set)
            runs.append(run)
            print(f"  {workers} worker{'s' * (workers > 1)}: {run['seconds']:7.1f} s   (load average "
                  f"{run['load_before']:.1f} before, {run['load_after']:.1f} after)", flush=True)
    if any(r["per_fold"] != runs[0]["per_fold"] for r in runs):
        print("the runs differ in their per-fold figures: they did not do the same work", file=sys.stderr)
        return 1
    best = {w: min(r["seconds"] for r in runs if r["workers"] == w) for w in (1, 2)}
    print(f"best of {args.repeats}: 1 worker {best[1]:.1f} s, 2 workers {best[2]:.1f} s; "
          f"speed-up {best[1] / best[2]:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"spec": args.spec, "folds": args.folds, "set": args.set,
                                               "cores": os.cpu_count(), "runs": runs, "best": best},
                                              indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
