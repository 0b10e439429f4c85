"""The sweep { ... } block as a search space, and trial specs: the parts of nnspec.sweep that need
neither Optuna nor Dask (tests/test_sweep.py runs sweeps on real clusters)."""
from __future__ import annotations

from pathlib import Path

import pytest

from nnspec.errors import SpecError
from nnspec.sweep import SweepError, require
from nnspec.sweep.space import read_sweep_spec, trial_text

TINY = """network tiny
let H = 4
input  x[2]
target y : class[2]
output p
h[H] = tanh(W1 @ x + b1)
p = softmax(W2 @ h + b2)
loss cross_entropy(p, y)
train {
  optimizer adam(lr = 0.01)
  batch 8; epochs EPOCHS; seed 1
  split dev = 25%
}
sweep {
  SWEEP
}
data inline {
  x = [[0,0],[0,1],[1,0],[1,1],[0,0],[0,1],[1,0],[1,1],[0,0],[0,1],[1,0],[1,1],[0,0],[0,1],[1,0],[1,1]]
  y = [0,1,1,0,0,1,1,0,0,1,1,0,0,1,1,0]
}
"""


SPACE = """lr loguniform(1e-3, 0.3)
  H  int(2, 8)
  dropout h = uniform(0, 0.5)"""


def tiny(tmp_path: Path, epochs: int = 4, extra: str = "", name: str = "tiny.nn", space: str = SPACE) -> Path:
    """A 2-H-2 network on XOR rows, with a sweep block: ``space`` and ``extra`` lines."""
    path = tmp_path / name
    path.write_text(TINY.replace("EPOCHS", str(epochs)).replace("SWEEP", space + "\n  " + extra), encoding="utf-8")
    return path


# ---- the search space (no optuna, no dask) ------------------------------------------------------

def sweep_errors(tmp_path, block: str) -> str:
    path = tmp_path / "bad.nn"
    path.write_text(TINY.replace("EPOCHS", "2").split("sweep {")[0] + block + "\n", encoding="utf-8")
    with pytest.raises(SpecError) as e:
        read_sweep_spec(path)
    return e.value.diagnostics.render()


def test_a_sweep_block_is_read_into_a_search_space(tmp_path):
    spec = read_sweep_spec(tiny(tmp_path, extra="optimizer choice(adam(lr = 0.01), momentum(lr = 0.1))\n"
                                                 "  batch choice(4, 8); trials 7; folds 3; maximize accuracy"))
    dims = spec.space.by_name()
    assert set(dims) == {"lr", "H", "dropout.h", "optimizer", "batch"}
    assert (dims["lr"].kind, dims["lr"].low, dims["lr"].high) == ("loguniform", 1e-3, 0.3)
    assert dims["H"].target == "let" and dims["dropout.h"].target == "setting"
    assert dims["optimizer"].choices == ("adam(lr = 0.01)", "momentum(lr = 0.1)")
    assert (spec.space.trials, spec.space.folds, spec.space.metric) == (7, 3, "accuracy")


@pytest.mark.parametrize("block, message, caret_line", [
    ("sweep {\n  lrr loguniform(1e-3, 1)\n}", "'lrr' is neither a training setting nor a top-level let; "
                                              "did you mean 'lr'", "  lrr loguniform(1e-3, 1)"),
    ("sweep {\n  lr uniform(1, 0.5)\n}", "the low bound 1 must be below the high bound 0.5", "  lr uniform(1, 0.5)"),
    ("sweep {\n  epochs uniform(1, 5)\n}", "'epochs' is a whole number: search it with int(1, 5)", None),
    ("sweep {\n  lr loguniform(0, 1)\n}", "loguniform needs a positive low bound", None),
    ("sweep {\n  lr 0.1\n}", "'lr' needs a range", None),
    ("sweep {\n  batch choice(8)\n}", "choice takes two or more values", None),
    ("sweep {\n  pruner hyperbnd\n}", "unknown pruner 'hyperbnd'", None),
    ("sweep {\n  trials 4\n}", "the sweep block searches nothing", None),
])
def test_sweep_block_mistakes_are_shown_at_their_line_with_a_caret(tmp_path, block, message, caret_line):
    text = sweep_errors(tmp_path, block)
    assert message in text
    assert "bad.nn:" in text and "^" in text
    if caret_line:
        assert caret_line in text


