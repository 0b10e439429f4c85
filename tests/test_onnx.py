"""ONNX export (nnspec.onnx): every shipped spec exports, passes onnx's checker and shape inference,
and runs in onnxruntime and in onnx's reference evaluator with nnspec's own outputs, on a batch of
one, a batch of several, a padded batch of mixed lengths and a length the export never saw.

Library cells become ONNX's fused ops, every other loop a Scan; padded steps behave as in nnspec
(a backward loop starts at each example's own last step); a construct with no ONNX form is a spec
error at its line. Needs the onnx extra (skipped without it).
"""
from __future__ import annotations

import functools
import glob
from pathlib import Path

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from nnspec import Model, SpecError, compile_text                    # noqa: E402
from nnspec.compiler import compile_file                             # noqa: E402
from nnspec.model import FeedError                    # noqa: E402
from nnspec.onnx.build import OPSET                                   # noqa: E402
from nnspec.onnx.export import export_model                          # noqa: E402
from nnspec.onnx.runner import OnnxModel                             # noqa: E402
from nnspec.onnx.verify import CASES, TOLERANCE, random_feeds, verify  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(glob.glob(str(ROOT / "specs" / "*.nn"))) + sorted(glob.glob(str(ROOT / "bench" / "specs" / "*.nn")))
# big enough to take more than a few seconds under the reference evaluator: run with --runslow
SLOW_SPECS = {"lstm512.nn", "bilstm_tagger.nn", "pos_bilstm.nn", "pos_bilstm_features.nn", "char_lstm.nn",
              "lstm_gates.nn", "lstm_from_gates.nn"}


@functools.lru_cache(maxsize=None)
def _compiled_vocabs(path: str) -> dict:
    compiled = compile_file(path)
    return {v.name: 23 for v in compiled.plan.inputs + compiled.plan.targets
            if (v.integer or v.elem in ("bag", "char_bag")) and not isinstance(v.card, int)}


@functools.lru_cache(maxsize=None)
def model_of(path: str, dtype=None) -> Model:
    """The spec's model with small vocabularies (no data read): 23 words, 23 classes (made once: not to
    be changed by a test)."""
    vocabs = _compiled_vocabs(path)
    return Model.from_file(path, vocabs=vocabs or None, read_data=False, **({"dtype": dtype} if dtype else {}))


def model_text(text: str, dtype=None, **vocabs) -> Model:
    return Model.from_text(text, vocabs=vocabs or None, read_data=False, **({"dtype": dtype} if dtype else {}))


def assert_verified(model: Model, cases=CASES) -> dict:
    result = verify(model, cases=cases)
    tolerance = TOLERANCE[np.dtype(model.dtype)]
    # onnx's reference evaluator runs a fused export on unpadded batches only (its RNN ops ignore
    # sequence_lens backwards), and the words of a nested sequence always have lengths of their own
    nested = any(i.nested for i in model.plan.inputs)
    assert set(result.worst) >= {"onnxruntime", "onnxruntime (Scan)", "reference (Scan)"} | (
        set() if nested else {"reference"})
    for oracle, worst in result.worst.items():
        assert worst <= tolerance, f"{oracle}: worst difference {worst:.3g} (tolerance {tolerance:g})"
    return {l.index: l.onnx_op for l in result.exported.loops}


QUICK_CASES = [CASES[0], CASES[2], CASES[3]]   # one example, a padded batch, an unseen length


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if Path(p).name in SLOW_SPECS else p
                                  for p in SPECS], ids=lambda p: str(Path(p).relative_to(ROOT)))
def test_every_spec_exports_and_agrees_with_nnspec(path):
    assert_verified(model_of(path), CASES if Path(path).name in SLOW_SPECS else QUICK_CASES)


@pytest.mark.parametrize("name", ["pos_bilstm.nn"])
def test_big_specs_agree_in_onnxruntime_on_every_case(name):
    """A spec kept for --runslow above, the tagger, checked here by onnxruntime alone (fast), fused and as Scans."""
    model = model_of(str(ROOT / "specs" / name))
    for fused in (True, False):
        runner = OnnxModel(export_model(model, fused=fused).model)
        rng = np.random.default_rng(1)
        for _, lengths in CASES[2:]:     # a padded batch, an unseen length
            feeds, lens = random_feeds(model, lengths, rng)
            feeds = {v.name: feeds[v.name] for v in model.plan.inputs}
            want = model.forward(feeds, lengths=lens)["p"]
            got = runner.forward(feeds, lengths=lens)["p"]
            real = (np.arange(len(want))[:, None] < lens[None])[..., None]
            assert np.abs(np.where(real, want - got, 0)).max() < 1e-5
            assert np.all(np.where(real, 0, got) == 0)


# ---- the library cells become ONNX's fused ops ---------------------------------------------------
CELL_SPEC = """network cells
input x[3] : seq
output y
h = {cell}(x, H = 4)
y[2] = V @ h
"""


