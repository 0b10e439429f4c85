"""Readers: each `data NAME(...)` source on small files, and every error path
naming its file and line."""
import gzip
from pathlib import Path

import numpy as np
import pytest

from nnspec.data import SOURCES, DataError, FieldSpec, read_source


def F(name, kind, **kw):
    return FieldSpec(name=name, kind=kind, **kw)


def write(path: Path, text: str | bytes) -> Path:
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def error(name, args, kwargs, fields, base_dir) -> DataError:
    with pytest.raises(DataError) as info:
        read_source(name, args, kwargs, fields, base_dir)
    return info.value


# ---------------------------------------------------------------- DataError

def test_data_error_renders_file_and_line():
    assert str(DataError("bad number", "a.csv", 3)) == "a.csv:3: error: bad number"
    assert str(DataError("no such file", "a.csv")) == "a.csv: error: no such file"
    e = DataError("m", "f", 7)
    assert (e.message, e.file, e.line) == ("m", "f", 7)


def test_all_sources_registered():
    assert set(SOURCES) == {"inline", "csv", "tsv", "npz", "lines", "conllu", "conllu_words", "text"}


def test_unknown_source_and_missing_file(tmp_path):
    assert "known sources" in str(error("parquet", [], {}, [], tmp_path))
    e = error("csv", ["nope.csv"], {}, [F("x", "vector")], tmp_path)
    assert e.file == str(tmp_path / "nope.csv") and "no such file" in e.message


# ---------------------------------------------------------------- inline

def test_inline_reads_all_kinds(tmp_path):
    fields = [F("x", "vector", size=2), F("w", "tokens"), F("y", "class", role="target")]
    raw = read_source("inline", [], {"x": [[0, 1], [1, 0]], "w": ["a b", ["c"]], "y": [1.0, 0]},
                      fields, tmp_path)
    assert list(raw.splits) == ["all"] and raw.size("all") == 2
    assert raw.splits["all"]["y"] == [1, 0] and type(raw.splits["all"]["y"][0]) is int
    assert raw.origins["all"] == [("<inline>", 1), ("<inline>", 2)]


def test_inline_count_mismatch_and_unknown_field(tmp_path):
    fields = [F("x", "vector"), F("y", "class", role="target")]
    e = error("inline", [], {"x": [1, 2], "y": [0]}, fields, tmp_path)
    assert "different numbers of examples (x: 2, y: 1)" in e.message
    e = error("inline", [], {"x": [1], "y": [0], "z": [1]}, fields, tmp_path)
    assert "unknown argument z" in e.message
    assert "no examples for field y" in error("inline", [], {"x": [1]}, fields, tmp_path).message


# ---------------------------------------------------------------- csv / tsv

def test_csv_columns_by_name_patterns_and_mapping(tmp_path):
    write(tmp_path / "d.csv", "a1,a2,b.1,b.2,c[0],c[1],p,q,s,label,text\n"
                              "1,2,3,4,5,6,7,8,0.5,cat,the cat\n"
                              "\n"
                              "1,2,3,4,5,6,7,8,1.5,dog,a dog barks\n")
    fields = [F("a", "vector", size=2), F("b", "vector", size=2), F("c", "vector", size=2),
              F("m", "vector", size=2), F("s", "vector"), F("w", "tokens"),
              F("label", "class", role="target")]
    raw = read_source("csv", ["d.csv"], {"m": ["q", "p"], "w": "text"}, fields, tmp_path)
    ex = raw.splits["all"]
    assert ex["a"][0] == [1, 2] and ex["b"][0] == [3, 4] and ex["c"][0] == [5, 6] and ex["m"][0] == [8, 7]
    assert ex["s"] == [0.5, 1.5] and ex["label"] == ["cat", "dog"] and ex["w"][1] == "a dog barks"
    assert raw.origins["all"] == [(str(tmp_path / "d.csv"), 2), (str(tmp_path / "d.csv"), 4)]


def test_csv_integer_labels_and_gzip_and_splits(tmp_path):
    write(tmp_path / "tr.csv.gz", "x,y\n1,0\n2,1\n")
    write(tmp_path / "te.csv", "x,y\n3,1\n")
    raw = read_source("csv", [], {"train": "tr.csv.gz", "test": "te.csv"},
                      [F("x", "vector"), F("y", "class", role="target")], tmp_path)
    assert list(raw.splits) == ["train", "test"]
    assert raw.splits["train"]["y"] == [0, 1] and raw.splits["test"]["x"] == [3.0]


