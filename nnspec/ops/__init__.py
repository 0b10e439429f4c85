"""The op registry: importing this package registers every op."""
from . import activations, axes, elementwise, linalg, losses, regularize, sequence  # noqa: F401
from .registry import (REGISTRY, Ctx, Op, ShapeError, broadcast_shape, get, register,
                       show_shape, unbroadcast)

__all__ = ["REGISTRY", "Ctx", "Op", "ShapeError", "broadcast_shape", "get", "register",
           "show_shape", "unbroadcast"]