@pytest.mark.parametrize("cell, op, attrs", [
    ("rnn", "RNN", {}), ("lstm", "LSTM", {}),
    ("gru", "GRU", {"linear_before_reset": 1}), ("gru_reset_after", "GRU", {"linear_before_reset": 1}),
    ("gru_reset_before", "GRU", {"linear_before_reset": 0}),
    ("reverse(lstm)", "LSTM", {"direction": b"reverse"}), ("reverse(gru)", "GRU", {"direction": b"reverse"}),
])
def test_library_cells_become_fused_ops_with_the_right_attributes(cell, op, attrs):
    model = model_text(CELL_SPEC.format(cell=cell))
    ops = assert_verified(model)
    assert list(ops.values()) == [op]
    node = next(n for n in export_model(model).model.graph.node if n.op_type == op)
    got = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    for key, value in attrs.items():
        assert got[key] == value, f"{key}: {got[key]} (expected {value})"


def test_gru_reset_after_is_not_linear_before_reset_0():
    """The pitfall of other exporters: the two GRU forms differ (by about 0.1 here), so the attribute matters."""
    model = model_text(CELL_SPEC.format(cell="gru"))
    exported = export_model(model)
    node = next(n for n in exported.model.graph.node if n.op_type == "GRU")
    feeds, lens = random_feeds(model, [6, 6, 6], np.random.default_rng(0))
    for p in model.params:   # weights large enough for the forms to differ clearly
        model.params[p] = model.params[p] * 3
    exported = export_model(model)
    right = OnnxModel(exported.model).forward(feeds, lengths=lens)["y"]
    for a in exported.model.graph.node:
        if a.op_type == "GRU":
            for attr in a.attribute:
                if attr.name == "linear_before_reset":
                    attr.i = 0
    wrong = OnnxModel(exported.model).forward(feeds, lengths=lens)["y"]
    want = model.forward(feeds, lengths=lens)["y"]
    assert np.abs(right - want).max() < 1e-5
    assert np.abs(wrong - want).max() > 1e-2
    assert node is not None


@pytest.mark.parametrize("wrapper, ops", [("bidirectional(lstm)", ["LSTM"]),
                                          ("stacked(rnn, 3)", ["RNN", "RNN", "RNN"]),
                                          ("stacked(gru, 2)", ["GRU", "GRU"])])
def test_wrappers_become_successive_fused_ops(wrapper, ops):
    model = model_text(CELL_SPEC.format(cell=wrapper))
    assert sorted(assert_verified(model).values()) == sorted(ops)
    assert [n.op_type for n in export_model(model).model.graph.node if n.op_type in ("RNN", "LSTM", "GRU")] == ops


def with_random_params(model: Model) -> Model:
    """Every parameter random, biases too (zero biases hide a backward run started on the padding: zero
    inputs from a zero state leave the state zero)."""
    rng = np.random.default_rng(7)
    for name, value in model.params.items():
        model.params[name] = rng.normal(scale=0.5, size=np.shape(value)).astype(value.dtype)
    return model


# cell -> (ONNX op, its gates, linear_before_reset)
BIDIRECTIONAL_CELLS = {"rnn": ("RNN", 1, None), "lstm": ("LSTM", 4, None), "gru": ("GRU", 3, 1),
                       "gru_reset_before": ("GRU", 3, 0)}


@pytest.mark.parametrize("cell", list(BIDIRECTIONAL_CELLS))
def test_a_bidirectional_cell_is_one_fused_op_with_both_directions_stacked(cell):
    """W (2, gates * H, inputs), R (2, gates * H, H), B (2, 2 * gates * H): the forward loop's weights first,
    the backward loop's second; agreement with nnspec on batch 1, batch 3, a padded batch of mixed lengths
    (the backward direction from each example's own last step) and an unseen length, to 1e-5."""
    op, gates, linear_before_reset = BIDIRECTIONAL_CELLS[cell]
    model = with_random_params(model_text(CELL_SPEC.format(cell=f"bidirectional({cell})")))
    assert list(assert_verified(model).values()) == [op]
    exported = export_model(model)
    (node,) = [n for n in exported.model.graph.node if n.op_type in ("RNN", "LSTM", "GRU")]
    assert node.op_type == op
    got = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert got["direction"] == b"bidirectional" and got["hidden_size"] == 4
    assert got.get("linear_before_reset") == linear_before_reset
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in exported.model.graph.initializer}
    W, R, B = (weights[name] for name in node.input[1:4])
    assert W.shape == (2, gates * 4, 3) and R.shape == (2, gates * 4, 4) and B.shape == (2, 2 * gates * 4)
    first_w = {"rnn": "W", "lstm": "Wi"}.get(cell, "Wz")
    np.testing.assert_array_equal(W[0, :4], model.params[f"h.fwd.{first_w}"])
    np.testing.assert_array_equal(W[1, :4], model.params[f"h.bwd.{first_w}"])
    (loop,) = exported.loops
    assert loop.kind == f"{op} (bidirectional)" and [loop.direction, loop.partner.direction] == [1, -1]
    assert "direction bidirectional" in exported.inventory() and exported.inventory().count("\n") == 0


