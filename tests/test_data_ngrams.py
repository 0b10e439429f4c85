"""``ngrams = n`` on a data source: a text input holds its words and their runs of up to n words."""
from __future__ import annotations

from pathlib import Path

import pytest

import nnspec
from nnspec.cli import main
from nnspec.data import Vocab
from nnspec.data.vocab import with_char_ngrams, with_ngrams


def test_ngrams_follow_the_words_in_order_of_length():
    assert with_ngrams(["a", "b", "c"], 2) == ["a", "b", "c", "a b", "b c"]
    assert with_ngrams(["a", "b", "c"], 3) == ["a", "b", "c", "a b", "b c", "a b c"]
    assert with_ngrams(["a"], 3) == ["a"]


def test_a_vocabulary_with_ngrams_counts_and_encodes_them_and_keeps_them_when_saved():
    vocab = Vocab.build(["not good", "not bad", "good"], ngrams=2)
    assert set(vocab.itos[2:]) == {"not", "good", "bad", "not good", "not bad"}
    assert vocab.decode(vocab.encode("not good at all")) == ["not", "good", "<unk>", "<unk>",
                                                             "not good", "<unk>", "<unk>"]
    # A list is tokens already: its n-grams are added once, as for text (predict passes tokens).
    assert list(vocab.encode(["not", "good"])) == list(vocab.encode("not good"))
    again = Vocab.from_json(vocab.to_json())
    assert again.ngrams == 2 and list(again.encode("not bad")) == list(vocab.encode("not bad"))
    assert Vocab.from_json({k: v for k, v in vocab.to_json().items() if k != "ngrams"}).ngrams == 1


def write_corpus(tmp_path: Path) -> None:
    # "not good" is negative and "good" positive: only the bigram separates them.
    (tmp_path / "pos.txt").write_text("good film\nvery good\ngood fun\n" * 4, encoding="utf-8")
    (tmp_path / "neg.txt").write_text("not good film\nnot good\nnot good fun\n" * 4, encoding="utf-8")


SPEC = """network bigrams
input  x : {type}
target y : class[2]
output p
p = softmax(W @ {use} + b)
loss cross_entropy(p, y)
train {{ optimizer adam(lr = 0.05); batch 4; epochs 30; seed 1 }}
data lines("pos.txt" -> 1, "neg.txt" -> 0{option})
"""


def spec(tmp_path, option=", ngrams = 2", type="bag of token", use="x") -> Path:
    write_corpus(tmp_path)
    path = tmp_path / "spec.nn"
    path.write_text(SPEC.format(option=option, type=type, use=use), encoding="utf-8")
    return path


