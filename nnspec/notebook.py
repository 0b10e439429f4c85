"""nnspec in Jupyter: the ``%%nnspec`` cell magic (needs the ``notebook`` extra: IPython).

    %load_ext nnspec

    %%nnspec chain --at a=3 b=1 c=-2        # compile the cell, draw its graph with values and gradients
    input a; input b; input c
    output L
    L = c * (a + 2 * b)

``%%nnspec [NAME] [options]`` compiles the spec written in the cell and binds NAME (if given)
in the notebook to what it made:

- no option: a :class:`~nnspec.Model` (its parameters and graph show), or the
  :class:`~nnspec.Compiled` spec when its data decides some sizes;
- ``--at a=3 b=1 ...``: the model, and the graph drawn with each node's value and gradient;
- ``--run [--set key=value ...]``: what ``nnspec run`` does: reads the spec's data and trains
  it when it has a ``train`` block (a progress bar and live curves), else runs it forward on
  its data and shows the outputs; binds the :class:`~nnspec.Session` (its ``model`` trained).

A mistake in the spec shows as nnspec shows it everywhere, ``<cell>:line:column`` with the line
and a caret, and no traceback.
"""
from __future__ import annotations

import argparse
import html
import json
import shlex

import numpy as np
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.display import HTML, display

from .errors import SpecError

CELL = "<cell>"


class MagicUsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # no SystemExit inside a notebook
        raise MagicUsageError(f"%%nnspec: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="%%nnspec", add_help=False)
    p.add_argument("name", nargs="?", help="bind what the cell makes to this name")
    p.add_argument("--at", nargs="+", default=None, metavar="NAME=VALUE")
    p.add_argument("--run", action="store_true", help="train on the spec's data (or run forward on it)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int)
    return p


@magics_class
class NnspecMagics(Magics):
    @cell_magic
    def nnspec(self, line: str, cell: str):
        try:
            args = _parser().parse_args(shlex.split(line))
            result = run_cell(cell, args)
            shown = result.draw(at=_values(args.at, result)) if args.at is not None else result
        except (SpecError, MagicUsageError) as e:
            display(ErrorMessage(str(e)))
            return None
        except Exception as e:   # a data or training error: its message, not a traceback
            from .data import DataError
            from .train.checkpoint import CheckpointError
            from .train.loop import TrainingError
            if not isinstance(e, (DataError, TrainingError, CheckpointError, ValueError)):
                raise
            display(ErrorMessage(f"error: {e}"))
            return None
        if args.name:
            self.shell.user_ns[args.name] = result
        return shown


def run_cell(text: str, args) -> object:
    from .session import open_session
    if args.run:
        from .train.loop import Trainer
        session = open_session(CELL, text=text, overrides=args.set, seed=args.seed)
        if session.data is None:
            raise MagicUsageError("%%nnspec --run: the spec has no data to run on (add 'data inline { ... }')")
        if session.compiled.flat.train is None and not args.set:   # as `nnspec run`: forward on the data
            display(outputs_table(session))
        else:
            Trainer(session.model, session.data, session.settings).fit()
        return session
    session = open_session(CELL, text=text, overrides=args.set, seed=args.seed, with_data=False,
                           dtype="float64" if args.at is not None else None)
    if args.at is not None and session.model is None:
        raise MagicUsageError("%%nnspec --at: the spec's data decides some sizes; give them in the spec")
    return session.model if session.model is not None else session.compiled


def outputs_table(session) -> HTML:
    """The spec's data and the network's outputs for it, a row an example (``nnspec run``'s table)."""
    from .cli.forward import outputs_for   # the outputs `nnspec run` prints, computed the same way
    from .display import table_html
    split = "all" if session.data.has("all") else "train"
    outputs = outputs_for(session, split)
    encoded = session.data.splits[split]
    inputs = [f.name for f in session.data.fields if f.role == "input"]
    rows = [[_shown(encoded.data[n][i]) for n in inputs] + [_shown(outputs[o][i]) for o in outputs]
            for i in range(len(encoded))]
    return HTML(table_html(inputs + list(outputs), rows))


def _shown(value) -> str:
    """A number as %g (0 rather than 0.0), a list of them in brackets."""
    a = np.asarray(value)
    if a.ndim == 0:
        return f"{a.item():.4g}" if a.dtype.kind == "f" else str(a.item())
    return "[" + ", ".join(_shown(v) for v in a) + "]"


def _values(pairs: list[str], model) -> dict:
    at = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq:
            raise MagicUsageError(f"%%nnspec --at takes name=value pairs, not {pair!r}")
        try:
            at[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            raise MagicUsageError(f"%%nnspec --at {name}: {value!r} is not a number or a [list]") from None
    names = [v.name for v in model.plan.inputs + model.plan.targets]
    missing = [n for n in names if n not in at]
    unknown = [n for n in at if n not in names]
    if missing or unknown:
        raise MagicUsageError("%%nnspec --at: " + "; ".join(
            ([f"no input or target {', '.join(unknown)}"] if unknown else [])
            + ([f"needs a value for {', '.join(missing)}"] if missing else [])))
    return {k: np.asarray(v, dtype=np.float64) for k, v in at.items()}


class ErrorMessage:
    """An error as the terminal shows it (the caret under the column): red in a notebook, plain text elsewhere."""

    def __init__(self, message: str):
        self.message = message

    def __repr__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        return f"<pre style='color:#b91c1c; background:#fef2f2; padding:6px'>{html.escape(self.message)}</pre>"


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(NnspecMagics)
