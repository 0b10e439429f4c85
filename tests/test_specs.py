"""Every spec in specs/ runs as it is (recurrent and corpus specs on a small slice of their data)."""
import json
from pathlib import Path

import numpy as np
import pytest

from nnspec import compile_file, open_session
from nnspec.cli import main
from nnspec.runtime import Executor
from nnspec.train.loop import Trainer, evaluate

SPECS = Path(__file__).resolve().parent.parent / "specs"


def run_json(capsys, *args) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_spec_passes_check(capsys):
    for spec in sorted(SPECS.glob("*.nn")):
        assert main(["check", str(spec), "--no-data", "--json"]) == 0, spec.name
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] and report["kind"] in ("feed-forward", "recurrent")


def test_goodfellow_xor_prints_0_1_1_0(capsys):
    report = run_json(capsys, "run", str(SPECS / "xor_goodfellow.nn"))
    assert report["outputs"]["y"] == [0.0, 1.0, 1.0, 0.0]


def test_chain_rule_gradients(capsys):
    report = run_json(capsys, "grad", str(SPECS / "chain_rule.nn"), "--at", "a=3", "b=1", "c=-2")
    assert report == {"value": -10.0, "gradients": {"a": -2.0, "b": -4.0, "c": 5.0}}


def xor_learned(seed: int) -> bool:
    s = open_session(SPECS / "xor_train.nn", seed=seed)
    Trainer(s.model, s.data, s.settings, quiet=True).fit()
    return evaluate(s.model, s.data, "train", s.settings).metrics["accuracy"] == 1.0


def test_xor_train_learns_xor_in_at_least_19_of_20_seeds():
    successes = sum(xor_learned(seed) for seed in range(20))
    assert successes >= 19, f"learned XOR in {successes}/20 runs"


@pytest.mark.parametrize("gate,converges", [("and", True), ("or", True), ("xor", False)])
def test_perceptron_rule_converges_exactly_on_linearly_separable_gates(gate, converges, capsys):
    report = run_json(capsys, "run", str(SPECS / f"perceptron_{gate}.nn"), "--no-save")
    assert report["metrics"]["converged"] is converges


def test_perceptron_says_xor_is_not_linearly_separable(capsys):
    assert main(["run", str(SPECS / "perceptron_xor.nn"), "--no-save", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "did not converge" in out and "linearly separable" in out


def quick(spec: str, tmp_path, *extra) -> dict:
    args = ["run", str(SPECS / spec), "--runs", str(tmp_path), "--quiet", "--json",
            "--set", "limit=120", "--set", "epochs=1", *extra]
    return args


@pytest.mark.parametrize("spec", ["sentiment_bow.nn", "elman.nn", "lstm_tagger.nn", "bilstm_tagger.nn",
                                  "gru_classifier.nn", "stacked_rnn.nn", "lstm_from_gates.nn"])
def test_corpus_spec_trains_on_a_slice(spec, tmp_path, capsys):
    assert main(quick(spec, tmp_path)) == 0
    report = json.loads(capsys.readouterr().out)
    metrics = report["metrics"]
    assert metrics["epochs"] == 1
    assert np.isfinite(metrics["dev_loss"])
    run_dir = Path(report["run_dir"])
    assert (run_dir / "best" / "weights.safetensors").exists()
    assert (run_dir / "metrics.csv").exists() and (run_dir / "plots" / "curves.png").exists()


def test_lstm_from_gates_is_the_library_lstm():
    """The gate-by-gate cell in lstm_from_gates.nn computes exactly what the library lstm does."""
    by_hand = compile_file(SPECS / "lstm_from_gates.nn", bindings={"vocab(w)": 30, "classes(y)": 5}).plan
    text = (SPECS / "lstm_from_gates.nn").read_text().replace("h = my_lstm(e, H = 128)", "h = lstm(e, H = 128)")
    from nnspec import compile_text
    library = compile_text(text, bindings={"vocab(w)": 30, "classes(y)": 5}).plan
    rng = np.random.default_rng(0)
    params = {p.name: rng.normal(scale=0.3, size=p.shape) for p in by_hand.params}
    assert {p.name for p in library.params} == set(params)
    feeds = {"w": rng.integers(0, 30, (6, 2)), "y": rng.integers(0, 5, (6, 2))}
    results = []
    for plan in (by_hand, library):
        ex = Executor(plan, dtype=np.float64)
        tape = ex.forward(params, feeds)
        results.append((tape.values["p"], ex.backward(tape)))
    assert np.allclose(results[0][0], results[1][0], atol=1e-12)
    for name in params:
        assert np.allclose(results[0][1][name], results[1][1][name], atol=1e-12), name