@pytest.mark.parametrize("cell", list(BIDIRECTIONAL_CELLS))
def test_padding_changes_no_example_of_a_bidirectional_fused_op(cell):
    """Each example of a padded batch tags as it does alone: ONNX's sequence_lens starts the backward
    direction at each example's own last real step, as nnspec does."""
    model = with_random_params(model_text(CELL_SPEC.format(cell=f"bidirectional({cell})")))
    runner = OnnxModel(export_model(model).model)
    xs = [np.random.default_rng(k).normal(size=(n, 3)).astype(np.float32) for k, n in enumerate([7, 2, 5, 1])]
    together = runner.forward({"x": xs})["y"]
    for b, x in enumerate(xs):
        alone = runner.forward({"x": [x]})["y"]
        np.testing.assert_allclose(together[:len(x), b], alone[:, 0], atol=1e-6)
        np.testing.assert_allclose(together[:len(x), b], model.forward({"x": [x]})["y"][:, 0], atol=1e-5)


@pytest.mark.parametrize("cell", list(BIDIRECTIONAL_CELLS))
def test_a_bidirectional_cell_of_an_expression_is_one_fused_op_reading_both_inputs(cell):
    """``bidirectional(cell)(embed(w, 6))`` gives each direction an embedding of its own, computed after the
    forward loop in the plan: one op still, X both embeddings side by side, each direction's W zero on the other's."""
    op, gates, _ = BIDIRECTIONAL_CELLS[cell]
    model = with_random_params(model_text(f"network inline\ninput w : seq of token\noutput y\n"
                                          f"h = bidirectional({cell})(embed(w, 6), H = 4)\ny[2] = V @ h\n", w=11))
    assert list(assert_verified(model).values()) == [op]
    exported = export_model(model)
    (node,) = [n for n in exported.model.graph.node if n.op_type == op]
    W = next(onnx.numpy_helper.to_array(i) for i in exported.model.graph.initializer if i.name == node.input[1])
    assert W.shape == (2, gates * 4, 12) and not W[0, :, 6:].any() and not W[1, :, :6].any()


@pytest.mark.parametrize("initials", ["initial h.fwd = h0", "initial h.bwd = h0", "initial h.bwd = h0\ninitial h.fwd = h1",
                                      "initial h.bwd.c = h0"])
def test_initial_states_of_a_bidirectional_cell_are_stacked_zeros_where_none(initials):
    cell = "lstm" if ".c" in initials else "gru"
    model = model_text(f"network init\ninput x[3] : seq\noutput y\nh = bidirectional({cell})(x, H = 4)\n"
                       f"{initials}\ny[2] = V @ h\n")
    for name in ("h0", "h1"):
        if name in model.params:
            model.params[name] = np.random.default_rng(1).normal(size=model.params[name].shape).astype(np.float32)
    assert list(assert_verified(model).values()) == [cell.upper()]


def test_a_learned_initial_state_goes_into_the_fused_op():
    model = model_text("""network init
input x[3] : seq
output y
h = rnn(x, H = 4)
initial h = h0
y[2] = V @ h
""")
    model.params["h0"] = np.random.default_rng(0).normal(size=model.params["h0"].shape).astype(np.float32)
    assert list(assert_verified(model).values()) == ["RNN"]


# ---- every other loop becomes a Scan --------------------------------------------------------------
SCAN_SPECS = {
    "peephole lstm": """network peephole
input x[3] : seq
output y
cell peep(x) -> h[H] {
  f = sigmoid(Wf @ x + Uf @ h[t-1] + Pf * c[t-1] + bf)
  i = sigmoid(Wi @ x + Ui @ h[t-1] + Pi * c[t-1] + bi)
  o = sigmoid(Wo @ x + Uo @ h[t-1] + Po * c[t-1] + bo)
  g = tanh(Wg @ x + Ug @ h[t-1] + bg)
  c = f * c[t-1] + i * g
  h = o * tanh(c)
}
h = peep(x, H = 4)
y[2] = V @ h
""",
    "a loop at t-2": """network two_back
input x[3] : seq
output y
h[4] = tanh(W @ x + U @ h[t-2] + R @ h[t-1] + b)
y[2] = V @ h
""",
    "a user cell backward in time": """network backward
input x[3] : seq
output y
cell mine(x) -> h[H] {
  h = relu(W @ x + U @ h[t-1])
}
h = reverse(mine)(x, H = 4)
y[2] = V @ h
""",
    "interacting loops": """network interacting
input x[3] : seq
output y
a[4] = tanh(W @ x + U @ a[t-1])
b[4] = sigmoid(R @ a + S @ a[t-1] + Q @ b[t-1] + x2 @ x[t-1])
y = concat(a, b, a[t-1])
""",
    "rnn without bias": """network nobias
input x[3] : seq
output y
h[4] = tanh(W @ x + U @ h[t-1])
y[2] = V @ h
""",
    "a gate read after the loop": """network gate_out
input x[3] : seq
output y
h = lstm(x, H = 4)
y = concat(h, h.c)
""",
    "an integer state (a greedy decoder)": """network greedy
input x[3] : seq
output y
output h
y = argmax(V @ h)
h[4] = tanh(W @ x + U @ h[t-1] + E @ concat(embed(y[t-1], 3), x))
param V[5, 4]
""",
    "a real number per step": """network scalar
input s : seq
input x[3] : seq
output y
h[4] = tanh(W @ x + U @ h[t-1] * s + b * s[t-1])
y = mean(h) * 2 + last(s)
""",
    "a parameter beside a batch in concat": """network beside
input x[3] : seq
output h
h[4] = tanh(W @ concat(x, h[t-1], c0))
param c0[2]
""",
    "initial state of a user cell, pooled outputs": """network pooled
input x[3] : seq
output y
output z
h[4] = tanh(W @ x + U @ h[t-1] + b) * 0.5 + 0.5 * h[t-1]
initial h = h0
y = concat(mean(h), max(h), last(h), first(h), sum(h))
z = argmax(V @ h)
param V[5, 4]
""",
}