def test_a_trial_writes_its_values_into_the_spec_and_the_spec_still_compiles(tmp_path):
    from nnspec.session import open_session
    spec = read_sweep_spec(tiny(tmp_path))
    text = trial_text(spec, {"lr": 0.02, "H": 7, "dropout.h": 0.25})
    assert "let H = 7" in text and "  lr 0.02\n" in text and "  dropout h = 0.25\n" in text
    assert "# sweep {" in text  # the search space is kept, as a comment
    session = open_session(spec.path, text=text)
    assert session.settings.optimizer_args()["lr"] == 0.02
    assert session.settings.dropout == {"h": 0.25}
    assert session.model.params["W1"].shape == (7, 2)


def test_a_trial_spec_saved_elsewhere_finds_its_data_files(tmp_path):
    from nnspec.session import open_session
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pos.txt").write_text("good fun\ngreat film\n")
    (tmp_path / "data" / "neg.txt").write_text("dull plot\nbad film\n")
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "bow.nn"
    path.write_text('network bow\ninput x : bag of token\ntarget y : class[2]\noutput p\n'
                    'p = softmax(W @ x + b)\nloss cross_entropy(p, y)\ntrain { epochs 1 }\n'
                    'sweep { lr loguniform(1e-3, 1) }\n'
                    'data lines("../data/pos.txt" -> 1, "../data/neg.txt" -> 0)\n')
    spec = read_sweep_spec(path)
    out = tmp_path / "runs" / "sweep-1" / "trials" / "trial-0000"
    out.mkdir(parents=True)
    saved = out / "spec.nn"
    saved.write_text(trial_text(spec, {"lr": 0.5}, out_dir=out))
    session = open_session(saved)
    assert session.data.size("train") == 4


def test_nested_folds_keep_the_outer_test_part_out_of_every_inner_split(tmp_path):
    """What nested cross-validation rests on: inside outer fold i, the inner folds see only the rest."""
    from nnspec.session import open_session
    rows = [[i, 0] for i in range(30)]
    path = tmp_path / "ids.nn"
    path.write_text(f"network ids\ninput x[2]\ntarget y : class[2]\noutput p\np = softmax(W @ x + b)\n"
                    f"loss cross_entropy(p, y)\ntrain {{ seed 3 }}\n"
                    f"data inline {{ x = {rows}; y = {[i % 2 for i in range(30)]} }}\n")
    seen_outer_tests = set()
    for i in range(3):
        outer = open_session(path, fold=(3, i))
        outer_test = {int(v[0]) for v in outer.data.splits["test"].data["x"]}
        outer_train = {int(v[0]) for v in outer.data.splits["train"].data["x"]}
        seen_outer_tests |= outer_test
        inner_tests = set()
        for j in range(2):
            inner = open_session(path, outer=(3, i), fold=(2, j))
            ids = {int(v[0]) for part in inner.data.splits.values() for v in part.data["x"]}
            assert ids == outer_train and not ids & outer_test
            inner_tests |= {int(v[0]) for v in inner.data.splits["test"].data["x"]}
        assert inner_tests == outer_train
    assert seen_outer_tests == set(range(30))


BAG = """network bag
input  x : bag of token
target y : class[2]
output p
p = softmax(W @ x + b)
loss cross_entropy(p, y)
train { epochs 1; batch 2 }
sweep {
  SWEEP
}
data lines("pos.txt" -> 1, "neg.txt" -> 0OPTIONS)
"""


def bag(tmp_path: Path, space: str, options: str = ", ngrams = 3") -> Path:
    (tmp_path / "pos.txt").write_text("good fun\ngreat film\n", encoding="utf-8")
    (tmp_path / "neg.txt").write_text("dull plot\nbad film\n", encoding="utf-8")
    path = tmp_path / "bag.nn"
    path.write_text(BAG.replace("SWEEP", space).replace("OPTIONS", options), encoding="utf-8")
    return path


