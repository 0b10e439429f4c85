"""Training commands: run (train, resume, cross-validate, or run forward) and runs."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError
from ..train.loop import CHECKPOINT_SECONDS, TrainingInterrupted
from ..train.rundir import nan_to_null
from .arguments import count, memory_limit_flag
from .folds import run_with_folds
from .forward import run_forward
from .output import emit_json, fmt_num
from .training import train_session


def add_run(sub) -> None:
    r = sub.add_parser("run", help="train the spec if it has a train block, else run it forward on its data")
    r.add_argument("spec")
    r.add_argument("--set", action="append", metavar="SETTING",
                   help='override a training setting, e.g. --set epochs=5 --set "optimizer sgd(lr = 0.1)"')
    r.add_argument("--seed", type=count(0))
    r.add_argument("--folds", type=count(2), help="k-fold cross-validation (k >= 2): report mean test accuracy")
    r.add_argument("--inner-folds", type=int, metavar="J",
                   help="nested cross-validation: the spec's sweep chooses settings by J-fold cross-validation "
                        "inside each outer training part")
    r.add_argument("--trials", type=int, help="with --inner-folds: trials of each inner sweep")
    from ..sweep.commands import add_cluster_options
    add_cluster_options(r)
    r.add_argument("--float64", action="store_true", help="compute in float64")
    r.add_argument("--runs", default="runs", help="where run directories go (default: runs/)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint "
                   "(with --folds: an interrupted cross-validation, keeping its finished folds)")
    r.add_argument("--no-save", action="store_true", help="write no run directory")
    r.add_argument("--checkpoint-every", type=float, default=CHECKPOINT_SECONDS, metavar="SECONDS",
                   help="write the last/ checkpoint when this many seconds passed since the previous one "
                        f"(and at the end; default {CHECKPOINT_SECONDS:g}; 0: after every epoch)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--json", action="store_true")
    memory_limit_flag(r)
    r.set_defaults(func=cmd_run)


def add_runs(sub) -> None:
    u = sub.add_parser("runs", help="list the run directories: spec, date, status, best figure, size")
    u.add_argument("dir", nargs="?", default="runs", help="where the runs are (default: runs/)")
    u.add_argument("--json", action="store_true")
    u.set_defaults(func=cmd_runs)


def cmd_run(args) -> int:
    from ..session import open_session
    if args.folds:
        return run_with_folds(args)
    if args.inner_folds or args.scheduler or args.workers:
        raise UsageError("--inner-folds, --scheduler and --workers go with --folds (sweeps: nnspec sweep)")
    session = open_session(args.spec, overrides=args.set or [], seed=args.seed,
                           dtype="float64" if args.float64 else None, memory_limit=args.memory_limit)
    if session.compiled.flat.train is None and not args.set:
        return run_forward(session, args)
    report = train_session(session, args)
    if args.json:
        emit_json(nan_to_null(report))
    return 0


def cmd_runs(args) -> int:
    from ..train.rundir import list_runs
    root = Path(args.dir)
    if not root.is_dir():
        raise UsageError(f"{root}: no such directory (runs go to ./runs unless --runs says otherwise)")
    runs = list_runs(root)
    if args.json:
        emit_json(nan_to_null(runs))
        return 0
    if not runs:
        print(f"no runs under {root}")
        return 0
    from rich.table import Table
    table = Table(title=f"runs under {root}", title_justify="left")
    for col in ("spec", "date", "status", "epochs", "best", "size"):
        table.add_column(col, justify="right" if col in ("epochs", "size") else "left", no_wrap=True)
    for r in runs:
        best = f"{r['best']['name']} {fmt_num(r['best']['value'])}" if r["best"] else ""
        table.add_row(r["spec"], r["date"].replace("T", " ")[:16], r["status"],
                      str(r["epochs"] or ""), best, _fmt_bytes(r["bytes"]))
    from rich.console import Console
    Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def interrupted_message(e: TrainingInterrupted, args) -> str:
    """Where the run is and how to go on with it."""
    if e.run_dir is None:
        return f"interrupted in epoch {e.epoch} (nothing was saved: --no-save)"
    if getattr(args, "folds", None):
        return (f"interrupted in epoch {e.epoch} of the fold in {e.run_dir}; this cross-validation ran in "
                f"one process and is not resumed: run it again (one run with --workers K records each "
                f"finished fold, and --resume continues it)")
    if e.resume_epoch == 0:
        return (f"interrupted in epoch {e.epoch}: nothing to resume yet (no checkpoint had been written); "
                f"the run directory {e.run_dir} holds its settings and the metrics so far")
    import shlex
    command = ["nnspec", "run", args.spec, "--resume", e.run_dir]
    for setting in args.set or []:
        command += ["--set", setting]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    if args.float64:
        command.append("--float64")
    return (f"interrupted in epoch {e.epoch}; the run directory {e.run_dir} holds a checkpoint at the end of "
            f"epoch {e.resume_epoch}. Continue with:\n  {shlex.join(command)}")
