"""Cross-validation with its folds as jobs on a Dask cluster, and nested cross-validation.

    runs/<name>-<k>fold-<time>/
        fold-01/ ... fold-10/   an ordinary run directory per fold (trained on the other folds)
        results.json            per test metric: mean, standard deviation (n - 1), standard error, per fold
        sweeps/fold-01/ ...     nested: the sweep that chose fold 1's settings
        progress.json           what was asked and each fold finished so far: --resume goes on from it

Nested cross-validation (``--folds K --inner-folds J``): for each outer fold, a sweep chooses the
settings by J-fold cross-validation inside the other K - 1 folds only; then the chosen settings
train on those K - 1 folds and are scored on the outer fold, which nothing chose anything by. The
mean over the outer folds is an estimate without selection bias.

Without the sweep extra (no Dask) the folds of a plain cross-validation run one after another in
this process, with the same results: each fold is a pure function of (spec, settings, seed, fold).

An interrupted cross-validation resumes (``--resume CV_DIR``): folds already finished are kept, a
fold cut short is trained again from its start, and an outer fold's sweep goes on from its journal
(a finished trial is never run again): the work left is done, and nothing twice.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from . import SweepError
from .jobs import Job, run_job
from .space import read_sweep_spec, trial_text
from ..train.rundir import nan_to_null


def summarise(results: list[dict], k: int) -> dict[str, Any]:
    """Each held-out test figure over the folds: mean, standard deviation (n - 1), standard error of
    the mean and the per-fold values; plus the flat keys earlier versions reported. One summary for
    the folds run here, on a cluster or in one process (nnspec.cli.folds): ``results`` are the folds'
    results as progress.json keeps them (``{"test": {metric: value}, ...}``)."""
    metrics = sorted({m for r in results for m in (r.get("test") or {})})
    figures = {}
    for m in metrics:
        per_fold = [_finite((r.get("test") or {}).get(m)) for r in results]
        valid = [v for v in per_fold if v is not None]
        n = len(valid)
        mean = sum(valid) / n if n else None
        sd = math.sqrt(sum((v - mean) ** 2 for v in valid) / (n - 1)) if n > 1 else None
        figures[m] = {"mean": mean, "sd": sd, "stderr": sd / math.sqrt(n) if sd is not None else None,
                      "n": n, "per_fold": per_fold}
    acc = figures.get("accuracy", {})
    return {"folds": k, "test": figures, "test_accuracy_per_fold": acc.get("per_fold", [None] * k),
            "mean_test_accuracy": acc.get("mean"), "std_test_accuracy": acc.get("sd")}


def _finite(v):
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def cross_validate(spec_path: str, k: int, *, client=None, overrides: list[str] = (), seed: int | None = None,
                   float64: bool = False, runs: str = "runs", save: bool = True, inner_folds: int | None = None,
                   trials: int | None = None, quiet: bool = False, stream=None,
                   resume: str | None = None) -> dict[str, Any]:
    """K-fold cross-validation (nested with ``inner_folds``); returns the summary written to results.json.
    ``resume``: the directory of an interrupted cross-validation, continued where it stopped."""
    from ..session import open_session
    stream = stream if stream is not None else sys.stderr
    if k < 2:
        raise SweepError("--folds takes a number from 2")
    session = open_session(spec_path, overrides=overrides, with_data=False)  # spec errors before any job
    name = session.compiled.name
    cv_dir, done = None, {}
    asked = what_was_asked(spec_path, k, inner_folds, trials, overrides, seed, float64)
    if resume is not None:
        cv_dir = Path(resume)
        done = read_progress(cv_dir, asked)
    elif save:
        from ..train.rundir import RunDir
        cv_dir = RunDir._fresh(Path(runs), f"{name}-{k}fold", datetime.now())
        write_progress(cv_dir, asked, done)
    start = time.perf_counter()
    try:
        if inner_folds is not None:
            if cv_dir is None:
                raise SweepError("nested cross-validation keeps its sweeps in the run directory: drop --no-save")
            results, chosen = _nested(spec_path, k, inner_folds, trials, client, cv_dir, overrides, seed,
                                      float64, quiet, stream, asked, done)
        else:
            text = Path(spec_path).read_text(encoding="utf-8")
            jobs = [Job(str(spec_path), text, run_dir=str(cv_dir / f"fold-{i + 1:02d}") if cv_dir else None,
                        fold=(k, i), seed=seed, float64=float64, overrides=tuple(overrides)) for i in range(k)]
            results = _run_all(jobs, client, quiet, stream, progress=(cv_dir, asked, done) if cv_dir else None)
            chosen = None
    except KeyboardInterrupt:
        if cv_dir is not None:
            print(f"interrupted; the folds finished so far are kept. Continue with:\n  nnspec run {spec_path} "
                  f"--folds {k}" + (f" --inner-folds {inner_folds}" if inner_folds else "")
                  + (f" --trials {trials}" if trials else "") + "".join(f" --set '{o}'" for o in overrides)
                  + (f" --seed {seed}" if seed is not None else "") + (" --float64" if float64 else "")
                  + f" --resume {cv_dir}", file=stream, flush=True)
        raise
    summary = summarise(results, k)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if done:
        summary["resumed"] = True  # the time is this session's; earlier folds took theirs before
    summary["nested"] = {"inner_folds": inner_folds, "chosen": chosen} if inner_folds else None
    if cv_dir is not None:
        summary["run_dir"] = str(cv_dir)
        summary["fold_dirs"] = [f"fold-{i + 1:02d}" for i in range(k)]
        record = {"kind": "cross-validation", "spec": name, "spec_file": str(spec_path), **summary}
        (cv_dir / "results.json").write_text(json.dumps(nan_to_null(record), indent=2) + "\n", encoding="utf-8")
    return summary


def _run_all(jobs: list[Job], client, quiet: bool, stream, label: str = "fold", progress=None) -> list[dict]:
    """Run jobs on the cluster (or here, one by one); a fold that fails stops the cross-validation.
    ``progress`` (cv_dir, asked, done): folds already done are not run again, and each fold that
    finishes is recorded at once, so an interrupted cross-validation resumes."""
    k = len(jobs)
    results: list[dict | None] = [None] * k
    if progress is not None:
        for i in range(k):
            results[i] = progress[2].get(str(i + 1), {}).get("result")

    def finished(i: int, result: dict) -> None:
        results[i] = _checked(result, i, k, quiet, stream, label)
        if progress is not None:
            progress[2][str(i + 1)] = {"result": result}
            write_progress(*progress)

    if client is None:
        for i, job in enumerate(jobs):
            if results[i] is None:
                finished(i, run_job(job))
        return results
    futures = {i: client.submit(run_job, job, pure=False, key=f"nnspec-{label}-{i}-{time.time_ns()}")
               for i, job in enumerate(jobs) if results[i] is None}
    try:
        while any(r is None for r in results):
            for i, future in futures.items():
                if results[i] is None and future.done():
                    try:
                        result = future.result()
                    except Exception as e:  # the workers running it died, again and again
                        result = {"state": "failed", "error": f"{type(e).__name__}: {e}"}
                    finished(i, result)
            time.sleep(0.1)
    except BaseException:
        client.cancel(list(futures.values()))
        raise
    return results


def _checked(result: dict, i: int, k: int, quiet: bool, stream, label: str) -> dict:
    if result["state"] == "failed":
        raise SweepError(f"{label} {i + 1} of {k} failed: {result['error']}")
    if not quiet:
        test = result.get("test") or {}
        shown = "  ".join(f"test {m} {v:.4f}" for m, v in test.items() if isinstance(v, float))
        print(f"{label} {i + 1}/{k}: {shown} ({result['seconds']:.1f} s)", file=stream, flush=True)
    return result


PROGRESS_FILE = "progress.json"


def what_was_asked(spec_path, k: int, inner_folds: int | None, trials: int | None, overrides, seed: int | None,
                   float64: bool) -> dict:
    """What a cross-validation was asked for, kept in progress.json: it resumes only as it began.
    (nnspec run --folds in one process, cli/folds.py, records the same, so either resumes it.)"""
    return {"spec_sha": hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()[:16], "folds": k,
            "inner_folds": inner_folds, "trials": trials, "overrides": list(overrides), "seed": seed,
            "float64": float64}


def write_progress(cv_dir: Path, asked: dict, done: dict) -> None:
    """What was asked and every fold finished so far (written whole, then renamed: never half a file)."""
    cv_dir.mkdir(parents=True, exist_ok=True)
    partial = cv_dir / (PROGRESS_FILE + ".partial")
    partial.write_text(json.dumps(nan_to_null({"asked": asked, "done": done}), indent=1) + "\n", encoding="utf-8")
    os.replace(partial, cv_dir / PROGRESS_FILE)


def read_progress(cv_dir: Path, asked: dict) -> dict:
    """The folds an interrupted cross-validation finished; it resumes only as it was asked."""
    try:
        record = json.loads((cv_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{cv_dir} holds no cross-validation to resume (no {PROGRESS_FILE})") from None
    except (OSError, ValueError) as e:
        raise SweepError(f"{cv_dir / PROGRESS_FILE} cannot be read: {e}") from None
    if (cv_dir / "results.json").exists():
        raise SweepError(f"{cv_dir} holds a finished cross-validation (results.json): nothing to resume")
    before = record.get("asked", {})
    differ = [key for key in asked if before.get(key) != asked[key]]
    if differ:
        what = ", ".join(f"{key} {before.get(key)!r} then, {asked[key]!r} now" for key in differ)
        raise SweepError(f"{cv_dir} was begun otherwise ({what}); a cross-validation resumes only with the "
                         f"spec text and options it began with")
    return dict(record.get("done", {}))


def _nested(spec_path, k, inner, trials, client, cv_dir: Path, overrides, seed, float64, quiet, stream,
            asked: dict, done: dict):
    from .driver import Sweep, objective_of
    from .report import write_plots
    if client is None:
        raise SweepError("nested cross-validation runs sweeps: it needs the sweep extra")
    spec = read_sweep_spec(spec_path)
    trials = trials or spec.space.trials
    if not trials:
        raise SweepError("how many trials a sweep runs: give --trials N (or `trials N` in the sweep block)")
    objective = objective_of(spec, folds=inner)
    results, chosen = [], []
    for i in range(k):
        if str(i + 1) in done:  # finished before an interruption
            results.append(done[str(i + 1)]["result"])
            chosen.append(done[str(i + 1)]["chosen"])
            continue
        if not quiet:
            print(f"outer fold {i + 1}/{k}: choosing settings by {inner}-fold cross-validation on the other "
                  f"{k - 1} folds", file=stream, flush=True)
        sweep_dir = cv_dir / "sweeps" / f"fold-{i + 1:02d}"
        # a sweep an interruption cut short goes on from its journal: no finished trial runs twice
        sweep = Sweep(spec, sweep_dir, client, seed=seed, objective=objective, outer=(k, i), float64=float64,
                      overrides=overrides, quiet=quiet, stream=stream,
                      resume=(sweep_dir / "study.journal").exists())
        best = sweep.run(trials)
        write_plots(sweep)
        if best is None:
            raise SweepError(f"outer fold {i + 1}: no trial of its sweep completed (see {sweep.dir}/results.csv)")
        run_dir = cv_dir / f"fold-{i + 1:02d}"
        job = Job(str(spec.path), trial_text(spec, best.params), run_dir=str(run_dir), fold=(k, i),
                  float64=float64, saved_text=trial_text(spec, best.params, run_dir), overrides=tuple(overrides))
        results += _run_all([job], client, True, stream)
        chosen.append({"fold": i + 1, "trial": best.number, "inner_value": best.value, "params": best.params})
        done[str(i + 1)] = {"result": results[-1], "chosen": chosen[-1]}
        write_progress(cv_dir, asked, done)
        if not quiet:
            test = results[-1].get("test") or {}
            print(f"outer fold {i + 1}/{k}: trial {best.number} chosen ({objective.metric} {best.value:.4f} "
                  f"inside); outer test {objective.metric} {test.get(objective.metric, math.nan):.4f}",
                  file=stream, flush=True)
    return results, chosen
