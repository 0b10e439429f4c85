"""The command line: what each command prints, as text and as JSON."""
import json
import re
from pathlib import Path


from nnspec.cli import main

SPECS = Path(__file__).resolve().parent.parent / "specs"


def out_of(capsys, *args, code=0) -> str:
    assert main(list(args)) == code
    return capsys.readouterr().out


def test_check_summarises_values_shapes_and_parameters(capsys):
    text = out_of(capsys, "check", str(SPECS / "xor_goodfellow.nn"))
    assert "xor_goodfellow: feed-forward" in text
    assert "parameters: 9" in text
    assert "[2, 2]" in text


def test_check_json_reports_kind_parameters_and_loops(capsys):
    report = json.loads(out_of(capsys, "check", str(SPECS / "lstm_tagger.nn"), "--no-data", "--json"))
    assert report["ok"] is True and report["errors"] == []
    assert report["kind"] == "recurrent"
    assert report["loops"][0]["direction"] == "forward"
    assert {"h", "h.c"} <= set(report["loops"][0]["values"])
    assert "vocab(w)" in report["parameters"]          # sizes the data decides stay symbolic without data


def test_check_with_data_knows_every_size(capsys):
    report = json.loads(out_of(capsys, "check", str(SPECS / "sentiment_bow.nn"), "--json"))
    assert isinstance(report["parameters"], int) and report["parameters"] > 64 * 1000


def test_bidirectional_nets_report_a_backward_loop(capsys):
    report = json.loads(out_of(capsys, "check", str(SPECS / "bilstm_tagger.nn"), "--no-data", "--json"))
    assert sorted(loop["direction"] for loop in report["loops"]) == ["backward", "forward"]


def test_expand_shows_a_cell_as_its_gate_equations(capsys):
    text = out_of(capsys, "expand", str(SPECS / "lstm_tagger.nn"))
    assert "h.f = sigmoid(h.Wf @ e + h.Uf @ h[t-1] + h.bf)" in text
    assert "h.c = h.f * h.c[t-1] + h.i * h.g" in text
    assert "h[128] = h.o * tanh(h.c)" in text


def test_expanded_spec_is_a_spec_again(capsys, tmp_path):
    text = out_of(capsys, "expand", str(SPECS / "bilstm_tagger.nn"))
    path = tmp_path / "expanded.nn"
    path.write_text(text)
    assert json.loads(out_of(capsys, "check", str(path), "--no-data", "--json"))["ok"]


def test_expand_plan_shows_the_loops(capsys):
    text = out_of(capsys, "expand", str(SPECS / "elman.nn"), "--plan")
    assert "loop over t (forward in time)" in text


def test_grad_prints_value_and_every_partial(capsys):
    text = out_of(capsys, "grad", str(SPECS / "chain_rule.nn"), "--at", "a=3", "b=1", "c=-2")
    assert text.splitlines() == ["L = -10", "∂L/∂a = -2", "∂L/∂b = -4", "∂L/∂c = 5"]


def test_grad_reads_the_data_for_sizes_it_decides(capsys):
    # the vocabulary of w comes from the data: grad reads it (it crashed with a traceback)
    text = out_of(capsys, "grad", str(SPECS / "gru_classifier.nn"), "--at", "w=[1,2,3]", "y=1")
    assert "∂loss/∂V" in text


def test_graph_is_dot_with_values_and_gradients_on_the_nodes(capsys):
    dot = out_of(capsys, "graph", str(SPECS / "chain_rule.nn"), "--at", "a=3", "b=1", "c=-2")
    assert dot.startswith('digraph "chain_rule"')
    assert "= -10" in dot and "∂ = 5" in dot and "∂ = -4" in dot


def test_graph_unrolled_over_three_steps_draws_the_delay_edges(capsys):
    dot = out_of(capsys, "graph", str(SPECS / "elman.nn"), "--unroll", "3")
    assert 'label="t = 3"' in dot
    # the recurrence link: h at step 1 feeds step 2, h at step 2 feeds step 3, and nothing beyond
    assert re.search(r'"h@1" -> "[^"]+@2" \[style=dashed, color="#dc2626", label="t-1"\]', dot)
    assert re.search(r'"h@2" -> "[^"]+@3" \[style=dashed', dot)
    assert not re.search(r'"h@3" -> "[^"]+@4"', dot)


def test_graph_to_a_file(capsys, tmp_path):
    target = tmp_path / "g.dot"
    assert main(["graph", str(SPECS / "xor_goodfellow.nn"), "-o", str(target)]) == 0
    assert target.read_text().startswith("digraph")


def test_graph_as_svg_without_graphviz_is_nnspecs_own_drawing(capsys, tmp_path, monkeypatch):
    import nnspec.render
    monkeypatch.setattr(nnspec.render.shutil, "which", lambda name: None)   # no Graphviz `dot`
    target = tmp_path / "g.svg"
    assert main(["graph", str(SPECS / "chain_rule.nn"), "--at", "a=3", "b=1", "c=-2", "-o", str(target)]) == 0
    assert capsys.readouterr().err.strip() == f"wrote {target}"
    picture = target.read_text()
    assert picture.lstrip().startswith("<svg") and picture.rstrip().endswith("</svg>")
    assert ">a<" in picture and "-2" in picture          # the nodes, with their values
    assert not (tmp_path / "g.dot").exists()


def test_graph_as_png_without_graphviz_writes_the_svg_and_says_so(capsys, tmp_path, monkeypatch):
    import nnspec.render
    monkeypatch.setattr(nnspec.render.shutil, "which", lambda name: None)
    assert main(["graph", str(SPECS / "xor_goodfellow.nn"), "-o", str(tmp_path / "g.png")]) == 0
    err = capsys.readouterr().err
    assert "Graphviz is not installed, so no PNG: wrote " + str(tmp_path / "g.svg") in err
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<svg") and not (tmp_path / "g.png").exists()


def test_run_json_reports_outputs_for_a_spec_without_training(capsys):
    report = json.loads(out_of(capsys, "run", str(SPECS / "xor_goodfellow.nn"), "--json"))
    assert report["kind"] == "feed-forward" and report["outputs"]["y"] == [0.0, 1.0, 1.0, 0.0]


def test_run_json_reports_metrics_after_training(capsys):
    report = json.loads(out_of(capsys, "run", str(SPECS / "perceptron_and.nn"), "--no-save", "--json"))
    assert report["metrics"]["converged"] is True and report["metrics"]["epochs"] <= 25


def test_set_overrides_a_training_setting(capsys):
    report = json.loads(out_of(capsys, "run", str(SPECS / "perceptron_xor.nn"), "--no-save", "--json",
                               "--set", "epochs=3"))
    assert report["metrics"]["epochs"] == 3


def test_cross_validation_reports_the_mean_over_folds(capsys, tmp_path):
    report = json.loads(out_of(capsys, "run", str(SPECS / "sentiment_bow.nn"), "--folds", "3", "--json",
                               "--no-save", "--set", "limit=90", "--set", "epochs=1"))
    assert report["metrics"]["folds"] == 3
    assert len(report["metrics"]["test_accuracy_per_fold"]) == 3
    assert 0.0 <= report["metrics"]["mean_test_accuracy"] <= 1.0


def test_ops_lists_every_operation(capsys):
    text = out_of(capsys, "ops")
    for name in ("tanh", "matmul", "cross_entropy_logits", "shift", "word_dropout"):
        assert name in text
