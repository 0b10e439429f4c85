"""A step that goes non-finite stops training where it happens, naming the step, the epoch and the
value by its name in the spec; no checkpoint ever holds a NaN or an infinity."""
import json
from pathlib import Path

import numpy as np
import pytest

from nnspec import open_session
from nnspec.cli import main
from nnspec.train.checkpoint import load_checkpoint
from nnspec.train.loop import Trainer, TrainingError
from nnspec.train.nonfinite import all_finite, describe_node
from nnspec.train.rundir import RunDir

SPECS = Path(__file__).resolve().parent.parent / "specs"


def _weights_finite(path: Path) -> bool:
    return all(np.isfinite(v).all() for v in load_checkpoint(path).params.values())


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the message says it all; no NumPy overflow warning
def test_a_huge_learning_rate_stops_at_the_first_step_naming_the_parameter(tmp_path, capsys):
    code = main(["run", str(SPECS / "xor_train.nn"), "--runs", str(tmp_path), "--quiet",
                 "--set", "optimizer momentum(lr = 1e308)"])
    err = capsys.readouterr().err
    assert code == 1
    assert "training stopped at step 1 (epoch 1): the update made parameter 'W1' (" in err
    assert "xor_train.nn:19) infinite" in err            # where W1 is declared
    assert "#" not in err                                 # no compiler id
    (run,) = tmp_path.iterdir()
    assert not (run / "best").exists() and not (run / "last").exists()


def test_a_divergence_after_good_epochs_keeps_finite_checkpoints(tmp_path):
    """Good epochs first, then a learning rate (by schedule) that blows the weights up: the
    error names the step and epoch; best/ holds the last good best and nothing is non-finite."""
    spec = tmp_path / "diverge.nn"
    spec.write_text("""
input x[1]
target y[1]
loss mse(w @ x + b, y)
train { optimizer sgd(lr = 0.01); schedule step(every = 3, gamma = 1e30); batch 2; epochs 8 }
data inline { x = [[1], [2], [3], [4]]; y = [[2], [4], [6], [8]] }
""")
    s = open_session(spec)
    run = RunDir("d", root=tmp_path / "runs")
    trainer = Trainer(s.model, s.data, s.settings, quiet=True, run_dir=run, spec_hash=s.spec_hash,
                      checkpoint_seconds=0)
    with pytest.raises(TrainingError, match=r"step \d+ \(epoch 4\): .*\(.*diverge.nn:4\) .*(infinite|NaN)"):
        trainer.fit()   # the first epoch at the huge rate
    assert _weights_finite(run.best) and _weights_finite(run.last)
    rows = [json.loads(line) for line in run.metrics_jsonl.read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    assert load_checkpoint(run.last).epoch == rows[-1]["epoch"]


def test_a_nan_in_a_sub_expression_is_named_by_its_source_text(tmp_path):
    spec = tmp_path / "sub.nn"
    spec.write_text("""
input x[1]
target y[1]
h = tanh(log(W @ x + b))
loss mse(h, y)
param W = [[1]]
param b = [-5]
train { optimizer sgd(lr = 0.1); batch 2; epochs 2 }
data inline { x = [[1], [2]]; y = [[0], [1]] }
""")
    s = open_session(spec)
    with pytest.raises(TrainingError) as e:
        Trainer(s.model, s.data, s.settings, quiet=True).fit()
    assert ("step 1 (epoch 1): 'log(W @ x + b)' in the definition of 'h' (" in str(e.value)
            and "sub.nn:4) produced NaN" in str(e.value))
    # rendered (as the CLI prints it) like a spec error: where, the source line, a caret
    assert e.value.render() == (f"{spec}:4:10: error: {e.value}\n"
                                "    h = tanh(log(W @ x + b))\n"
                                "             ^~~~~~~~~~~~~~")


def test_a_forward_run_that_produces_nan_says_where(tmp_path, capsys):
    spec = tmp_path / "fwd.nn"
    spec.write_text("""
input x[1]
output y
y = tanh(log(W @ x + b))
param W = [[1]]
param b = [-5]
data inline { x = [[1], [9]] }
""")
    assert main(["run", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "'log(W @ x + b)' in the definition of 'y' (" in err and "fwd.nn:4) produced NaN" in err
    # where the failing step came from, as a spec error shows it
    assert err.startswith(f"{spec}:4:10: error: ")
    assert err.endswith("    y = tanh(log(W @ x + b))\n             ^~~~~~~~~~~~~~\n")
    assert main(["run", str(spec), "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["errors"][0]
    assert (error["file"], error["line"], error["column"]) == (str(spec), 4, 10)


def test_checkpoints_refuse_non_finite_weights(tmp_path):
    s = open_session(SPECS / "xor_train.nn", overrides=["epochs=2"])
    run = RunDir("x", root=tmp_path)
    trainer = Trainer(s.model, s.data, s.settings, quiet=True, run_dir=run, spec_hash=s.spec_hash)
    trainer.history = [{"epoch": 1, "train_loss": 0.5}]
    s.model.params["W1"][0, 0] = np.nan
    with pytest.raises(TrainingError, match=r"refusing to save .*last: parameter 'W1' .* is not finite"):
        trainer._checkpoint(1)
    assert not run.last.exists()


def test_finite_checks_see_nan_and_infinity_and_name_compiler_ids_by_source():
    a = np.ones((3, 3), np.float32)
    assert all_finite([a, a])
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[1, 2] = bad
        assert not all_finite([a, b])
    s = open_session(SPECS / "xor_train.nn")
    assert describe_node(s.compiled, "h").startswith("'h' (") and "xor_train.nn:15" in describe_node(s.compiled, "h")
    sub = describe_node(s.compiled, "h#2")
    assert sub.startswith("'W1 @ x + b1' in the definition of 'h' (") and "#" not in sub
    assert describe_node(s.compiled, "gone#7") == "'gone'"   # unknown to the graph: still no counter
