"""What a run leaves behind: checkpoints on a cadence, results.json, cross-validation folds and their
summary, plots worth keeping, and `nnspec runs`."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

import nnspec.train.loop as loop
from nnspec import open_session
from nnspec.cli import main
from nnspec.sweep.cv import summarise
from nnspec.cli.training import _distinct_parts, _label_names
from nnspec.train.checkpoint import load_checkpoint
from nnspec.train.loop import Trainer
from nnspec.train.plots import curves_figure
from nnspec.train.rundir import RunDir

SPECS = Path(__file__).resolve().parent.parent / "specs"

CLASSIFIER = """
network clf
input  x[2]
target y : class[2]
output p
h[8] = tanh(W @ x + b)
p = softmax(V @ h + c)
loss cross_entropy(p, y)
train { optimizer adam(lr = 0.05); batch 4; epochs 3; seed 2; split dev = 25%, test = 25% }
data inline {
  x = [[0, 0], [0, 1], [1, 0], [1, 1], [0, 0.1], [0.1, 1], [1, 0.1], [0.9, 1],
       [0.1, 0], [0, 0.9], [0.9, 0], [1, 0.9], [0.2, 0.1], [0.1, 0.8], [0.8, 0.2], [0.9, 0.9]]
  y = [0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0]
}
"""


def _json_out(capsys, *argv) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def _saves(monkeypatch) -> list:
    calls = []
    real = loop.save_checkpoint

    def counting(path, *a, **kw):
        calls.append((Path(path).name, kw["epoch"]))
        return real(path, *a, **kw)
    monkeypatch.setattr(loop, "save_checkpoint", counting)
    return calls


# ---- checkpoint cadence and history ------------------------------------------------------------

def test_a_run_of_many_tiny_epochs_checkpoints_rarely_and_appends_its_history(tmp_path, monkeypatch):
    saves = _saves(monkeypatch)
    s = open_session(SPECS / "xor_train.nn")
    run = RunDir("xor", root=tmp_path)
    result = Trainer(s.model, s.data, s.settings, quiet=True, run_dir=run, spec_hash=s.spec_hash).fit()
    # the first checkpoint a second into training (if it lasts that long), then the end: not 4,000
    assert 2 <= len(saves) <= 4 and saves[-1] == ("last", 2000)
    assert ("best", result.best_epoch) in saves
    meta = json.loads((run.last / "meta.json").read_text())
    assert "history" not in meta["extra"] and len((run.last / "meta.json").read_bytes()) < 4000
    assert [json.loads(l)["epoch"] for l in run.metrics_jsonl.read_text().splitlines()] == list(range(1, 2001))
    size = sum(f.stat().st_size for f in run.path.rglob("*") if f.is_file())
    assert size < 300_000   # was 650 KB with the history in every meta.json


def test_best_waits_in_memory_until_a_checkpoint(tmp_path, monkeypatch):
    saves = _saves(monkeypatch)
    s = open_session(text=CLASSIFIER, overrides=["epochs=6"])
    run = RunDir("c", root=tmp_path)
    trainer = Trainer(s.model, s.data, s.settings, quiet=True, run_dir=run, spec_hash=s.spec_hash,
                      checkpoint_seconds=1e9)
    trainer.fit()
    assert saves == [("best", trainer.best_epoch), ("last", 6)]   # one of each, at the end
    best = load_checkpoint(run.best)
    assert best.epoch == trainer.best_epoch
    for name, value in trainer.best_params.items():
        assert np.array_equal(best.params[name], value)


def test_every_epoch_when_asked(tmp_path, monkeypatch):
    saves = _saves(monkeypatch)
    s = open_session(text=CLASSIFIER)
    Trainer(s.model, s.data, s.settings, quiet=True, run_dir=RunDir("c", root=tmp_path),
            spec_hash=s.spec_hash, checkpoint_seconds=0).fit()
    assert [e for name, e in saves if name == "last"] == [1, 2, 3]


def test_resuming_drops_rows_logged_after_the_checkpoint(tmp_path):
    s = open_session(text=CLASSIFIER, overrides=["epochs=2"])
    run = RunDir("c", root=tmp_path)
    Trainer(s.model, s.data, s.settings, quiet=True, run_dir=run, spec_hash=s.spec_hash).fit()
    rows = run.metrics_jsonl.read_text().splitlines()
    # as a kill leaves it: epoch 3 logged but not checkpointed, and half a row of epoch 4
    with open(run.metrics_jsonl, "a") as f:
        f.write(rows[-1].replace('"epoch": 2', '"epoch": 3') + "\n" + rows[-1][:20])
    s2 = open_session(text=CLASSIFIER)
    again = RunDir(path=run.path)
    trainer = Trainer(s2.model, s2.data, s2.settings, quiet=True, run_dir=again, spec_hash=s2.spec_hash)
    trainer.resume(run.last)
    trainer.fit()
    epochs = [json.loads(l)["epoch"] for l in run.metrics_jsonl.read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert [l.split(",")[0] for l in run.metrics_csv.read_text().splitlines()] == ["epoch", "1", "2", "3"]


# ---- results.json and cross-validation -----------------------------------------------------------

def test_results_json_keeps_the_best_epoch_and_the_held_out_test(tmp_path, capsys):
    spec = tmp_path / "clf.nn"
    spec.write_text(CLASSIFIER)
    report = _json_out(capsys, "run", str(spec), "--runs", str(tmp_path / "runs"), "--quiet", "--json")
    results = json.loads((Path(report["run_dir"]) / "results.json").read_text())
    assert results["spec"] == "clf" and results["epochs"] == 3
    assert results["best_epoch"] == report["metrics"]["best_epoch"]
    assert results["best"]["dev_accuracy"] == report["metrics"]["dev_accuracy"]
    assert results["test"] == {"loss": report["metrics"]["test_loss"],
                               "accuracy": report["metrics"]["test_accuracy"]}


def test_cross_validation_keeps_folds_and_their_summary(tmp_path, capsys):
    spec = tmp_path / "clf.nn"
    spec.write_text(CLASSIFIER.replace("split dev = 25%, test = 25%", "split dev = 25%"))
    report = _json_out(capsys, "run", str(spec), "--runs", str(tmp_path / "runs"), "--folds", "4", "--json")
    run = Path(report["run_dir"])
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["fold-01", "fold-02", "fold-03", "fold-04"]
    for fold in ("fold-01", "fold-04"):
        assert (run / fold / "best" / "weights.safetensors").exists() and (run / fold / "results.json").exists()
    results = json.loads((run / "results.json").read_text())
    acc = results["test"]["accuracy"]
    per_fold = [f["test_accuracy"] for f in report["folds"]]
    assert acc["per_fold"] == per_fold and acc["n"] == 4
    assert acc["mean"] == pytest.approx(np.mean(per_fold))
    assert acc["sd"] == pytest.approx(np.std(per_fold, ddof=1))
    assert acc["stderr"] == pytest.approx(np.std(per_fold, ddof=1) / 2)
    assert report["metrics"]["mean_test_accuracy"] == pytest.approx(acc["mean"])   # the flat keys stay


def test_cross_validation_in_one_process_resumes_keeping_its_finished_folds(tmp_path, capsys):
    spec = tmp_path / "clf.nn"
    spec.write_text(CLASSIFIER.replace("split dev = 25%, test = 25%", "split dev = 25%"))
    whole = _json_out(capsys, "run", str(spec), "--runs", str(tmp_path / "runs"), "--folds", "4", "--json")
    run = Path(whole["run_dir"])
    # As an interruption during fold 3 leaves it: folds 1 and 2 recorded, fold 3 half there, no results.json.
    progress = json.loads((run / "progress.json").read_text())
    assert sorted(progress["done"]) == ["1", "2", "3", "4"]
    progress["done"] = {f: progress["done"][f] for f in ("1", "2")}
    (run / "progress.json").write_text(json.dumps(progress))
    (run / "results.json").unlink()
    (run / "fold-04").rename(tmp_path / "fold-04")
    kept = (run / "fold-01" / "metrics.jsonl").stat().st_mtime_ns
    assert main(["run", str(spec), "--folds", "4", "--set", "epochs=2", "--resume", str(run)]) == 1
    assert "begun otherwise" in capsys.readouterr().err   # it resumes only as it began
    resumed = _json_out(capsys, "run", str(spec), "--folds", "4", "--resume", str(run), "--json")
    assert resumed["metrics"]["test_accuracy_per_fold"] == whole["metrics"]["test_accuracy_per_fold"]
    assert (run / "fold-01" / "metrics.jsonl").stat().st_mtime_ns == kept   # fold 1 was not trained again
    assert (run / "fold-04" / "best" / "weights.safetensors").exists()
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["accuracy"]["per_fold"] == whole["metrics"]["test_accuracy_per_fold"]
    assert main(["run", str(spec), "--folds", "4", "--resume", str(run)]) == 1
    assert "finished cross-validation" in capsys.readouterr().err


def test_fold_summary_statistics():
    summary = summarise([{"test": {"accuracy": a, "loss": 1 - a}} for a in (0.5, 0.7, 0.9)], 3)
    acc = summary["test"]["accuracy"]
    assert acc["mean"] == pytest.approx(0.7) and acc["sd"] == pytest.approx(0.2)   # n - 1: sqrt(0.08 / 2)
    assert acc["stderr"] == pytest.approx(0.2 / math.sqrt(3))
    assert summary["test"]["loss"]["per_fold"] == pytest.approx([0.5, 0.3, 0.1])
    one = summarise([{"test": {"accuracy": 0.5}}], 1)["test"]["accuracy"]
    assert one["sd"] is None and one["stderr"] is None


def test_cross_validation_needs_two_folds(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(SPECS / "xor_train.nn"), "--folds", "1", "--no-save"])
    assert exit_.value.code == 2
    assert "--folds: must be at least 2, not 1" in capsys.readouterr().err


# ---- plots ---------------------------------------------------------------------------------------

def _panels(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes}


def test_curves_mark_the_best_epoch_and_give_each_kind_of_metric_its_axis():
    rows = [{"epoch": e, "train_loss": 2.0 / e, "dev_loss": 2.1 / e, "dev_accuracy": 0.5 + 0.1 * e,
             "dev_perplexity": 8.0 - e, "lr": 0.1} for e in range(1, 4)]
    fig = curves_figure(rows, best_epoch=2, loss_unit="nats per character")
    panels = _panels(fig)
    assert set(panels) == {"Loss", "Accuracy", "Perplexity"}
    assert panels["Loss"].get_ylabel() == "loss (nats per character)"
    for ax in panels.values():
        best = [line for line in ax.lines if line.get_label() == "best (epoch 2)"]
        assert best and list(best[0].get_xdata()) == [2, 2]
    assert panels["Accuracy"].get_ylim()[1] <= 1.05 and panels["Perplexity"].get_ylim()[0] > 4


def test_two_epochs_are_points_on_whole_epoch_ticks():
    fig = curves_figure([{"epoch": 1, "train_loss": 0.7}, {"epoch": 2, "train_loss": 0.5}])
    (ax,) = fig.axes
    (curve,) = [line for line in ax.lines if line.get_label() == "train"]
    assert curve.get_marker() == "o"
    fig.canvas.draw() if hasattr(fig.canvas, "draw") else None
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert not any("no metrics" in t.get_text() for t in ax.texts)


def test_classes_are_named_after_their_files(tmp_path):
    (tmp_path / "pos.txt").write_text("good fun\ngreat film\nlovely\nfine work\n")
    (tmp_path / "neg.txt").write_text("bad film\nawful\ndull work\npoor fun\n")
    spec = tmp_path / "files.nn"
    spec.write_text("""
