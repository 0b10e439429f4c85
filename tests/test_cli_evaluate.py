"""``nnspec evaluate SPEC --checkpoint DIR --file F`` / ``--data SOURCE``: a trained model's metrics on
a user's data, read like the spec's own data and encoded with the checkpoint's vocabularies."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from nnspec.cli import main

TAGGER = """network tiny_tagger
input  w : seq of token
target y : seq of class
output p
e = embed(w, 8)
h = bidirectional(rnn)(e, H = 6)
p = softmax(V @ h + c)
loss cross_entropy(p, y)
train { optimizer adam(lr = 0.01); batch 2; epochs 3; seed 3 }
data conllu(train = "train.conllu", dev = "dev.conllu")
"""

SENTENCES = [[("the", "DET"), ("dog", "NOUN"), ("runs", "VERB")], [("a", "DET"), ("cat", "NOUN"), ("sleeps", "VERB")],
             [("the", "DET"), ("cat", "NOUN"), ("runs", "VERB")], [("dogs", "NOUN"), ("sleep", "VERB")]]

CLASSIFIER = """network tiny_bow
input  x : bag of token
target y : class[2]
output p
p = softmax(W @ x + b)
loss cross_entropy(p, y)
train { optimizer adam(lr = 0.05); batch 2; epochs 3; seed 1 }
"""

LM = """network tiny_lm
input w : seq of token
output p
e[4] = embed(w, 4)
x = concat(e, e[t-1])
p = softmax(V @ x + c)
loss cross_entropy(p, shift(w, 1))
train { optimizer adam(lr = 0.01); batch 2; bptt 4; epochs 2; seed 1 }
data text("corpus.txt", level = "word", split = [0.8, 0.2])
"""


def conllu(sentences) -> str:
    blocks = []
    for sentence in sentences:
        blocks.append("".join(f"{i}\t{w}\t_\t{t}\t_\t_\t0\t_\t_\t_\n" for i, (w, t) in enumerate(sentence, 1)))
    return "\n".join(blocks) + "\n"


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def trained(tmp_path: Path, capsys, spec: str, files: dict[str, str]) -> tuple[Path, str]:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    path = tmp_path / "spec.nn"
    path.write_text(spec, encoding="utf-8")
    code, out, err = run(capsys, "run", path, "--runs", tmp_path / "runs", "--quiet", "--json")
    assert code == 0, err
    return path, json.loads(out)["run_dir"]


@pytest.fixture
def tagger(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --file and --data paths are relative to the current directory
    return trained(tmp_path, capsys, TAGGER, {"train.conllu": conllu(SENTENCES), "dev.conllu": conllu(SENTENCES[:2])})


def test_a_file_is_read_like_the_specs_data_and_scored_like_a_split(tagger, capsys):
    spec, run_dir = tagger
    code, out, _ = run(capsys, "evaluate", spec, "--checkpoint", run_dir, "--split", "dev", "--json")
    assert code == 0
    on_split = json.loads(out)["metrics"]
    Path("copy.conllu").write_text(conllu(SENTENCES[:2]))
    code, out, _ = run(capsys, "evaluate", spec, "--checkpoint", run_dir, "--file", "copy.conllu", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["file"] == "copy.conllu" and report["examples"] == 2
    assert report["metrics"] == pytest.approx(on_split)
    code, out, _ = run(capsys, "evaluate", spec, "--checkpoint", run_dir, "--file", "copy.conllu")
    assert out.startswith("copy.conllu (2 examples): loss ") and "accuracy" in out


def test_unknown_words_become_unk(tagger, capsys):
    spec, run_dir = tagger
    Path("new.conllu.gz").write_bytes(gzip.compress(conllu([[("zebras", "NOUN"), ("sleep", "VERB")]]).encode()))
    code, out, _ = run(capsys, "evaluate", spec, "--checkpoint", run_dir, "--file", "new.conllu.gz", "--json")
    assert code == 0
    metrics = json.loads(out)["metrics"]
    assert 0 <= metrics["accuracy"] <= 1 and math.isfinite(metrics["loss"])


def test_a_data_source_in_the_spec_language(tagger, capsys):
    spec, run_dir = tagger
    Path("a.conllu").write_text(conllu(SENTENCES[:1]))
    Path("b.conllu").write_text(conllu(SENTENCES[1:2]))
    code, out, _ = run(capsys, "evaluate", spec, "--checkpoint", run_dir, "--json",
                       "--data", 'conllu(train = "a.conllu", test = "b.conllu")')  # every part is evaluated
    assert code == 0
    report = json.loads(out)
    assert report["data"].startswith("conllu(") and report["examples"] == 2


@pytest.mark.parametrize("content, message", [
    (conllu([[("the", "DET"), ("dog", "INTJ")]]),
     "bad.conllu:1: error: field 'y': label 'INTJ' at step 2 does not occur in the training data "
     "(known labels: DET, NOUN, VERB)"),
    ("1\tthe\t_\tDET\n", "bad.conllu:1: error: expected 10 tab-separated columns"),
    ("", "bad.conllu: error: empty file: no sentences"),
    (b"1\tcaf\xe9\t_\tNOUN\t_\t_\t0\t_\t_\t_\n", "bad.conllu:1: error: cannot decode byte 0xe9 at column 6 as utf-8"),
])
def test_bad_files_are_clear_errors(tagger, capsys, content, message):
    spec, run_dir = tagger
    Path("bad.conllu").write_bytes(content if isinstance(content, bytes) else content.encode())
    code, out, err = run(capsys, "evaluate", spec, "--checkpoint", run_dir, "--file", "bad.conllu")
    assert code == 1 and out == ""
    assert err.startswith(message) and "Traceback" not in err


def test_a_missing_file(tagger, capsys):
    spec, run_dir = tagger
    code, _, err = run(capsys, "evaluate", spec, "--checkpoint", run_dir, "--file", "nothere.conllu")
    assert code == 1 and err.strip() == "nothere.conllu: error: no such file"
    code, out, _ = run(capsys, "evaluate", spec, "--checkpoint", run_dir, "--file", "nothere.conllu", "--json")
    assert code == 1 and json.loads(out) == {"ok": False, "errors": [{"message": err.strip()}]}


def test_a_data_source_with_a_mistake_is_shown_like_a_spec_error(tagger, capsys):
    spec, run_dir = tagger
    code, _, err = run(capsys, "evaluate", spec, "--checkpoint", run_dir, "--data", 'conllu("x.conllu"')
    assert code == 1 and err.startswith("--data:1:") and "Traceback" not in err
    code, _, err = run(capsys, "evaluate", spec, "--checkpoint", run_dir, "--data", 'conllu("x", column = "nope")')
    assert code == 1 and "'nope' is not a CoNLL-U column" in err
    code, _, err = run(capsys, "evaluate", spec, "--checkpoint", run_dir, "--data", 'data csv("a.csv")\ndata csv("b.csv")')
    assert code == 1 and "--data takes one data source" in err


def test_a_csv_file_is_read_with_the_specs_columns_and_encoding(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = "texte;étiquette\n" + "".join(f'"{t}",{y}\n' for t, y in [("good fun", 1), ("bad dull", 0)] * 3)
    spec = CLASSIFIER + 'data csv("train.csv", x = "texte", y = "étiquette", encoding = "latin-1")\n'
    (tmp_path / "train.csv").write_bytes(rows.replace(";", ",").encode("latin-1"))
    path, run_dir = trained(tmp_path, capsys, spec, {})
    (tmp_path / "mine.csv").write_bytes("texte,étiquette\ngood film,1\ndull film,0\n".encode("latin-1"))
    code, out, err = run(capsys, "evaluate", path, "--checkpoint", run_dir, "--file", "mine.csv", "--json")
    assert code == 0, err
    assert json.loads(out)["examples"] == 2
    (tmp_path / "mine.csv").write_bytes("texte,étiquette\ngood film,7\n".encode("latin-1"))
    code, _, err = run(capsys, "evaluate", path, "--checkpoint", run_dir, "--file", "mine.csv")
    assert code == 1 and err.startswith("mine.csv:2: error: field 'y'")


def test_labels_by_file_need_a_data_source(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = {"pos.txt": "good fun\ngreat joy\n", "neg.txt": "bad dull\nawful mess\n"}
    spec = CLASSIFIER + 'data lines("pos.txt" -> 1, "neg.txt" -> 0)\n'
    path, run_dir = trained(tmp_path, capsys, spec, files)
    code, _, err = run(capsys, "evaluate", path, "--checkpoint", run_dir, "--file", "pos.txt")
    assert code == 1 and "--data 'lines(\"pos.txt\" -> 1)'" in err
    code, out, err = run(capsys, "evaluate", path, "--checkpoint", run_dir, "--json",
                         "--data", 'lines("pos.txt" -> 1, "neg.txt" -> 0)')
    assert code == 0, err
    assert json.loads(out)["examples"] == 4 and json.loads(out)["metrics"]["accuracy"] >= 0


def test_a_language_models_perplexity_on_a_text_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = "the cat sat on the mat\nthe dog sat on the log\n" * 10
    path, run_dir = trained(tmp_path, capsys, LM, {"corpus.txt": corpus})
    (tmp_path / "mine.txt").write_text("the cat sat on the log\na zebra sat\n")
    code, out, err = run(capsys, "evaluate", path, "--checkpoint", run_dir, "--file", "mine.txt", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["tokens"] == 7 + 4  # words and an <eos> per line
    assert report["metrics"]["perplexity"] == pytest.approx(math.exp(report["metrics"]["loss"]))
    (tmp_path / "one.txt").write_text("\n")
    code, _, err = run(capsys, "evaluate", path, "--checkpoint", run_dir, "--file", "one.txt")
    assert code == 1 and err.startswith("one.txt: error: a language model needs at least two tokens")


def test_inline_data_has_no_file_format(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = CLASSIFIER + 'data inline { x = ["good", "bad"]; y = [1, 0] }\n'
    path, run_dir = trained(tmp_path, capsys, spec, {})
    code, _, err = run(capsys, "evaluate", path, "--checkpoint", run_dir, "--file", "x.csv")
    assert code == 1 and "--data" in err


def test_a_checkpoint_without_the_vocabulary_a_spec_needs_is_refused(tagger, capsys):
    _, run_dir = tagger
    other = Path("other.nn")
    other.write_text(CLASSIFIER + 'data lines("p.txt" -> 1)\n')
    code, _, err = run(capsys, "evaluate", other, "--checkpoint", run_dir, "--data", 'lines("p.txt" -> 1)')
    assert code == 1 and "made from a different spec" in err and "Traceback" not in err


def test_sampling_carries_the_states_from_token_to_token(tmp_path, capsys, monkeypatch):
    """``nnspec sample`` feeds one token at a time, carrying the states the last one left
    (``chunks.Stream``); nearly cold (temperature 1e-6), it continues the prompt as greedy
    decoding over whole passes of the text so far does."""
    import numpy as np
    from nnspec.cli.model_commands import open_trained
    from nnspec.train.loop import find_heads
    monkeypatch.chdir(tmp_path)
    path, run_dir = trained(tmp_path, capsys, LM, {"corpus.txt": "the cat sat on the mat\nthe dog sat on the log\n" * 10})
    code, out, err = run(capsys, "sample", path, "--checkpoint", run_dir, "--prompt", "the dog", "--length", "6",
                         "--temperature", "1e-6", "--json")
    assert code == 0, err
    session, vocabs = open_trained(str(path), run_dir)
    head, vocab = find_heads(session.model)[0], vocabs["w"]
    words = ["the", "dog"]
    for _ in range(6):
        tape = session.model.run({"w": vocab.encode(words)[:, None]}, need_loss=False)
        p = np.asarray(tape.values[head.pred][-1, 0], dtype=np.float64)
        p[:2] = -np.inf                       # never <pad> or <unk>
        words.append(vocab.decode([int(p.argmax())])[0])
    assert json.loads(out)["text"] == " ".join(words)
