"""The ``nnspec`` command line: the parser, the dispatch to a command, and errors of the user's
making rendered here, once, without a traceback."""
from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..data import DataError
from ..errors import Diagnostics, SpecError, UsageError
from ..model import FeedError
from ..runtime import RuntimeFailure
from ..sweep import SweepError
from ..onnx.commands import add_parser as add_export_command   # nnspec export (the onnx extra)
from ..sweep.commands import add_sweep_command
from ..train.checkpoint import CheckpointError
from ..train.loop import TrainingError, TrainingInterrupted
from . import compile_commands, model_commands, train_commands
from .output import emit_json

# Each command adds its subparser (arguments, help, and ``func``, the function that runs it), in
# the order ``nnspec --help`` lists them. A new command: an ``add_NAME(sub)`` in its module, and here.
COMMANDS = (
    compile_commands.add_check,
    train_commands.add_run,
    compile_commands.add_grad,
    compile_commands.add_graph,
    compile_commands.add_expand,
    train_commands.add_runs,
    compile_commands.add_ops,
    model_commands.add_predict,
    model_commands.add_evaluate,
    model_commands.add_sample,
    add_export_command,
    add_sweep_command,
)


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage mistake under --json is reported as JSON too."""
    json_errors = False

    def error(self, message: str):
        if _Parser.json_errors:
            emit_json({"ok": False, "errors": [{"message": f"{self.prog}: {message}"}]})
            sys.exit(2)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nnspec", description="Compile, check and run neural-network specs.")
    p.add_argument("--version", action="version", version=f"nnspec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _Parser.json_errors = "--json" in (sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    as_json = getattr(args, "json", False)
    try:
        return args.func(args)
    except SpecError as e:
        return _fail(as_json, e.diagnostics.render(color=sys.stderr.isatty()), e.diagnostics)
    except (RuntimeFailure, TrainingError) as e:   # at the failing step's source line, as a spec error
        return _fail(as_json, str(e) if as_json else e.render(color=sys.stderr.isatty()), span=e.span)
    except (DataError, CheckpointError, UsageError, FeedError, SweepError) as e:
        return _fail(as_json, f"error: {e}" if not isinstance(e, DataError) else str(e))
    except TrainingInterrupted as e:
        print(train_commands.interrupted_message(e, args), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _fail(as_json: bool, message: str, diags: Diagnostics | None = None, span=None) -> int:
    if as_json:
        where = {"file": span.file, "line": span.line, "column": span.column} if span is not None else {}
        errors = [_flat_error(d) for d in diags.errors] if diags else [{"message": message, **where}]
        emit_json({"ok": False, "errors": errors})
    else:
        print(message, file=sys.stderr)
    return 1


def _flat_error(d) -> dict:
    out = {"message": d.message}
    if d.span is not None:
        out.update(file=d.span.file, line=d.span.line, column=d.span.column)
    return out