@pytest.mark.parametrize("name", list(SCAN_SPECS))
def test_other_loops_become_scans_and_agree(name):
    model = model_text(SCAN_SPECS[name])
    rng = np.random.default_rng(0)
    for p in model.params:
        model.params[p] = rng.normal(size=model.params[p].shape).astype(np.float32) * 0.7
    ops = assert_verified(model)
    assert set(ops.values()) == {"Scan"}


def test_float64_models_use_scans_and_agree_to_1e_9():
    """onnxruntime's RNN ops compute in float32 only: a float64 model's library cells become Scans."""
    model = model_of(str(ROOT / "specs" / "sentiment_bilstm.nn"), dtype=np.float64)
    exported = export_model(model)
    assert [l.onnx_op for l in exported.loops] == ["Scan", "Scan"]
    assert "float32" in exported.loops[0].detail
    assert_verified(model, QUICK_CASES)


def test_padded_steps_read_the_initial_state_as_in_nnspec():
    """A padded batch gives each example what it gives alone, fused or Scan, forward or backward."""
    model = model_of(str(ROOT / "specs" / "sentiment_bilstm.nn"))
    feeds, lens = random_feeds(model, [7, 2, 5], np.random.default_rng(3))
    for fused in (True, False):
        runner = OnnxModel(export_model(model, fused=fused).model)
        together = runner.forward({"w": feeds["w"]}, lengths=lens)["p"]
        for b, n in enumerate(lens):
            alone = runner.forward({"w": feeds["w"][:n, b:b + 1]})["p"]
            assert np.abs(alone[0] - together[b]).max() < 1e-6


