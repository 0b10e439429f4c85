"""What the commands print: a rich console, JSON, numbers and values shown short."""
from __future__ import annotations

import json

import numpy as np


def console():
    from rich.console import Console
    return Console(highlight=False, soft_wrap=True)


def emit_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=_jsonable, allow_nan=False))


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def fmt_num(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def show(v) -> str:
    """A value for a table cell: numbers to 4 digits, a list or array to its first 8 entries (only
    those converted: an array of millions is not made into a list first)."""
    if isinstance(v, np.ndarray):
        v = list(v[:9]) if v.ndim else v.item()     # (nine: more than eight is shown with "…")
    elif isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, list):
        if len(v) > 8:
            return "[" + ", ".join(show(x) for x in v[:8]) + ", …]"
        return "[" + ", ".join(show(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def squeeze(a: np.ndarray):
    a = np.asarray(a)
    if a.ndim >= 2 and a.shape[-1] == 1:
        a = a[..., 0]
    return a
