"""How nnspec reports mistakes: one test per kind of mistake a user makes.

Every error is rendered as

    t.nn:LINE:COL: error: MESSAGE
        the offending source line
        ^~~~ under the offending part

and these tests are its specification: the position, the line shown, what the
caret underlines, and a message that says what is wrong and, where it can, how
to fix it (did you mean ...?). Errors that need a spec's data or training
settings are reported by ``open_session``; the rest by ``compile_text``.

The compiler collects every mistake of a stage (parsing, cells, the graph, loop
analysis, sizes) before it stops, so one run shows all the mistakes of that
stage; a later stage runs only when the earlier ones found nothing wrong.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import nnspec
from nnspec.data import DataError

# ---- helpers ---------------------------------------------------------------------------


def errors_of(text: str) -> str:
    """The rendered diagnostics of a spec that must not compile."""
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.compile_text(text, file="t.nn")
    rendered = info.value.diagnostics.render()
    assert "Traceback" not in rendered
    return rendered


def session_errors_of(tmp_path: Path, text: str) -> str:
    """The rendered diagnostics of a spec file that must not open (its data and settings are read)."""
    path = tmp_path / "t.nn"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.open_session(path)
    return info.value.diagnostics.render()


@dataclass
class Shown:
    """One rendered diagnostic: its message, the source line shown and what the caret underlines."""
    message: str
    source: str
    underlined: str


def at(rendered: str, line: int, column: int, severity: str = "error", file: str = "t.nn") -> Shown:
    """The diagnostic reported at ``file:line:column``; fails, showing everything, if there is none."""
    lines = rendered.splitlines()
    head = f"{file}:{line}:{column}: {severity}: "
    for i, text in enumerate(lines):
        if text.startswith(head):
            source, caret = lines[i + 1], lines[i + 2]
            assert source.startswith("    ") and caret.startswith("    "), rendered
            start = caret.index("^")
            assert set(caret[start:]) <= {"^", "~"} and caret.count("^") == 1, caret
            return Shown(text[len(head):], source[4:], source[start:len(caret)])
    raise AssertionError(f"no {severity} at {file}:{line}:{column} in:\n{rendered}")


def error_count(rendered: str) -> int:
    return len(re.findall(r"^\S+:\d+:\d+: error: ", rendered, flags=re.M))


# ---- syntax -------------------------------------------------------------------------------

def test_unexpected_token_says_what_was_expected():
    rendered = errors_of("input x[2]\noutput y\ny = x x\n")
    shown = at(rendered, 3, 7)
    assert shown.message.startswith("unexpected 'x'; expected ")
    assert "'+'" in shown.message and "'*'" in shown.message
    assert shown.source == "y = x x"
    assert shown.underlined == "x"


def test_a_line_ending_too_early_points_after_its_last_token():
    shown = at(errors_of("input x[2]\noutput y\ny = x +\n"), 3, 8)
    assert shown.message == "unexpected end of line; expected '(', '-', '[', a name, a number, a string"
    assert shown.source == "y = x +"


def test_unclosed_bracket_is_reported_where_it_opens():
    rendered = errors_of("input x[2]\noutput y\ny = sigmoid(W @ x\n")
    shown = at(rendered, 3, 12)
    assert shown.message == "unclosed '(': no ')' before the end of the file"
    assert shown.underlined == "("
    assert error_count(rendered) == 1


def test_unclosed_bracket_before_the_next_statement():
    # Newlines inside brackets do not end a statement, so the next line is swallowed: the parser
    # gives up at 'param', but the mistake is the '(' of line 3, and line 4 is not blamed.
    rendered = errors_of("input x[2]\noutput y\ny = tanh(W @ x\nparam W[2, 2]\n")
    shown = at(rendered, 3, 9)
    assert shown.message == "unclosed '(': no ')' before 'param' on line 4"
    assert shown.underlined == "("
    assert error_count(rendered) == 1


def test_bad_character():
    shown = at(errors_of("input x[2]\noutput y\ny = x $ 2\n"), 3, 7)
    assert shown.message == "unexpected character '$'"
    assert shown.underlined == "$"


def test_unclosed_string():
    shown = at(errors_of('input x[2]\noutput y\ny = x\ndata csv("xor.csv)\n'), 4, 10)
    assert shown.message == "unclosed string: a string ends with '\"' on the same line"
    assert shown.underlined == '"'


def test_a_byte_order_mark_is_not_a_mistake():
    # some editors start a UTF-8 file with an invisible U+FEFF; columns count from after it
    shown = at(errors_of("\ufeffinput x[2]\noutput y\ny = tahn(x)\n"), 3, 5)
    assert shown.message == "unknown function 'tahn'; did you mean 'tanh'?"


def test_several_syntax_errors_are_reported_in_one_run():
    rendered = errors_of("network many\n"
                         "input x[2]\n"
                         "output y\n"
                         "y = x +\n"           # 4: ends too early
                         "z = x $ 1\n"         # 5: bad character
                         "param W[2 2]\n"      # 6: missing comma
                         "h = sigmoid(y\n")    # 7: unclosed bracket
    assert error_count(rendered) == 4
    assert at(rendered, 4, 8).message.startswith("unexpected end of line")
    assert at(rendered, 5, 7).message == "unexpected character '$'"
    assert at(rendered, 6, 11).message.startswith("unexpected '2'; expected ")
    assert at(rendered, 7, 12).message == "unclosed '(': no ')' before the end of the file"


def test_zero_delay_is_a_mistake():
    shown = at(errors_of("input x[2] : seq\noutput y\ny = tanh(x[t-0])\n"), 3, 10)
    assert shown.message == "x[t-0] is just x: a delay must be at least 1"
    assert shown.underlined == "x[t-0]"


def test_absurdly_deep_nesting_is_an_error_not_a_crash():
    text = "input x[2]\noutput y\ny = x" + " + x" * 500 + "\n"
    shown = at(errors_of(text), 3, 1)
    assert "nests more than" in shown.message and "split it into several equations" in shown.message


# ---- names --------------------------------------------------------------------------------

def test_undefined_name_with_did_you_mean():
    rendered = errors_of("input hidden[2]\noutput y\ny = tanh(hiden)\n")
    shown = at(rendered, 3, 10)
    assert shown.message == "undefined name 'hiden'; did you mean 'hidden'?"
    assert shown.underlined == "hiden"
    assert "never defined" not in rendered  # y's equation failed; that is not a second mistake


def test_undefined_name_where_a_parameter_cannot_be_is_not_made_a_parameter():
    # W left of @ is a weight, b beside a value a bias; 'hidden' right of @ is neither: a typo
    shown = at(errors_of("input x[4]\noutput y\ny[2] = W @ x + V @ hidden\n"), 3, 20)
    assert shown.message == "undefined name 'hidden'"
    assert shown.underlined == "hidden"


def test_a_bias_beside_a_failed_operand_is_not_blamed_too():
    rendered = errors_of("input x[2]\noutput y\ny = W @ q + b\n")
    assert at(rendered, 3, 9).message == "undefined name 'q'"
    assert error_count(rendered) == 1


def test_unknown_function_with_did_you_mean():
    shown = at(errors_of("input x[4]\noutput h\nh[2] = tahn(W @ x + c)\n"), 3, 8)
    assert shown.message == "unknown function 'tahn'; did you mean 'tanh'?"
    assert shown.source == "h[2] = tahn(W @ x + c)"
    assert shown.underlined == "tahn(W @ x + c)"


def test_duplicate_definition_notes_the_first():
    rendered = errors_of("input x[2]\noutput y\ny = tanh(x)\ny = relu(x)\n")
    shown = at(rendered, 4, 1)
    assert shown.message == "'y' is defined twice"
    assert shown.underlined == "y = relu(x)"
    note = at(rendered, 3, 1, severity="note")
    assert note.message == "first defined here"
    assert note.underlined == "y = tanh(x)"


def test_parameter_declared_twice_notes_the_first():
    rendered = errors_of("input x[2]\noutput y\ny = W @ x\nparam W[2, 2]\nparam W[3, 2]\n")
    assert at(rendered, 5, 1).message == "parameter 'W' is declared twice"
    assert at(rendered, 4, 1, severity="note").message == "first declared here"


# ---- unused values ---------------------------------------------------------------------

def test_unused_value():
    shown = at(errors_of("input x[2]\noutput y\ny = tanh(x)\nz = relu(x)\n"), 4, 1)
    assert shown.message == "'z' is computed but never used: it reaches no output and no loss"
    assert shown.underlined == "z = relu(x)"


def test_an_unused_library_cell_is_one_error_at_its_call():
    """Not an error inside the standard library's cell for each of its values and parameters (found
    by the differential tester: an encoder whose states nothing read)."""
    rendered = errors_of("input x[2] : seq\noutput y\nenc = rnn(x, H = 2)\ny = tanh(x)\n")
    shown = at(rendered, 3, 7)
    assert shown.message == "'enc' is computed but never used: it reaches no output and no loss"
    assert shown.underlined == "rnn(x, H = 2)"
    assert "<stdlib>" not in rendered and rendered.count("error:") == 1, rendered
    for call in ("bidirectional(lstm)(x, H = 2)", "stacked(gru, 2)(x, H = 2)"):
        rendered = errors_of(f"input x[2] : seq\noutput y\nenc = {call}\ny = tanh(x)\n")
        assert at(rendered, 3, 7).message.startswith("'enc' is computed but never used")
        assert "<stdlib>" not in rendered and rendered.count("error:") == 1, rendered


def test_unused_input():
    shown = at(errors_of("input x[2]\ninput u[3]\noutput y\ny = tanh(x)\n"), 2, 1)
    assert shown.message == "input 'u' is never used"
    assert shown.underlined == "input u[3]"


def test_unused_param():
    rendered = errors_of("input x[2]\noutput y\ny = tanh(x)\nparam W init zeros\n")
    shown = at(rendered, 4, 1)
    assert shown.message == "parameter 'W' is never used"
    assert shown.underlined == "param W init zeros"
    assert error_count(rendered) == 1  # not also "cannot infer the size of 'W'"


def test_unused_target_suggests_a_loss():
    shown = at(errors_of("input x[2]\ntarget t[2]\noutput y\ny = tanh(x)\n"), 2, 1)
    assert shown.message == ("target 't' is never used; compare it with a prediction in a loss, "
                             "e.g. 'loss cross_entropy(p, t)'")
    assert shown.underlined == "target t[2]"


# ---- sizes ----------------------------------------------------------------------------------

def test_matmul_shape_mismatch_shows_both_shapes():
    rendered = errors_of("input x[5]\noutput y\ny = W @ x\nparam W[3, 4]\n")
    shown = at(rendered, 3, 1)
    assert "(3, 4)" in shown.message and "(5,)" in shown.message
    assert shown.underlined == "y = W @ x"
    assert at(rendered, 4, 1, severity="note").message == "'W' has size [3, 4]"
    assert at(rendered, 1, 1, severity="note").message == "'x' has size [5]"


def test_declared_size_differs_from_computed_size():
    rendered = errors_of("input x[4]\noutput h\nh[3] = tanh(W @ x)\nparam W[4, 4]\n")
    shown = at(rendered, 3, 1)
    assert shown.message == "'h' is declared with size [3] but its value has size [4]"
    # the note names the sub-expression by its text, never by an internal id such as 'h#1'
    note = at(rendered, 3, 13, severity="note")
    assert note.message == "'W @ x' has size [4]"
    assert note.underlined == "W @ x"


def test_ragged_param_literal():
    shown = at(errors_of("input x[2]\noutput y\ny = W @ x\nparam W = [[1, 2], [3]]\n"), 4, 11)
    assert shown.message == "the rows of this literal have different lengths; a literal must be rectangular"
    assert shown.underlined == "[[1, 2], [3]]"


def test_param_literal_against_its_declared_size():
    shown = at(errors_of("input x[2]\noutput y\ny = W @ x\nparam W[2, 2] = [[1, 2, 3]]\n"), 4, 1)
    assert shown.message == "param 'W' is declared with size [2, 2] but its value has shape [1, 3]"


def test_a_size_must_be_positive():
    shown = at(errors_of("input x[0]\noutput y\ny = tanh(x)\n"), 1, 9)
    assert shown.message == "a size must be a whole number from 1 to 2147483647, not 0"
    assert shown.underlined == "0"


def test_unknown_size_name_suggests_a_let():
    shown = at(errors_of("let hidden = 4\ninput x[2]\noutput y\ny[hiden] = tanh(W @ x)\n"), 4, 3)
    assert shown.message == "unknown size 'hiden'; define it with 'let hiden = ...'; did you mean 'hidden'?"


# ---- cells -----------------------------------------------------------------------------------

def test_unknown_cell_with_did_you_mean():
    shown = at(errors_of("input x[3] : seq\noutput h\nh = lsmt(x, H = 4)\n"), 3, 5)
    assert shown.message == "unknown function 'lsmt'; did you mean 'lstm'?"
    assert shown.underlined == "lsmt(x, H = 4)"


def test_cell_called_with_the_wrong_number_of_arguments():
    rendered = errors_of("input x[3] : seq\noutput h\nh = lstm(x, x, H = 4)\n")
    shown = at(rendered, 3, 5)
    assert shown.message == "cell 'lstm' takes 1 input(s) (x), got 2"
    assert shown.underlined == "lstm(x, x, H = 4)"
    note = at(rendered, 4, 1, severity="note", file="<stdlib>/lstm.nn")
    assert note.message == "'lstm' is defined here"
    assert note.source.startswith("cell lstm(x) -> h[H]")


def test_unknown_size_keyword_lists_the_cells_sizes():
    shown = at(errors_of("input x[3] : seq\noutput h\nh = gru(x, N = 8)\n"), 3, 12)
    assert shown.message == "cell 'gru' has no size 'N'; its sizes are H"
    assert shown.underlined == "N = 8"


def test_size_keyword_that_a_top_level_let_already_fixes():
    rendered = errors_of("let H = 4\ninput x[3] : seq\noutput y\ny = last(lstm(x, H = 8))\n")
    shown = at(rendered, 4, 18)
    assert shown.message == "cell 'lstm' has no size 'H': the top-level 'let H' sets it in every cell"
    assert shown.underlined == "H = 8"


def test_a_mistake_in_both_directions_of_a_wrapper_is_reported_once():
    rendered = errors_of("input x[3] : seq\noutput y\ny = last(bidirectional(gru)(x, N = 8))\n")
    assert at(rendered, 3, 32).message == "cell 'gru' has no size 'N'; its sizes are H"
    assert error_count(rendered) == 1


def test_user_cell_that_never_defines_its_output():
    rendered = errors_of("cell half(x) -> y {\n  z = x / 2\n}\ninput x[2]\noutput y\ny = half(x)\n")
    assert at(rendered, 1, 1).message == "cell 'half' never defines its output 'y'"


def test_a_wrapper_takes_a_cell_not_a_function():
    shown = at(errors_of("input x[3] : seq\noutput y\ny = last(reverse(tanh)(x))\n"), 3, 10)
    assert shown.message == "reverse(...) wraps a cell, but 'tanh' is a function; write a cell that uses it"


def test_a_size_given_twice():
    shown = at(errors_of("input x[3] : seq\noutput y\ny = last(lstm(x, H = 2, H = 3))\n"), 3, 25)
    assert shown.message == "size 'H' is given twice"
    assert shown.underlined == "H = 3"


def test_a_cell_passes_size_arithmetic_on_to_the_cells_it_uses():
    spec = ("cell wide(x) -> y[2 * K] {\n  y = dense(x, N = 2 * K)\n}\n"
            "input x[3]\noutput y\ny = wide(x, K = 2)\n")
    assert nnspec.compile_text(spec, file="t.nn").graph.info("y").shape == (4,)


def test_a_size_a_library_cell_cannot_infer_is_asked_for_at_the_call():
    rendered = errors_of("input x[3] : seq\noutput y\ny = last(gru(x))\n")
    shown = at(rendered, 3, 10)  # the user's call, not a line of <stdlib>/gru.nn
    assert shown.message == ("cannot infer the size of 'y.gru1.Wr' ([?, 3]); give 'gru' its size where it is "
                             "called, e.g. 'H = 64'")
    assert shown.underlined == "gru(x)"
    assert at(rendered, 8, 15, severity="note", file="<stdlib>/gru.nn").message == "inside cell 'gru', here"
    assert error_count(rendered) == 1  # not one per gate of the cell


def test_a_library_cell_result_of_the_wrong_size_is_reported_at_the_call():
    rendered = errors_of("input x[3] : seq\noutput y\ny[4] = last(lstm(x, H = 2))\n")
    shown = at(rendered, 3, 13)
    assert shown.message == "'y.lstm1' has size [2], but where it is used it must have size [4]"
    assert shown.underlined == "lstm(x, H = 2)"
    assert error_count(rendered) == 1


def test_an_algebraic_loop_through_a_cell_starts_at_the_users_line():
    shown = at(errors_of("input x[2] : seq\noutput y\ny = last(lstm(y, H = 2))\n"), 3, 1)
    assert shown.message.startswith("algebraic loop: y -> y.lstm1.f -> ")


def test_a_recurrence_inside_a_library_cell_without_a_sequence_is_reported_at_the_call():
    rendered = errors_of("input x[2]\noutput y\ny = last(lstm(x, H = 2))\n")
    shown = at(rendered, 3, 10)
    assert shown.message.startswith("'y.lstm1.f' is recurrent (it reads itself at another step) but depends on "
                                    "no sequence input")
    assert shown.underlined == "lstm(x, H = 2)"


def test_unknown_initialiser_with_did_you_mean():
    shown = at(errors_of("input x[2]\noutput y\ny[2] = W @ x\nparam W init xavir\n"), 4, 9)
    assert shown.message == "unknown initialiser 'xavir'; did you mean 'xavier'?"


def test_unknown_initialiser_setting():
    shown = at(errors_of("input x[2]\noutput y\ny[2] = W @ x\nparam W init uniform(scal = 0.1)\n"), 4, 22)
    assert shown.message == "initialiser 'uniform' has no setting 'scal'; did you mean 'scale'?"
    assert shown.underlined == "scal = 0.1"


# ---- loops and time ---------------------------------------------------------------------------

def test_algebraic_loop_names_the_values_on_it():
    rendered = errors_of("input x[2]\noutput a\na = tanh(b)\nb = a + x\n")
    shown = at(rendered, 3, 1)
    assert shown.message == ("algebraic loop: a -> b -> a depends on itself at the same time step; "
                             "read one of them at an earlier step, e.g. a[t-1]")
    assert at(rendered, 4, 1, severity="note").message == "'b' is defined here"


def test_loop_mixing_earlier_and_later_steps():
    shown = at(errors_of("input x[2] : seq\noutput h\nh = tanh(W @ x + U @ h[t-1] + V @ h[t+1])\n"), 3, 1)
    assert shown.message.startswith("the loop through h reads both earlier ([t-k]) and later ([t+k]) steps")
    assert "split it into a forward and a backward part" in shown.message


def test_delay_on_a_value_that_is_not_a_sequence():
    shown = at(errors_of("input x[2]\noutput y\ny = tanh(W @ x[t-1])\n"), 3, 10)
    assert shown.message == ("'x' is read at [t-1] but it is not a sequence; only values that change "
                             "over time have earlier or later steps")
    assert shown.underlined == "W @ x[t-1]"


def test_recurrence_that_depends_on_no_sequence_input():
    shown = at(errors_of("input x[2]\noutput h\nh[3] = tanh(W @ x + U @ h[t-1])\n"), 3, 1)
    assert shown.message.startswith("'h' is recurrent (it reads itself at another step) but depends on no "
                                    "sequence input")
    assert "'input x[8] : seq'" in shown.message


def test_delay_on_a_parameter():
    shown = at(errors_of("input x[2] : seq\noutput y\ny = W @ x + b[t-1]\nparam b[2]\n"), 3, 13)
    assert shown.message == "'b' is a parameter; only values computed over time can be read at [t-1]"


# ---- types ------------------------------------------------------------------------------------

def test_token_ids_in_arithmetic_suggest_embed():
    shown = at(errors_of("input w : seq of token\noutput y\ny = tanh(w + 1)\n"), 3, 10)
    assert shown.message == ("'w' holds token ids, which add cannot take; use embed(w, 64) to turn them "
                             "into vectors")
    assert shown.underlined == "w + 1"


def test_token_ids_from_a_sub_expression_are_named_by_its_text():
    shown = at(errors_of("input w : seq of token\noutput y\ny = shift(w, 1) + 1\n"), 3, 1)
    assert shown.message.startswith("'shift(w, 1)' holds token ids, which add cannot take; "
                                    "use embed(shift(w, 1), 64)")


def test_embedding_of_real_numbers_suggests_a_token_input():
    shown = at(errors_of("input x[2] : seq\noutput y\ny = last(embed(x, 3))\n"), 3, 10)
    assert shown.message == ("embed needs token ids, but 'x' holds real numbers; declare it "
                             "'input x : seq of token'")


# ---- settings and data (open_session) ----------------------------------------------------------

XOR = """input x[2]
target y[1]
output p
p = sigmoid(W @ x + b)
loss bce(p, y)
"""


def test_unknown_training_setting_with_did_you_mean(tmp_path):
    rendered = session_errors_of(tmp_path, XOR + "train {\n  epochs 3\n  optimiser adam(lr = 0.1)\n}\n"
                                 "data inline { x = [[0, 1]]; y = [[1]] }\n")
    shown = at(rendered, 8, 3, file=str(tmp_path / "t.nn"))
    assert shown.message.startswith("unknown training setting 'optimiser'; did you mean 'optimizer'?")
    assert shown.underlined == "optimiser adam(lr = 0.1)"


def test_a_learning_rate_given_to_a_schedule_points_to_the_optimizer(tmp_path):
    # the schedule scales the optimizer's lr; taking one of its own crashed the trainer
    rendered = session_errors_of(tmp_path, XOR + "train {\n  optimizer sgd(lr = 0.1)\n"
                                 "  schedule exponential(lr = 0.005, gamma = 0.3)\n}\n"
                                 "data inline { x = [[0, 1]]; y = [[1]] }\n")
    shown = at(rendered, 8, 3, file=str(tmp_path / "t.nn"))
    assert shown.message == ("a schedule scales the optimizer's learning rate: give lr to the optimizer "
                             "(e.g. 'optimizer sgd(lr = 0.1)'), not to exponential")


def test_unknown_data_source_with_did_you_mean(tmp_path):
    rendered = session_errors_of(tmp_path, XOR + 'data csvv("xor.csv")\n')
    shown = at(rendered, 6, 1, file=str(tmp_path / "t.nn"))
    assert shown.message.startswith("unknown data source 'csvv'; did you mean 'csv'?")
    assert shown.underlined == 'data csvv("xor.csv")'


def test_missing_data_file_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "t.nn"
    path.write_text(XOR + 'data csv("nothere.csv")\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        nnspec.open_session(path)
    assert "nothere.csv" in str(info.value)
    assert str(info.value).startswith(str(tmp_path / "nothere.csv"))
    assert ": error: " in str(info.value)


def test_missing_include_names_the_file(tmp_path):
    rendered = session_errors_of(tmp_path, 'include "cells.nn"\n' + XOR)
    shown = at(rendered, 1, 1, file=str(tmp_path / "t.nn"))
    assert shown.message.startswith("cannot read included file 'cells.nn'")


# ---- many mistakes at once ------------------------------------------------------------------

def test_several_independent_errors_are_all_reported_in_one_run():
    rendered = errors_of("input x[2]\n"
                         "output y\n"
                         "y = tanh(W @ x + c)\n"
                         "z = relu(q)\n"                  # 4: undefined name
                         "y = sigmoid(x)\n"               # 5: defined twice
                         "param W = [[1, 2], [3]]\n"      # 6: ragged literal
                         "u = softmax(x, tau = 2)\n")     # 7: unknown setting of a function
    assert at(rendered, 4, 10).message == "undefined name 'q'"
    assert at(rendered, 5, 1).message == "'y' is defined twice"
    assert at(rendered, 6, 11).message.startswith("the rows of this literal have different lengths")
    assert at(rendered, 7, 16).message.startswith("softmax has no setting 'tau'")
    assert error_count(rendered) == 4


def test_several_errors_in_cells_are_all_reported_in_one_run():
    rendered = errors_of("input x[3] : seq\n"
                         "output y\n"
                         "h1 = lstm(x, N = 4)\n"          # 3: unknown size keyword
                         "h2 = gru(h1, h1, H = 4)\n"      # 4: wrong number of inputs
                         "y = last(tahn(h2))\n")          # 5: unknown function
    assert at(rendered, 3, 14).message == "cell 'lstm' has no size 'N'; its sizes are H"
    assert at(rendered, 4, 6).message == "cell 'gru' takes 1 input(s) (x), got 2"
    assert at(rendered, 5, 10).message == "unknown function 'tahn'; did you mean 'tanh'?"


def test_errors_are_listed_in_file_order():
    rendered = errors_of("input x[2]\noutput y\ny = tanh(x)\nb = relu(q2)\na = relu(q1)\n")
    positions = [int(m) for m in re.findall(r"^t\.nn:(\d+):", rendered, flags=re.M)]
    assert positions == sorted(positions) == [4, 5]


def test_json_form_of_a_diagnostic():
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.compile_text("input x[2]\noutput y\ny = tanh(x)\ny = relu(x)\n", file="t.nn")
    (d,) = [d.to_json() for d in info.value.diagnostics.errors]
    assert d == {"severity": "error", "message": "'y' is defined twice", "file": "t.nn", "line": 4, "column": 1,
                 "notes": [{"message": "first defined here", "file": "t.nn", "line": 3, "column": 1}]}


def test_lines_are_counted_as_the_parser_counts_them():
    # a form feed or a Windows line end must not shift the line shown under the message
    rendered = errors_of("input x[2]\x0c\r\noutput y\r\ny = tahn(x)\r\n")
    assert rendered.splitlines()[:3] == ["t.nn:3:5: error: unknown function 'tahn'; did you mean 'tanh'?",
                                         "    y = tahn(x)",
                                         "        ^~~~~~~"]


def test_carets_line_up_under_tabs():
    rendered = errors_of("input x[2]\noutput y\ny =\ttahn(x)\n")
    lines = rendered.splitlines()
    assert lines[1] == "    y =\ttahn(x)"
    assert lines[2] == "       \t^~~~~~~"