def test_tsv_reads_tabs(tmp_path):
    write(tmp_path / "d.tsv", "text\ttags\nthe dog\tDET NOUN\n")
    fields = [F("text", "tokens"), F("tags", "classes", role="target")]
    raw = read_source("tsv", ["d.tsv"], {}, fields, tmp_path)
    assert raw.splits["all"] == {"text": ["the dog"], "tags": [["DET", "NOUN"]]}


def test_csv_bad_number_names_file_line_and_column(tmp_path):
    write(tmp_path / "d.csv", "x1,x2\n1,2\n3,abc\n")
    e = error("csv", ["d.csv"], {}, [F("x", "vector", size=2)], tmp_path)
    assert (e.file, e.line) == (str(tmp_path / "d.csv"), 3)
    assert "column 'x2': expected a number, got 'abc'" in e.message
    assert str(e).startswith(f"{tmp_path / 'd.csv'}:3: error:")


def test_csv_wrong_column_count(tmp_path):
    write(tmp_path / "d.csv", "x,y\n1,0\n2\n")
    e = error("csv", ["d.csv"], {}, [F("x", "vector"), F("y", "class")], tmp_path)
    assert e.line == 3 and "expected 2 columns" in e.message and "found 1" in e.message


def test_csv_missing_column_names_the_header_line(tmp_path):
    write(tmp_path / "e.csv", "\nfoo,bar\n1,2\n")
    e = error("csv", ["e.csv"], {}, [F("x", "vector", size=3)], tmp_path)
    assert e.line == 2
    assert "no column for field 'x' (vector[3] input)" in e.message
    assert "x1..x3 or x.1..x.3 or x[0]..x[2]" in e.message and "the header has foo, bar" in e.message


def test_csv_empty_file_and_header_only(tmp_path):
    write(tmp_path / "empty.csv", "")
    write(tmp_path / "head.csv", "x\n")
    assert "empty file" in error("csv", ["empty.csv"], {}, [F("x", "vector")], tmp_path).message
    e = error("csv", ["head.csv"], {}, [F("x", "vector")], tmp_path)
    assert e.line == 1 and "no data rows" in e.message


def test_csv_mapping_must_match_size(tmp_path):
    write(tmp_path / "d.csv", "a,b\n1,2\n")
    e = error("csv", ["d.csv"], {"x": ["a"]}, [F("x", "vector", size=2)], tmp_path)
    assert "maps 1 columns" in e.message and e.line is None


# ---------------------------------------------------------------- npz

def test_npz_arrays_by_name_and_mapping(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.arange(12.0).reshape(3, 4), y=np.array([0, 2, 1]))
    raw = read_source("npz", ["d.npz"], {"x": "images"},
                      [F("x", "vector", size=4), F("y", "class", role="target")], tmp_path)
    assert raw.size("all") == 3 and raw.splits["all"]["y"] == [0, 2, 1]
    assert np.array_equal(raw.splits["all"]["x"][2], [8, 9, 10, 11])


def test_npz_missing_array_lists_contents(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.zeros(2), b=np.zeros(2))
    e = error("npz", ["d.npz"], {}, [F("x", "vector")], tmp_path)
    assert e.file == str(tmp_path / "d.npz")
    assert "no array 'x'" in e.message and "the file has a, b" in e.message


def test_npz_refuses_pickled_and_corrupt_files(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([[1], [1, 2]], dtype=object))
    assert "without pickle" in error("npz", ["obj.npz"], {}, [F("x", "vector")], tmp_path).message
    write(tmp_path / "bad.npz", b"not a zip")
    assert "not a valid .npz" in error("npz", ["bad.npz"], {}, [F("x", "vector")], tmp_path).message


# ---------------------------------------------------------------- lines

LINES_FIELDS = [F("text", "tokens"), F("y", "class", role="target")]


