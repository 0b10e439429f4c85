"""The driver of a sweep: it owns the Optuna study and hands trials to a Dask cluster.

    sweep-dir/
        study.journal     the Optuna study (JournalStorage on a file: no database server)
        sweep.json        what was asked: spec, trials, objective, seed, trials run at once
        spec.nn           the spec as it was when the sweep began
        trials/trial-0007/            an ordinary run directory per trial (fold-01/ ... for folds)
        results.csv  results.json     every trial: its settings, figure, time and state
        best.nn  best.json            the best trial as a spec that `nnspec run` trains as it is
        plots/history.png  parallel.png  importance.png

Trials run in rounds of as many trials as the cluster runs at once. The study is told a round's
results only when the whole round is done, in trial order, and the sampler is seeded for each trial
from (seed, its place in the sweep): so what a sweep proposes depends on the seed and on results
only, not on which worker finished first, and the same sweep proposes the same trials again (the
random start-up trials are the same whatever the cluster's size). Pruning reads
each running trial's per-epoch dev figures from its run directory and asks the study (whose
finished trials are those of earlier rounds) whether to stop it; the driver alone decides.

An interrupted driver leaves its unfinished trials RUNNING in the journal; ``--resume`` marks them
failed (interrupted, not counted) and runs their settings again first, and never reruns a trial
that finished. A worker that dies mid-trial: Dask runs the job again on another worker (it starts
over), and when workers keep dying the trial is recorded as failed.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from . import SweepError, require
from .jobs import PRUNE_FILE, Job, figure_of, read_rows, run_job
from .space import SweepSpec, trial_text

POLL_SECONDS = 0.2


@dataclass
class Objective:
    metric: str       # accuracy, loss, perplexity
    direction: str    # maximize / minimize
    folds: int | None  # None: the best epoch's dev figure; k: the mean over k folds of the training data

    @property
    def part(self) -> str:
        return "test" if self.folds else "dev"

    def describe(self) -> str:
        where = f"mean over {self.folds} folds of the training data" if self.folds else "dev"
        return f"{self.direction} {self.metric} ({where})"


def objective_of(spec: SweepSpec, folds: int | None = None) -> Objective:
    """The sweep block's objective, else the spec's own selection metric (dev accuracy for a classifier)."""
    from ..session import open_session
    from ..train.loop import find_heads, selection_metric
    space = spec.space
    if space.metric is not None:
        metric, direction = space.metric, space.direction
    else:
        session = open_session(spec.path, text=spec.text, with_data=False)
        metric, higher = selection_metric(session.settings, find_heads(SimpleNamespace(plan=session.plan)))
        direction = "maximize" if higher else "minimize"
    return Objective(metric, direction, folds if folds is not None else space.folds)


@dataclass
class Running:
    """A trial on the cluster: its jobs (one, or one per fold) and what the driver has read of them."""
    trial: Any
    params: dict
    futures: list
    run_dirs: list[Path | None]
    rows_seen: int = 0
    last_step: int = 0
    pruned_at: int | None = None
    started: float = field(default_factory=time.perf_counter)


class Sweep:
    """``Sweep(spec, directory, client=...).run(trials)``: a resumable search on a cluster."""

    def __init__(self, spec: SweepSpec, directory: str | Path, client, *, resume: bool = False,
                 seed: int | None = None, objective: Objective | None = None,
                 outer: tuple[int, int] | None = None, float64: bool = False, overrides: list[str] = (),
                 stream=None, quiet: bool = False):
        self.optuna = require("optuna")
        require("distributed")
        self.spec, self.client = spec, client
        self.dir = Path(directory)
        self.outer, self.float64 = outer, float64
        self.overrides = tuple(overrides)  # --set lines every trial trains with (not searched)
        _check_overrides(spec, self.overrides)
        self.stream, self.quiet = stream if stream is not None else sys.stderr, quiet
        self.objective = objective or objective_of(spec)
        self._last_line = ""
        journal = self.dir / "study.journal"
        if resume and not journal.exists():
            raise SweepError(f"{self.dir} holds no sweep to resume (no study.journal)")
        if not resume and journal.exists():
            raise SweepError(f"{self.dir} already holds a sweep: continue it with --resume {self.dir}")
        self.dir.mkdir(parents=True, exist_ok=True)
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        self.optuna.logging.set_verbosity(self.optuna.logging.WARNING)
        self.storage = JournalStorage(JournalFileBackend(str(journal)))
        spec_sha = hashlib.sha256(spec.text.encode()).hexdigest()[:16]
        self.study = self.optuna.create_study(study_name="nnspec", storage=self.storage, load_if_exists=True,
                                              direction=self.objective.direction, pruner=self._pruner())
        attrs = self.study.user_attrs
        if resume:
            if attrs.get("spec_sha") != spec_sha:
                raise SweepError(f"{self.dir} was made from a different spec text; a sweep resumes only with "
                                 f"the spec it began with (it is kept in {self.dir / 'spec.nn'})")
            if list(self.overrides) != attrs.get("overrides", []):
                raise SweepError(f"{self.dir} was begun with --set {' '.join(attrs.get('overrides', [])) or '(none)'}; "
                                 f"resume it with the same")
            self.seed, self.batch = attrs["seed"], attrs["batch"]
            self._recover()
        else:
            jobs_per_trial = self.objective.folds or 1
            from .cluster import worker_slots
            self.seed = seed if seed is not None else self._spec_seed()
            self.batch = max(1, worker_slots(client) // jobs_per_trial)
            for k, v in {"spec_sha": spec_sha, "seed": self.seed, "batch": self.batch,
                         "metric": self.objective.metric, "folds": self.objective.folds,
                         "outer": list(outer) if outer else None, "overrides": list(self.overrides)}.items():
                self.study.set_user_attr(k, v)
            (self.dir / "spec.nn").write_text(spec.text, encoding="utf-8")

    def _spec_seed(self) -> int:
        from ..session import open_session
        return open_session(self.spec.path, text=self.spec.text, with_data=False).settings.seed

    def _pruner(self):
        name, args = self.spec.space.pruner
        if name == "none":
            return self.optuna.pruners.NopPruner()
        return self.optuna.pruners.MedianPruner(n_startup_trials=args.get("startup", 5),
                                                n_warmup_steps=args.get("warmup", 1))

    def _sampler(self, finished: int):
        name, args = self.spec.space.sampler
        seed = (args.get("seed", self.seed) * 1_000_003 + finished) % 2 ** 32
        if name == "random":
            return self.optuna.samplers.RandomSampler(seed=seed)
        return self.optuna.samplers.TPESampler(seed=seed, n_startup_trials=args.get("startup", 10))

    # ---- bookkeeping ------------------------------------------------------------------------
    def _recover(self) -> None:
        """Trials an interrupted driver left running: failed (not counted), their settings queued again."""
        TrialState = self.optuna.trial.TrialState
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            self.study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})

    def finished(self) -> list:
        TrialState = self.optuna.trial.TrialState
        return [t for t in self.study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
                or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"))]

    def best_trial(self):
        try:
            return self.study.best_trial
        except ValueError:  # no trial completed
            return None

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self, trials: int) -> Any:
        self._write_meta(trials)
        while True:
            done = len(self.finished())
            if done >= trials:
                break
            round_ = []
            for j in range(min(self.batch, trials - done)):
                # seeded by the trial's place in the sweep: the same proposals whatever the cluster's size
                self.study.sampler = self._sampler(done + j)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna's notes on experimental features
                    round_.append(self._start(self.study.ask()))
            try:
                self._wait(round_, trials)
            except BaseException:
                for r in round_:
                    self.client.cancel(r.futures)
                raise
            for r in sorted(round_, key=lambda r: r.trial.number):
                self._tell(r)
            self._progress(trials, [], force=True)
            from .report import write_results
            write_results(self)
        return self.best_trial()

    def _write_meta(self, trials: int) -> None:
        meta = {"spec": str(self.spec.path), "trials": trials, "objective": self.objective.describe(),
                "metric": self.objective.metric, "direction": self.objective.direction,
                "folds": self.objective.folds, "outer": self.outer, "seed": self.seed,
                "trials_at_once": self.batch, "dimensions": [d.name for d in self.spec.space.dimensions]}
        (self.dir / "sweep.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def _start(self, trial) -> Running:
        params = {d.name: d.suggest(trial) for d in self.spec.space.dimensions}
        text = trial_text(self.spec, params)
        base = self.dir / "trials" / f"trial-{trial.number:04d}"
        folds = self.objective.folds
        run_dirs = [base] if not folds else [base / f"fold-{i + 1:02d}" for i in range(folds)]
        futures = []
        for i, run_dir in enumerate(run_dirs):
            job = Job(str(self.spec.path), text, run_dir=str(run_dir), fold=(folds, i) if folds else None,
                      outer=self.outer, float64=self.float64, saved_text=trial_text(self.spec, params, run_dir),
                      overrides=self.overrides)
            futures.append(self.client.submit(run_job, job, pure=False,
                                              key=f"nnspec-trial-{trial.number}-{i}-{time.time_ns()}"))
        trial.set_user_attr("run_dir", str(base))
        return Running(trial, params, futures, run_dirs)

    def _wait(self, round_: list[Running], trials: int) -> None:
        while True:
            for r in round_:
                if r.pruned_at is None:
                    self._report(r)
            running = [r for r in round_ if not all(f.done() for f in r.futures)]
            if not running:
                return
            self._progress(trials, running)
            time.sleep(POLL_SECONDS)

    def _report(self, r: Running) -> None:
        """Intermediate figures to the study, and its verdict: per epoch (one job) or per fold (folds)."""
        values: list[tuple[int, float]] = []
        if not self.objective.folds:
            rows = read_rows(r.run_dirs[0], r.rows_seen)
            r.rows_seen += len(rows)
            values = [(row["epoch"], row.get(f"dev_{self.objective.metric}", math.nan)) for row in rows]
        else:  # the mean of the folds finished so far, in fold order
            figures = []
            for f in r.futures:
                if not f.done() or f.status != "finished":
                    break
                figures.append(figure_of(f.result(), self.objective.metric, "test"))
            values = [(len(figures), sum(figures) / len(figures))] if figures else []
        for step, value in values:
            if step <= r.last_step or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            r.last_step = step
            r.trial.report(float(value), step)
            if r.trial.should_prune():
                r.pruned_at = step
                for run_dir in r.run_dirs:
                    if run_dir is not None and run_dir.exists():
                        (run_dir / PRUNE_FILE).touch()
                if self.objective.folds:
                    self.client.cancel([f for f in r.futures if not f.done()])
                return

    def _tell(self, r: Running) -> None:
        TrialState = self.optuna.trial.TrialState
        results = []
        for f in r.futures:
            if f.status == "finished":
                results.append(f.result())
            elif f.status == "cancelled":
                results.append({"state": "pruned"})
            else:
                results.append({"state": "failed", "error": _describe(f.exception())})
        trial = r.trial
        trial.set_user_attr("seconds", round(time.perf_counter() - r.started, 2))
        trial.set_user_attr("epochs", epochs_per_training(results))
        failed = [x for x in results if x["state"] == "failed"]
        if failed:
            trial.set_user_attr("error", failed[0]["error"][-2000:])
            self.study.tell(trial, state=TrialState.FAIL)
            return
        if r.pruned_at is not None:
            trial.set_user_attr("pruned_at", r.pruned_at)
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        part = self.objective.part
        figures = [figure_of(x, self.objective.metric, part) for x in results]
        value = sum(figures) / len(figures)
        if not math.isfinite(value):
            trial.set_user_attr("error", f"no {part} {self.objective.metric} to judge the trial by"
                                + ("; give the spec a dev split (split dev = 10%) or the sweep folds"
                                   if part == "dev" else ""))
            self.study.tell(trial, state=TrialState.FAIL)
            return
        if len(figures) > 1:
            trial.set_user_attr("folds", figures)
        trial.set_user_attr("best_epoch", results[0].get("best_epoch"))
        self.study.tell(trial, value)

    def _progress(self, trials: int, running: list[Running], force: bool = False) -> None:
        if self.quiet:
            return
        TrialState = self.optuna.trial.TrialState
        states = [t.state for t in self.finished()]
        pruned = sum(s == TrialState.PRUNED for s in states) + sum(r.pruned_at is not None for r in running)
        failed = sum(s == TrialState.FAIL for s in states)
        best = self.best_trial()
        line = (f"sweep: {len(states)}/{trials} trials done ({pruned} pruned, {failed} failed), "
                f"{len(running)} running" +
                (f"; best {self.objective.metric} {best.value:.4f} (trial {best.number})" if best else ""))
        if line != self._last_line or force:
            if line != self._last_line:
                print(line, file=self.stream, flush=True)
            self._last_line = line


def _check_overrides(spec: SweepSpec, overrides: tuple[str, ...]) -> None:
    """A --set line may fix what the sweep does not search; one that sets a searched key would
    silently replace every trial's value."""
    from ..errors import Diagnostics
    from ..settings import _ALIASES, parse_override
    searched = {d.key for d in spec.space.dimensions if d.target == "setting"}
    diags = Diagnostics()
    for i, text in enumerate(overrides):
        for s in parse_override(text, i, diags):
            if _ALIASES.get(s.key, s.key) in searched:
                raise SweepError(f"--set {text}: '{s.key}' is what the sweep searches; take it out of the "
                                 f"sweep block to fix it")
    diags.raise_if_errors()


def epochs_per_training(results: list[dict]) -> int | float | None:
    """The epochs one training of a trial ran: with inner folds, each fold's count (the same in all
    but with early stopping or pruning; then their mean), never their sum."""
    ran = [x["epochs"] for x in results if isinstance(x.get("epochs"), int)]
    if not ran:
        return None
    return ran[0] if len(set(ran)) == 1 else round(sum(ran) / len(ran), 1)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "the job ended without a result"
    name = type(exc).__name__
    if name == "KilledWorker":
        return "the workers running this trial died (Dask ran it again, and gave up)"
    return f"{name}: {exc}"
