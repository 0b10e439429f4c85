"""``nnspec sweep`` and the cluster side of ``nnspec run --folds``: argument parsing and output only."""
from __future__ import annotations

import json
import signal
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from . import SweepError, available, require


def add_cluster_options(p) -> None:
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on a running Dask cluster (default: a local one, one worker process per core)")
    p.add_argument("--workers", type=int, metavar="K", help="worker processes of the local cluster")


def add_sweep_command(sub) -> None:
    s = sub.add_parser("sweep", help="search the spec's sweep { ... } space with Optuna, trials on a Dask cluster")
    s.add_argument("spec")
    s.add_argument("--trials", type=int, metavar="N", help="trials to finish (default: the sweep block's trials)")
    add_cluster_options(s)
    s.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep")
    s.add_argument("--seed", type=int, help="the sampler's seed (default: the spec's seed)")
    s.add_argument("--set", action="append", metavar="SETTING",
                   help="a training setting every trial uses (one the sweep does not search), as for nnspec run")
    s.add_argument("--runs", default="runs", help="where the sweep directory goes (default: runs/)")
    s.add_argument("--float64", action="store_true", help="train in float64")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    from ..train.rundir import RunDir
    from .space import read_sweep_spec
    spec = read_sweep_spec(args.spec)
    require("optuna")
    require("distributed")
    trials = args.trials or spec.space.trials
    if not trials or trials < 1:
        raise SweepError("how many trials: give --trials N (or `trials N` in the sweep block)")
    if not args.resume:
        from ..session import open_session
        name = open_session(spec.path, text=spec.text, with_data=False).compiled.name
    from .cluster import dask_client
    from .driver import Sweep
    from .report import print_table, write_plots, write_results
    quiet = args.quiet or args.json
    with dask_client(args.scheduler, args.workers) as client, _terminate_as_interrupt():
        # made once the cluster answers: an unreachable scheduler leaves no empty sweep directory
        directory = Path(args.resume) if args.resume else RunDir._fresh(Path(args.runs), f"{name}-sweep",
                                                                         datetime.now())
        sweep = Sweep(spec, directory, client, resume=bool(args.resume), seed=args.seed, float64=args.float64,
                      overrides=args.set or [], quiet=quiet)
        if not quiet:
            print(f"sweep of {spec.path.name}: {sweep.objective.describe()}, {trials} trials, "
                  f"{sweep.batch} at a time; directory {directory}", file=sys.stderr, flush=True)
        try:
            best = sweep.run(trials)
        except KeyboardInterrupt:
            print(f"interrupted: continue with  nnspec sweep {args.spec} --resume {directory}", file=sys.stderr)
            raise
    write_results(sweep)
    plots = write_plots(sweep)
    if args.json:
        from ..train.rundir import nan_to_null
        from .report import trial_rows
        summary = {"kind": "sweep", "sweep_dir": str(directory), "objective": sweep.objective.describe(),
                   "best": {"trial": best.number, "value": best.value, "params": best.params} if best else None,
                   "trials": trial_rows(sweep), "plots": [str(p) for p in plots]}
        print(json.dumps(nan_to_null(summary), indent=2))
        return 0
    from rich.console import Console
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    print_table(sweep, console)
    if best is None:
        console.print(f"no trial completed; see {directory / 'results.csv'}")
        return 1
    console.print(f"best: trial {best.number}, {sweep.objective.metric} {best.value:.4f}; "
                  f"its spec: {directory / 'best.nn'} (nnspec run {directory / 'best.nn'})")
    return 0


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a batch system's, or `kill`) stops the driver like Ctrl-C: the cluster it started is
    closed and a sweep stays resumable, instead of the process dying with its workers left behind."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_folds(args) -> dict:
    """``nnspec run --folds K`` (``--inner-folds J``): on Dask when the extra is installed, else here."""
    from .cv import cross_validate
    common = dict(overrides=args.set or [], seed=args.seed, float64=args.float64, runs=args.runs,
                  save=not args.no_save, inner_folds=args.inner_folds, trials=args.trials,
                  quiet=args.quiet or args.json, resume=args.resume)
    if args.inner_folds is None and args.scheduler is None and args.workers is None and not available():
        return cross_validate(args.spec, args.folds, client=None, **common)
    from .cluster import dask_client
    with dask_client(args.scheduler, args.workers) as client, _terminate_as_interrupt():
        return cross_validate(args.spec, args.folds, client=client, **common)
