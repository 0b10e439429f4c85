"""The Python API a new user reaches for: load a trained run, predict on text, read and set
parameters by their spec names, the spec's dtype, and the compiled network as JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import nnspec
from conftest import TINY_SENTENCES, conllu, train_tiny_tagger
from nnspec.cli import main
from nnspec.train.checkpoint import CheckpointError

TAGGER = """network tiny_tagger
input  w : seq of token
target y : seq of class
output p
e = embed(w, 8)
h = bidirectional(rnn)(e, H = 6)
p = softmax(V @ h + c)
loss cross_entropy(p, y)
train { optimizer adam(lr = 0.05); batch 2; epochs 4; seed 3; dtype float64 }
data conllu(train = "train.conllu", dev = "dev.conllu")
"""



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real run: ``nnspec run`` on a tiny tagger, as a user would train one."""
    return train_tiny_tagger(tmp_path_factory.mktemp("tagger"), TAGGER)


def test_load_gives_the_trained_weights_vocabularies_and_settings(run_dir):
    model = nnspec.load(run_dir)
    from nnspec.train.checkpoint import load_checkpoint
    best = load_checkpoint(run_dir / "best")
    assert set(model.params) == set(best.params)
    for name, value in best.params.items():
        assert np.array_equal(model.params[name], value), name
    assert model.dtype == np.float64 and model.settings.dtype == "float64"   # trained in float64, loaded so
    assert model.vocabs["y"].decode(range(3)) == sorted(model.vocabs["y"].itos)
    assert model.checkpoint.epoch == best.epoch and model.path == run_dir


def test_load_takes_a_checkpoint_directory_or_the_last_checkpoint(run_dir):
    assert nnspec.load(run_dir / "last").checkpoint.path == run_dir / "last"
    assert nnspec.load(run_dir, checkpoint="last").checkpoint.path == run_dir / "last"
    assert nnspec.load(run_dir, dtype="float32").params["V"].dtype == np.float32   # an explicit dtype wins


def test_load_of_something_that_is_no_run_says_so(tmp_path, run_dir):
    with pytest.raises(CheckpointError, match="no such run directory"):
        nnspec.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no best/ checkpoint"):
        nnspec.load(tmp_path)
    other = tmp_path / "other.nn"
    other.write_text(TAGGER.replace("H = 6", "H = 7"))
    with pytest.raises(CheckpointError, match="different spec"):
        nnspec.load(run_dir, spec=other)


def test_predict_tags_raw_text_and_token_lists_alike(run_dir):
    model = nnspec.load(run_dir)
    from_text = model.predict("the dog sleeps")
    from_tokens = model.predict(["the", "dog", "sleeps"])
    assert from_text.tokens == ["the", "dog", "sleeps"]
    assert from_text.labels == from_tokens.labels == {"y": ["DET", "NOUN", "VERB"]}
    probs = from_text.scores["y"]                          # one distribution a token
    assert probs.shape == (3, 3) and np.allclose(probs.sum(-1), 1)
    assert from_text.probabilities["y"] == pytest.approx(probs.max(-1).tolist())
    # the same numbers as a forward pass on the ids
    ids = model.vocabs["w"].encode(["the", "dog", "sleeps"])[:, None]
    assert np.allclose(model.forward({"w": ids})["p"][:, 0], probs)


def test_predict_splits_text_on_whitespace_unless_given_a_tokenizer(run_dir):
    model = nnspec.load(run_dir)
    assert model.predict("the  dog\truns").tokens == ["the", "dog", "runs"]
    assert model.predict("the dog,runs", tokenizer=lambda s: s.replace(",", " , ").split()).tokens == \
        ["the", "dog", ",", "runs"]
    with pytest.raises(ValueError, match="at least one token"):
        model.predict("   ")


def test_predict_json_has_tokens_labels_and_probabilities(run_dir):
    out = nnspec.load(run_dir).predict("a cat runs").to_json()
    assert out["tokens"] == ["a", "cat", "runs"] and out["y"] == ["DET", "NOUN", "VERB"]
    assert len(out["y_probability"]) == 3 and all(1 / 3 < p <= 1 for p in out["y_probability"])
    json.dumps(out)   # plain JSON values


