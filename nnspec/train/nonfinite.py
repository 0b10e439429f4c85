"""Finding NaN and infinity cheaply, and naming where they came from in the user's words.

The plan's steps carry compiler ids (``h#2`` is a sub-expression in the
definition of ``h``); a message names the source instead: the value, the
expression's text and its file and line.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np

_COUNTER = re.compile(r"#\d+")
_sum = np.add.reduce  # without ndarray.sum's Python wrapper: a tiny network checks several arrays a step


def all_finite(arrays: Iterable[np.ndarray]) -> bool:
    """Whether every element of every array is finite: one sum per array (NaN and
    infinity survive a sum), the cost of a single pass; a sum can only overflow when
    values are near float32's limit, and then ``nonfinite_names`` decides exactly."""
    total = 0.0
    for a in arrays:
        total += float(_sum(a, None))  # Python floats: inf - inf is NaN without a warning
    return math.isfinite(total)


def nonfinite_names(arrays: dict[str, np.ndarray]) -> list[str]:
    """The names of the arrays holding a NaN or an infinity (the exact check)."""
    return [k for k, a in arrays.items() if not np.isfinite(a).all()]


def what_is_bad(a: np.ndarray) -> str:
    return "NaN" if np.isnan(a).any() else "infinite"


def what_and_bad(model, e) -> tuple[str, str]:
    """A RuntimeFailure's value in the user's words, and what it became."""
    bad = str(e).rsplit(" produced ", 1)[-1] if " produced " in str(e) else "NaN or an infinite value"
    return (describe_node(model.compiled, e.node) if e.node else str(e)), bad


def forward_failure(model, doing: str, feeds: dict, lengths=None, **how):
    """The RuntimeFailure to raise when an evaluation's forward pass (of ``feeds``, ``how`` as
    ``Model.run``) gave NaN or infinity, naming the value as a training run does: ``doing`` says
    what was being computed. It keeps the failing step's span, so it renders with the source
    line and a caret."""
    from ..runtime import RuntimeFailure
    failure = model.diagnose(feeds, lengths, **how)
    if failure is None:
        return RuntimeFailure(f"{doing}: the network's output is NaN or infinite")
    what, bad = what_and_bad(model, failure)
    return RuntimeFailure(f"{doing}: {what} produced {bad}; is the input far from what the model was "
                          f"trained on (or not normalised as its training data was)?", failure.node,
                          failure.span, sources_of(model))


def sources_of(model):
    """The compiler's copy of the spec's text (None without one: the span's file is read then)."""
    diags = getattr(model.compiled, "diags", None)
    return diags.sources if diags is not None else None


def describe_node(compiled, node: str) -> str:
    """A plan value in the user's words: ``'h' (spec.nn:15)`` for a named value,
    ``'W1 @ x + b1' in the definition of 'h' (spec.nn:15)`` for a sub-expression."""
    graph = getattr(compiled, "graph", None)
    owner = _COUNTER.sub("", node).split("{")[0] or node
    info = _info(graph, node) or _info(graph, node.split("#", 1)[0])
    if info is None or info.span is None:
        return f"'{owner}'"
    span = info.span
    where = f"{span.file}:{span.line}"
    if info.id == node and (info.named or info.kind != "op"):
        return f"'{node}' ({where})"
    text = _span_text(span)
    if text and text != owner:
        return f"'{text}' in the definition of '{owner}' ({where})"
    return f"'{owner}' ({where})"


def _info(graph, node: str):
    if graph is None:
        return None
    try:
        return graph.info(node)
    except KeyError:
        return None


def _span_text(span, limit: int = 200) -> str | None:
    """The source text a one-line span covers (None when the file cannot be read)."""
    if span.end_line != span.line:
        return None
    try:
        with open(Path(span.file), encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if i == span.line:
                    text = line[span.column - 1:span.end_column - 1].strip()
                    return text if 0 < len(text) <= limit else None
                if i > span.line:
                    break
    except (OSError, UnicodeDecodeError):
        return None
    return None
