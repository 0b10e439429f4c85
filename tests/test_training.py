"""Training: determinism, resuming, checkpoints, NaN handling, memory limits, predictions."""
import json
from pathlib import Path

import numpy as np
import pytest

from nnspec import open_session
from nnspec.cli import main
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
train { optimizer adam(lr = 0.01); batch 2; epochs 4; seed 3; dropout e = 0.2 }
data inline {
  w = [["the", "dog", "runs"], ["a", "cat", "sleeps"], ["the", "cat", "runs"], ["dogs", "sleep"]]
  y = [["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB"], ["DET", "NOUN", "VERB"], ["NOUN", "VERB"]]
}
"""


def write(tmp_path: Path, text: str, name: str = "spec.nn") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def train(path, tmp_path=None, **kw):
    s = open_session(path, **kw)
    run_dir = RunDir("t", root=tmp_path) if tmp_path else None
    result = Trainer(s.model, s.data, s.settings, quiet=True, run_dir=run_dir,
                     spec_hash=s.spec_hash).fit()
    return s, result


def test_same_seed_gives_identical_weights(tmp_path):
    path = write(tmp_path, TAGGER)
    (a, _), (b, _) = train(path), train(path)
    for name in a.model.params:
        assert np.array_equal(a.model.params[name], b.model.params[name])


def test_a_different_seed_gives_different_weights(tmp_path):
    path = write(tmp_path, TAGGER)
    a, _ = train(path, seed=1)
    b, _ = train(path, seed=2)
    assert not np.array_equal(a.model.params["V"], b.model.params["V"])


def resumed(path, run_dir):
    """A fresh session of the spec resumed from the run's last checkpoint and trained to its end."""
    s = open_session(path)
    trainer = Trainer(s.model, s.data, s.settings, quiet=True, run_dir=RunDir(path=run_dir.path),
                      spec_hash=s.spec_hash)
    trainer.resume(run_dir.last)
    trainer.fit()
    return s


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    path = write(tmp_path, TAGGER)
    full, _ = train(path)
    # an interrupted run: two of four epochs, then resumed from its last checkpoint
    s = open_session(path, overrides=["epochs=2"])
    run_dir = RunDir("t", root=tmp_path / "runs")
    Trainer(s.model, s.data, s.settings, quiet=True, run_dir=run_dir, spec_hash=s.spec_hash).fit()
    s2 = resumed(path, run_dir)
    for name in full.model.params:
        assert np.array_equal(full.model.params[name], s2.model.params[name]), name


def test_a_checkpoint_from_another_spec_is_refused(tmp_path, capsys):
    path = write(tmp_path, TAGGER)
    assert main(["run", str(path), "--runs", str(tmp_path / "runs"), "--quiet", "--json"]) == 0
    run_dir = json.loads(capsys.readouterr().out)["run_dir"]
    other = write(tmp_path, TAGGER.replace("H = 6", "H = 7"), "other.nn")
    assert main(["evaluate", str(other), "--checkpoint", run_dir, "--split", "train"]) == 1
    assert "different spec" in capsys.readouterr().err