def test_a_bag_of_words_classifier_predicts_one_label_with_its_probability(tmp_path):
    spec = tmp_path / "bow.nn"
    spec.write_text("""network bow
input  x : bag of token
target y : class
output p
p = softmax(W @ x + b)
loss cross_entropy(p, y)
train { optimizer adam(lr = 0.1); batch 2; epochs 20; seed 1 }
data lines("pos.txt" -> good, "neg.txt" -> bad)
""")
    (tmp_path / "pos.txt").write_text("great fun\nlovely film\ngreat acting\n")
    (tmp_path / "neg.txt").write_text("dull film\nawful acting\ndull plot\n")
    assert main(["run", str(spec), "--runs", str(tmp_path / "runs"), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    prediction = nnspec.load(run).predict("a great lovely film")
    assert prediction.labels == {"y": "good"}
    assert 0.5 < prediction.probabilities["y"] <= 1


def test_parameters_are_read_and_set_by_their_spec_names():
    model = nnspec.Model.from_file("specs/xor_goodfellow.nn")
    W = model.get("W")
    assert W.tolist() == [[1, 1], [1, 1]]
    W[0, 0] = 5                                  # a copy: the model is unchanged
    assert model.params["W"][0, 0] == 1
    model.set("w", [[1, -1]])
    assert model.forward({"x": [[1, 1]]})["y"].ravel().tolist() == [1.0]   # h = [2, 1]: 2 - 1
    assert model.params["w"].dtype == model.dtype
    with pytest.raises(ValueError, match=r"parameter 'W' has shape \[2, 2\], the new value \[3\]"):
        model.set("W", [1, 2, 3])
    with pytest.raises(KeyError, match="no parameter 'V'.*the parameters are W, c, w, b"):
        model.get("V")


def test_the_specs_dtype_is_honoured_and_an_explicit_one_wins():
    spec = "input x[2]\noutput y[1]\ny = W @ x\ntrain { dtype float64 }\n"
    assert nnspec.Model.from_text(spec).dtype == np.float64
    assert nnspec.Model.from_text(spec).params["W"].dtype == np.float64
    assert nnspec.Model.from_text(spec, dtype=np.float32).dtype == np.float32
    assert nnspec.Model.from_text("input x[2]\noutput y[1]\ny = W @ x\n").dtype == np.float32
    # the spec's seed and initialiser too: the model open_session builds
    seeded = "input x[2]\ntarget r[3]\noutput y[3]\ny = W @ x\nloss mse(y, r)\ntrain { seed 7 }\n"
    assert np.array_equal(nnspec.Model.from_text(seeded).params["W"],
                          nnspec.open_session(text=seeded).model.params["W"])


@pytest.mark.parametrize("spec", ["specs/chain_rule.nn", "specs/elman.nn", "specs/lstm_tagger.nn"])
def test_the_compiled_network_round_trips_through_json(spec):
    from nnspec.export import CompiledJSON
    compiled = nnspec.compile_file(spec)
    text = compiled.to_json()
    doc = CompiledJSON.model_validate_json(text)
    assert doc.model_dump_json() == text
    assert doc.plan == compiled.plan
    assert {n.id for n in doc.nodes} == set(compiled.graph.g.nodes)
    assert len(doc.loops) == len(compiled.components)
    raw = json.loads(text)
    assert raw["format"] == "nnspec-compiled" and raw["version"] == 1 and raw["kind"] == compiled.kind


@pytest.mark.parametrize("spec,dropout", [("specs/xor_train.nn", None), ("specs/lstm_tagger.nn", {"e": 0.25})])
def test_a_model_keeps_the_plan_and_makes_the_graph_again_when_asked(spec, dropout):
    # the flat equations and the graph are several times the plan's size: an embedded model does
    # not hold them, and reading them makes the same ones (nodes, shapes, edges, loops: the JSON)
    bindings = {"vocab(w)": 12, "classes(y)": 5} if "tagger" in spec else None
    compiled = nnspec.compile_file(spec, bindings=bindings, dropout=dropout)
    model = nnspec.Model(compiled)
    assert model.compiled.front is None and model.compiled.plan is compiled.plan
    assert compiled.front is not None                     # the caller's object is left as it was
    assert model.compiled.to_json() == compiled.to_json()
    assert model.compiled.front is not None and model.compiled.order == compiled.order
    assert model.compiled.program.statements == compiled.program.statements
    if dropout:
        assert "e.dropout" in model.compiled.graph.g


def test_a_models_program_is_read_again_from_the_texts_compiled_not_the_disk(tmp_path):
    (tmp_path / "layer.nn").write_text("h[3] = tanh(W @ x + b)\n")
    main = tmp_path / "net.nn"
    main.write_text('input x[2]\ninclude "layer.nn"\noutput y[1]\ny = V @ h\n')
    compiled = nnspec.compile_file(main)
    model = nnspec.Model(compiled)
    (tmp_path / "layer.nn").write_text("this is no spec\n")      # changed after the compilation
    assert model.compiled.program.files == [str(main), str((tmp_path / "layer.nn").resolve())]
    assert model.compiled.to_json() == compiled.to_json()
    assert model.compiled.program.main_file == str(main)


def test_a_model_of_a_program_whose_texts_are_not_at_hand_keeps_it_parsed():
    from nnspec.compiler import compile_program
    from nnspec.errors import Diagnostics
    from nnspec.loader import load_text
    program = load_text("input x[2]\noutput y[1]\ny = W @ x\n", "<string>", Diagnostics())
    compiled = compile_program(program, Diagnostics())        # its diagnostics never saw the text
    model = nnspec.Model(compiled)
    assert model.compiled.program is program and model.compiled.front is None
    assert model.compiled.to_json() == compiled.to_json()


def test_a_plan_read_back_from_json_runs_to_the_same_values():
    from nnspec.export import CompiledJSON
    from nnspec.runtime import Executor
    model = nnspec.Model.from_file("specs/chain_rule.nn")
    plan = CompiledJSON.model_validate_json(model.compiled.to_json()).plan
    feeds = {"a": np.array([[3.0]]), "b": np.array([[1.0]]), "c": np.array([[-2.0]])}
    tape = Executor(plan, np.float64).forward(model.params, feeds)
    assert tape.values["L"].ravel().tolist() == [-10.0]
    doc = json.loads(model.compiled.to_json())
    L = next(n for n in doc["nodes"] if n["id"] == "L")
    assert L["kind"] == "op" and L["op"] == "mul" and L["source"].endswith("chain_rule.nn:9:1")


def test_the_json_schema_is_published():
    from nnspec.export import CompiledJSON
    schema = CompiledJSON.model_json_schema()
    assert {"nodes", "edges", "loops", "plan"} <= set(schema["required"])
    assert "NodeJSON" in schema["$defs"] and "Plan" in schema["$defs"]


def test_the_treebank_tokenizer_splits_words_as_ud_does(run_dir):
    pytest.importorskip("nltk", reason="the tokenize extra (pip install -e '.[tokenize]') is missing")
    from nnspec.trained import treebank_tokenize
    assert treebank_tokenize('I can\'t say "no", it\'s late.') == \
        ["I", "ca", "n't", "say", '"', "no", '"', ",", "it", "'s", "late", "."]
    model = nnspec.load(run_dir)
    assert model.predict("the dog runs.", tokenizer="treebank").tokens == ["the", "dog", "runs", "."]
    with pytest.raises(ValueError, match="tokenizer is 'whitespace', 'treebank' or a function"):
        model.predict("the dog", tokenizer="moses")


def test_predict_on_the_command_line_can_tokenize_like_a_treebank(run_dir, tmp_path, capsys):
    pytest.importorskip("nltk", reason="the tokenize extra (pip install -e '.[tokenize]') is missing")
    lines = tmp_path / "in.txt"
    lines.write_text("the cat can't sleep.\n")
    assert main(["predict", str(run_dir / "spec.nn"), "--checkpoint", str(run_dir), "--input", str(lines),
                 "--tokenize", "treebank", "--json"]) == 0
    (out,) = json.loads(capsys.readouterr().out)
    assert out["tokens"] == ["the", "cat", "ca", "n't", "sleep", "."] and len(out["y"]) == 6


def test_values_has_every_node_of_the_graph_the_gates_too():
    compiled = nnspec.compile_file("specs/lstm_tagger.nn", bindings={"vocab(w)": 12, "classes(y)": 5})
    model = nnspec.Model(compiled, dtype=np.float64)
    ids = np.array([[3], [7], [2], [9]])
    values = model.values({"w": ids})
    for gate in ("h.f", "h.i", "h.o"):
        assert values[gate].shape == (4, 1, 128) and np.all((values[gate] > 0) & (values[gate] < 1))
    assert np.allclose(values["p"], model.forward({"w": ids})["p"])
    xor = nnspec.Model.from_file("specs/xor_train.nn")
    fast = xor.run({"x": [[0, 1]], "y": [[1]]}).values
    every = xor.values({"x": [[0, 1]], "y": [[1]]})
    assert set(xor.compiled.graph.g.nodes) - set(fast)          # the fast plan fuses W1 @ x into its sum
    assert set(xor.compiled.graph.g.nodes) <= set(every)


def test_a_run_whose_spec_includes_files_asks_for_the_spec(tmp_path):
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "head.nn").write_text("p = softmax(V @ h + c)\n")
    (tmp_path / "tagger.nn").write_text(TAGGER.replace("p = softmax(V @ h + c)", 'include "cells/head.nn"'))
    (tmp_path / "train.conllu").write_text(conllu(TINY_SENTENCES))
    (tmp_path / "dev.conllu").write_text(conllu(TINY_SENTENCES))
    assert main(["run", str(tmp_path / "tagger.nn"), "--runs", str(tmp_path / "runs"), "--quiet",
                 "--set", "epochs=1"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    with pytest.raises(CheckpointError, match="pass spec= the spec file the run was trained from"):
        nnspec.load(run)
    assert nnspec.load(run, spec=tmp_path / "tagger.nn").predict("the dog").labels["y"][0] in ("DET", "NOUN", "VERB")


def test_a_model_trained_on_standardised_inputs_standardises_raw_ones(tmp_path):
    rows = ["a,b,y"] + [f"{1000 + i},{i % 3},{int(i > 9)}" for i in range(20)]
    (tmp_path / "points.csv").write_text("\n".join(rows) + "\n")
    spec = tmp_path / "points.nn"
    spec.write_text("""network points
input  x[2]
target y : class[2]
output p
p = softmax(W @ x + b)
loss cross_entropy(p, y)
train { optimizer adam(lr = 0.1); batch 4; epochs 30; seed 1; normalize true }
data csv("points.csv", x = ["a", "b"], y = "y")
""")
    assert main(["run", str(spec), "--runs", str(tmp_path / "runs"), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    model = nnspec.load(run)
    raw = np.array([[1002.0, 2.0], [1018.0, 0.0]])
    standard = model.standardize({"x": raw})["x"]
    assert np.allclose(standard[:, 0], (raw[:, 0] - 1009.5) / np.std(np.arange(1000, 1020)))
    assert model.forward(model.standardize({"x": raw}))["p"].argmax(-1).tolist() == [0, 1]


def test_a_damaged_settings_file_is_named(run_dir, tmp_path):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "settings.json").write_text('{"batch": -3}')
    with pytest.raises(CheckpointError, match="settings.json: not the settings of a run"):
        nnspec.load(copy)


@pytest.fixture(scope="module")
def blown_run(run_dir, tmp_path_factory) -> Path:
    """The tagger's run with an output weight so large (yet finite, as a checkpoint must be) that
    its forward pass overflows."""
    import shutil
    from nnspec.train.checkpoint import load_checkpoint, save_checkpoint
    run = tmp_path_factory.mktemp("blown") / "run"
    shutil.copytree(run_dir, run)
    ck = load_checkpoint(run / "best")
    params = dict(ck.params)
    params["V"] = np.full_like(params["V"], 1e308)
    save_checkpoint(run / "best", params, spec_hash=ck.spec_hash, epoch=ck.epoch, vocabs=ck.vocabs,
                    norm_stats=ck.norm_stats)
    return run


def test_an_overflow_in_predict_names_the_value_as_a_training_run_does(blown_run, capsys):
    from nnspec.runtime import RuntimeFailure
    with pytest.raises(RuntimeFailure, match=r"predicting 'the dog runs': '.*V @ h.*' in the definition of "
                                             r"'p' \(.*spec.nn:7\) produced (NaN|an infinite value)"):
        nnspec.load(blown_run).predict("the dog runs")
    lines = blown_run.parent / "in.txt"
    lines.write_text("the dog runs\n")
    code = main(["predict", str(blown_run / "spec.nn"), "--checkpoint", str(blown_run), "--input", str(lines)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "#" not in err
    # rendered as a spec error is: where, the source line, a caret under the expression
    assert err.startswith(f"{blown_run / 'spec.nn'}:7:13: error: predicting 'the dog runs': ")
    assert "spec.nn:7) produced " in err and err.endswith("    p = softmax(V @ h + c)\n                ^~~~~~~~~\n")


def test_an_overflow_in_evaluate_names_the_value(run_dir, blown_run, capsys):
    dev = run_dir.parent.parent / "dev.conllu"
    code = main(["evaluate", str(blown_run / "spec.nn"), "--checkpoint", str(blown_run), "--file", str(dev)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "#" not in err
    assert err.startswith(f"{blown_run / 'spec.nn'}:7:13: error: evaluating the data: ")
    assert "spec.nn:7) produced " in err and err.endswith("^~~~~~~~~\n")


def test_values_take_feeds_as_forward_does_lists_of_sequences_too():
    # Model.values used to skip the feed preparation: a list of sequences failed with a broadcast traceback
    from nnspec.model import FeedError
    m = nnspec.Model.from_text("input x[2] : seq\noutput h\nh[3] = tanh(W @ x + U @ h[t-1])\n", read_data=False)
    sentences = [np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 0.0]])]
    assert np.array_equal(m.values({"x": sentences})["h"], m.forward({"x": sentences})["h"])
    with pytest.raises(FeedError, match="x"):
        m.values({"x": [np.zeros((2, 5))]})
