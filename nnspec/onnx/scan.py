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
    g = lw.g
    body_ids = {b.id: b for b in loop.body}
    # a backward loop runs forward over its inputs reversed in time, and its outputs are reversed
    # back: the same as Scan's reverse directions, which onnx's reference evaluator lacks
    backward = loop.direction < 0

    def in_time_order(x: str) -> str:
        return g.op("Slice", [x, g.ints(-1), g.ints(-2 ** 62), g.ints(0), g.ints(-1)]) if backward else x
    body = GraphBuilder(lw.names, lw.dtype, parent=g)
    body_inputs: list = []
    scan_inputs: list[str] = []       # outer tensors, one step each to the body
    body_scan_inputs: list = []
    local: dict[str, str] = {}        # plan value -> tensor inside the body
    rank: dict[str, int] = {}         # plan value -> rank inside the body (no time axis)

    def elem_type(value: str, integer: bool | None = None) -> int:
        return TensorProto.INT64 if (value in lw.integer if integer is None else integer) else lw.float_type

    def own(axes: tuple) -> tuple:
        """A value's axes within one step of the loop: its own axis is the Scan's."""
        return axes[1:] if axes[:1] == (loop.axis,) else axes

    def step_rank(b) -> int:
        return len(own(lw.axes.get(b.id, ()))) + 1 + len(array_shape(b.shape, b.integer))

    # states: the last k values of each, k its furthest read
    depth = {s: 0 for s in loop.states}
    for b in loop.body:
        for src, d in b.inputs:
            if src in body_ids and d != 0:
                depth[src] = max(depth[src], abs(d))
    carried: dict[tuple[str, int], str] = {}
    initial_outer: list[str] = []
    for s in loop.states:
        b = body_ids[s]
        init = lw.initial.get(s)
        if init is None:
            zero = g.const(0, np.int64) if b.integer else g.const(0)
            init = lw.initial[s] = g.op("Expand", [zero, lw.batch_shape(b)], f"{s}.initial")
        for j in range(1, depth[s] + 1):
            name = lw.names.claim(f"{s}[t{-j * loop.direction:+d}]")
            carried[(s, j)] = name
            body_inputs.append(helper.make_tensor_value_info(name, elem_type(s, b.integer), None))
            initial_outer.append(init)

    def scan_input(outer: str, hint: str, integer: bool) -> str:
        name = lw.names.claim(hint)
        scan_inputs.append(in_time_order(outer))
        body_scan_inputs.append(helper.make_tensor_value_info(name, elem_type("", integer), None))
        return name

    masks: dict[tuple[int, int], str] = {}

    def valid(d: int, r: int) -> str:
        if (d, r) not in masks:
            masks[(d, r)] = scan_input(lw.valid_read(loop.axis, d, r + 1), f"valid_t{d:+d}", False)
            body_scan_inputs[-1] = helper.make_tensor_value_info(masks[(d, r)], TensorProto.BOOL, None)
        return masks[(d, r)]

    outside: dict[tuple[str, int], str] = {}

    def read(src: str, d: int) -> str:
        if src in body_ids:
            if d == 0:
                return local[src]
            r = step_rank(body_ids[src])
            return body.op("Where", [valid(d, r), carried[(src, abs(d))], lw.initial[src]], f"{src}[t{d:+d}]")
        if lw.axes.get(src, ())[:1] == (loop.axis,):
            if (src, d) not in outside:
                whole = lw.tensor[src] if d == 0 else lw.delayed(src, d)
                outside[(src, d)] = scan_input(whole, f"{src}[t]" if d == 0 else f"{src}[t{d:+d}]", src in lw.integer)
            return outside[(src, d)]
        # a parameter, a value of each example, or one on other axes: the whole of it, every step
        return lw.tensor[src]

    def operand_rank(src: str) -> int:
        if src in body_ids:
            return step_rank(body_ids[src])
        return lw.rank[src] - 1 if lw.axes.get(src, ())[:1] == (loop.axis,) else lw.rank[src]

    for b in loop.body:
        xs = [read(src, d) for src, d in b.inputs]
        out = lw.lower(body, b, xs, [operand_rank(src) for src, _ in b.inputs], step_rank(b),
                       [own(lw.axes.get(src, ())) for src, _ in b.inputs])
        local[b.id] = out
        rank[b.id] = step_rank(b)

    if not scan_inputs:   # a Scan takes its number of steps from its scan inputs
        scan_input(lw.real(loop.axis, 2), "real_t", False)
        body_scan_inputs[-1] = helper.make_tensor_value_info(body_scan_inputs[-1].name, TensorProto.BOOL, None)

    # body outputs: the carried states, then every body value read after the loop
    outputs, carried_out = [], []
    for s in loop.states:
        for j in range(1, depth[s] + 1):
            src = local[s] if j == 1 else carried[(s, j - 1)]
            out = body.op("Identity", [src], f"{s}.carry")
            outputs.append(helper.make_tensor_value_info(out, elem_type(s, body_ids[s].integer), None))
            carried_out.append(lw.names.claim(f"{s}.final"))
    wanted = [b.id for b in loop.body if b.id in lw.read_after_loop(loop)]
    stacked = []
    for v in wanted:
        out = body.op("Identity", [local[v]], f"{v}.step")
        outputs.append(helper.make_tensor_value_info(out, elem_type(v, body_ids[v].integer), None))
        stacked.append(lw.names.claim(v))
    graph = helper.make_graph(body.nodes, f"loop{loop.index}", body_inputs + body_scan_inputs, outputs)
    g.nodes.append(helper.make_node(
        "Scan", initial_outer + scan_inputs, carried_out + stacked, name=lw.names.claim(f"Scan:loop{loop.index}"),
        body=graph, num_scan_inputs=len(scan_inputs)))
    for v, name in zip(wanted, stacked):
        b = body_ids[v]
        lw._define(v, in_time_order(name), step_rank(b) + 1, True, bool(b.integer))
