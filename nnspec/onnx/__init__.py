"""Export to ONNX and run exported models in onnxruntime (the optional ``onnx`` extra:
``pip install 'nnspec[onnx]'``). See docs/onnx.md.

    >>> exported = nnspec.export_onnx("specs/pos_bilstm.nn", "tagger.onnx", checkpoint="runs/pos_bilstm-...")
    >>> print(exported.inventory())       # each loop and the ONNX op it became

Importing this package loads neither onnx nor onnxruntime (the command line registers its commands
from here); its modules do, when used.
"""
from __future__ import annotations

from pathlib import Path


def export_onnx(source, path: str | Path | None = None, *, checkpoint: str | Path | None = None,
                fused: bool = True):
    """Export a network to ONNX; returns an :class:`nnspec.onnx.export.Exported` (``.model``, the
    ``onnx.ModelProto``; ``.loops``, what each loop became; ``.save(path)``).

    ``source``: an ``nnspec.Model`` (a trained one from ``nnspec.load`` too), or a spec file: with
    ``checkpoint`` (a run directory) its trained weights, else its parameters as initialised with
    the spec's seed (sizes the data decides come from reading its data). ``path``: where to write
    the model. ``fused=False`` writes every loop as a Scan. A construct with no ONNX form is a
    ``SpecError`` at its line.
    """
    model = _model_of(source, checkpoint)
    from .export import export_model
    exported = export_model(model, fused=fused)
    if path is not None:
        exported.save(path)
    return exported


def _model_of(source, checkpoint):
    from ..model import Model
    if isinstance(source, Model):
        if checkpoint is not None:
            raise ValueError("checkpoint= is for a spec file; a Model already has its weights")
        return source
    if checkpoint is not None:
        from ..trained import load
        return load(checkpoint, spec=source)
    return Model.from_file(source)


def onnx_missing() -> str | None:
    """Why the extra cannot be used here (a message for the user), or None when it can."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"ONNX export needs the onnx extra ({e.name} is missing): pip install 'nnspec[onnx]'"
    return None


__all__ = ["export_onnx", "onnx_missing"]