def test_a_bag_with_bigrams_has_them_in_its_vocabulary_and_a_model_trains_and_predicts_with_them(tmp_path):
    session = nnspec.open_session(spec(tmp_path))
    vocab = session.data.vocabs["x"]
    assert "not good" in vocab and "good film" in vocab and vocab.ngrams == 2
    assert session.data.bindings["vocab(x)"] == len(vocab)
    assert main(["run", str(spec(tmp_path)), "--runs", str(tmp_path / "runs"), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    model = nnspec.load(run)
    # The saved vocabulary keeps its n-grams: predict counts the bigrams of new text.
    assert model.vocabs["x"].ngrams == 2
    assert model.predict("not good").labels == {"y": 0}
    assert model.predict("good").labels == {"y": 1}


def test_a_sequence_of_tokens_with_bigrams_holds_the_words_then_the_bigrams(tmp_path):
    session = nnspec.open_session(spec(tmp_path, type="seq of token", use="mean(embed(x, 4))"))
    vocab = session.data.vocabs["x"]
    for ids in session.data.splits["train"].data["x"]:
        tokens = vocab.decode(ids)
        words = tokens[:(len(tokens) + 1) // 2]      # n words have n - 1 bigrams
        assert all(" " not in w for w in words) and tokens == with_ngrams(words, 2)


def check(capsys, path) -> tuple[int, str]:
    code = main(["check", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("option, message, column", [
    (", ngrams = 0", "a whole number from 1 to 5; got 0", 53),
    (", ngrams = 2.5", "a whole number from 1 to 5; got 2.5", 53),
    (', ngrams = "2"', "a whole number from 1 to 5; got '2'", 53),
    (", ngrams = 9", "a whole number from 1 to 5; got 9", 53),
])
def test_a_bad_ngrams_value_is_an_error_at_the_value(tmp_path, capsys, option, message, column):
    path = spec(tmp_path, option=option)
    code, err = check(capsys, path)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[0] == f"{path}:8:{column}: error: ngrams is the longest run of words to count, {message}"
    assert err.splitlines()[2].index("^") == column - 1 + 4  # the caret under the value, in the shown line


def test_ngrams_of_characters_is_an_error_at_the_declaration(tmp_path, capsys):
    path = spec(tmp_path, type="bag of char")
    code, err = check(capsys, path)
    assert code == 1
    assert err.splitlines()[0] == (f"{path}:2:1: error: ngrams joins words, but 'x' holds characters; "
                                   f"declare it 'bag of token'")


def test_ngrams_on_a_source_without_word_lines_is_an_error_at_the_keyword(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("a b c d e f\n" * 10, encoding="utf-8")
    path = tmp_path / "lm.nn"
    path.write_text("network lm\ninput w : seq of token\noutput p\np = softmax(V @ embed(w, 4) + c)\n"
                    "loss cross_entropy(p, shift(w, 1))\ntrain { bptt 3; batch 2; epochs 1 }\n"
                    'data text("t.txt", ngrams = 2)\n', encoding="utf-8")
    code, err = check(capsys, path)
    assert code == 1
    assert err.splitlines()[0] == (f"{path}:7:20: error: ngrams applies to text read line by line or from a "
                                   f"table (lines, csv, tsv), not to text(...)")


def test_ngrams_beside_a_per_step_target_is_an_error(tmp_path, capsys):
    (tmp_path / "d.tsv").write_text("w\ttags\na b\tX Y\nc d\tY X\n", encoding="utf-8")
    path = tmp_path / "tagger.nn"
    path.write_text("network tagger\ninput w : seq of token\ntarget tags : seq of class\noutput p\n"
                    "p = softmax(V @ embed(w, 4) + c)\nloss cross_entropy(p, tags)\n"
                    'data tsv("d.tsv", ngrams = 2)\n', encoding="utf-8")
    code, err = check(capsys, path)
    assert code == 1
    assert err.splitlines()[0] == (f"{path}:7:19: error: with ngrams, 'w' holds more tokens than words, so its "
                                   f"steps no longer match the steps of the target 'tags'")


# ---- char_ngrams = n: the pieces of each word ------------------------------------------------------

def test_char_ngrams_are_the_runs_of_2_to_n_characters_of_each_word_marked_at_its_ends():
    assert with_char_ngrams(["an"], ["an"], 3) == ["an", " <a", " an", " n>", " <an", " an>"]
    # after the words and word n-grams; each piece starts with a space, so no word or word pair is one
    tokens = with_char_ngrams(["a", "b", "a b"], ["a", "b"], 2)
    assert tokens == ["a", "b", "a b", " <a", " a>", " <b", " b>"]


def test_a_vocabulary_with_char_ngrams_keeps_them_when_saved():
    vocab = Vocab.build(["happy", "sad"], char_ngrams=3)
    assert " hap" in vocab and " <s" in vocab and "happy" in vocab and vocab.char_ngrams == 3
    again = Vocab.from_json(vocab.to_json())
    assert again.char_ngrams == 3 and list(again.encode("happier")) == list(vocab.encode("happier"))
    assert Vocab.from_json({k: v for k, v in vocab.to_json().items() if k != "char_ngrams"}).char_ngrams == 0


def write_morphology(tmp_path: Path) -> None:
    # Test words never seen whole: only their pieces tell them apart.
    (tmp_path / "pos.txt").write_text("happy\nhappiest\nhappily\n" * 4, encoding="utf-8")
    (tmp_path / "neg.txt").write_text("sad\nsaddest\nsadly\n" * 4, encoding="utf-8")


@pytest.mark.parametrize("option, knows_pieces", [(", char_ngrams = 4", True), ("", False)])
def test_with_char_ngrams_a_model_tells_unseen_words_by_their_pieces(tmp_path, option, knows_pieces):
    write_morphology(tmp_path)
    path = tmp_path / "spec.nn"
    path.write_text(SPEC.format(option=option, type="bag of token", use="x"), encoding="utf-8")
    assert main(["run", str(path), "--runs", str(tmp_path / "runs"), "--quiet"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    model = nnspec.load(run)
    labels = model.predict("happier").labels["y"], model.predict("sadder").labels["y"]
    if knows_pieces:
        assert model.vocabs["x"].char_ngrams == 4 and labels == (1, 0)
    else:  # both are <unk> alone: one answer for both
        assert labels[0] == labels[1]


@pytest.mark.parametrize("option, got", [
    (", char_ngrams = 1", "1"), (", char_ngrams = 9", "9"), (", char_ngrams = 2.5", "2.5"),
])
def test_a_bad_char_ngrams_value_is_an_error_at_the_value(tmp_path, capsys, option, got):
    path = spec(tmp_path, option=option)
    code, err = check(capsys, path)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[0] == (f"{path}:8:58: error: char_ngrams is the longest run of characters of a word "
                                   f"to count, 0 (none) or a whole number from 2 to 8; got {got}")


def test_char_ngrams_of_a_character_input_is_an_error_at_the_declaration(tmp_path, capsys):
    path = spec(tmp_path, option=", char_ngrams = 3", type="bag of char")
    code, err = check(capsys, path)
    assert code == 1
    assert err.splitlines()[0] == (f"{path}:2:1: error: char_ngrams cuts words into pieces, but 'x' holds "
                                   f"characters; declare it 'bag of token'")
