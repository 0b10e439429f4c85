"""Run directories."""
import csv
import json
from datetime import datetime

from nnspec.train.rundir import RunDir

NOW = datetime(2024, 5, 17, 9, 30, 5)


def test_fresh_dirs_are_named_and_unique(tmp_path):
    a = RunDir("xor net", root=tmp_path, now=NOW)
    b = RunDir("xor net", root=tmp_path, now=NOW)
    assert a.path == tmp_path / "xor-net-20240517-093005"
    assert b.path == tmp_path / "xor-net-20240517-093005-2"
    assert a.best == a.path / "best" and a.last == a.path / "last"


def test_spec_settings_and_metrics_files(tmp_path):
    run = RunDir("mlp", root=tmp_path, now=NOW)
    run.write_spec("net mlp { }")
    run.write_settings({"lr": 0.1, "epochs": 3})
    assert (run.path / "spec.nn").read_text() == "net mlp { }\n"
    assert run.read_settings() == {"lr": 0.1, "epochs": 3}

    run.log_metrics({"epoch": 1, "train_loss": 0.9})
    run.log_metrics({"epoch": 2, "train_loss": 0.7, "dev_acc": 0.5})  # new column
    run.log_metrics({"epoch": 3, "dev_acc": 0.75, "train_loss": 0.5})  # other key order
    run.flush()
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]
    with open(run.path / "metrics.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table == [
        ["epoch", "train_loss", "dev_acc"],
        ["1", "0.9", ""],
        ["2", "0.7", "0.5"],
        ["3", "0.5", "0.75"],
    ]


def test_reopen_keeps_columns(tmp_path):
    run = RunDir("m", root=tmp_path, now=NOW)
    run.log_metrics({"epoch": 1, "loss": 2.0})
    run.close()
    again = RunDir(path=run.path)
    assert again.rows == [{"epoch": 1, "loss": 2.0}]
    again.log_metrics({"loss": 1.0, "epoch": 2, "lr": 0.01})
    again.close()
    with open(run.path / "metrics.csv", newline="") as f:
        table = list(csv.reader(f))
    assert table == [["epoch", "loss", "lr"], ["1", "2.0", ""], ["2", "1.0", "0.01"]]
