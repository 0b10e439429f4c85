"""Ctrl-C (SIGINT) during `nnspec run`: the message says where the run directory is and the exact
command that resumes it, or, interrupted before the first checkpoint, that there is nothing to
resume yet. Both run the real command line in a subprocess."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nnspec.cli import main

pytestmark = pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")

SPECS = Path(__file__).resolve().parent.parent / "specs"


def _nnspec(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nnspec.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def _interrupt(p: subprocess.Popen) -> tuple[int, str]:
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    return p.returncode, err


def test_interrupted_after_a_checkpoint_says_how_to_resume_and_that_command_resumes(tmp_path):
    runs = tmp_path / "runs"
    p = _nnspec("run", str(SPECS / "xor_train.nn"), "--runs", str(runs), "--set", "epochs=100000000",
                "--seed", "4", "--checkpoint-every", "0.1")
    _wait_for(lambda: runs.exists() and any((d / "last" / "meta.json").exists() for d in runs.iterdir()))
    code, err = _interrupt(p)
    (run,) = runs.iterdir()
    assert code == 130
    assert f"the run directory {run} holds a checkpoint at the end of epoch" in err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command == ["nnspec", "run", str(SPECS / "xor_train.nn"), "--resume", str(run),
                       "--set", "epochs=100000000", "--seed", "4"]
    saved = json.loads((run / "last" / "meta.json").read_text())["epoch"]
    # the command resumes the run (here in this process, with an end in sight)
    assert main([*command[1:-4], "--set", f"epochs={saved + 3}", "--seed", "4", "--quiet"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, saved + 4))


def test_interrupted_in_the_first_epoch_there_is_nothing_to_resume(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 16))
    np.savez(tmp_path / "big.npz", x=x, y=x[:, :1] * 2)
    (tmp_path / "slow.nn").write_text("""
input x[16]
target y[1]
h[64] = tanh(W @ x + b)
loss mse(v @ h + c, y)
train { optimizer sgd(lr = 0.001); batch 1; epochs 3 }
data npz("big.npz")
""")
    runs = tmp_path / "runs"
    p = _nnspec("run", str(tmp_path / "slow.nn"), "--runs", str(runs))
    _wait_for(lambda: runs.exists() and any((d / "settings.json").exists() for d in runs.iterdir()))
    time.sleep(0.5)   # into the first epoch: 20,000 steps
    code, err = _interrupt(p)
    (run,) = runs.iterdir()
    assert code == 130
    assert "interrupted in epoch 1: nothing to resume yet" in err
    assert str(run) in err and "Traceback" not in err
    assert not (run / "last").exists()