def test_predict_tags_new_sentences(tmp_path, capsys):
    path = write(tmp_path, TAGGER)
    assert main(["run", str(path), "--runs", str(tmp_path / "runs"), "--quiet", "--json"]) == 0
    run_dir = json.loads(capsys.readouterr().out)["run_dir"]
    sentences = write(tmp_path, "the dog sleeps\na zebra runs\n", "in.txt")
    assert main(["predict", str(path), "--checkpoint", run_dir, "--input", str(sentences), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[1]["tokens"] == ["a", "zebra", "runs"]                # an unknown word is tagged too
    assert all(tag in ("DET", "NOUN", "VERB") for r in out for tag in r["y"])
    assert all(len(r["y_probability"]) == len(r["tokens"]) for r in out)
    assert all(1 / 3 <= p <= 1 for r in out for p in r["y_probability"])   # the likeliest of three tags


def test_run_directory_holds_spec_metrics_checkpoints_and_plots(tmp_path, capsys):
    path = write(tmp_path, TAGGER)
    assert main(["run", str(path), "--runs", str(tmp_path / "runs"), "--quiet", "--json"]) == 0
    run_dir = Path(json.loads(capsys.readouterr().out)["run_dir"])
    assert (run_dir / "spec.nn").read_text().startswith("\nnetwork tiny_tagger")
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 5      # header + 4 epochs
    assert (run_dir / "best" / "weights.safetensors").exists()
    assert (run_dir / "last" / "meta.json").exists()
    assert (run_dir / "plots" / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the message says it all; no NumPy warning before it
def test_nan_stops_training_naming_the_step_and_the_value(tmp_path):
    spec = """
input x[1]
target y[1]
h = log(W @ x + b)
loss mse(h, y)
param W = [[1]]
param b = [-5]
train { optimizer sgd(lr = 0.1); batch 2; epochs 2 }
data inline { x = [[1], [2]]; y = [[0], [1]] }
"""
    s = open_session(write(tmp_path, spec))
    with pytest.raises(TrainingError, match=r"step 1 \(epoch 1\): 'h' \(.*spec.nn:4\) produced NaN"):
        Trainer(s.model, s.data, s.settings, quiet=True).fit()


def test_a_batch_too_big_for_bptt_memory_is_refused_before_it_runs(tmp_path):
    s = open_session(write(tmp_path, TAGGER))  # (so small a limit in the spec is refused already at open_session)
    tight = s.settings.model_copy(update={"memory_limit_mb": 0.001})
    with pytest.raises(TrainingError, match="MiB for backpropagation through time"):
        Trainer(s.model, s.data, tight, quiet=True).fit()


def test_sequences_longer_than_max_length_are_refused(tmp_path):
    """When the data is read, at the line of the first one (it was at the first batch holding one)."""
    from nnspec.data import DataError
    with pytest.raises(DataError, match="a sequence of 3 steps, longer than max_length 2") as e:
        open_session(write(tmp_path, TAGGER), overrides=["max_length=2"])
    assert e.value.line is not None


def test_input_normalisation_uses_training_statistics(tmp_path):
    spec = """
input x[2]
target y[1]
loss mse(w @ x + b, y)
train { normalize true; batch 2; epochs 1; split dev = 25% }
data inline { x = [[1, 100], [2, 200], [3, 300], [4, 400]]; y = [[1], [2], [3], [4]] }
"""
    s = open_session(write(tmp_path, spec))
    train_x = s.data.splits["train"].data["x"]
    assert np.allclose(train_x.mean(0), 0) and np.allclose(train_x.std(0), 1)


def test_a_resumed_float32_run_on_compiled_loop_kernels_ends_with_the_uninterrupted_weights(tmp_path):
    """Compiled loop kernels (numba) round differently from NumPy's steps. A run long enough for them
    uses them from its first step, and a run resumed from its checkpoint plans the same: it does not
    start counting passes anew (it did, and its float32 weights came out 3e-8 away)."""
    pytest.importorskip("numba")
    spec = (TAGGER.replace("epochs 4", "epochs 60").replace("bidirectional(rnn)(e, H = 6)", "bidirectional(lstm)(e, H = 16)"))
    path = write(tmp_path, spec)
    full, _ = train(path)
    assert full.model.executor.fused.last or full.model.executor.segments_after == 0   # compiled kernels ran
    s = open_session(path)      # the same run, stopped after epoch 45 (as by a kill after its checkpoint)
    run_dir = RunDir("t", root=tmp_path / "runs")
    Trainer(s.model, s.data, s.settings, quiet=True, run_dir=run_dir, spec_hash=s.spec_hash,
            checkpoint_seconds=0, on_epoch=lambda row: row["epoch"] >= 45).fit()
    s2 = resumed(path, run_dir)
    for name in full.model.params:
        assert full.model.params[name].dtype == np.float32
        np.testing.assert_array_equal(full.model.params[name], s2.model.params[name], err_msg=name)


def test_a_short_run_never_waits_for_compiled_loop_kernels(tmp_path):
    path = write(tmp_path, TAGGER)      # 4 epochs of 2 steps
    s, _ = train(path)
    ex = s.model.executor
    assert not (ex.fused and ex.fused.last) and not ex.segments_after and not ex.fast_sigmoid_after


def test_evaluation_batches_sentences_of_one_length_together_to_the_same_metrics(tmp_path):
    # the sums of an evaluation do not depend on the order of its batches: sentences of similar
    # length share one whatever `by_length` says for training, so no step is padding
    from nnspec.train.loop import evaluate
    short, long_ = ["a", "cat"], ["the", "dog", "runs", "and", "the", "cat", "sleeps", "now"]
    tags = {"a": "DET", "the": "DET", "cat": "NOUN", "dog": "NOUN", "runs": "VERB", "sleeps": "VERB",
            "and": "CONJ", "now": "ADV"}
    words = [short, long_] * 4
    inline = (f"  w = {json.dumps(words)}\n"
              f"  y = {json.dumps([[tags[w] for w in s] for s in words])}\n")
    spec = TAGGER.replace(TAGGER[TAGGER.index("data inline {") + 14:TAGGER.rindex("}")], inline)
    s = open_session(write(tmp_path, spec))
    shapes = []
    run = s.model.run

    def recording(feeds, lengths=None, **kw):
        shapes.append((np.asarray(feeds["w"]).shape, None if lengths is None else list(lengths)))
        return run(feeds, lengths, **kw)
    s.model.run = recording
    batched = evaluate(s.model, s.data, "train", s.settings)
    assert sorted(shape for shape, _ in shapes) == [(2, 2)] * 2 + [(8, 2)] * 2   # (T, B): none padded
    one_by_one = evaluate(s.model, s.data, "train", s.settings.model_copy(update={"batch": 1}))
    assert batched.metrics["accuracy"] == one_by_one.metrics["accuracy"]
    assert batched.loss == pytest.approx(one_by_one.loss, rel=1e-6)
