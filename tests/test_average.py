"""Weight averaging (``average ema(decay = d)``): the average itself, the setting and its errors, the
weights training keeps, and resuming an averaging run."""
from pathlib import Path

import numpy as np
import pytest

from nnspec import open_session
from nnspec.errors import SpecError
from nnspec.train.average import ExponentialAverage
from nnspec.train.loop import Trainer, TrainingError
from nnspec.train.rundir import RunDir

TAGGER = """
network tiny_tagger
input  w : seq of token
target y : seq of class
output p
e = embed(w, 8)
h = bidirectional(rnn)(e, H = 6)
p = softmax(V @ h + c)
loss cross_entropy(p, y)
train { optimizer adam(lr = 0.05); batch 2; epochs 4; seed 3; dropout e = 0.2; average ema(decay = 0.9) }
data inline {
  w = [["the", "dog", "runs"], ["a", "cat", "sleeps"], ["the", "cat", "runs"], ["dogs", "sleep"]]
  y = [["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB"], ["NOUN", "VERB"]]
}
"""

# the same data three times over, a third of it held out as dev: the best epoch is chosen
WITH_DEV = TAGGER.replace("train {", "train { split dev = 30%; epochs 6;").replace(
    'w = [', 'w = [["the", "dog", "runs"], ["a", "cat", "sleeps"], ["the", "cat", "runs"], ["dogs", "sleep"], '
             '["the", "dog", "runs"], ["a", "cat", "sleeps"], ["the", "cat", "runs"], ["dogs", "sleep"], ').replace(
    'y = [', 'y = [["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB"], ["NOUN", "VERB"], '
             '["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB"], ["NOUN", "VERB"], ')


def write(tmp_path: Path, text: str, name: str = "spec.nn") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def trainer_for(path, run_dir=None, **kw) -> tuple:
    s = open_session(path, **kw)
    return s, Trainer(s.model, s.data, s.settings, quiet=True, run_dir=run_dir, spec_hash=s.spec_hash)


# ---- the average --------------------------------------------------------------------

def test_the_average_is_the_bias_corrected_weighted_mean_of_the_weights_visited():
    rng = np.random.default_rng(0)
    visited = [rng.normal(size=(3, 2)) for _ in range(5)]
    avg = ExponentialAverage(decay=0.8)
    for p in visited:
        avg.update({"W": p.copy()})
    weights = [0.8 ** (len(visited) - 1 - s) for s in range(len(visited))]  # step s weighs decay^(t - s)
    expected = sum(w * p for w, p in zip(weights, visited)) / sum(weights)
    np.testing.assert_allclose(avg.averages()["W"], expected, rtol=1e-12)


def test_an_unchanging_parameter_averages_to_itself_from_the_first_step():
    avg = ExponentialAverage(decay=0.999)
    p = np.array([1.5, -2.0], dtype=np.float32)
    avg.update({"b": p})
    np.testing.assert_allclose(avg.averages()["b"], p, rtol=1e-6)
    assert avg.averages()["b"].dtype == np.float32


def test_the_average_state_round_trips_and_refuses_another_decay():
    avg = ExponentialAverage(decay=0.9)
    for v in (1.0, 2.0, 4.0):
        avg.update({"W": np.full(2, v)})
    again = ExponentialAverage(decay=0.9)
    again.load_state_dict(avg.state_dict())
    again.update({"W": np.full(2, 8.0)})
    avg.update({"W": np.full(2, 8.0)})
    assert np.array_equal(again.averages()["W"], avg.averages()["W"])
    with pytest.raises(ValueError, match="decay"):
        ExponentialAverage(decay=0.5).load_state_dict(avg.state_dict())


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1])
def test_a_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(ValueError, match="between 0 and 1"):
        ExponentialAverage(decay=decay)


# ---- the setting ----------------------------------------------------------------------

def test_the_setting_reads_a_name_and_its_decay_and_none_turns_it_off(tmp_path):
    path = write(tmp_path, TAGGER)
    s = open_session(path)
    assert (s.settings.average.name, s.settings.average.args) == ("ema", {"decay": 0.9})
    assert open_session(path, overrides=["average=none"]).settings.average is None
    assert open_session(path, overrides=["average ema"]).settings.average.args == {}