def test_lines_labels_each_line_and_skips_blank_lines(tmp_path):
    write(tmp_path / "pos.txt", "good film\n\ngreat\n")
    write(tmp_path / "neg.txt.gz", "bad\r\n")
    raw = read_source("lines", [("pos.txt", 1), ("neg.txt.gz", 0)], {}, LINES_FIELDS, tmp_path)
    assert raw.splits["all"] == {"text": ["good film", "great", "bad"], "y": [1, 1, 0]}
    assert [line for _, line in raw.origins["all"]] == [1, 3, 1]


def test_lines_wrong_encoding_names_line_and_suggests_latin1(tmp_path):
    write(tmp_path / "a.txt", "fine\nalso fine\nna\xefve\n".encode("latin-1"))
    e = error("lines", [("a.txt", 1)], {}, LINES_FIELDS, tmp_path)
    assert (e.file, e.line) == (str(tmp_path / "a.txt"), 3)
    assert "0xef" in e.message and 'encoding = "latin-1"' in e.message
    raw = read_source("lines", [("a.txt", 1)], {"encoding": "latin-1"}, LINES_FIELDS, tmp_path)
    assert raw.splits["all"]["text"][2] == "na\xefve"


def test_lines_empty_file(tmp_path):
    write(tmp_path / "a.txt", "x\n")
    write(tmp_path / "b.txt", "\n  \n")
    e = error("lines", [("a.txt", 1), ("b.txt", 0)], {}, LINES_FIELDS, tmp_path)
    assert e.file == str(tmp_path / "b.txt") and "empty file" in e.message


def test_lines_needs_text_and_label_fields(tmp_path):
    write(tmp_path / "a.txt", "x\n")
    e = error("lines", [("a.txt", 1)], {}, [F("text", "tokens")], tmp_path)
    assert "class label" in e.message and e.file == "data lines(...)"
    e = error("lines", [("a.txt", 1)], {}, LINES_FIELDS + [F("v", "vector")], tmp_path)
    assert "no data for field 'v'" in e.message


# ---------------------------------------------------------------- conllu

CONLLU = """\
# sent_id = 1
# text = I can't go.
1	I	I	PRON	PRP	_	3	nsubj	_	_
2-3	can't	_	_	_	_	_	_	_	_
2	ca	can	AUX	MD	_	3	aux	_	_
3	n't	not	PART	RB	_	4	advmod	_	_
4	go	go	VERB	VB	_	0	root	_	_
4.1	went	go	VERB	VBD	_	_	_	0:root	_
5	.	.	PUNCT	.	_	4	punct	_	_

1	Yes	yes	INTJ	UH	_	0	root	_	_
"""
CONLLU_FIELDS = [F("words", "tokens"), F("tags", "classes", role="target")]


def conllu_lines(*replacements):
    lines = CONLLU.splitlines()
    for number, text in replacements:
        lines[number - 1] = text
    return "\n".join(line for line in lines if line is not None) + "\n"


def test_conllu_reads_words_and_tags(tmp_path):
    write(tmp_path / "tr.conllu", CONLLU)
    write(tmp_path / "te.conllu.gz", CONLLU)
    raw = read_source("conllu", [], {"train": "tr.conllu", "test": "te.conllu.gz"}, CONLLU_FIELDS, tmp_path)
    assert list(raw.splits) == ["train", "test"]
    assert raw.splits["train"]["words"] == [["I", "ca", "n't", "go", "."], ["Yes"]]
    assert raw.splits["train"]["tags"] == [["PRON", "AUX", "PART", "VERB", "PUNCT"], ["INTJ"]]
    assert raw.origins["train"] == [(str(tmp_path / "tr.conllu"), 3), (str(tmp_path / "tr.conllu"), 11)]


def test_conllu_other_column(tmp_path):
    write(tmp_path / "d.conllu", CONLLU)
    raw = read_source("conllu", [], {"dev": "d.conllu", "column": "xpos"}, CONLLU_FIELDS, tmp_path)
    assert raw.splits["dev"]["tags"][1] == ["UH"]
    assert "not a CoNLL-U column" in error("conllu", [], {"dev": "d.conllu", "column": "pos"},
                                           CONLLU_FIELDS, tmp_path).message


