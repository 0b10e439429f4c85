"""The ``nnspec`` command line (the console script ``nnspec``, and ``python -m nnspec.cli``).

    dispatch.py          the parser, the dispatch to a command, errors rendered once at the edge
    compile_commands.py  check, grad, graph, expand, ops: a compiled spec, nothing trained
    train_commands.py    run (train, resume, --folds, or a forward run) and runs
      training.py        one training as run does it: run directory, results.json, plots, summary
      folds.py           run --folds: k-fold cross-validation
      forward.py         a network's outputs on its data
    model_commands.py    predict, evaluate, sample: a trained model
    arguments.py         argument types and flags the commands share
    output.py            the console, JSON, numbers shown short
    plotting.py          a run's plots, drawn by a helper process while the network trains

A new command is an ``add_NAME(sub)`` in a command module (its arguments and ``func``) and one
line in dispatch.COMMANDS. The sweep command lives with the sweeps (nnspec/sweep/commands.py).
"""


import sys


def main(argv: list[str] | None = None) -> int:
    """The console script ``nnspec``. A Ctrl-C while the command's modules load (numpy and the
    compiler take ~0.4 s) is answered as one during the command is: a word, not a traceback."""
    try:
        from .dispatch import main as run_command
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return run_command(argv)


def __getattr__(name: str):
    # the parser, built when asked for: importing one of the modules above (the notebook imports
    # forward.py) does not build the parser and import every command
    if name == "build_parser":
        from . import dispatch
        return dispatch.build_parser
    raise AttributeError(f"module 'nnspec.cli' has no attribute {name!r}")


__all__ = ["build_parser", "main"]
