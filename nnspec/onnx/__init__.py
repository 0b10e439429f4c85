"""Export to ONNX and run exported models in onnxruntime (the optional ``onnx`` extra:
``pip install 'nnspec[onnx]'``). See docs/onnx.md."""
from __future__ import annotations

from .export import LENGTHS, Exported, LoopExport, export_model
from .build import OPSET

__all__ = ["LENGTHS", "OPSET", "Exported", "LoopExport", "export_model"]
