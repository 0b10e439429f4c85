"""Every ```python block of README.md and docs/api.md runs, as a reader would run them: in
order, in one namespace, from the repository's root, with ``RUN_DIR`` a run directory that
``nnspec run`` has just written (the docs say so)."""
from __future__ import annotations

from pathlib import Path

import pytest

from nnspec.cli import main
from test_docs import ROOT, blocks

TAGGER = """network tiny_tagger
input  w : seq of token
target y : seq of class
output p
e = embed(w, 8)
h = rnn(e, H = 6)
p = softmax(V @ h + c)
loss cross_entropy(p, y)
train { optimizer adam(lr = 0.05); batch 2; epochs 4; seed 3 }
data conllu(train = "train.conllu", dev = "dev.conllu")
"""

SENTENCES = [[("the", "DET"), ("dog", "NOUN"), ("runs", "VERB")], [("a", "DET"), ("cat", "NOUN"), ("sleeps", "VERB")],
             [("the", "DET"), ("cat", "NOUN"), ("runs", "VERB")], [("dogs", "NOUN"), ("sleep", "VERB")]]


def conllu(sentences) -> str:
    return "\n".join("".join(f"{i}\t{w}\t_\t{t}\t_\t_\t0\t_\t_\t_\n" for i, (w, t) in enumerate(s, 1))
                     for s in sentences) + "\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs-run")
    (root / "tagger.nn").write_text(TAGGER)
    (root / "train.conllu").write_text(conllu(SENTENCES * 4))
    (root / "dev.conllu").write_text(conllu(SENTENCES))
    assert main(["run", str(root / "tagger.nn"), "--runs", str(root / "runs"), "--quiet"]) == 0
    (run,) = (root / "runs").iterdir()
    return run


@pytest.mark.parametrize("doc", ["README.md", "docs/api.md"])
def test_every_python_example_runs(doc, run_dir, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    examples = [b for b in blocks(ROOT / doc) if b.lang == "python"]
    assert examples, f"{doc} has no python examples"
    namespace = {"RUN_DIR": str(run_dir)}
    for b in examples:
        try:
            exec(compile(b.text, f"{doc}:{b.line}", "exec"), namespace)
        except Exception as e:
            pytest.fail(f"the example at {doc}:{b.line} fails: {type(e).__name__}: {e}")


def test_the_api_reference_shows_what_it_says(run_dir, monkeypatch, capsys):
    """The printed results the reference quotes in its comments."""
    monkeypatch.chdir(ROOT)
    namespace = {"RUN_DIR": str(run_dir)}
    for b in blocks(ROOT / "docs" / "api.md"):
        if b.lang == "python":
            exec(compile(b.text, f"api.md:{b.line}", "exec"), namespace)
    out = capsys.readouterr().out
    for shown in ["lstm_tagger recurrent", "['e.table', 'h.Wf', 'h.Uf']", "(128,) ('vocab(w)', 100)", "<string>:3:9: error: undefined name 'xx'",
                  "[0. 1. 1. 0.]", "float64", "-10.0 -2.0 -4.0 5.0", "4 float32 ['w', 'y']", "['the', 'dog', 'sleeps']",
                  "nnspec-compiled 1 recurrent", "tanh [128] True 0 specs/elman.nn:11:1", "[-10.] [5.]"]:
        assert shown in out, shown