input x : bag of token
target y : class[2]
output p
p = softmax(W @ x + b)
loss cross_entropy(p, y)
train { epochs 2; batch 2; split dev = 25% }
data lines("pos.txt" -> 1, "neg.txt" -> 0)
""")
    s = open_session(spec, with_data=False)
    assert _label_names(s.compiled.flat.data) == {1.0: "pos", 0.0: "neg"}
    assert _distinct_parts(["rt-polarity.pos.gz", "rt-polarity.neg.gz"]) == ["pos", "neg"]
    assert _distinct_parts(["positive.txt", "negative.txt"]) == ["positive", "negative"]
    assert main(["run", str(spec), "--runs", str(tmp_path / "runs"), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "plots" / "confusion-dev.png").read_bytes()[:4] == b"\x89PNG"


# ---- nnspec runs ---------------------------------------------------------------------------------

def test_runs_lists_spec_date_status_best_figure_and_size(tmp_path, capsys):
    spec = tmp_path / "clf.nn"
    spec.write_text(CLASSIFIER)
    runs = tmp_path / "runs"
    finished = _json_out(capsys, "run", str(spec), "--runs", str(runs), "--quiet", "--json")["run_dir"]
    interrupted = RunDir("clf", root=runs)
    (interrupted.path / "settings.json").write_text("{}")
    (interrupted.path / "last").mkdir()
    listed = {Path(r["path"]).name: r for r in _json_out(capsys, "runs", str(runs), "--json")}
    done = listed[Path(finished).name]
    assert done["spec"] == "clf" and done["status"] == "finished" and done["epochs"] == 3
    assert done["best"]["name"] == "test accuracy" and 0 <= done["best"]["value"] <= 1
    assert done["bytes"] > 1000 and done["date"][:4].isdigit()
    assert listed[interrupted.path.name]["status"] == "interrupted"
    assert main(["runs", str(runs)]) == 0
    table = capsys.readouterr().out
    assert "clf" in table and "finished" in table and "test accuracy" in table
    assert main(["runs", str(tmp_path / "nowhere")]) == 1
