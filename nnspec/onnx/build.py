"""A small builder of ONNX graphs: nodes, initialisers and constants with unique names.

One :class:`Names` is shared by a model's main graph and the bodies of its Scans, so no
tensor name is defined twice in any scope (a Scan body reads the parameters and the values
computed before the loop from its enclosing graph, by name).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17   # fixed and recorded in every exported model (Scan 16, RNN/LSTM/GRU 14, Softmax 13)

LENGTHS = "lengths"   # the input of an exported model giving each example's real steps


def lengths_name(axis: str, several: bool) -> str:
    """The input giving each example's real steps on ``axis``: ``lengths`` for a network on one
    sequence axis (as ever), ``lengths_<axis>`` for each axis of a network on several."""
    return f"{LENGTHS}_{axis}" if several else LENGTHS


def steps_name(axis: str, several: bool) -> str:
    """The symbolic dimension of ``axis``'s steps: ``T``, or ``T_<axis>`` on several axes."""
    return f"T_{axis}" if several else "T"

FLOAT_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


class Names:
    """Unique tensor names: a wanted name when it is free, else the name with a number."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def claim(self, name: str) -> str:
        if name not in self.used:
            self.used.add(name)
            return name
        i = 1
        while f"{name}_{i}" in self.used:
            i += 1
        self.used.add(f"{name}_{i}")
        return f"{name}_{i}"


class GraphBuilder:
    """The nodes of one ONNX graph (the model's, or a Scan body with ``parent`` its enclosing graph).
    Constants and initialisers always go to the main graph, where every scope sees them."""

    def __init__(self, names: Names, dtype: np.dtype, parent: "GraphBuilder | None" = None) -> None:
        self.names, self.dtype, self.parent = names, np.dtype(dtype), parent
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._consts: dict[tuple, str] = {} if parent is None else parent.root._consts
        self.params: dict[str, np.ndarray] = {} if parent is None else parent.root.params  # by initialiser name
        self.transposes: dict[str, str] = {} if parent is None else parent.root.transposes

    @property
    def root(self) -> "GraphBuilder":
        return self if self.parent is None else self.parent.root

    def op(self, op_type: str, inputs: list[str], name: str | None = None, outputs: int = 1, **attrs):
        """Add a node; returns its output's name (a list of names when ``outputs`` > 1)."""
        outs = [self.names.claim(name or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.names.claim(f"{op_type}:{outs[0]}"),
                                           **attrs))
        return outs[0] if outputs == 1 else outs

    def initializer(self, name: str, value: np.ndarray) -> str:
        root = self.root
        name = root.names.claim(name)
        root.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def const(self, value, dtype=None) -> str:
        """A constant tensor (the model's float type unless ``dtype``), made once per value."""
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.initializer("const", array)
        return self._consts[key]

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64)


def array_shape(shape, integer: bool) -> tuple:
    """The trailing array shape of a value, as nnspec's runtime holds it: a real scalar gets an axis of 1."""
    shape = tuple(shape)
    return (1,) if (shape == () and not integer) else shape
