"""Any loop as an ONNX ``Scan``: its body is the loop body, one time step; its states are carried.

A state read at ``t - k`` (``t + k`` backward) is carried k steps: the body keeps the state's last k
values and passes them on. As in nnspec (docs/internals.md §5), a read of step ``t + d`` that is not
a real step of that example (before the first step, or at padding) gives the state's initial state:
the body chooses between the carried value and the initial state with a mask of valid reads, a scan
input computed before the loop from ``lengths``. So a backward loop starts at each example's own
last real step, whatever the padding after it. Sequences from outside the loop are scan inputs
(read at another step: shifted before the loop, as a delayed read is); parameters, values with
no time axis, and values on other sequence axes are read from the enclosing graph by name, whole
at every step (a decoder's attention over all an encoder's states), with the real steps of their
axes for the ops over those steps.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..plan import LoopStep
from .build import GraphBuilder, array_shape


def lower_scan(lw, loop: LoopStep) -> None:
    """The loop as one ``Scan`` node of ``lw``'s graph, its values read after it defined in ``lw``."""
    scan = _Scan(lw, loop)
    scan.carry_states()
    for b in loop.body:
        scan.lower(b)
    scan.emit()


class _Scan:
    """One loop's Scan as it is built: the body's graph, its inputs (carried states, then one step
    of each outer sequence) and the tensor of each body value inside it."""

    def __init__(self, lw, loop: LoopStep):
        self.lw, self.loop, self.g = lw, loop, lw.g
        self.body_ids = {b.id: b for b in loop.body}
        # a backward loop runs forward over its inputs reversed in time, and its outputs are reversed
        # back: the same as Scan's reverse directions, which onnx's reference evaluator lacks
        self.backward = loop.direction < 0
        self.body = GraphBuilder(lw.names, lw.dtype, parent=lw.g)
        self.body_inputs: list = []             # the carried states' last values
        self.initial_outer: list[str] = []      # their initial values, outside
        self.carried: dict[tuple[str, int], str] = {}   # (state, k) -> its value k steps back, in the body
        self.depth: dict[str, int] = {}          # state -> its furthest read back
        self.scan_inputs: list[str] = []         # outer tensors, one step each to the body
        self.body_scan_inputs: list = []
        self.local: dict[str, str] = {}          # plan value -> tensor inside the body
        self.masks: dict[tuple[int, int], str] = {}       # (delay, rank) -> the mask of valid reads
        self.outside: dict[tuple[str, int], str] = {}     # (outer sequence, delay) -> its step in the body

    def in_time_order(self, x: str) -> str:
        g = self.g
        return g.op("Slice", [x, g.ints(-1), g.ints(-2 ** 62), g.ints(0), g.ints(-1)]) if self.backward else x

    def elem_type(self, value: str, integer: bool | None = None) -> int:
        lw = self.lw
        return TensorProto.INT64 if (value in lw.integer if integer is None else integer) else lw.float_type

    def own(self, axes: tuple) -> tuple:
        """A value's axes within one step of the loop: its own axis is the Scan's."""
        return axes[1:] if axes[:1] == (self.loop.axis,) else axes

    def step_rank(self, b) -> int:
        return len(self.own(self.lw.axes.get(b.id, ()))) + 1 + len(array_shape(b.shape, b.integer))

    def carry_states(self) -> None:
        """Each state's last k values as body inputs, k its furthest read, from its initial state."""
        lw, loop, g = self.lw, self.loop, self.g
        self.depth = depth = {s: 0 for s in loop.states}
        for b in loop.body:
            for src, d in b.inputs:
                if src in self.body_ids and d != 0:
                    depth[src] = max(depth[src], abs(d))
        for s in loop.states:
            b = self.body_ids[s]
            init = lw.initial.get(s)
            if init is None:
                zero = g.const(0, np.int64) if b.integer else g.const(0)
                init = lw.initial[s] = g.op("Expand", [zero, lw.batch_shape(b)], f"{s}.initial")
            for j in range(1, depth[s] + 1):
                name = lw.names.claim(f"{s}[t{-j * loop.direction:+d}]")
                self.carried[(s, j)] = name
                self.body_inputs.append(helper.make_tensor_value_info(name, self.elem_type(s, b.integer), None))
                self.initial_outer.append(init)

    def scan_input(self, outer: str, hint: str, integer: bool, elem: int | None = None) -> str:
        """A body input taking one step of ``outer`` (a sequence outside the loop) at each step."""
        name = self.lw.names.claim(hint)
        self.scan_inputs.append(self.in_time_order(outer))
        self.body_scan_inputs.append(helper.make_tensor_value_info(
            name, self.elem_type("", integer) if elem is None else elem, None))
        return name

    def valid(self, d: int, r: int) -> str:
        """The body's mask of the examples whose step t + d is a real one, of rank r."""
        if (d, r) not in self.masks:
            self.masks[(d, r)] = self.scan_input(self.lw.valid_read(self.loop.axis, d, r + 1), f"valid_t{d:+d}",
                                                 False, TensorProto.BOOL)
        return self.masks[(d, r)]

    def read(self, src: str, d: int) -> str:
        """The tensor a body op reads for ``src`` at step t + d."""
        lw = self.lw
        if src in self.body_ids:
            if d == 0:
                return self.local[src]
            r = self.step_rank(self.body_ids[src])
            return self.body.op("Where", [self.valid(d, r), self.carried[(src, abs(d))], lw.initial[src]],
                                f"{src}[t{d:+d}]")
        if lw.axes.get(src, ())[:1] == (self.loop.axis,):
            if (src, d) not in self.outside:
                whole = lw.tensor[src] if d == 0 else lw.delayed(src, d)
                self.outside[(src, d)] = self.scan_input(whole, f"{src}[t]" if d == 0 else f"{src}[t{d:+d}]",
                                                         src in lw.integer)
            return self.outside[(src, d)]
        # a parameter, a value of each example, or one on other axes: the whole of it, every step
        return lw.tensor[src]

    def operand_rank(self, src: str) -> int:
        lw = self.lw
        if src in self.body_ids:
            return self.step_rank(self.body_ids[src])
        return lw.rank[src] - 1 if lw.axes.get(src, ())[:1] == (self.loop.axis,) else lw.rank[src]

    def lower(self, b) -> None:
        """One body op, into the body's graph."""
        lw = self.lw
        xs = [self.read(src, d) for src, d in b.inputs]
        self.local[b.id] = lw.lower(self.body, b, xs, [self.operand_rank(src) for src, _ in b.inputs],
                                    self.step_rank(b), [self.own(lw.axes.get(src, ())) for src, _ in b.inputs])

    def emit(self) -> None:
        """The Scan node: its body's outputs are the carried states, then every body value read after
        the loop, which the enclosing graph gets whole (in time order)."""
        lw, loop, body = self.lw, self.loop, self.body
        if not self.scan_inputs:   # a Scan takes its number of steps from its scan inputs
            self.scan_input(lw.real(loop.axis, 2), "real_t", False, TensorProto.BOOL)
        outputs, carried_out = [], []
        for s in loop.states:
            for j in range(1, self.depth[s] + 1):
                src = self.local[s] if j == 1 else self.carried[(s, j - 1)]
                out = body.op("Identity", [src], f"{s}.carry")
                outputs.append(helper.make_tensor_value_info(out, self.elem_type(s, self.body_ids[s].integer), None))
                carried_out.append(lw.names.claim(f"{s}.final"))
        wanted = [b.id for b in loop.body if b.id in lw.read_after_loop(loop)]
        stacked = []
        for v in wanted:
            out = body.op("Identity", [self.local[v]], f"{v}.step")
            outputs.append(helper.make_tensor_value_info(out, self.elem_type(v, self.body_ids[v].integer), None))
            stacked.append(lw.names.claim(v))
        graph = helper.make_graph(body.nodes, f"loop{loop.index}", self.body_inputs + self.body_scan_inputs, outputs)
        self.g.nodes.append(helper.make_node(
            "Scan", self.initial_outer + self.scan_inputs, carried_out + stacked,
            name=lw.names.claim(f"Scan:loop{loop.index}"), body=graph, num_scan_inputs=len(self.scan_inputs)))
        for v, name in zip(wanted, stacked):
            b = self.body_ids[v]
            lw._define(v, self.in_time_order(name), self.step_rank(b) + 1, True, bool(b.integer))