# ---- the exported model's interface -------------------------------------------------------------
def test_inputs_outputs_opset_and_dynamic_axes():
    model = model_of(str(ROOT / "specs" / "pos_bilstm_features.nn"))
    exported = export_model(model)
    proto = exported.model
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [OPSET] and OPSET >= 17
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims == {"w": ["T", "B"], "lower": ["T", "B"], "suf2": ["T", "B"], "suf3": ["T", "B"],
                    "pre2": ["T", "B"], "shp": ["T", "B"], "lengths": ["B"]}
    assert [o.name for o in proto.graph.output] == ["p"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["nnspec.network"] == "pos_bilstm_features" and "LSTM" in props["nnspec.loops"]
    assert "loops 0 and 1 over h.fwd" in exported.inventory() and "LSTM (bidirectional)" in exported.inventory()
    assert json.loads(props["nnspec.loops"])[0]["with"]["states"] == ["h.bwd", "h.bwd.c"]


@pytest.mark.parametrize("lengths, message", [([0, 3], "between 1 and the 3 steps"),
                                              ([4, 3], "between 1 and the 3 steps")])
def test_lengths_of_zero_or_past_the_steps_are_refused(lengths, message):
    model = model_of(str(ROOT / "specs" / "elman.nn"))
    runner = OnnxModel(export_model(model).model)
    with pytest.raises(FeedError, match=message):
        runner.run({"w": np.zeros((3, 2), np.int64)}, lengths)


def test_an_op_with_no_onnx_form_is_a_spec_error_at_its_line(monkeypatch, tmp_path):
    from nnspec.onnx import ops
    from nnspec.ops.activations import Gelu
    monkeypatch.delitem(ops.LOWERINGS, Gelu)
    spec = tmp_path / "g.nn"
    spec.write_text("network g\ninput x[2]\noutput y\n\ny[3] = gelu(W @ x)\n")
    with pytest.raises(SpecError) as error:
        export_model(Model.from_file(spec))
    text = error.value.diagnostics.render()
    assert "g.nn:5" in text and "'gelu' has no ONNX form" in text and "^" in text


def test_every_op_of_the_registry_has_an_onnx_form_or_a_reason():
    from nnspec.onnx.ops import LOWERINGS, not_lowered_reason
    from nnspec.ops import REGISTRY
    missing = [name for name, op in REGISTRY.items() if type(op) not in LOWERINGS and not not_lowered_reason(op)]
    assert not missing, f"ops with no ONNX lowering: {missing} (add one to nnspec/onnx/ops.py)"


ALL_OPS = """network all_ops
input x[4]
input s[1] : seq
input k : seq of token
output y
output q
output r
a = concat(sigmoid(x), tanh(x), relu(x), step(x), identity(x), leaky_relu(x, alpha = 0.2), elu(x),
           softplus(x * 40), gelu(x), mish(x), hard_tanh(x * 2), softmax(x), log_softmax(x))
b = concat(-x, pow(abs(x) + 1, p = 1.5), exp(x), log(abs(x) + 1), sqrt(abs(x)), square(x), x / (abs(x) + 1), bias)
param bias[2]
y = concat(W @ a, b)
param W[3, 52]
e = embed(k, 3)
q = concat(e, e[t+1], shift(e, -2), s)
r = argmax(q)
"""


def test_plain_ops_outside_loops_agree():
    model = model_text(ALL_OPS, k=9)
    assert assert_verified(model) == {}


# ---- the command line and the API ------------------------------------------------------------------
TAGGER = """network tiny_tagger
input  w : seq of token
target y : seq of class
output p
e = embed(w, 8)
h = bidirectional(lstm)(e, H = 6)
p = softmax(V @ h + c)
loss cross_entropy(p, y)
train { optimizer adam(lr = 0.05); batch 2; epochs 3; seed 3 }
data conllu(train = "train.conllu", dev = "dev.conllu")
"""


@pytest.fixture(scope="module")
def tagger_run(tmp_path_factory):
    from conftest import train_tiny_tagger
    return train_tiny_tagger(tmp_path_factory.mktemp("onnx_tagger"), TAGGER)


def test_export_a_trained_tagger_and_predict_with_it_in_onnxruntime(tagger_run, tmp_path, capsys):
    from nnspec.cli import main
    spec, out = str(tagger_run / "spec.nn"), tmp_path / "tagger.onnx"
    assert main(["export", spec, "--checkpoint", str(tagger_run), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "inputs w, lengths; outputs p" in printed and "opset 17" in printed
    assert printed.count(": LSTM (bidirectional)") == 1 and "direction bidirectional" in printed
    lines = tmp_path / "in.txt"
    lines.write_text("the cat sat on the mat\nthe dog runs\n")
    assert main(["predict", spec, "--checkpoint", str(tagger_run), "--input", str(lines), "--json"]) == 0
    by_nnspec = json.loads(capsys.readouterr().out)
    assert main(["predict", spec, "--checkpoint", str(tagger_run), "--input", str(lines), "--json",
                 "--onnx", str(out)]) == 0
    by_onnx = json.loads(capsys.readouterr().out)
    assert [p["y"] for p in by_onnx] == [p["y"] for p in by_nnspec]
    for a, b in zip(by_onnx, by_nnspec):
        assert np.allclose(a["y_probability"], b["y_probability"], atol=1e-5)


def test_export_api_from_a_spec_a_run_and_a_model(tagger_run, tmp_path):
    import nnspec
    trained = nnspec.load(tagger_run)
    exported = nnspec.export_onnx(str(tagger_run / "spec.nn"), tmp_path / "a.onnx", checkpoint=tagger_run)
    again = nnspec.export_onnx(trained)
    assert (tmp_path / "a.onnx").exists()
    assert [i.name for i in exported.model.graph.initializer] == [i.name for i in again.model.graph.initializer]
    ids = np.array([[2], [3], [4]])
    want = trained.forward({"w": ids})["p"]
    got = OnnxModel(tmp_path / "a.onnx").forward({"w": ids})["p"]
    assert np.abs(want - got).max() < 1e-5


def test_export_without_a_checkpoint_uses_the_specs_seed(tmp_path, capsys):
    from nnspec.cli import main
    out = tmp_path / "xor.onnx"
    assert main(["export", str(ROOT / "specs" / "xor_train.nn"), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["opset"] == 17 and report["loops"] == [] and report["outputs"] == ["p"]
    model = Model.from_file(ROOT / "specs" / "xor_train.nn")
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    assert np.abs(OnnxModel(out).forward({"x": x})["p"] - model.forward({"x": x})["p"]).max() < 1e-6


def test_export_errors_are_located_and_no_traceback(tmp_path, capsys, monkeypatch):
    from nnspec.cli import main
    from nnspec.onnx import ops
    from nnspec.ops.activations import Mish
    monkeypatch.delitem(ops.LOWERINGS, Mish)
    spec = tmp_path / "m.nn"
    spec.write_text("network m\ninput x[2]\noutput y\ny[2] = mish(W @ x)\n")
    assert main(["export", str(spec), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "m.nn:4" in err and "'mish' has no ONNX form" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_the_examples_of_docs_onnx_run(tagger_run, tmp_path, monkeypatch):
    """The ```py blocks of docs/onnx.md, in order, with RUN_DIR a trained tagger and its tagger.onnx."""
    from test_docs import blocks
    import nnspec
    monkeypatch.chdir(tmp_path)
    nnspec.export_onnx(str(tagger_run / "spec.nn"), "tagger.onnx", checkpoint=tagger_run)
    namespace = {"RUN_DIR": str(tagger_run)}
    examples = [b for b in blocks(ROOT / "docs" / "onnx.md") if b.lang == "py"]
    assert len(examples) == 2
    for block in examples:
        exec(compile(block.text, f"{block.file}:{block.line}", "exec"), namespace)
    assert namespace["out"]["p"].shape[:2] == (6, 2)


@pytest.mark.slow
def test_a_tagger_trained_on_ewt_tags_the_test_part_alike_in_onnxruntime(tmp_path):
    """pos_bilstm_features.nn trained one epoch on UD English-EWT: its UPOS accuracy on the test part
    through onnxruntime is nnspec's, tag for tag (bench/onnx_export.py --ewt RUN for a full run)."""
    from nnspec.cli import main
    import sys
    sys.path.insert(0, str(ROOT))
    try:
        from bench.onnx_export import ewt_accuracy
    finally:
        sys.path.remove(str(ROOT))
    spec = str(ROOT / "specs" / "pos_bilstm_features.nn")
    assert main(["run", spec, "--set", "epochs=1", "--runs", str(tmp_path), "--quiet"]) == 0
    (run,) = tmp_path.iterdir()
    result = ewt_accuracy(str(run), spec)
    assert result["tokens"] > 20000 and result["tags that differ"] == 0
    assert result["onnxruntime"] == pytest.approx(result["nnspec"], abs=1e-12)


def _doc_specs():
    from test_docs import doc_blocks
    return doc_blocks("nn")


@pytest.mark.parametrize("block", _doc_specs(), ids=lambda b: b.where)
def test_the_language_references_examples_export_and_agree(block):
    from nnspec.compiler import compile_text
    from test_docs import ROOT as DOCS_ROOT
    compiled = compile_text(block.text, file=block.where, base_dir=DOCS_ROOT / "specs")
    vocabs = {v.name: 23 for v in compiled.plan.inputs + compiled.plan.targets
              if (v.integer or v.elem in ("bag", "char_bag")) and not isinstance(v.card, int)}
    model = Model.from_text(block.text, vocabs=vocabs or None, read_data=False)
    assert_verified(model, QUICK_CASES)


# ---- networks on several sequence axes: encoder-decoders and attention ---------------------------------
BAHDANAU = """network bahdanau
input  src : seq(src) of token
input  tgt : seq(out) of token
output p

enc = lstm(embed(src, 8), H = 8)
ye = embed(tgt, 8)
c = additive_attention(dec[t-1], enc, A = 6)   # inside the loop of dec: reads enc whole
dec = lstm(concat(ye[t-1], c), H = 8)
initial dec = last(enc)
p = softmax(V @ concat(dec, c) + b)
loss cross_entropy(p, tgt)
"""

# every op across axes, every reduction over the innermost axis, and an output on two axes
CROSS_AXES = """network cross_axes
input  src : seq(src) of token
input  x[3] : seq(out)
output a
output r
output z

enc = lstm(embed(src, 4), H = 4)
h[4] = tanh(W @ x)
s = dot(along(h, enc), enc)                 # on (out, src)
a = softmax_steps(s)                        # over src, its padding weight 0
e[4] = tanh(along(U @ h, enc) + K @ enc)
f = sum_features(v * e)
r = max(a * f) + 2 * mean(s) - first(s) + sum(f) * last(f)   # each over src: on (out)
g = along(mean(enc) + first(enc) + max(enc), x)              # one value per example, along out
z = sum(g * h) + last(sum(a * enc))
"""

# a bidirectional encoder (a backward loop on src, from each example's own last source step), a
# decoder fed its previous output state through a loop at t-2, and attention outside the loops
BIDIRECTIONAL = """network bidirectional_encoder
input  src : seq(src) of token
input  tgt : seq(out) of token
output p
output w

enc = bidirectional(gru)(embed(src, 6), H = 5)
d[10] = tanh(W @ embed(tgt, 6) + U @ d[t-2])
initial d = mean(enc)
c = attention(d, enc)
w = softmax_steps(dot(along(d, enc), enc))
p[7] = softmax(V @ concat(d, c) + b)
"""


def strong(model: Model) -> Model:
    """Weights three times their initial size, so that attention weights are far from uniform and a
    wrong mask or axis shows in the outputs."""
    for p in model.params:
        model.params[p] = model.params[p] * 3
    return model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["reverse_copy", "bahdanau", "cross_axes", "bidirectional"])
def test_networks_on_several_axes_agree_with_nnspec_on_every_case(name, dtype):
    """Each axis with lengths of its own (a padded batch on both; lengths unseen at export), fused and as
    Scans, in onnxruntime and the reference evaluator: to 1e-5 in float32, 1e-9 in float64."""
    if name == "reverse_copy":
        model = Model.from_file(str(ROOT / "specs" / "reverse_copy.nn"), vocabs={"src": 23, "tgt": 23},
                                read_data=False, dtype=dtype)
    else:
        text = {"bahdanau": BAHDANAU, "cross_axes": CROSS_AXES, "bidirectional": BIDIRECTIONAL}[name]
        model = model_text(text, dtype=dtype, src=23, **({} if name == "cross_axes" else {"tgt": 23}))
    ops = assert_verified(strong(model))
    if name == "bahdanau" and dtype == "float32":   # the encoder a fused LSTM; the decoder, with attention, a Scan
        assert sorted(ops.values()) == ["LSTM", "Scan"]
    if name == "bidirectional" and dtype == "float32":   # the encoder one bidirectional GRU, on src's lengths
        assert sorted(ops.values()) == ["GRU", "Scan"]


def test_several_axes_have_their_own_steps_and_lengths_inputs():
    model = model_of(str(ROOT / "specs" / "reverse_copy.nn"))
    proto = export_model(model).model
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims == {"src": ["T_src", "B"], "tgt": ["T_out", "B"], "lengths_out": ["B"], "lengths_src": ["B"]}
    assert [d.dim_param for d in proto.graph.output[0].type.tensor_type.shape.dim][:2] == ["T_out", "B"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert sorted(props["nnspec.lengths"].split(",")) == ["lengths_out", "lengths_src"]
    two = model_text(CROSS_AXES, src=23)
    outputs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
               for o in export_model(two).model.graph.output}
    assert outputs == {"a": ["T_out", "T_src", "B", 1], "r": ["T_out", "B", 1], "z": ["B", 4]}


def test_padding_on_either_axis_changes_no_example():
    """Each example alone, cut to its own lengths on each axis, gives what it gives in a padded batch."""
    model = strong(model_text(BAHDANAU, src=23, tgt=23))
    rng = np.random.default_rng(4)
    src_lengths, out_lengths = [6, 1, 3], [2, 7, 4]
    src, tgt = rng.integers(0, 23, (6, 3)), rng.integers(0, 23, (7, 3))
    for fused in (True, False):
        runner = OnnxModel(export_model(model, fused=fused).model)
        together = runner.run({"src": src, "tgt": tgt}, {"src": src_lengths, "out": out_lengths})["p"]
        for b, (n, m) in enumerate(zip(src_lengths, out_lengths)):
            alone = runner.run({"src": src[:n, b:b + 1], "tgt": tgt[:m, b:b + 1]})["p"]
            assert np.abs(alone[:, 0] - together[:m, b]).max() < 1e-6
            assert np.all(together[m:, b] == 0)


@pytest.mark.parametrize("lengths, message", [
    ([3, 3], "a dict from axis name"),
    ({"src": [3, 3], "words": [1, 1]}, "no axis of the exported model"),
    ({"src": [3, 4], "out": [1, 1]}, "between 1 and the 3 steps"),
    ({"src": [3, 3], "out": [0, 2]}, "between 1 and the 2 steps")])
def test_lengths_on_several_axes_are_checked(lengths, message):
    runner = OnnxModel(export_model(model_of(str(ROOT / "specs" / "reverse_copy.nn"))).model)
    with pytest.raises(FeedError, match=message):
        runner.run({"src": np.zeros((3, 2), np.int64), "tgt": np.zeros((2, 2), np.int64)}, lengths)


@pytest.mark.parametrize("name", ["reverse_copy", "bahdanau"])
def test_greedy_decoding_through_onnxruntime_writes_nnspec_s_tokens(name):
    from nnspec.decode import greedy_steps as greedy
    from nnspec.onnx.runner import greedy as onnx_greedy
    if name == "reverse_copy":
        model = strong(Model.from_file(str(ROOT / "specs" / "reverse_copy.nn"), vocabs={"src": 23, "tgt": 23},
                                       read_data=False))
    else:
        model = strong(model_text(BAHDANAU, src=23, tgt=23))
    rng = np.random.default_rng(2)
    sources, steps = [rng.integers(0, 23, n) for n in (5, 2, 8, 1)], [4, 9, 1, 6]
    want = greedy(model, {"src": sources}, steps)["tgt"]
    want = np.where(np.arange(len(want))[:, None] < np.array(steps)[None], want, 0)
    assert len(set(want[want > 0].tolist())) > 2      # not one token everywhere: a check that can fail
    for fused in (True, False):
        runner = OnnxModel(export_model(model, fused=fused).model)
        assert np.array_equal(onnx_greedy(runner, model.plan, {"src": sources}, steps)["tgt"], want)


@pytest.mark.slow
def test_a_trained_reverse_copy_decodes_the_test_part_alike_through_onnxruntime():
    """reverse_copy.nn trained as nnspec run trains it, exported, and every test sequence decoded
    greedily through onnxruntime: nnspec's tokens, every one, and >= 99% of the sequences exactly right."""
    from nnspec import open_session
    from nnspec.decode import greedy_steps as greedy
    from nnspec.onnx.runner import greedy as onnx_greedy
    from nnspec.train.loop import Trainer
    s = open_session(ROOT / "specs" / "reverse_copy.nn")
    Trainer(s.model, s.data, s.settings, quiet=True).fit()
    runner = OnnxModel(export_model(s.model).model)
    exact = total = 0
    for batch in s.data.batches("test", 100):
        steps, lengths = batch.lengths["out"], {"src": batch.lengths["src"]}
        want = greedy(s.model, {"src": batch.arrays["src"]}, steps, lengths=lengths)["tgt"]
        got = onnx_greedy(runner, s.model.plan, {"src": batch.arrays["src"]}, steps, lengths=lengths)["tgt"]
        real = np.arange(len(want))[:, None] < steps[None, :]
        assert np.array_equal(np.where(real, want, 0), got)
        gold = batch.arrays["tgt"]
        for b, n in enumerate(steps):
            exact += bool((got[:n, b] == gold[:n, b]).all())
            total += 1
    assert total == 300 and exact / total >= 0.99, f"{exact}/{total} test sequences exactly right"


def test_a_read_at_another_step_of_a_value_on_two_axes_is_refused_at_its_line():
    # refused by the compiler already (nnspec/axes.py), so no such network reaches the exporter
    with pytest.raises(SpecError) as error:
        model_text("""network delayed
input  src : seq(src) of token
input  x[3] : seq(out)
output r

enc = lstm(embed(src, 4), H = 4)
h[4] = tanh(W @ x)
s = dot(along(h, enc), enc)
r = sum(s[t-1] * enc)
""", src=23)
    text = error.value.diagnostics.render()
    assert ":9:" in text and "'s' is read at [t-1]" in text and "on one sequence axis" in text


def test_lists_of_sequences_of_their_own_lengths_on_each_axis_are_padded_per_axis():
    model = model_of(str(ROOT / "specs" / "reverse_copy.nn"))
    src, tgt = [np.array([1, 2, 3]), np.array([4])], [np.array([3, 2]), np.array([4, 5, 6, 7])]
    want = model.forward({"src": src, "tgt": tgt})["p"]
    real = (np.arange(4)[:, None] < np.array([2, 4])[None])[..., None]
    for runner in (OnnxModel(export_model(model).model), OnnxModel(export_model(model).model, plan=model.plan)):
        got = runner.forward({"src": src, "tgt": tgt})["p"]
        assert got.shape == (4, 2, 23) and np.abs(np.where(real, got - want, 0)).max() < 1e-6


def test_a_network_on_one_named_axis_keeps_t_and_lengths():
    model = model_text("network frames\ninput x[3] : seq(frames)\noutput y\nh = gru(x, H = 4)\ny[2] = V @ h\n")
    proto = export_model(model).model
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert dims == {"x": ["T", "B", 3], "lengths": ["B"]}
    assert_verified(model, QUICK_CASES)


# ---- nested sequences: each word's characters, the words of the batch as the rows of their axis ------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_character_bilstm_tagger_exports_and_agrees_with_nnspec(dtype):
    """tests/test_nested.py's tagger (pos_char_bilstm.nn in small): a BiLSTM over every word's characters,
    last/first of each direction per word, a BiLSTM over the words. Fused (float32: the two character
    loops one bidirectional LSTM over the rows of every word, padding words of 0 characters) and as
    Scans, in onnxruntime and the reference evaluator, on random batches of words of 1 to 6 letters."""
    from test_nested import TAGGER, V_C, V_W
    model = strong(Model.from_text(TAGGER, bindings={"vocab(w)": V_W, "vocab(c)": V_C}, dtype=dtype, seed=3))
    ops = assert_verified(model)
    if dtype == "float32":
        assert sorted(ops.values()) == ["LSTM", "LSTM"]
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in export_model(model).model.graph.input}
    assert inputs == {"w": ["T_time", "B"], "c": ["T_char", "N_char"], "lengths_time": ["B"],
                      "lengths_char": ["N_char"]}


def test_padding_words_and_characters_change_no_example_in_onnxruntime():
    from test_nested import TAGGER, V_C, V_W, batch, padded
    model = Model.from_text(TAGGER, bindings={"vocab(w)": V_W, "vocab(c)": V_C}, dtype="float64", seed=3)
    runner = OnnxModel(export_model(strong(model), fused=False).model)
    feeds, lengths = padded(batch(1))
    tight = runner.run({"w": feeds["w"], "c": feeds["c"]}, lengths)["p"]
    feeds, lengths = padded(batch(1), extra_words=2, extra_chars=3)
    loose = runner.run({"w": feeds["w"], "c": feeds["c"]}, lengths)["p"]
    np.testing.assert_allclose(loose[:tight.shape[0]], tight, atol=1e-12)
    assert not loose[tight.shape[0]:].any()
    want = model.forward({"w": feeds["w"], "c": feeds["c"]}, lengths)["p"]
    real = np.arange(want.shape[0])[:, None] < lengths["time"][None, :]
    np.testing.assert_allclose(loose[real], want[real], atol=1e-9)


def test_a_value_of_each_example_beside_the_characters_is_refused_at_its_line():
    text = """network mix
input  w : seq of token
input  c : seq of seq(char) of char = chars(w)
input  u : bag of token
target y : seq of class[3]
output p
e = embed(c, 3) + U @ u
v = last(lstm(e, H = 4))
p = softmax(V @ v + b + Z @ embed(w, 2))
loss cross_entropy(p, y)
"""
    # the compiler refuses it before any export (the exporter's own check stays for plans made otherwise)
    with pytest.raises(SpecError) as refused:
        compile_text(text, file="mix.nn")
    shown = refused.value.diagnostics.render()
    assert "mix.nn:7:1: error: 'U @ u' is one value per example and 'embed(c, 3)' is on (time, char)" in shown


def test_onnx_model_forward_takes_each_examples_words_as_lists_of_characters():
    from test_nested import TAGGER, V_C, V_W, batch
    model = strong(Model.from_text(TAGGER, bindings={"vocab(w)": V_W, "vocab(c)": V_C}, dtype="float32", seed=3))
    feeds = {k: batch(2)[k] for k in ("w", "c")}
    got = OnnxModel(export_model(model).model).forward(feeds)["p"]
    want = model.forward(feeds)["p"]
    real = np.arange(want.shape[0])[:, None] < np.array([len(x) for x in feeds["w"]])[None, :]
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)
    with pytest.raises(FeedError, match="every word of at least one"):
        OnnxModel(export_model(model).model).forward({"w": feeds["w"], "c": [[np.array([1]), np.array([], int)]] * 3})
