"""nnspec: a declarative neural-network spec compiler and simulator on NumPy.

    from nnspec import compile_file, Model, open_session
    model = Model.from_file("specs/xor_goodfellow.nn")
    model.forward({"x": [[0, 1]]})
    tagger = nnspec.load("runs/lstm_tagger-20261207-041500")    # a trained model from its run directory
    tagger.predict("the cat sat")

docs/api.md is the reference.
"""
__version__ = "0.1.0"

from typing import TYPE_CHECKING

# Every name is loaded when first asked for (PEP 562), so that `import nnspec` costs nothing: the
# command line's entry point lives in this package, and a Ctrl-C while numpy loads must reach
# nnspec.cli.main's handler, not Python's traceback. Compiling or running a spec loads no
# training code; a trained model reads checkpoints (nnspec.train, safetensors); export_onnx
# needs the onnx extra.
_HOMES = {
    "Compiled": "compiler", "compile_file": "compiler", "compile_text": "compiler",
    "SpecError": "errors",
    "Model": "model", "init_params": "model",
    "Session": "session", "open_session": "session",
    "Prediction": "trained", "TrainedModel": "trained", "load": "trained",
    "export_onnx": "onnx",
}

if TYPE_CHECKING:
    from .compiler import Compiled, compile_file, compile_text
    from .errors import SpecError
    from .model import Model, init_params
    from .onnx import export_onnx
    from .session import Session, open_session
    from .trained import Prediction, TrainedModel, load


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'nnspec' has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f".{home}", __name__), name)
    globals()[name] = value    # asked for once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


def load_ipython_extension(ipython) -> None:
    """``%load_ext nnspec`` in Jupyter: the ``%%nnspec`` cell magic (nnspec.notebook)."""
    from .notebook import load_ipython_extension as load_magic
    load_magic(ipython)


__all__ = ["Compiled", "Model", "Prediction", "Session", "SpecError", "TrainedModel", "compile_file", "compile_text",
           "export_onnx", "init_params", "load", "open_session", "__version__"]
