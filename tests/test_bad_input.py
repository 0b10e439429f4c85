"""Bad input of every kind ends in a clear, located error — never a Python traceback.

Each case was once a traceback (or a silent wrong answer). Spec mistakes name
file:line:column and show the line with a caret; data mistakes name the file
(and line); the command line exits with status 1, and with ``--json`` prints
the error as JSON. The Python API raises the same errors (SpecError, DataError,
CheckpointError, FeedError) with the same messages.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnspec
from nnspec.cli import main
from nnspec.data import DataError
from nnspec.errors import SpecError
from nnspec.session import open_session
from nnspec.train.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parent.parent

XOR = """input x[2]
target y[1]
output p
p[1] = sigmoid(W @ x + b)
loss bce(p, y)
{train}
data inline {{
  x = [[0, 0], [0, 1], [1, 0], [1, 1]]
  y = [[0], [1], [1], [0]]
}}
"""

CHAR_LM = """input w : seq of char
output p
e = embed(w, 4)
p = softmax(V @ e)
loss cross_entropy(p, shift(w, {shift}))
train {{ epochs 1; batch {batch} }}
data text("{file}", level = "char"{extra})
"""

TAGGER = """input x[2] : seq
target y : seq of class[2]
output p
h[3] = tanh(W @ x + U @ h[t-{delay}])
p = softmax(V @ h)
loss cross_entropy(p, y)
"""


def write(tmp_path: Path, text: str, name: str = "spec.nn") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def nnspec_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnspec.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=env)


def assert_located(err: str, spec: Path, line: int, message: str, caret_under: str) -> None:
    """``spec.nn:LINE:COL: error: MESSAGE``, the line, and a caret under ``caret_under``."""
    head, source, caret = err.strip().splitlines()[:3]
    column = source.index(caret_under) - 4 + 1
    assert head.startswith(f"{spec}:{line}:{column}: error: "), err
    assert message in head, err
    assert caret.index("^") == source.index(caret_under), err


def json_error(capsys, *args) -> dict:
    code, out, err = run_main(capsys, *args, "--json")
    assert code == 1 and err == ""
    report = json.loads(out)
    assert report["ok"] is False and report["errors"]
    return report["errors"][0]


# ---- numbers too large for what they count -------------------------------------------------------

def test_a_delay_beyond_any_sequence_is_a_located_error(tmp_path, capsys):
    spec = write(tmp_path, TAGGER.format(delay="9999999999999999999"))
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert_located(err, spec, 4, "a delay of 9999999999999999999 steps is too long", "h[t-")
    with pytest.raises(SpecError, match="too long"):
        open_session(spec)


def test_a_shift_beyond_any_sequence_is_a_located_error(tmp_path, capsys):
    write(tmp_path, "ab", "short.txt")
    spec = write(tmp_path, CHAR_LM.format(shift="99999999999999999999", batch=1, file="short.txt", extra=""))
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert_located(err, spec, 5, "a setting of shift must be between", "99999999999999999999")


def test_a_class_count_beyond_any_array_is_a_located_error(tmp_path, capsys):
    spec = write(tmp_path, "input x[2]\ntarget y : class[99999999999999999999]\noutput p\n"
                           "p = softmax(W @ x)\nloss cross_entropy(p, y)\n")
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert_located(err, spec, 2, "a size must be a whole number from 1 to", "99999999999999999999")


def test_a_negative_initialiser_spread_is_a_located_error(tmp_path, capsys):
    spec = write(tmp_path, "input x[2]\noutput p\nparam W[3, 2] init uniform(scale = -1)\np = W @ x\n")
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert_located(err, spec, 3, "'scale' of initialiser 'uniform' is a spread, so it cannot be negative",
                   "scale = -1")


# ---- training settings ---------------------------------------------------------------------------

def test_split_parts_that_leave_no_training_data_are_a_located_error(tmp_path, capsys):
    spec = write(tmp_path, XOR.format(train="train { split dev = 60%, test = 50% }"))
    code, _, err = run_main(capsys, "run", spec, "--no-save")
    assert code == 1
    assert_located(err, spec, 6, "dev = 60%, test = 50% leave no training data", "split")
    assert json_error(capsys, "run", spec, "--no-save")["line"] == 6


def test_a_train_block_without_a_loss_is_a_located_error(tmp_path, capsys):
    spec = write(tmp_path, XOR.format(train="train { }").replace("loss bce(p, y)\n", "")
                 .replace("target y[1]\n", "").replace("  y = [[0], [1], [1], [0]]\n", ""))
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert_located(err, spec, 4, "a train block needs a loss to minimise", "train")


def test_training_a_spec_without_a_loss_from_the_command_line_is_an_error(tmp_path, capsys):
    spec = write(tmp_path, XOR.format(train="").replace("loss bce(p, y)\n", "")
                 .replace("target y[1]\n", "").replace("  y = [[0], [1], [1], [0]]\n", ""))
    code, _, err = run_main(capsys, "run", spec, "--no-save", "--set", "epochs=1")
    assert code == 1
    assert err.strip() == "error: training needs a loss to minimise: add one to the spec, e.g. " \
                          "'loss cross_entropy(p, y)'"


# ---- data ----------------------------------------------------------------------------------------

def test_a_text_shorter_than_the_batch_is_a_data_error(tmp_path, capsys):
    write(tmp_path, "ab", "short.txt")
    spec = write(tmp_path, CHAR_LM.format(shift=1, batch=8, file="short.txt", extra=", split = [1.0]"))
    for command in ("check", "run"):
        code, _, err = run_main(capsys, command, spec, *(["--no-save"] if command == "run" else []))
        assert code == 1
        assert err.startswith(f"{tmp_path / 'short.txt'}:1: error: the train part holds 2 tokens, too few "
                              f"for batch 8"), err


@pytest.mark.parametrize("codec", ["rot13", "base64", "zlib"])
def test_an_encoding_that_is_not_a_text_encoding_is_a_data_error(tmp_path, capsys, codec):
    write(tmp_path, "abcdef", "short.txt")
    spec = write(tmp_path, CHAR_LM.format(shift=1, batch=1, file="short.txt", extra=f', encoding = "{codec}"'))
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert err.strip() == f"{tmp_path / 'short.txt'}: error: encoding '{codec}' is not a text encoding " \
                          f"(use e.g. \"utf-8\" or \"latin-1\")"


def test_data_is_read_only_from_regular_files(tmp_path, capsys):
    for target, kind in (("/dev/zero", "a character device"), ("/dev/urandom", "a character device")):
        spec = write(tmp_path, CHAR_LM.format(shift=1, batch=1, file=target, extra=""))
        code, _, err = run_main(capsys, "check", spec)
        assert code == 1
        assert err.strip() == f"{target}: error: not a regular file ({kind}); nnspec reads only regular files"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_rather_than_waited_on(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    spec = write(tmp_path, CHAR_LM.format(shift=1, batch=1, file="pipe.txt", extra=""))
    result = nnspec_cli("check", spec)  # would hang forever if the FIFO were opened for reading
    assert result.returncode == 1
    assert "not a regular file (a FIFO)" in result.stderr and "Traceback" not in result.stderr


def test_a_gzip_bomb_is_refused_with_its_size_without_decompressing_it_whole(tmp_path):
    (tmp_path / "zeros.txt.gz").write_bytes(gzip.compress(b"a" * 3_000_000))
    spec = write(tmp_path, CHAR_LM.format(shift=1, batch=1, file="zeros.txt.gz", extra=""))
    result = nnspec_cli("check", spec, env=dict(os.environ, NNSPEC_READ_LIMIT="1MB"))
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        f"{tmp_path / 'zeros.txt.gz'}: error: decompressed, the file is larger than the limit of 976.6 KiB "
        f"(it is ")
    assert "set NNSPEC_READ_LIMIT" in result.stderr


def test_a_plain_file_over_the_read_limit_is_refused_with_its_size(tmp_path, monkeypatch, capsys):
    write(tmp_path, "a" * 5000, "big.txt")
    spec = write(tmp_path, CHAR_LM.format(shift=1, batch=1, file="big.txt", extra=""))
    monkeypatch.setenv("NNSPEC_READ_LIMIT", "4KiB")
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert err.strip().startswith(f"{tmp_path / 'big.txt'}: error: the file is 4.9 KiB, more than the limit "
                                  f"of 4.0 KiB; set NNSPEC_READ_LIMIT")


def test_an_npz_array_declaring_more_than_the_read_limit_is_refused_before_numpy_allocates_it(tmp_path, capsys):
    import io
    import zipfile
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 3)})
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", header.getvalue() + bytes(1000))   # 1 KB of a declared 24 TB
        labels = io.BytesIO()
        np.save(labels, np.zeros((2, 1)))
        z.writestr("y.npy", labels.getvalue())
    spec = write(tmp_path, 'input x[3]\ntarget y[1]\noutput p\np = W @ x\nloss mse(p, y)\ndata npz("bomb.npz")\n')
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert err.strip() == (f"{tmp_path / 'bomb.npz'}: error: array 'x' (1000000000000, 3) of float64 holds 21.8 TiB, "
                           f"more than the limit of 2.0 GiB; set NNSPEC_READ_LIMIT to read larger arrays")


# ---- includes ------------------------------------------------------------------------------------

def test_an_include_with_a_nul_byte_is_a_located_error(tmp_path, capsys):
    spec = tmp_path / "spec.nn"
    spec.write_bytes(b'input x[2]\ninclude "a\x00b.nn"\noutput x\n')
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert err.startswith(f"{spec}:2:1: error: an include names a spec file ending in .nn, not 'a\\x00b.nn'")


@pytest.mark.parametrize("target", ["/etc/passwd", "/dev/zero", "data.csv"])
def test_an_include_must_name_a_spec_file(tmp_path, capsys, target):
    spec = write(tmp_path, f'include "{target}"\ninput x[2]\noutput x\n')
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert_located(err, spec, 1, f"an include names a spec file ending in .nn, not '{target}'", "include")


def test_an_include_that_is_not_a_regular_file_is_a_located_error(tmp_path, capsys):
    (tmp_path / "dir.nn").mkdir()
    spec = write(tmp_path, 'include "dir.nn"\ninput x[2]\noutput x\n')
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert_located(err, spec, 1, "not a regular file (a directory)", "include")


# ---- checkpoints ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_xor(tmp_path_factory):
    """A spec and the run directory of a short training of it."""
    home = tmp_path_factory.mktemp("trained")
    spec = write(home, XOR.format(train="train { epochs 2 }"))
    assert main(["run", str(spec), "--runs", str(home / "runs"), "--quiet", "--json"]) == 0
    (run_dir,) = (home / "runs").iterdir()
    return spec, run_dir


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    import shutil
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _edit_meta(run: Path, **changes) -> None:
    for part in ("best", "last"):
        meta_file = run / part / "meta.json"
        meta = json.loads(meta_file.read_text())
        meta.update(changes)
        meta_file.write_text(json.dumps(meta))


@pytest.mark.parametrize("field, value", [("version", "2"), ("params", 5), ("epoch", "9"), ("rng_state", [1]),
                                          ("vocabs", {"x": 5}), ("extra", [1]), ("norm_stats", {"x": "big"}),
                                          ("step", -3)])
def test_a_checkpoint_whose_meta_json_has_wrong_types_is_refused_saying_where(trained_xor, tmp_path, capsys,
                                                                           field, value):
    spec, run_dir = trained_xor
    run = _copy_run(run_dir, tmp_path)
    _edit_meta(run, **{field: value})
    for args in (["evaluate", spec, "--checkpoint", run, "--split", "train"],
                 ["run", spec, "--resume", run, "--quiet"]):
        code, _, err = run_main(capsys, *args)
        assert code == 1, err
        assert err.startswith("error: ") and "meta.json is damaged: " + field in err, err
        assert json_error(capsys, *args)["message"].startswith(f"error: {run}")


def test_a_checkpoint_with_weights_of_the_wrong_shape_is_refused(trained_xor, tmp_path, capsys):
    import hashlib

    import safetensors.numpy as st
    spec, run_dir = trained_xor
    run = _copy_run(run_dir, tmp_path)
    for part in ("best", "last"):
        weights = st.save({"W": np.zeros((3, 2), np.float32), "b": np.zeros(1, np.float32)})
        (run / part / "weights.safetensors").write_bytes(weights)
        meta = json.loads((run / part / "meta.json").read_text())
        meta["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        (run / part / "meta.json").write_text(json.dumps(meta))
    for args in (["evaluate", spec, "--checkpoint", run, "--split", "train"],
                 ["run", spec, "--resume", run, "--quiet"]):
        code, _, err = run_main(capsys, *args)
        assert code == 1
        assert "weight 'W' has shape [3, 2], but this spec makes it [1, 2]" in err, err
    with pytest.raises(CheckpointError, match=r"weight 'W' has shape \[3, 2\], but this spec makes it \[1, 2\]"):
        nnspec.load(run)                                                  # the Python API says the same


# ---- the Python API: sizes from the data, feeds checked ------------------------------------------

from nnspec import Model  # noqa: E402
from nnspec.model import FeedError  # noqa: E402

SEQ_TAGGER = TAGGER.format(delay=1)


def test_model_from_file_reads_the_data_for_the_sizes_it_decides(tmp_path):
    rows = [("the", "DET"), ("dog", "NOUN"), None, ("a", "DET"), ("cat", "NOUN"), ("runs", "VERB"), None]
    lines, number = [], 0
    for row in rows:
        number = 0 if row is None else number + 1
        lines.append("" if row is None else f"{number}\t{row[0]}\t_\t{row[1]}\t_\t_\t0\t_\t_\t_")
    write(tmp_path, "\n".join(lines) + "\n", "t.conllu")
    spec = write(tmp_path, "input w : seq of token\ntarget y : seq of class\noutput p\ne = embed(w, 4)\n"
                           "p = softmax(V @ e)\nloss cross_entropy(p, y)\ntrain { min_count 1 }\n"
                           'data conllu("t.conllu")\n')
    model = Model.from_file(spec)   # embed(w, 4): vocab(w) rows; V: classes(y) rows, as nnspec run reads them
    assert model.params["e.table"].shape == (2 + 5, 4) and model.params["V"].shape == (3, 4)
    session = open_session(spec)
    assert {k: v.shape for k, v in model.params.items()} == {k: v.shape for k, v in session.model.params.items()}


def test_model_from_text_takes_the_sizes_as_vocabs(tmp_path):
    spec = "input w : seq of token\ntarget y : seq of class\noutput p\ne = embed(w, 4)\n" \
           "p = softmax(V @ e)\nloss cross_entropy(p, y)\n"
    model = Model.from_text(spec, vocabs={"w": 7, "y": 3})
    assert model.params["e.table"].shape == (7, 4) and model.params["V"].shape == (3, 4)
    with pytest.raises(SpecError) as e:
        Model.from_text(spec)
    assert "the size of 'e.table' ([vocab(w), 4]) is decided by the data; give Model.from_file(..., " \
           "vocabs={name: size})" in str(e.value)
    assert "<string>:4:5" in str(e.value)
    with pytest.raises(FeedError, match="vocabs: no input or target named 'ww'; did you mean 'w'"):
        Model.from_text(spec, vocabs={"ww": 7})


def test_a_batch_major_sequence_is_caught_when_the_lengths_say_how_many_examples(tmp_path):
    model = Model.from_text(SEQ_TAGGER)
    x = np.random.default_rng(0).normal(size=(4, 3, 2))   # B=4 examples of T=3 steps: batch-major
    y = np.zeros((4, 3), dtype=np.int64)
    with pytest.raises(FeedError) as e:
        model.forward({"x": x, "y": y}, lengths=[3, 3, 3, 3])
    assert str(e.value) == ("lengths has 4 entries, but the batch holds 3 examples (axis 1 of the time-major 'x', "
                            "shape (4, 3, 2)) (is it batch-major? arrays of sequences are time-major: (T, B, ...))")


def test_a_batch_major_sequence_is_caught_when_a_per_example_value_fixes_the_batch():
    model = Model.from_text("input x[2] : seq\ntarget y : class[2]\noutput p\nh[3] = tanh(W @ x + U @ h[t-1])\n"
                            "p = softmax(V @ last(h))\nloss cross_entropy(p, y)\n")
    x = np.zeros((4, 3, 2))  # batch-major: 4 examples of 3 steps
    with pytest.raises(FeedError, match=r"'x' holds 3 examples but 'y' holds 4: a feed of shape \(4, 3, 2\) "
                                        r"where \(T, B, 2\) time-major"):
        model.forward({"y": np.zeros(4, dtype=np.int64), "x": x})


def test_a_list_of_sequences_is_the_unambiguous_form_and_agrees_with_the_padded_array():
    model = Model.from_text(SEQ_TAGGER, dtype=np.float64)
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(n, 2)) for n in (3, 1, 2)]
    ys = [rng.integers(0, 2, size=n) for n in (3, 1, 2)]
    loss_lists, _ = model.gradients({"x": xs, "y": ys})
    padded_x = np.zeros((3, 3, 2))
    padded_y = np.full((3, 3), -1)
    for b, (x, y) in enumerate(zip(xs, ys)):
        padded_x[:len(x), b], padded_y[:len(y), b] = x, y
    loss_array, _ = model.gradients({"x": padded_x, "y": padded_y}, lengths=[3, 1, 2])
    assert loss_lists == pytest.approx(loss_array, rel=1e-12)
    batch_major = np.stack([np.pad(x, ((0, 3 - len(x)), (0, 0))) for x in xs])
    with pytest.raises(FeedError, match=r"lengths must be between 1 and the 3 steps"):
        model.forward({"x": batch_major}, lengths=[3, 1, 4])


@pytest.mark.parametrize("feeds, message", [
    ({"x": [[[0, 0], [1, 1]], [[1, 0]]]}, None),   # ragged is fine
    ({"x": np.zeros((3, 2))}, r"input 'x': got shape \(3, 2\), expected \(T, B, 2\) time-major, or a list of B "
                              r"sequences \(T_i, 2\) \(a batch of examples, even of one: add the batch axis\)"),
    ({"x": np.zeros((3, 2, 5))}, r"input 'x': got shape \(3, 2, 5\), expected \(T, B, 2\)"),
    ({"x": [np.zeros((2, 2)), np.zeros((2, 3))]}, r"example 1 of 'x' has shape \(2, 3\), expected \(T_i, 2\)"),
    ({"x": [np.zeros((2, 2)), np.zeros((0, 2))]}, r"example 1 of 'x' has shape \(0, 2\), expected \(T_i, 2\) "
                                                  r"with T_i >= 1"),
    ({"x": [[[0, 0]]], "y": [[0, 1]]}, "example 0 of 'y' has 2 steps, but of 'x' 1"),
    ({"x": [[[0, 0]]], "y": [[2]]}, r"'y' holds id 2 at \(0, 0\); its ids run from 0 to 1"),
    ({"x": [[[0, 0]]], "y": [[0.5]]}, "example 0 of 'y' holds ids, which are whole numbers"),
    ({"x": np.zeros((1, 1, 2)), "y": np.full((1, 1), 0.5)}, "'y' holds ids, which are whole numbers"),
    ({"x": [["a", "b"]]}, "example 0 of 'x' holds <U1 values, not numbers"),
    ({"z": [[[0, 0]]]}, "no input or target named 'z'; the network takes x, y"),
    ({}, "no value for 'x': every input needs one"),
])
def test_feeds_that_do_not_fit_name_the_input_and_both_shapes(feeds, message):
    model = Model.from_text(SEQ_TAGGER)
    if message is None:
        assert model.forward(feeds)["p"].shape == (2, 2, 2)
        return
    with pytest.raises(FeedError, match=message):
        model.forward(feeds)


def test_arrays_in_their_layout_are_taken_as_they_are_and_every_misfit_among_arrays_is_still_named(monkeypatch):
    """Arrays of the declared layouts, of one batch and one T, skip the general path (a training
    step's case) and come out as it gives them; each misfit among arrays still gets its message."""
    from nnspec import model as M
    plan = Model.from_text(SEQ_TAGGER).plan
    x, y = np.zeros((3, 2, 2)), np.zeros((3, 2), dtype=np.int64)
    assert M._plain_feeds(M._feed_facts(plan), {"x": x, "y": y}, True) is not None   # (the plain path)
    plain, lengths = M.prepare_feeds(plan, {"x": x, "y": y}, need_targets=True)
    assert lengths is None and plain["x"] is x and plain["y"] is y
    misfits = [({"x": x, "y": np.zeros((4, 2), dtype=np.int64)}, "'y' has 4 steps but 'x' has 3"),
               ({"x": x, "y": np.zeros((3, 5), dtype=np.int64)}, "'y' holds 5 examples but 'x' holds 2"),
               ({"x": x}, "no value for 'y'"),
               ({"x": x, "y": np.full((3, 2), 2)}, r"'y' holds id 2 at \(0, 0\)"),
               ({"x": x, "y": np.full((3, 2), -2)}, r"'y' holds id -2 at \(0, 0\)"),
               ({"x": x.astype(object), "y": y}, "'x' holds object values"),
               ({"x": x[..., :1], "y": y}, r"input 'x': got shape \(3, 2, 1\)")]
    for general in (False, True):
        if general:
            monkeypatch.setattr(M, "_plain_feeds", lambda *a: None)
            assert M.prepare_feeds(plan, {"x": x, "y": y}, need_targets=True)[0] == plain
        for feeds, message in misfits:
            with pytest.raises(FeedError, match=message):
                M.prepare_feeds(plan, feeds, need_targets=True)


def test_grad_on_the_command_line_feeds_a_sequence_as_one_example(tmp_path, capsys):
    spec = write(tmp_path, "input x[2] : seq\noutput s\nh[3] = tanh(W @ x + U @ h[t-1])\ns = sum(h)\n")
    code, out, _ = run_main(capsys, "grad", spec, "--at", "x=[[1, 2], [3, 4], [5, 6]]", "--json")
    assert code == 0
    report = json.loads(out)
    model = open_session(spec, with_data=False, dtype="float64").model
    value, grads = model.gradients({"x": [np.array([[1, 2], [3, 4], [5, 6]], float)]})
    assert report["value"] == pytest.approx(value[0].tolist())   # s = sum(h) over time: one per example
    assert np.abs(report["gradients"]["U"]).sum() > 0   # three steps, so the recurrence has a gradient
    np.testing.assert_allclose(report["gradients"]["x"], grads["x"][:, 0], rtol=1e-9)


# ---- memory: refused before anything is allocated -------------------------------------------------

HUGE = {
    "h[100000000]": ("input x[2] : seq\noutput h\nh[100000000] = tanh(W @ x + U @ h[t-1])\n", 3, "100000000",
                     "param 'U' [100000000, 100000000] alone takes 36379.8 TiB"),
    "class[100000000]": ("input x[2]\ntarget y : class[100000000]\noutput p\np = softmax(W @ x)\n"
                         "loss cross_entropy(p, y)\ntrain { epochs 1 }\n", 2, "100000000",
                         "'W @ x' [100000000] for a batch of 32 alone takes 23.8 GiB"),
    "H = 100000000": ("input x[2] : seq\noutput h\nh = lstm(x, H = 100000000)\n", 3, "H = 100000000",
                      "[100000000, 100000000] alone takes"),
    "h[t-999999999]": (TAGGER.format(delay=999999999), 4, "h[t-999999999]",
                       "the 999999999 past steps of 'h' [3] that a delayed read keeps"),
}


@pytest.mark.parametrize("case", list(HUGE))
def test_a_network_too_large_for_memory_is_refused_at_check_where_the_size_is_written(tmp_path, capsys, case):
    text, line, size, what = HUGE[case]
    spec = write(tmp_path, text)
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert_located(err, spec, line, "this network needs at least", size)
    assert what in err and "more than the limit of 4.0 GiB" in err
    assert "raise the limit with --memory-limit (e.g. --memory-limit 16GiB), NNSPEC_MEMORY_LIMIT=16GiB, " \
           "or memory_limit_mb in the train block" in err
    assert json_error(capsys, "check", spec)["line"] == line


def test_the_python_api_refuses_the_same_networks_before_allocating():
    with pytest.raises(SpecError, match="this network needs at least 36379.8 TiB"):
        Model.from_text(HUGE["h[100000000]"][0])


def test_the_memory_limit_can_be_raised_and_lowered(tmp_path, capsys, monkeypatch):
    text = HUGE["class[100000000]"][0].replace("100000000", "1000000")   # 4 MB of parameters
    spec = write(tmp_path, text)
    assert run_main(capsys, "check", spec)[0] == 0
    code, _, err = run_main(capsys, "check", spec, "--memory-limit", "100MB")
    assert code == 1 and "more than the limit of 95.4 MiB" in err
    monkeypatch.setenv("NNSPEC_MEMORY_LIMIT", "100MB")
    assert run_main(capsys, "check", spec)[0] == 1
    assert run_main(capsys, "check", spec, "--memory-limit", "1GiB")[0] == 0    # the flag wins
    spec_with_setting = write(tmp_path, text.replace("epochs 1", "epochs 1; memory_limit_mb 2000"), "own.nn")
    assert run_main(capsys, "check", spec_with_setting)[0] == 0                  # the spec's own setting wins
    with pytest.raises(SystemExit):
        main(["check", str(spec), "--memory-limit", "lots", "--json"])
    assert json.loads(capsys.readouterr().out)["errors"] == [
        {"message": "nnspec check: argument --memory-limit: 'lots' is not a size; write e.g. 4GiB, 512MB or 1000000"}]


def test_check_json_lists_every_file_the_spec_reads(tmp_path, capsys):
    (tmp_path / "cells").mkdir()
    write(tmp_path, "cell twice(x) -> y {\n  y = 2 * x\n}\n", "cells/twice.nn")
    write(tmp_path, "text,label\na b,1\nc d,0\n", "train.csv")
    write(tmp_path, "text,label\na b,1\n", "dev.csv")
    spec = write(tmp_path, 'include "cells/twice.nn"\ninput text : bag of token\ntarget label : class\noutput p\n'
                           'p = softmax(W @ twice(text))\nloss cross_entropy(p, label)\n'
                           'data csv(train = "train.csv", dev = "dev.csv")\n')
    code, out, _ = run_main(capsys, "check", spec, "--json")
    assert code == 0
    assert json.loads(out)["files"] == [
        {"path": str(spec), "kind": "spec"},
        {"path": str((tmp_path / "cells" / "twice.nn").resolve()), "kind": "include"},
        {"path": str(tmp_path / "train.csv"), "kind": "data"},
        {"path": str(tmp_path / "dev.csv"), "kind": "data"},
    ]


# ---- characters and tokens -----------------------------------------------------------------------

CONLLU = "1\tthe\t_\tDET\t_\t_\t0\t_\t_\t_\n2\tdog\t_\tNOUN\t_\t_\t0\t_\t_\t_\n\n"


def test_seq_of_char_from_conllu_is_a_located_error_not_a_vocabulary_of_words(tmp_path, capsys):
    write(tmp_path, CONLLU, "train.conllu")
    spec = write(tmp_path, "input c : seq of char\ntarget y : seq of class\noutput p\ne = embed(c, 4)\n"
                           "p = softmax(V @ e)\nloss cross_entropy(p, y)\ndata conllu(\"train.conllu\")\n")
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert_located(err, spec, 1, "'c : seq of char' would hold characters, but conllu gives the words of a "
                                 "sentence, one per step", "input")
    assert "declare 'c : seq of token'" in err


def test_a_text_level_that_contradicts_the_input_type_is_a_located_error(tmp_path, capsys):
    write(tmp_path, "to be or not to be\n", "t.txt")
    spec = write(tmp_path, CHAR_LM.format(shift=1, batch=1, file="t.txt", extra="").replace('"char"', '"word"'))
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert_located(err, spec, 7, "text(level = \"word\") reads words, but 'w' is declared 'seq of char'",
                   'level = "word"')


@pytest.mark.parametrize("source, files", [
    ('lines("a.txt" -> 1, "b.txt" -> 0)', {"a.txt": "the cat\n", "b.txt": "a dog\n"}),
    ('csv("d.csv")', {"d.csv": "c,y\nthe cat,1\na dog,0\n"}),
    ('tsv("d.tsv")', {"d.tsv": "c\ty\nthe cat\t1\na dog\t0\n"}),
])
def test_seq_of_char_from_text_sources_holds_characters(tmp_path, source, files):
    for name, text in files.items():
        write(tmp_path, text, name)
    spec = write(tmp_path, "input c : seq of char\ntarget y : class\noutput p\ne = embed(c, 4)\n"
                           f"p = softmax(V @ last(e))\nloss cross_entropy(p, y)\ndata {source}\n")
    session = open_session(spec)
    assert set(session.data.vocabs["c"].itos[2:]) == set("the cat") | set("a dog")


def test_inline_tokens_for_a_char_input_are_a_data_error(tmp_path):
    spec = write(tmp_path, "input c : seq of char\ntarget y : class\noutput p\ne = embed(c, 4)\n"
                           "p = softmax(V @ last(e))\nloss cross_entropy(p, y)\n"
                           "data inline {\n  c = [[\"the\", \"cat\"], [\"a\"]]\n  y = [1, 0]\n}\n")
    with pytest.raises(DataError, match="field 'c' holds characters, but the data gives it the token 'the'"):
        open_session(spec)


# ---- command-line arguments ---------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["run", "{spec}", "--folds", "1"], "argument --folds: must be at least 2, not 1"),
    (["run", "{spec}", "--seed", "-1"], "argument --seed: must be at least 0, not -1"),
    (["graph", "{spec}", "--unroll", "1000000"], "argument --unroll: must be from 1 to 100, not 1000000"),
    (["check", "{spec}", "--memory-limit=-4GiB"], "argument --memory-limit: '-4GiB' is not a size"),
])
def test_arguments_out_of_range_are_usage_errors(tmp_path, capsys, args, message):
    spec = write(tmp_path, XOR.format(train="train { epochs 1 }"))
    with pytest.raises(SystemExit) as e:
        main([a.format(spec=spec) for a in args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_negative_seed_in_the_train_block_is_a_located_error(tmp_path, capsys):
    spec = write(tmp_path, XOR.format(train="train { seed -1 }"))
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert_located(err, spec, 6, "training setting 'seed': input should be greater than or equal to 0", "seed")


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    home = tmp_path_factory.mktemp("classifier")
    write(home, "a good film\na fine film\n", "pos.txt")
    write(home, "a bad film\na dull film\n", "neg.txt")
    spec = write(home, 'input d : bag of token\ntarget y : class[2]\noutput p\np = softmax(W @ d + b)\n'
                       'loss cross_entropy(p, y)\ntrain { epochs 1; batch 2 }\n'
                       'data lines("pos.txt" -> 1, "neg.txt" -> 0)\n')
    assert main(["run", str(spec), "--runs", str(home / "runs"), "--quiet", "--json"]) == 0
    (run_dir,) = (home / "runs").iterdir()
    return spec, run_dir


def test_predict_reads_only_a_regular_file_and_standard_input(trained_classifier, capsys):
    spec, run_dir = trained_classifier
    code, _, err = run_main(capsys, "predict", spec, "--checkpoint", run_dir, "--input", "/dev/zero")
    assert code == 1
    assert err.strip() == "/dev/zero: error: not a regular file (a character device); nnspec reads only regular files"
    result = subprocess.run([sys.executable, "-m", "nnspec.cli", "predict", str(spec), "--checkpoint", str(run_dir),
                             "--json"], input="a good film\n", capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "a good film" in result.stdout


# ---- end to end: what a user's terminal shows ----------------------------------------------------

END_TO_END = {
    "split": (XOR.format(train="train { split dev = 60%, test = 50% }"), ["run", "--no-save"]),
    "no loss": (XOR.format(train="train { }").replace("loss bce(p, y)\n", "").replace("target y[1]\n", "")
                .replace("  y = [[0], [1], [1], [0]]\n", ""), ["run", "--no-save"]),
    "delay": (TAGGER.format(delay="9999999999999999999"), ["check"]),
    "memory": (HUGE["class[100000000]"][0], ["check"]),
}


@pytest.mark.parametrize("case, as_json", [("split", True), ("no loss", False), ("delay", True), ("memory", False)])
def test_no_traceback_reaches_the_terminal(tmp_path, case, as_json):
    text, (command, *flags) = END_TO_END[case]
    spec = write(tmp_path, text)
    result = nnspec_cli(command, spec, *flags, *(["--json"] if as_json else []))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    if as_json:
        assert json.loads(result.stdout)["errors"][0]["file"] == str(spec)
    else:
        assert result.stderr.startswith(f"{spec}:")