@pytest.mark.parametrize("setting, message", [
    ("average ema(decay = 1.5)", "ema's decay must be a number between 0 and 1"),
    ("average ema(decay = 0)", "ema's decay must be a number between 0 and 1"),
    ("average ema(rate = 0.9)", "ema takes decay, not 'rate'"),
    ("average emma(decay = 0.9)", "unknown average 'emma'; did you mean 'ema'"),
])
def test_a_bad_average_is_an_error_at_its_line(tmp_path, setting, message):
    path = write(tmp_path, TAGGER.replace("average ema(decay = 0.9)", setting))
    with pytest.raises(SpecError) as e:
        open_session(path)
    shown = e.value.diagnostics.render()
    assert message in shown
    assert "spec.nn:10:" in shown and setting in shown and "^" in shown


# ---- training with it -------------------------------------------------------------------

def test_without_dev_the_kept_weights_are_the_average_of_every_step(tmp_path):
    """Recomputed independently, in float64, from the weights after each optimiser step."""
    s, trainer = trainer_for(write(tmp_path, TAGGER), dtype="float64")
    visited = []
    step = trainer.optimizer.step

    def recording(params, grads, **kw):
        step(params, grads, **kw)
        visited.append({k: v.copy() for k, v in params.items()})
    trainer.optimizer.step = recording
    trainer.fit()
    t, d = len(visited), 0.9
    assert t == 8                                  # 4 epochs of 2 batches
    weights = [d ** (t - 1 - i) for i in range(t)]
    for name in s.model.params:
        expected = sum(w * v[name] for w, v in zip(weights, visited)) / sum(weights)
        np.testing.assert_allclose(s.model.params[name], expected, rtol=1e-10, atol=1e-12, err_msg=name)
    assert not np.allclose(s.model.params["V"], visited[-1]["V"])   # not the last step's weights


def test_dev_is_measured_with_the_averages_and_best_keeps_them(tmp_path):
    from nnspec.train.checkpoint import load_checkpoint
    from nnspec.train.loop import evaluate
    run_dir = RunDir("t", root=tmp_path / "runs")
    s, trainer = trainer_for(write(tmp_path, WITH_DEV), run_dir=run_dir)
    result = trainer.fit()
    best, last = load_checkpoint(run_dir.best), load_checkpoint(run_dir.last)
    for name in s.model.params:
        assert np.array_equal(s.model.params[name], best.params[name])     # the kept model is best/
    assert any(not np.array_equal(best.params[k], last.params[k]) for k in best.params)  # last/: training weights
    again = evaluate(s.model, s.data, "dev", s.settings).metrics
    assert again["loss"] == pytest.approx(result.best["dev_loss"], rel=1e-6)


def resumed_halfway(path, tmp_path):
    """(a session trained uninterrupted, a session resumed from a run stopped after two epochs, its
    trainer, not fitted yet)."""
    full, trainer = trainer_for(path)
    trainer.fit()
    run_dir = RunDir("t", root=tmp_path / "runs")
    _, first = trainer_for(path, run_dir=run_dir, overrides=["epochs=2"])
    first.fit()
    resumed, second = trainer_for(path, run_dir=RunDir(path=run_dir.path))
    second.resume(run_dir.last)
    return full, resumed, second


def test_a_resumed_averaging_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    full, resumed, second = resumed_halfway(write(tmp_path, TAGGER), tmp_path)
    second.fit()
    for name in full.model.params:
        assert np.array_equal(full.model.params[name], resumed.model.params[name]), name


def test_resuming_with_another_averaging_setting_is_refused(tmp_path):
    path = write(tmp_path, TAGGER)
    run_dir = RunDir("t", root=tmp_path / "runs")
    _, first = trainer_for(path, run_dir=run_dir, overrides=["epochs=2"])
    first.fit()
    _, plain = trainer_for(path, run_dir=RunDir(path=run_dir.path), overrides=["average=none"])
    with pytest.raises(TrainingError, match="averaged its weights"):
        plain.resume(run_dir.last)
    _, other = trainer_for(path, run_dir=RunDir(path=run_dir.path), overrides=["average ema(decay = 0.5)"])
    with pytest.raises(TrainingError, match="decay"):
        other.resume(run_dir.last)
