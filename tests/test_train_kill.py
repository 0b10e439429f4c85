"""Records that survive a kill: a trainer killed (SIGKILL) at random points and resumed, again
and again, ends with each epoch's row once and the weights of an uninterrupted run.

The trainer runs in a forked child (it inherits the imports, so a trial costs the training, not
a Python start-up) through the command line's own entry point, checkpointing after every epoch
(``--checkpoint-every 0``) so that kills land in every phase: a step, the logging of a row, the
writing of best/ and last/, the dropping of rows on resume.
"""
import json
import multiprocessing
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from nnspec.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

SPEC = """
network killed
input  w : seq of token
target y : seq of class
output p
e = embed(w, 8)
h = bidirectional(rnn)(e, H = 6)
p = softmax(V @ h + c)
loss cross_entropy(p, y)
train { optimizer adam(lr = 0.01); batch 2; epochs 8; seed 3; dropout e = 0.2; split dev = 20% }
data inline {
  w = [["the", "dog", "runs"], ["a", "cat", "sleeps"], ["the", "cat", "runs"], ["dogs", "sleep"],
       ["a", "dog", "sleeps"], ["cats", "run"], ["the", "dogs", "sleep"], ["a", "cat", "runs"],
       ["dogs", "run"], ["the", "cat", "sleeps"]]
  y = [["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB"], ["NOUN", "VERB"],
       ["DET", "NOUN", "VERB"], ["NOUN", "VERB"], ["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB"],
       ["NOUN", "VERB"], ["DET", "NOUN", "VERB"]]
}
"""
EPOCHS = 8


def _train(argv: list[str]) -> None:
    import sys
    from nnspec.cli import main
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")
    os._exit(main(argv))


def _start(argv: list[str]) -> multiprocessing.Process:
    p = multiprocessing.get_context("fork").Process(target=_train, args=(argv,))
    p.start()
    return p


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, np.ndarray]:
    return load_checkpoint(path).params


def _reference(tmp_path: Path, spec: Path) -> tuple[Path, float]:
    runs = tmp_path / "reference"
    t0 = time.perf_counter()
    p = _start(["run", str(spec), "--runs", str(runs), "--quiet", "--checkpoint-every", "0"])
    p.join()
    assert p.exitcode == 0
    (run,) = runs.iterdir()
    return run, time.perf_counter() - t0


def _killed_and_resumed(tmp_path: Path, spec: Path, trial: int, duration: float, rng: random.Random,
                        kills: int) -> Path:
    runs = tmp_path / f"trial-{trial}"
    base = ["run", str(spec), "--quiet", "--checkpoint-every", "0"]
    run = None
    for attempt in range(kills + 1):
        if run is None or not (run / "last").exists() and not (run / ".last.old").exists():
            # killed before its first checkpoint: nothing to resume, start again
            if runs.exists():
                shutil.rmtree(runs)
            p = _start(base + ["--runs", str(runs)])
        else:
            p = _start(base + ["--resume", str(run)])
        if attempt < kills:
            p.join(rng.uniform(0.0, duration))
            if p.is_alive():
                p.kill()  # SIGKILL: no handler, no flush, no cleanup
        p.join()
        found = list(runs.iterdir()) if runs.exists() else []
        run = found[0] if found else None
        if p.exitcode == 0:
            return run
    raise AssertionError("the last resume did not finish")


def _check_trials(tmp_path: Path, trials: int, kills: int, budget: float) -> None:
    spec = tmp_path / "killed.nn"
    spec.write_text(SPEC)
    reference, duration = _reference(tmp_path, spec)
    expected = _rows(reference)
    assert [r["epoch"] for r in expected] == list(range(1, EPOCHS + 1))
    rng = random.Random(12345)
    started = time.perf_counter()
    for trial in range(trials):
        if time.perf_counter() - started > budget:
            break  # bounded in time on a loaded machine; at least one trial always runs
        run = _killed_and_resumed(tmp_path, spec, trial, duration, rng, kills)
        rows = _rows(run)
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1)), f"trial {trial}: {rows}"
        assert rows == expected, f"trial {trial}: the rows differ from an uninterrupted run's"
        csv_lines = (run / "metrics.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in csv_lines[1:]] == [str(e) for e in range(1, EPOCHS + 1)]
        for which in ("last", "best"):
            got, want = _weights(run / which), _weights(reference / which)
            for name in want:
                assert np.array_equal(got[name], want[name]), f"trial {trial}: {which}/{name}"
        assert load_checkpoint(run / "best").epoch == load_checkpoint(reference / "best").epoch


def test_killed_runs_resume_to_the_uninterrupted_records_and_weights(tmp_path):
    _check_trials(tmp_path, trials=3, kills=2, budget=4.0)


@pytest.mark.slow
def test_many_killed_runs(tmp_path):
    _check_trials(tmp_path, trials=40, kills=4, budget=300.0)
