"""nnspec: a declarative neural-network spec compiler and simulator on NumPy.

    from nnspec import compile_file, Model, open_session
    model = Model.from_file("specs/xor_goodfellow.nn")
    model.forward({"x": [[0, 1]]})
    tagger = nnspec.load("runs/lstm_tagger-20261207-041500")    # a trained model from its run directory
    tagger.predict("the cat sat")

docs/api.md is the reference.
"""
__version__ = "0.1.0"

from .compiler import Compiled, compile_file, compile_text  # noqa: E402
from .errors import SpecError  # noqa: E402
from .model import Model, init_params  # noqa: E402
from .session import Session, open_session  # noqa: E402


def __getattr__(name: str):
    # a trained model reads checkpoints (nnspec.train, safetensors): loaded when first asked for,
    # so compiling or running a spec loads no training code
    if name in ("Prediction", "TrainedModel", "load"):
        from . import trained
        return getattr(trained, name)
    if name == "export_onnx":   # the onnx extra: loaded when first used
        from .onnx import export_onnx
        return export_onnx
    raise AttributeError(f"module 'nnspec' has no attribute {name!r}")



def load_ipython_extension(ipython) -> None:
    """``%load_ext nnspec`` in Jupyter: the ``%%nnspec`` cell magic (nnspec.notebook)."""
    from .notebook import load_ipython_extension as load_magic
    load_magic(ipython)


__all__ = ["Compiled", "Model", "Prediction", "Session", "SpecError", "TrainedModel", "compile_file", "compile_text",
           "export_onnx", "init_params", "load", "open_session", "__version__"]
