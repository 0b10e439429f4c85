"""``nnspec run --folds K``: k-fold cross-validation, here or as jobs on a Dask cluster."""
from __future__ import annotations

import sys

from ..errors import UsageError
from ..train.rundir import nan_to_null
from .output import emit_json
from .training import spec_text, train_session


def cross_validate(args) -> dict:
    """k-fold cross-validation (``nnspec run --folds K``) in this process: trains every fold, each in
    its own directory (``fold-01/`` ...) under one run directory, and summarises the held-out test
    figures over the folds (``nnspec.sweep.cv.summarise``, as the cluster's) into that directory's results.json. Each fold that
    finishes is recorded in progress.json as the cluster's cross-validation records it
    (nnspec.sweep.cv), so ``--resume CV_DIR`` keeps the finished folds and trains the others."""
    import argparse
    import shutil
    from pathlib import Path

    from ..session import open_session
    from ..sweep.cv import PROGRESS_FILE, read_progress, summarise, what_was_asked, write_progress
    from ..train.rundir import RunDir
    k = args.folds
    if k < 2:
        raise UsageError(f"--folds needs at least 2 folds, got {k}")
    name = open_session(args.spec, overrides=args.set or [], with_data=False).compiled.name  # spec errors first
    asked = what_was_asked(args.spec, k, None, args.trials, args.set or [], args.seed, bool(args.float64))
    done: dict = {}
    parent = None
    if args.resume:
        parent = RunDir(path=args.resume) if (Path(args.resume) / PROGRESS_FILE).exists() else None
        done = read_progress(Path(args.resume), asked)  # the folds finished, if it began as asked now
    fold_args = argparse.Namespace(**{**vars(args), "resume": None})  # each fold trains from its start
    reports, results = [], []      # each fold's flat metrics (reported) and its result (summarised, kept)
    try:
        for fold in range(k):
            if str(fold + 1) in done:
                results.append(done[str(fold + 1)]["result"])
                reports.append(_metrics_of(results[-1]))
                continue
            session = open_session(args.spec, overrides=args.set or [], fold=(k, fold), seed=args.seed,
                                   dtype="float64" if args.float64 else None, memory_limit=args.memory_limit)
            if parent is None and not args.no_save:
                parent = RunDir(spec_name=f"{name}-{k}fold", root=args.runs)
                parent.write_spec(spec_text(session))
                write_progress(parent.path, asked, done)
            if not args.json and not args.quiet:
                print(f"fold {fold + 1}/{k}", file=sys.stderr)
            fold_dir = parent.path / f"fold-{fold + 1:02d}" if parent else None
            if fold_dir is not None and fold_dir.exists():  # cut short by an interruption: trained again
                shutil.rmtree(fold_dir)
            report = train_session(session, fold_args, run_path=fold_dir)
            reports.append(report["metrics"])
            results.append(_result_of(report["metrics"], fold_dir))
            if parent is not None:
                done[str(fold + 1)] = {"result": results[-1]}
                write_progress(parent.path, asked, done)
    except KeyboardInterrupt:
        if parent is not None:
            print(f"interrupted; the folds finished so far are kept. Continue with the same command and "
                  f"--resume {parent.path}", file=sys.stderr, flush=True)
        raise
    summary = summarise(results, k)
    if parent is not None:
        parent.write_results(nan_to_null({"kind": "cross-validation", "spec": name,
                                          "spec_file": str(args.spec), **summary,
                                          **({"resumed": True} if args.resume else {}),
                                          "fold_dirs": [f"fold-{i + 1:02d}" for i in range(k)]}))
    return {"kind": "cross-validation", "metrics": summary, "outputs": {}, "folds": reports,
            "run_dir": str(parent.path) if parent else None}


def _result_of(metrics: dict, fold_dir) -> dict:
    """A fold's flat metrics as progress.json keeps a finished fold (the form of a cluster job's result)."""
    return {"state": "complete", "test": {k[5:]: v for k, v in metrics.items() if k.startswith("test_")},
            "best": {k: v for k, v in metrics.items() if k.startswith(("dev_", "train_"))},
            "best_epoch": metrics.get("best_epoch"), "epochs": metrics.get("epochs"),
            "seconds": metrics.get("seconds"), "run_dir": str(fold_dir) if fold_dir else None}


def _metrics_of(result: dict) -> dict:
    """A finished fold from progress.json as the flat metrics a fold reports (``_result_of`` undone)."""
    return {"best_epoch": result.get("best_epoch"), "epochs": result.get("epochs"),
            "seconds": result.get("seconds"), **(result.get("best") or {}),
            **{f"test_{k}": v for k, v in (result.get("test") or {}).items()}}


def run_with_folds(args) -> int:
    if args.inner_folds is not None or args.scheduler or args.workers:  # folds as jobs on a cluster
        from ..sweep.commands import run_folds
        if args.inner_folds is not None and args.inner_folds < 2:
            raise UsageError("--inner-folds takes a number from 2")
        summary = run_folds(args)
        report = {"kind": "cross-validation", "metrics": summary, "outputs": {}, "run_dir": summary.get("run_dir")}
    else:
        report = cross_validate(args)
    if args.json:
        emit_json(nan_to_null(report))
        return 0
    summary = report["metrics"]
    k = summary["folds"]
    nested = f" (settings chosen in each by {args.inner_folds}-fold cross-validation)" if args.inner_folds else ""
    for name, fig in summary["test"].items():
        if fig["mean"] is None:
            continue
        spread = (f" ± {fig['stderr']:.4f} (standard error; sd {fig['sd']:.4f}, n = {fig['n']})"
                  if fig["sd"] is not None else "")
        print(f"{k}-fold cross-validation{nested}: test {name} {fig['mean']:.4f}{spread}")
        print("  per fold: " + "  ".join("-" if v is None else f"{v:.4f}" for v in fig["per_fold"]))
    if report["run_dir"]:
        print(f"run directory {report['run_dir']}")
    return 0
