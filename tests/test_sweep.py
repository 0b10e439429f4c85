"""Sweeps and cross-validation on Optuna and Dask, run for real: a LocalCluster of worker processes,
and a `dask scheduler` with `dask worker` processes on 127.0.0.1 (nothing of Dask or Optuna is mocked).

They skip when the `sweep` extra is missing (tests/test_sweep_space.py needs neither library). The
worker-kill and resume tests start clusters and drivers of their own and are marked slow
(`pytest --runslow tests/test_sweep.py`).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nnspec.cli import main
from nnspec.sweep.space import read_sweep_spec

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed")
distributed = pytest.importorskip("distributed", reason="the sweep extra is not installed")

from test_sweep_space import tiny  # noqa: E402  (the tiny spec with a sweep block)

ROOT = Path(__file__).resolve().parent.parent

# ---- on a cluster ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    """A real LocalCluster with two single-threaded worker processes, shared by this module's tests."""
    from nnspec.sweep.cluster import dask_client
    with dask_client(workers=2) as c:
        yield c


def sweep_params(spec_path, directory, client, trials, **kw):
    from nnspec.sweep.driver import Sweep
    sweep = Sweep(read_sweep_spec(spec_path), directory, client, quiet=True, **kw)
    sweep.run(trials)
    return sweep, [t.params for t in sorted(sweep.study.trials, key=lambda t: t.number)]


