"""``nb_scale x``: a bag input fed as NBSVM's features (Wang & Manning 2012), each present token
weighted by its naive-Bayes log-count ratio counted on the training part only."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import nnspec
from nnspec.cli import main
from nnspec.data import NaiveBayesScaler
from nnspec.data.normalize import input_statistics_from_json

SPEC = """network nbsvm
input  x : {input}
target y : {target}
output p
p = softmax(W @ {use} + b)
loss cross_entropy(p, y)
train {{ optimizer adam(lr = 0.05); batch 4; epochs 20; seed 1{train}
  nb_scale {scaled}
}}
data lines("pos.txt" -> 1, "neg.txt" -> 0, ngrams = 2)
"""


def spec(tmp_path: Path, input="bag of token", use="x", target="class[2]", train="", scaled="x",
         pos="good film\nvery good\ngood fun\n" * 4, neg="not good film\nnot good\nnot good fun\n" * 4) -> Path:
    (tmp_path / "pos.txt").write_text(pos, encoding="utf-8")
    (tmp_path / "neg.txt").write_text(neg, encoding="utf-8")
    path = tmp_path / "spec.nn"
    path.write_text(SPEC.format(input=input, use=use, target=target, train=train, scaled=scaled), encoding="utf-8")
    return path


def hand_ratios(vocab, examples: list[tuple[list[str], int]]) -> np.ndarray:
    """r = log((p / |p|1) / (q / |q|1)), p = 1 + the number of positive examples holding a token,
    q likewise over the negative ones: counted here with plain Python, token by token."""
    held = {c: Counter(t for tokens, y in examples if y == c for t in set(tokens)) for c in (0, 1)}
    p = [1 + held[1][t] for t in vocab.itos]
    q = [1 + held[0][t] for t in vocab.itos]
    return np.array([math.log(a / sum(p)) - math.log(b / sum(q)) for a, b in zip(p, q)])


def examples_of(data, split: str) -> list[tuple[list[str], int]]:
    enc = data.splits[split]
    vocab = data.vocabs["x"]
    return [(vocab.decode(ids), int(y)) for ids, y in zip(enc.data["x"], enc.data["y"])]


def test_the_ratios_equal_a_hand_computation_on_a_tiny_data_set():
    # vocabulary <pad> <unk> good bad film: "good" in both positives and one negative
    bags = [np.array([2, 4]), np.array([2, 2]), np.array([3, 4]), np.array([3, 2])]
    scaler = NaiveBayesScaler.fit(bags, np.array([1, 1, 0, 0]), 5)
    # p = 1 + [0, 0, 2, 0, 1] (a token twice in one example counts once), |p|1 = 8
    # q = 1 + [0, 0, 1, 2, 1], |q|1 = 9
    p, q = np.array([1, 1, 3, 1, 2]), np.array([1, 1, 2, 3, 2])
    np.testing.assert_allclose(scaler.ratio, np.log(p / 8) - np.log(q / 9))
    # fed as present-or-not times the ratio: a count of 2 is still one presence
    counts = np.array([[0, 0, 2, 0, 1], [0, 1, 0, 1, 0]], dtype=np.float32)
    np.testing.assert_allclose(scaler.apply(counts), np.where(counts > 0, scaler.ratio, 0), rtol=1e-6)
    assert scaler.apply(counts).dtype == np.float32


def test_the_batches_of_every_part_hold_the_training_ratios_where_a_token_is_present(tmp_path):
    session = nnspec.open_session(spec(tmp_path, train="; split dev = 25%, test = 25%"))
    data = session.data
    ratio = data.standardizers["x"].ratio
    np.testing.assert_allclose(ratio, hand_ratios(data.vocabs["x"], examples_of(data, "train")))
    for split in ("train", "dev", "test"):
        for batch in data.batches(split, 4):
            x = batch.arrays["x"]
            ids = data.splits[split].data["x"]
            present = np.zeros_like(x, dtype=bool)
            for row, i in enumerate(batch.index):
                present[row, ids[i]] = True
            np.testing.assert_allclose(x, np.where(present, ratio, 0), rtol=1e-6)


def leaky_corpus() -> dict:
    # Lines alternate so every part holds both classes; "twist" comes in positive and negative
    # lines alike, so the labels of whichever lines a part holds decide its ratio.
    return dict(pos="fine twist\nfine\ngreat twist\n" * 8, neg="dull twist\ndull\nawful\n" * 8)


@pytest.mark.parametrize("fold, outer", [((4, 1), None), ((2, 0), (3, 2))])
def test_the_ratios_come_from_the_training_part_of_a_fold_only(tmp_path, fold, outer):
    """Cross-validation and nested cross-validation: each fold counts its own training part; the
    ratios differ from counts over all the data, so a leak of held-out labels would show."""
    path = spec(tmp_path, **leaky_corpus())
    data = nnspec.open_session(path, fold=fold, outer=outer).data
    vocab = data.vocabs["x"]
    train = examples_of(data, "train")
    everything = [e for split in data.splits for e in examples_of(data, split)]
    assert len(train) < len(everything)
    np.testing.assert_allclose(data.standardizers["x"].ratio, hand_ratios(vocab, train))
    assert not np.allclose(hand_ratios(vocab, train), hand_ratios(vocab, everything))


def test_the_ratios_are_saved_with_the_model_and_predict_and_evaluate_apply_them(tmp_path, capsys):
    path = spec(tmp_path)
    assert main(["run", str(path), "--runs", str(tmp_path / "runs"), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    trained = nnspec.open_session(path).data.standardizers["x"].ratio
    model = nnspec.load(run)
    np.testing.assert_allclose(model.standardizers["x"].ratio, trained)
    tokens, feeds = model.encode("not good")
    counts = np.zeros(len(model.vocabs["x"]))
    np.add.at(counts, model.vocabs["x"].encode(tokens), 1)
    np.testing.assert_allclose(feeds["x"][0], np.where(counts > 0, trained, 0), rtol=1e-6)
    assert model.predict("not good").labels == {"y": 0}
    assert model.predict("good fun").labels == {"y": 1}
    # evaluate on new data: its loss is that of the network fed the scaled bags, computed here
    capsys.readouterr()
    source = f'lines("{tmp_path}/pos.txt" -> 1, "{tmp_path}/neg.txt" -> 0, ngrams = 2)'
    assert main(["evaluate", str(run / "spec.nn"), "--checkpoint", str(run), "--data", source, "--json"]) == 0
    loss = json.loads(capsys.readouterr().out)["metrics"]["loss"]
    lines = [(t, 1) for t in (tmp_path / "pos.txt").read_text().split("\n") if t] + \
            [(t, 0) for t in (tmp_path / "neg.txt").read_text().split("\n") if t]
    x = np.concatenate([model.encode(t)[1]["x"] for t, _ in lines])
    p = model.forward({"x": x})["p"]
    expected = -np.mean(np.log([p[i, y] for i, (_, y) in enumerate(lines)]))
    assert loss == pytest.approx(expected, rel=1e-4)
    assert input_statistics_from_json(model.standardizers["x"].to_json()).ratio.tolist() == trained.tolist()


def check(capsys, path) -> tuple[int, str]:
    code = main(["check", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (dict(scaled="h"), "nb_scale scales a bag input, but 'h' is not an input of this network; "
                       "the bag input is 'x'"),
    (dict(input="seq of token", use="mean(embed(x, 4))"), "nb_scale weighs each token of a bag, but 'x' is not a bag; "
                                 "declare it 'input x : bag of token'"),
    (dict(target="class[3]"), "nb_scale compares how often each token occurs in two classes, so it needs "
                              "one target of two classes, e.g. 'target y : class[2]' (targets: 'y')"),
    (dict(scaled="true"), "nb_scale names the bag input to scale, e.g. 'nb_scale x'"),
])
def test_misuse_is_an_error_at_the_setting(tmp_path, capsys, change, message):
    path = spec(tmp_path, **change)
    code, err = check(capsys, path)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[0] == f"{path}:8:3: error: {message}"


def test_a_target_whose_data_holds_three_classes_is_an_error_at_the_setting(tmp_path, capsys):
    path = spec(tmp_path, target="class")
    (tmp_path / "mixed.txt").write_text("so so\nfair enough\n", encoding="utf-8")
    path.write_text(path.read_text().replace('"neg.txt" -> 0,', '"neg.txt" -> 0, "mixed.txt" -> 2,'))
    code, err = check(capsys, path)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[0] == (f"{path}:8:3: error: nb_scale compares two classes, but the target 'y' "
                                   f"has 3 in the data")
