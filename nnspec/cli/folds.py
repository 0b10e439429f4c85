"""``nnspec run --folds K``: k-fold cross-validation, here or as jobs on a Dask cluster."""
from __future__ import annotations

import math
import sys

import numpy as np

from ..errors import UsageError
from ..train.rundir import nan_to_null
from .output import emit_json
from .training import spec_text, train_session


def cross_validate(args) -> dict:
    """k-fold cross-validation (``nnspec run --folds K``): trains every fold, each in its own
    directory (``fold-01/`` ...) under one run directory, and summarises the held-out test
    figures over the folds (``summarise_folds``) into that directory's results.json."""
    from ..session import open_session
    from ..train.rundir import RunDir
    k = args.folds
    if k < 2:
        raise UsageError(f"--folds needs at least 2 folds, got {k}")
    parent = None
    reports = []
    for fold in range(k):
        session = open_session(args.spec, overrides=args.set or [], fold=(k, fold), seed=args.seed,
                               dtype="float64" if args.float64 else None, memory_limit=args.memory_limit)
        if parent is None and not args.no_save:
            parent = RunDir(spec_name=f"{session.compiled.name}-{k}fold", root=args.runs)
            parent.write_spec(spec_text(session))
        if not args.json and not args.quiet:
            print(f"fold {fold + 1}/{k}", file=sys.stderr)
        report = train_session(session, args, run_path=parent.path / f"fold-{fold + 1:02d}" if parent else None)
        reports.append(report["metrics"])
    summary = summarise_folds(reports)
    if parent is not None:
        parent.write_results(nan_to_null({"kind": "cross-validation", "spec": session.compiled.name,
                                     "spec_file": str(session.compiled.program.main_file), **summary,
                                     "fold_dirs": [f"fold-{i + 1:02d}" for i in range(k)]}))
    return {"kind": "cross-validation", "metrics": summary, "outputs": {}, "folds": reports,
            "run_dir": str(parent.path) if parent else None}


def summarise_folds(fold_metrics: list[dict]) -> dict:
    """Each held-out test figure over the folds: mean, standard deviation (n - 1), standard error of
    the mean, and the per-fold values; plus the flat keys earlier versions reported."""
    k = len(fold_metrics)
    test_keys = [key for key in fold_metrics[0] if key.startswith("test_")] if fold_metrics else []
    figures = {}
    for key in test_keys:
        values = [m.get(key) for m in fold_metrics]
        valid = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        n = len(valid)
        sd = float(np.std(valid, ddof=1)) if n >= 2 else None
        figures[key[5:]] = {"mean": float(np.mean(valid)) if n else None, "sd": sd,
                            "stderr": sd / math.sqrt(n) if sd is not None else None,
                            "n": n, "per_fold": values}
    acc = figures.get("accuracy", {})
    return {"folds": k, "test": figures,
            "test_accuracy_per_fold": acc.get("per_fold", [None] * k),
            "mean_test_accuracy": acc.get("mean"), "std_test_accuracy": acc.get("sd")}


def run_with_folds(args) -> int:
    if args.inner_folds is not None or args.scheduler or args.workers or args.resume:  # folds as jobs
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
