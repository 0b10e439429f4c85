"""Mistakes through the real command line: a clear message on stderr, exit status 1, no traceback.

A few tests start ``python -m nnspec.cli`` as a separate process, so that what a
user's terminal would show is checked end to end (including that no Python
traceback escapes); the rest call ``nnspec.cli.main`` in-process, which is faster.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nnspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
CHAIN_RULE = ROOT / "specs" / "chain_rule.nn"

TWO_MISTAKES = """network two_mistakes
input x[2]
output y
y = tanh(W @ x + c)
z = relu(q)
y = sigmoid(x)
"""

XOR_WITHOUT_ITS_FILE = """input x[2]
target y[1]
output p
p = sigmoid(W @ x + b)
loss bce(p, y)
train { epochs 1 }
data csv("nothere.csv")
"""


def nnspec_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnspec.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def write(tmp_path: Path, text: str, name: str = "spec.nn") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run_main(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- a spec with mistakes --------------------------------------------------------------------

def test_bad_spec_prints_every_diagnostic_to_stderr_and_exits_1(tmp_path):
    spec = write(tmp_path, TWO_MISTAKES)
    result = nnspec_cli("check", spec)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[:3] == [
        f"{spec}:5:10: error: undefined name 'q'",
        "    z = relu(q)",
        "             ^",
    ]
    assert f"{spec}:6:1: error: 'y' is defined twice" in result.stderr
    assert f"{spec}:4:1: note: first defined here" in result.stderr


def test_bad_spec_with_json_gives_every_error_with_its_position(tmp_path):
    spec = write(tmp_path, TWO_MISTAKES)
    result = nnspec_cli("check", spec, "--json")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [(e["line"], e["column"], e["message"]) for e in report["errors"]] == [
        (5, 10, "undefined name 'q'"),
        (6, 1, "'y' is defined twice"),
    ]
    assert all(e["file"] == str(spec) for e in report["errors"])


@pytest.mark.parametrize("command", [["check"], ["expand"], ["run", "--no-save"], ["graph"],
                                     ["grad", "--at", "x=[1, 2]"]])
def test_every_command_reports_a_bad_spec_the_same_way(tmp_path, capsys, command):
    spec = write(tmp_path, "input x[2]\noutput y\ny = tahn(x)\n")
    code, out, err = run_main(capsys, command[0], spec, *command[1:])
    assert code == 1
    assert err.startswith(f"{spec}:3:5: error: unknown function 'tahn'; did you mean 'tanh'?\n")
    assert "Traceback" not in err


def test_syntax_errors_through_the_cli(tmp_path, capsys):
    spec = write(tmp_path, "input x[2]\noutput y\ny = x +\nz = sigmoid(y\n")
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert f"{spec}:3:8: error: unexpected end of line" in err
    assert f"{spec}:4:12: error: unclosed '(': no ')' before the end of the file" in err


# ---- files that are not there ------------------------------------------------------------------

def test_missing_spec_file():
    result = nnspec_cli("check", "no/such/spec.nn")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: no such spec file: no/such/spec.nn"
    assert "Traceback" not in result.stderr


def test_missing_spec_file_with_json(capsys):
    code, out, _ = run_main(capsys, "check", "no/such/spec.nn", "--json")
    assert code == 1
    assert json.loads(out) == {"ok": False, "errors": [{"message": "no such spec file: no/such/spec.nn"}]}


def test_a_directory_is_not_a_spec(tmp_path, capsys):
    code, _, err = run_main(capsys, "check", tmp_path)
    assert code == 1
    assert err.strip() == (f"error: cannot read spec file {tmp_path}: not a regular file (a directory); "
                           f"nnspec reads only regular files")


def test_a_binary_file_is_not_a_spec(tmp_path, capsys):
    spec = tmp_path / "spec.nn"
    spec.write_bytes(b"\x1f\x8b\x08\x00binary")
    code, _, err = run_main(capsys, "check", spec)
    assert code == 1
    assert err.startswith(f"error: {spec}: not UTF-8 text")


def test_missing_data_file_names_the_file(tmp_path):
    spec = write(tmp_path, XOR_WITHOUT_ITS_FILE)
    result = nnspec_cli("run", spec, "--no-save")
    assert result.returncode == 1
    assert result.stderr.strip() == f"{tmp_path / 'nothere.csv'}: error: no such file"
    assert "Traceback" not in result.stderr


def test_missing_data_file_with_json(tmp_path, capsys):
    spec = write(tmp_path, XOR_WITHOUT_ITS_FILE)
    code, out, _ = run_main(capsys, "run", spec, "--no-save", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert "nothere.csv" in report["errors"][0]["message"]


def test_check_without_data_does_not_need_the_file(tmp_path, capsys):
    spec = write(tmp_path, XOR_WITHOUT_ITS_FILE)
    code, out, err = run_main(capsys, "check", spec, "--no-data")
    assert code == 0, err


def test_unknown_training_setting_through_set(capsys):
    code, _, err = run_main(capsys, "run", ROOT / "specs" / "xor_train.nn", "--no-save", "--set", "epochz=3")
    assert code == 1
    assert err.startswith("<--set 1>:1:9: error: unknown training setting 'epochz'; did you mean 'epochs'?")
    assert "Traceback" not in err


# ---- grad and its --at values ----------------------------------------------------------------

def test_grad_with_a_missing_at_value(capsys):
    code, out, err = run_main(capsys, "grad", CHAIN_RULE, "--at", "a=3", "b=1")
    assert code == 1
    assert err.strip() == "error: --at needs a value for c"


def test_grad_with_an_unknown_name(capsys):
    code, _, err = run_main(capsys, "grad", CHAIN_RULE, "--at", "a=3", "b=1", "c=-2", "d=1")
    assert code == 1
    assert err.strip() == "error: --at d: no input or target of that name"


def test_grad_with_a_misspelt_name_suggests_the_right_one(tmp_path, capsys):
    spec = write(tmp_path, "input alpha\ninput beta\noutput y\ny = alpha * beta\n")
    code, _, err = run_main(capsys, "grad", spec, "--at", "alpha=1", "betta=2")
    assert code == 1
    assert err.strip() == "error: --at betta: no input or target of that name; did you mean 'beta'?"


@pytest.mark.parametrize("at, message", [
    ("a", "error: --at takes name=value pairs, got 'a'"),
    ("a=", "error: --at a: '' is not a number or a [list]"),
    ("a=three", "error: --at a: 'three' is not a number or a [list]"),
])
def test_grad_with_a_malformed_at_value(capsys, at, message):
    code, _, err = run_main(capsys, "grad", CHAIN_RULE, "--at", at, "b=1", "c=2")
    assert code == 1
    assert err.strip() == message


def test_grad_without_at_is_a_usage_error():
    result = nnspec_cli("grad", CHAIN_RULE)
    assert result.returncode == 2
    assert "the following arguments are required: --at" in result.stderr
    assert "Traceback" not in result.stderr


def test_grad_failure_through_a_real_process_has_no_traceback():
    result = nnspec_cli("grad", CHAIN_RULE, "--at", "a=3", "b=1")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --at needs a value for c"
    assert "Traceback" not in result.stderr


# ---- bad --at and --of values: a plain "error: ...", never a traceback ---------------------------

def test_grad_of_an_unknown_value(capsys):
    code, _, err = run_main(capsys, "grad", CHAIN_RULE, "--at", "a=3", "b=1", "c=-2", "--of", "Q")
    assert code == 1 and err.startswith("error: ")


def test_grad_with_a_ragged_at_value(capsys):
    code, _, err = run_main(capsys, "grad", CHAIN_RULE, "--at", "a=[[1], [2, 3]]", "b=1", "c=2")
    assert code == 1 and err.startswith("error: --at a")


def test_grad_with_an_object_as_at_value(capsys):
    code, _, err = run_main(capsys, "grad", CHAIN_RULE, "--at", "a={}", "b=1", "c=2")
    assert code == 1 and err.startswith("error: --at a")
