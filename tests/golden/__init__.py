"""Golden texts of the plans of the library's cells (nnspec/stdlib/*.nn), so that any change to
what the compiler makes of them shows in review as a diff of a text file.

Each cell is used in a tiny spec (``SPECS``); ``tests/golden/plans/<name>.txt`` holds the spec,
its unoptimised plan and its optimised plan, as ``nnspec expand --plan`` prints them
(``Plan.text()``). tests/test_golden_plans.py compares them. After a deliberate change, write
them again and review the diff:

    python -m tests.golden --write
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent / "plans"

_SEQ = """\
input x[3] : seq
target y : seq of class[2]
output p
h = {cell}
p = softmax(V @ h + c)
loss cross_entropy(p, y)
"""

# the attention cells: queries on one axis, keys on another
_ATTENTION = """\
input x[3] : seq(src)
input q[3] : seq(out)
target y : seq(out) of class[2]
output p
h = {cell}
p = softmax(V @ h + c)
loss cross_entropy(p, y)
"""

# one spec per library cell (and per wrapper of one), each as small as it can be
SPECS = {
    "dense": """\
input x[3]
target y : class[2]
output p
h = dense(x, N = 4)
p = softmax(V @ h + c)
loss cross_entropy(p, y)
""",
    "rnn": _SEQ.format(cell="rnn(x, H = 4)"),
    "lstm": _SEQ.format(cell="lstm(x, H = 4)"),
    "gru": _SEQ.format(cell="gru(x, H = 4)"),
    "gru_reset_after": _SEQ.format(cell="gru_reset_after(x, H = 4)"),
    "gru_reset_before": _SEQ.format(cell="gru_reset_before(x, H = 4)"),
    "bidirectional_lstm": _SEQ.format(cell="bidirectional(lstm)(x, H = 4)"),
    "reverse_gru": _SEQ.format(cell="reverse(gru)(x, H = 4)"),
    "stacked_rnn": _SEQ.format(cell="stacked(rnn, 2)(x, H = 4)"),
    "attention": _ATTENTION.format(cell="attention(q, x)"),
    "additive_attention": _ATTENTION.format(cell="additive_attention(q, x, A = 4)"),
}


def golden_text(name: str) -> str:
    """What ``plans/<name>.txt`` must hold."""
    from nnspec.compiler import compile_text
    spec = SPECS[name]
    plain = compile_text(spec, file=f"{name}.nn", optimize=False).plan.text()
    optimised = compile_text(spec, file=f"{name}.nn").plan.text()
    quoted = "".join(f"# {line}\n" for line in spec.splitlines())
    return f"{quoted}\n# unoptimised\n{plain}\n\n# optimised\n{optimised}\n"


def path(name: str) -> Path:
    return HERE / f"{name}.txt"