@pytest.mark.parametrize("line, text, expected", [
    (5, "2\tca\tcan\tAUX\tMD\t_\t3\taux\t_", "expected 10 tab-separated columns"),
    (5, "2 ca can AUX MD _ 3 aux _ _", "expected 10 tab-separated columns"),
    (6, "x\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_", "ID 'x' is not an integer"),
    (7, "5\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_", "word ID 5 out of sequence: expected 4"),
    (10, None, "word ID 1 out of sequence: expected 6 (a blank line must end each sentence)"),
])
def test_conllu_corrupt_line_names_file_and_line(tmp_path, line, text, expected):
    write(tmp_path / "d.conllu", conllu_lines((line, text)))
    e = error("conllu", [], {"train": "d.conllu"}, CONLLU_FIELDS, tmp_path)
    assert e.file == str(tmp_path / "d.conllu") and expected in e.message
    assert e.line == line


def test_conllu_empty_file_and_missing_paths(tmp_path):
    write(tmp_path / "e.conllu", "# only a comment\n\n")
    e = error("conllu", [], {"train": "e.conllu"}, CONLLU_FIELDS, tmp_path)
    assert e.file == str(tmp_path / "e.conllu") and "empty file" in e.message
    assert "train/dev/test" in error("conllu", [], {}, CONLLU_FIELDS, tmp_path).message


# ---------------------------------------------------------------- conllu_words

WORD_FIELDS = [F("form", "tokens", level="char", axis="src"), F("upos", "bag"),
               F("lemma", "tokens", level="char", axis="out")]


def test_conllu_words_reads_one_example_per_syntactic_word(tmp_path):
    write(tmp_path / "d.conllu.gz", CONLLU + CONLLU)
    raw = read_source("conllu_words", [], {"test": "d.conllu.gz"}, WORD_FIELDS, tmp_path)
    test = raw.splits["test"]
    assert test["form"][:6] == ["I", "ca", "n't", "go", ".", "Yes"]     # no 2-3 can't, no 4.1 went
    assert test["lemma"][:6] == ["I", "can", "not", "go", ".", "yes"]
    assert test["upos"][:2] == ["PRON", "AUX"]
    assert len(test["form"]) == 12
    assert raw.origins["test"][:2] == [(str(tmp_path / "d.conllu.gz"), 3), (str(tmp_path / "d.conllu.gz"), 5)]


def test_conllu_words_types_keep_each_distinct_training_word_once_at_its_first_line(tmp_path):
    write(tmp_path / "d.conllu", CONLLU + CONLLU)
    raw = read_source("conllu_words", [], {"train": "d.conllu", "test": "d.conllu", "types": "train"},
                      WORD_FIELDS, tmp_path)
    assert raw.splits["train"]["form"] == ["I", "ca", "n't", "go", ".", "Yes"]
    assert raw.origins["train"][-1] == (str(tmp_path / "d.conllu"), 11)
    assert len(raw.splits["test"]["form"]) == 12                      # every word is scored


def test_conllu_words_log_repeats_weigh_frequent_words_less_than_their_counts(tmp_path):
    write(tmp_path / "d.conllu", CONLLU * 4)             # every word 4 times: 1 + floor(log2 4) = 3 copies
    raw = read_source("conllu_words", [], {"train": "d.conllu", "types": "train", "repeat": "log"},
                      WORD_FIELDS, tmp_path)
    assert raw.splits["train"]["form"] == [w for w in ["I", "ca", "n't", "go", ".", "Yes"] for _ in range(3)]
    assert len(raw.origins["train"]) == 18
    assert 'repeat = "log" (with types = "train")' in error(
        "conllu_words", [], {"train": "d.conllu", "repeat": "log"}, WORD_FIELDS, tmp_path).message


def test_conllu_words_max_chars_leaves_out_longer_words(tmp_path):
    write(tmp_path / "d.conllu", CONLLU)
    raw = read_source("conllu_words", [], {"test": "d.conllu", "max_chars": 2}, WORD_FIELDS, tmp_path)
    assert raw.splits["test"]["form"] == ["I", "go", "."]     # ca/can, n't/not and Yes/yes are longer (not PRON)
    assert "max_chars = N leaves out" in error("conllu_words", [], {"test": "d.conllu", "max_chars": 0},
                                               WORD_FIELDS, tmp_path).message


