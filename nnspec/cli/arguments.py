"""Argument types and flags the commands share: argparse reports a bad value with its message."""
from __future__ import annotations

import argparse
import math
import re


def size(text: str) -> int:
    from ..limits import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def count(least: int, most: int | None = None):
    """An argparse type: a whole number from ``least`` (to ``most``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least or (most is not None and value > most):
            bound = f"from {least} to {most}" if most is not None else f"at least {least}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
        return value
    return parse


def whole(text: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of at least 0")
    return value


def memory_limit_flag(p) -> None:
    p.add_argument("--memory-limit", type=size, metavar="SIZE",
                   help="refuse a network that needs more memory than this, e.g. 16GiB (default: the train "
                        "block's memory_limit_mb, else NNSPEC_MEMORY_LIMIT, else 4GiB)")