def test_a_sweep_searches_the_data_keywords_and_a_trial_writes_them_into_the_data_statement(tmp_path):
    from nnspec.session import open_session
    spec = read_sweep_spec(bag(tmp_path, "ngrams int(1, 3)\n  char_ngrams choice(0, 4)"))
    dims = spec.space.by_name()
    assert dims["ngrams"].target == dims["char_ngrams"].target == "data"
    text = trial_text(spec, {"ngrams": 2, "char_ngrams": "4"})
    # ngrams = 3 gets its new value; char_ngrams, not written, is added before the parenthesis
    assert text.splitlines()[-1] == 'data lines("pos.txt" -> 1, "neg.txt" -> 0, ngrams = 2, char_ngrams = 4)'
    vocab = open_session(spec.path, text=text).data.vocabs["x"]
    assert (vocab.ngrams, vocab.char_ngrams) == (2, 4) and " <go" in vocab and "good fun" in vocab


@pytest.mark.parametrize("space, options, message", [
    ("char_ngrams choice(0, 1)", "", "'char_ngrams' takes 0 (none) or 2 to 8, not 1"),
    ("char_ngrams int(0, 4)", "", "'char_ngrams' takes 0 (none) or 2 to 8, not 1"),
    ("ngrams int(1, 7)", "", "'ngrams' takes 1 to 5, not 6"),
    ("ngrams uniform(1, 3)", "", "'ngrams' is a whole number: search it with int(a, b) or choice(...)"),
])
def test_a_data_keyword_range_a_trial_could_not_take_is_an_error_at_its_line(tmp_path, space, options, message):
    with pytest.raises(SpecError) as e:
        read_sweep_spec(bag(tmp_path, space, options))
    text = e.value.diagnostics.render()
    assert message in text and "bag.nn:9:" in text and "^" in text


def test_a_data_keyword_in_the_sweep_of_a_spec_without_lines_or_a_table_is_an_error(tmp_path):
    text = sweep_errors(tmp_path, "sweep {\n  char_ngrams choice(0, 4)\n}")
    assert "'char_ngrams' is a keyword of a data statement that reads lines or a table" in text


def test_a_missing_extra_says_how_to_install_it():
    with pytest.raises(SweepError, match=r"pip install 'nnspec\[sweep\]'"):
        require("no_such_module_for_nnspec")




def test_the_sweep_block_of_the_language_reference_is_a_valid_search_space(tmp_path):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "language.md").read_text(encoding="utf-8")
    block = next(b for b in doc.split("```nn\n")[1:] if "sweep {" in b.split("```")[0]).split("```")[0]
    path = tmp_path / "tuned.nn"
    path.write_text(block)
    space = read_sweep_spec(path).space
    assert [d.name for d in space.dimensions] == ["lr", "dropout.h", "H", "batch", "optimizer"]
    assert (space.trials, space.pruner, space.sampler) == (20, ("median", {"startup": 5, "warmup": 1}),
                                                           ("tpe", {"startup": 10}))


def test_nnspec_check_shows_every_mistake_of_the_sweep_block_at_its_line(tmp_path, capsys):
    from nnspec.cli import main
    path = tmp_path / "bad.nn"
    path.write_text(TINY.replace("EPOCHS", "2").replace(
        "SWEEP", "lrr loguniform(1e-3, 1)\n  K int(1, 4)\n  lr uniform(1, 0.5)\n  H int(2, 8)"), encoding="utf-8")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "searches nothing" not in err   # it searches H; three lines are wrong
    first_lines = [line for line in err.splitlines() if line.startswith(str(path))]
    assert first_lines == [
        f"{path}:15:3: error: 'lrr' is neither a training setting nor a top-level let; did you mean 'lr'? "
        f"(a sweep searches train settings, let values and the data keywords ngrams, char_ngrams; it also "
        f"takes trials, maximize, minimize, pruner, sampler, folds)",
        f"{path}:16:3: error: 'K' is neither a training setting nor a top-level let (a sweep searches train "
        f"settings, let values and the data keywords ngrams, char_ngrams; it also takes trials, maximize, "
        f"minimize, pruner, sampler, folds)",
        f"{path}:17:6: error: the low bound 1 must be below the high bound 0.5"]
    path.write_text(TINY.replace("EPOCHS", "2").replace("SWEEP", SPACE), encoding="utf-8")
    assert main(["check", str(path)]) == 0