def test_conllu_words_maps_fields_to_columns(tmp_path):
    write(tmp_path / "d.conllu", CONLLU)
    fields = [F("w", "tokens", level="char", axis="src"), F("y", "class", role="target")]
    raw = read_source("conllu_words", [], {"train": "d.conllu", "w": "form", "y": "xpos"}, fields, tmp_path)
    assert raw.splits["train"]["y"][:2] == ["PRP", "MD"]


@pytest.mark.parametrize("kwargs, fields, message", [
    ({"types": "all"}, WORD_FIELDS, 'types = "train" is the only choice'),
    ({"x": "forms"}, [F("x", "tokens", level="char")], "x = 'forms' is not a CoNLL-U column"),
    ({}, [F("chars", "tokens", level="char")], "field 'chars' is not named after a CoNLL-U column"),
    ({}, [F("form", "tokens")], "a word's column is read as characters"),
    ({"bogus": 1}, WORD_FIELDS, "unknown argument bogus"),
])
def test_conllu_words_argument_errors(tmp_path, kwargs, fields, message):
    write(tmp_path / "d.conllu", CONLLU)
    assert message in error("conllu_words", [], {"train": "d.conllu", **kwargs}, fields, tmp_path).message


@pytest.mark.parametrize("line, text, expected", [
    (5, "2\tca\tcan\tAUX\tMD\t_\t3\taux\t_", "expected 10 tab-separated columns"),
    (6, "x\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_", "ID 'x' is not an integer"),
    (6, "3\tn't\t\tPART\tRB\t_\t4\tadvmod\t_\t_", "column LEMMA is empty"),
    (6, "3\t" + "n" * 1001 + "\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_", "FORM holds 1001 characters, more than 1000"),
])
def test_conllu_words_corrupt_line_names_file_and_line(tmp_path, line, text, expected):
    write(tmp_path / "d.conllu", conllu_lines((line, text)))
    e = error("conllu_words", [], {"train": "d.conllu"}, WORD_FIELDS, tmp_path)
    assert e.file == str(tmp_path / "d.conllu") and expected in e.message and e.line == line


def test_conllu_words_empty_file(tmp_path):
    write(tmp_path / "e.conllu", "# only a comment\n\n")
    assert "empty file: no words" in error("conllu_words", [], {"train": "e.conllu"}, WORD_FIELDS, tmp_path).message


# ---------------------------------------------------------------- text

def test_text_char_stream_split(tmp_path):
    write(tmp_path / "t.txt", "abcdefgh\nj")
    field = F("chars", "tokens", level="char")
    raw = read_source("text", ["t.txt"], {"split": [0.9, 0.1]}, [field], tmp_path)
    assert raw.stream and list(raw.splits) == ["train", "dev"]
    assert raw.splits["train"]["chars"] == [list("abcdefgh\n")]
    assert raw.splits["dev"]["chars"] == [["j"]]
    assert raw.origins["dev"] == [(str(tmp_path / "t.txt"), 2)]


def test_text_word_stream_three_parts(tmp_path):
    write(tmp_path / "t.txt", "a b\nc d e\nf\ng h i j\nk\n")
    raw = read_source("text", ["t.txt"], {"level": "word", "split": [0.5, 0.25, 0.25]},
                      [F("w", "tokens")], tmp_path)
    parts = [raw.splits[s]["w"][0] for s in ("train", "dev", "test")]
    assert sum(parts, []) == "a b <eos> c d e <eos> f <eos> g h i j <eos> k <eos>".split()
    assert [len(p) for p in parts] == [8, 4, 4]
    assert [raw.origins[s][0][1] for s in ("train", "dev", "test")] == [1, 3, 4]


def test_text_errors(tmp_path):
    write(tmp_path / "empty.txt", "")
    assert "empty file" in error("text", ["empty.txt"], {}, [F("w", "tokens")], tmp_path).message
    write(tmp_path / "t.txt", "abc")
    e = error("text", ["t.txt"], {"split": [0.5, 0.6]}, [F("w", "tokens")], tmp_path)
    assert "summing to 1" in e.message
    e = error("text", ["t.txt"], {"level": "char", "split": [0.9, 0.1]}, [F("w", "tokens")], tmp_path)
    assert "too few" in e.message