def test_the_same_sweep_proposes_the_same_trials_and_another_seed_others(tmp_path, client):
    path = tiny(tmp_path)
    first, a = sweep_params(path, tmp_path / "a", client, 4)
    _, b = sweep_params(path, tmp_path / "b", client, 4)
    _, c = sweep_params(path, tmp_path / "c", client, 2, seed=99)
    assert len(a) == 4 and a == b
    assert a[:2] != c
    assert first.batch == 2  # two trials at a time, one per worker
    # every trial left an ordinary run directory, and the study lives in a journal file
    rows = json.loads((tmp_path / "a" / "results.json").read_text())
    assert [r["state"] for r in rows] == ["complete"] * 4
    for r in rows:
        assert (Path(r["run_dir"]) / "best" / "weights.safetensors").exists()
        assert len((Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()) == 4
    assert (tmp_path / "a" / "study.journal").exists()


def test_a_sweep_resumes_only_with_the_spec_and_settings_it_began_with(tmp_path, client):
    from nnspec.sweep import SweepError
    from nnspec.sweep.driver import Sweep
    path = tiny(tmp_path)
    Sweep(read_sweep_spec(path), tmp_path / "s", client, overrides=["epochs=2"], quiet=True)
    with pytest.raises(SweepError, match="already holds a sweep: continue it with --resume"):
        Sweep(read_sweep_spec(path), tmp_path / "s", client, quiet=True)
    with pytest.raises(SweepError, match="begun with --set epochs=2"):
        Sweep(read_sweep_spec(path), tmp_path / "s", client, resume=True, quiet=True)
    path.write_text(path.read_text().replace("seed 1", "seed 2"))
    with pytest.raises(SweepError, match="different spec text"):
        Sweep(read_sweep_spec(path), tmp_path / "s", client, resume=True, overrides=["epochs=2"], quiet=True)
    with pytest.raises(SweepError, match="'lr' is what the sweep searches"):
        Sweep(read_sweep_spec(path), tmp_path / "t", client, overrides=["lr=0.1"], quiet=True)


def test_a_trial_that_fails_is_recorded_with_its_message_and_the_sweep_goes_on(tmp_path, client):
    path = tiny(tmp_path, space="optimizer choice(sgd(lr = 1e38), adam(lr = 0.01))\n  H int(2, 8)",
                extra="sampler random; pruner none")
    sweep, params = sweep_params(path, tmp_path / "s", client, 6)
    rows = json.loads((tmp_path / "s" / "results.json").read_text())
    assert len(rows) == 6
    failed = [r for r in rows if r["state"] == "fail"]
    assert failed and all(r["optimizer"] == "sgd(lr = 1e38)" for r in failed)
    assert all("training stopped at step" in r["error"] for r in failed)
    assert all(r["state"] == "complete" for r in rows if r["optimizer"] != "sgd(lr = 1e38)")


def test_weak_trials_are_pruned_from_their_dev_figures(tmp_path, client):
    # Two rounds of two: the second round is judged against the first round's dev loss, epoch by epoch;
    # lr = 1e-6 barely moves from its start, so such a trial is stopped before its last epoch.
    path = tiny(tmp_path, epochs=600, space="optimizer choice(adam(lr = 0.05), adam(lr = 1e-6))",
                extra="minimize loss; pruner median(startup = 1, warmup = 2)")
    from nnspec.sweep.driver import Sweep
    sweep = Sweep(read_sweep_spec(path), tmp_path / "p", client, quiet=True)
    sweep.study.enqueue_trial({"optimizer": "adam(lr = 0.05)"})
    sweep.study.enqueue_trial({"optimizer": "adam(lr = 0.05)"})
    sweep.study.enqueue_trial({"optimizer": "adam(lr = 1e-6)"})
    sweep.study.enqueue_trial({"optimizer": "adam(lr = 1e-6)"})
    sweep.run(4)
    states = [t.state.name for t in sorted(sweep.study.trials, key=lambda t: t.number)]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    rows = json.loads((tmp_path / "p" / "results.json").read_text())
    assert all(r["epochs"] < 600 for r in rows[2:])  # the worker stopped training when told


def test_cross_validation_folds_run_on_the_cluster_and_the_summary_is_written(tmp_path, client):
    from nnspec.sweep.cv import cross_validate
    path = tiny(tmp_path)
    summary = cross_validate(str(path), 4, client=client, runs=str(tmp_path / "runs"), quiet=True)
    cv_dir = Path(summary["run_dir"])
    assert sorted(p.name for p in cv_dir.iterdir() if p.is_dir()) == ["fold-01", "fold-02", "fold-03", "fold-04"]
    written = json.loads((cv_dir / "results.json").read_text())
    assert written["kind"] == "cross-validation" and written["fold_dirs"][0] == "fold-01"
    accuracy = written["test"]["accuracy"]
    per_fold = accuracy["per_fold"]
    assert len(per_fold) == 4 and written["test_accuracy_per_fold"] == per_fold
    assert accuracy["mean"] == pytest.approx(np.mean(per_fold))
    assert accuracy["sd"] == pytest.approx(np.std(per_fold, ddof=1))
    assert accuracy["stderr"] == pytest.approx(np.std(per_fold, ddof=1) / 2)
    # the same folds in this process, one after another, give the same figures
    here = cross_validate(str(path), 4, client=None, save=False, quiet=True)
    assert here["test_accuracy_per_fold"] == per_fold


def test_nested_cross_validation_chooses_settings_inside_each_outer_fold(tmp_path, client):
    from nnspec.sweep.cv import cross_validate
    path = tiny(tmp_path, epochs=2, extra="pruner none")
    summary = cross_validate(str(path), 2, client=client, runs=str(tmp_path / "runs"), inner_folds=2,
                             trials=2, quiet=True)
    cv_dir = Path(summary["run_dir"])
    chosen = summary["nested"]["chosen"]
    assert [c["fold"] for c in chosen] == [1, 2]
    for i, c in enumerate(chosen, 1):
        sweep = json.loads((cv_dir / "sweeps" / f"fold-{i:02d}" / "sweep.json").read_text())
        assert sweep["outer"] == [2, i - 1] and sweep["folds"] == 2
        saved = (cv_dir / f"fold-{i:02d}" / "spec.nn").read_text()
        assert f"let H = {c['params']['H']}" in saved
        # the table gives the epochs of one training (2, on each inner fold), not their sum over the folds
        rows = json.loads((cv_dir / "sweeps" / f"fold-{i:02d}" / "results.json").read_text())
        assert [r["epochs"] for r in rows] == [2, 2]
    assert len(summary["test_accuracy_per_fold"]) == 2


# ---- the command line -----------------------------------------------------------------------------

def test_nnspec_sweep_writes_a_table_plots_and_a_best_spec_that_trains(tmp_path, capsys):
    path = tiny(tmp_path)
    assert main(["sweep", str(path), "--trials", "3", "--workers", "2", "--runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr()
    assert "best: trial" in out.out and "sweep: 3/3 trials done" in out.err
    directory = next((tmp_path / "runs").glob("tiny-sweep-*"))
    assert {"history.png", "parallel.png", "importance.png"} <= {p.name for p in (directory / "plots").iterdir()}
    header = (directory / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["trial", "state", "accuracy", "lr", "H", "dropout.h"]
    best = json.loads((directory / "best.json").read_text())
    assert main(["run", str(directory / "best.nn"), "--no-save", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["dev_accuracy"] == pytest.approx(best["value"])


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runs = tmp_path / "runs"
    assert main(["sweep", str(tiny(tmp_path)), "--trials", "1", "--scheduler", f"tcp://127.0.0.1:{port}",
                 "--runs", str(runs)]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in err and "Traceback" not in err
    assert not runs.exists() or not any(runs.iterdir())  # no empty sweep directory left behind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def dask_cluster_processes():
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1, torn down after the test."""
    dask = str(Path(sys.executable).parent / "dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_for(lambda: _listening(port), 30, "the scheduler")
        for _ in range(2):  # without a nanny: a killed worker stays dead
            procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-nanny",
                                           "--no-dashboard"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with distributed.Client(address, timeout="20s") as c:
            c.wait_for_workers(2, timeout=30)
        yield address
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.mark.slow  # a scheduler and two worker processes of its own, and a trial run twice: ~45 s under load
def test_a_sweep_on_a_running_cluster_survives_a_worker_killed_mid_trial(tmp_path, dask_cluster_processes):
    from threading import Thread
    from nnspec.sweep.cluster import dask_client
    from nnspec.sweep.driver import Sweep
    address = dask_cluster_processes
    path = tiny(tmp_path, epochs=600, extra="pruner none")
    outcome = {}

    def drive():
        with dask_client(address) as c:
            sweep = Sweep(read_sweep_spec(path), tmp_path / "s", c, quiet=True)
            outcome["best"] = sweep.run(3)
            outcome["trials"] = sorted(sweep.study.trials, key=lambda t: t.number)

    driver = Thread(target=drive)
    driver.start()
    with distributed.Client(address, timeout="20s") as watcher:
        # once a trial has trained some epochs, kill the worker process running it
        def busy_worker():
            if not list((tmp_path / "s").glob("trials/trial-*/metrics.jsonl")):
                return None
            return next((w for w, keys in watcher.processing().items() if keys), None)
        worker = _wait_for(busy_worker, 60, "a trial to start training")
        pid = watcher.run(os.getpid, workers=[worker])[worker]
        os.kill(pid, signal.SIGKILL)
        driver.join(timeout=120)
    assert not driver.is_alive()
    trials = outcome["trials"]
    assert [t.number for t in trials] == [0, 1, 2]  # none lost, none counted twice
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    assert sum(t.state.name == "COMPLETE" for t in trials) >= 2
    # a job Dask ran again started over: its metrics hold one row per epoch, not two runs' rows
    for t in trials:
        if t.state.name == "COMPLETE":
            assert len((Path(t.user_attrs["run_dir"]) / "metrics.jsonl").read_text().splitlines()) == 600


@pytest.mark.slow  # two driver processes, each with its own local cluster: ~90 s under load
def test_resume_after_the_driver_is_interrupted_finishes_without_rerunning_finished_trials(tmp_path, client):
    path = tiny(tmp_path, epochs=400, extra="pruner none")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "nnspec.cli", "sweep", str(path), "--trials", "3", "--workers", "1"]
    driver = subprocess.Popen(cmd + ["--runs", str(tmp_path / "runs")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # interrupt once the first trial is finished and the second is training
        first = lambda: list((tmp_path / "runs").glob("tiny-sweep-*/results.csv"))  # noqa: E731
        results = _wait_for(first, 90, "the first trial")[0]
        _wait_for(lambda: (results.parent / "trials" / "trial-0001" / "metrics.jsonl").exists(), 60,
                  "the second trial")
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130 and "--resume" in err
    directory = results.parent
    first_metrics = directory / "trials" / "trial-0000" / "metrics.jsonl"
    stamp = first_metrics.stat().st_mtime_ns
    done = subprocess.run(cmd + ["--resume", str(directory), "--json"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["trials"]
    states = [r["state"] for r in rows]
    assert states[:2] == ["complete", "interrupted"] and states[2:] == ["complete", "complete"]
    assert first_metrics.stat().st_mtime_ns == stamp  # the finished trial was not run again
    assert {k: rows[2][k] for k in ("lr", "H", "dropout.h")} == {k: rows[1][k] for k in ("lr", "H", "dropout.h")}
    # and the proposals are those of a sweep that was never interrupted (on two workers, not one: the
    # sampler is seeded by each trial's place in the sweep, not by how many run at once)
    _, straight = sweep_params(path, tmp_path / "straight", client, 3)
    resumed = [{k: r[k] for k in ("lr", "H", "dropout.h")} for r in rows if r["state"] == "complete"]
    assert resumed == straight


# ---- resuming a cross-validation --------------------------------------------------------------------

def test_a_cross_validation_resumes_keeping_its_finished_folds_and_only_as_it_began(tmp_path):
    from nnspec.sweep import SweepError
    from nnspec.sweep.cv import PROGRESS_FILE, cross_validate
    path = tiny(tmp_path, epochs=3)
    whole = cross_validate(str(path), 3, runs=str(tmp_path / "runs"), quiet=True)
    cv_dir = Path(whole["run_dir"])
    # As an interruption during fold 3 leaves it: folds 1 and 2 recorded, no results.json yet.
    progress = json.loads((cv_dir / PROGRESS_FILE).read_text())
    assert sorted(progress["done"]) == ["1", "2", "3"]
    del progress["done"]["3"]
    (cv_dir / PROGRESS_FILE).write_text(json.dumps(progress))
    (cv_dir / "results.json").unlink()
    kept = (cv_dir / "fold-01" / "metrics.jsonl").stat().st_mtime_ns
    with pytest.raises(SweepError, match="begun otherwise .*overrides"):
        cross_validate(str(path), 3, resume=str(cv_dir), overrides=["epochs=2"], quiet=True)
    resumed = cross_validate(str(path), 3, resume=str(cv_dir), quiet=True)
    assert resumed["test_accuracy_per_fold"] == whole["test_accuracy_per_fold"] and resumed["resumed"]
    assert (cv_dir / "fold-01" / "metrics.jsonl").stat().st_mtime_ns == kept   # fold 1 was not trained again
    assert json.loads((cv_dir / "results.json").read_text())["test_accuracy_per_fold"] == \
        whole["test_accuracy_per_fold"]
    with pytest.raises(SweepError, match="finished cross-validation"):
        cross_validate(str(path), 3, resume=str(cv_dir), quiet=True)
    with pytest.raises(SweepError, match="no cross-validation to resume"):
        cross_validate(str(path), 3, resume=str(tmp_path), quiet=True)
    unsaved = cross_validate(str(path), 3, save=False, quiet=True)   # no directory, nothing to resume
    assert unsaved["test_accuracy_per_fold"] == whole["test_accuracy_per_fold"] and "run_dir" not in unsaved


@pytest.mark.slow
def test_a_nested_cross_validation_interrupted_in_its_second_outer_fold_resumes_there(tmp_path, client):
    from nnspec.sweep.cv import cross_validate
    path = tiny(tmp_path, epochs=300, extra="pruner none")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "nnspec.cli", "run", str(path), "--folds", "2", "--inner-folds", "2",
           "--trials", "2", "--workers", "1"]
    driver = subprocess.Popen(cmd + ["--runs", str(tmp_path / "runs")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # interrupt once outer fold 1 is finished and the first trial of fold 2's sweep is training
        started = lambda: list((tmp_path / "runs").glob("tiny-2fold-*/sweeps/fold-02/trials/trial-0000"))  # noqa: E731
        cv_dir = _wait_for(started, 240, "the second outer fold")[0].parents[3]
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130 and f"--resume {cv_dir}" in err
    first_fold = (cv_dir / "fold-01" / "metrics.jsonl").stat().st_mtime_ns
    first_sweep = (cv_dir / "sweeps" / "fold-01" / "trials" / "trial-0000" / "fold-01" / "metrics.jsonl")
    first_sweep_stamp = first_sweep.stat().st_mtime_ns
    done = subprocess.run(cmd + ["--resume", str(cv_dir), "--json"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = json.loads(done.stdout)["metrics"]
    assert (cv_dir / "fold-01" / "metrics.jsonl").stat().st_mtime_ns == first_fold   # outer fold 1 kept
    assert first_sweep.stat().st_mtime_ns == first_sweep_stamp                           # and its sweep
    straight = cross_validate(str(path), 2, client=client, runs=str(tmp_path / "straight"), inner_folds=2,
                              trials=2, quiet=True)
    assert resumed["test_accuracy_per_fold"] == straight["test_accuracy_per_fold"]
    assert [c["params"] for c in resumed["nested"]["chosen"]] == [c["params"] for c in straight["nested"]["chosen"]]
