"""Pictures and tables of a network for notebooks: SVG drawn here, no Graphviz needed.

    compiled._repr_html_()   a summary table (values, shapes, parameters) and the graph
    model._repr_html_()      the parameters and the graph
    model.draw(at=feeds)     the graph with each node's value and gradient, as the lecture draws it

The drawing is layered like Graphviz's ``rankdir=BT``: the loss at the top, each operation on
the row above its highest operand, an input, parameter or constant on the row just below its
first reader; a row is ordered by where its neighbours are. A link back in time (``h[t-1]``) is a
dashed red curve that does not decide the rows; an unrolled drawing puts each time step in a
column of its own and the shared parameters in a column at the left.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from graphlib import TopologicalSorter

import numpy as np

from .render import Picture, PictureNode, picture

ROW_GAP = 46          # vertical space between rows of nodes
NODE_GAP = 22         # horizontal space between nodes of a row
COLUMN_GAP = 40       # between the columns of an unrolled drawing
LINE_HEIGHT = 15
CHAR_WIDTH = 7.2      # of 12px Helvetica, on average: decides a box's width
PAD = 8

FILL = {"input": "#dbeafe", "target": "#fef3c7", "param": "#e5e7eb", "const": "none", "op": "#ffffff"}
VALUE_COLOUR = "#1d4ed8"
GRADIENT_COLOUR = "#dc2626"


@dataclass
class Box:
    node: PictureNode
    x: float = 0.0        # centre
    y: float = 0.0        # centre
    width: float = 0.0
    height: float = 0.0


def layout(pic: Picture) -> tuple[dict[str, Box], float, float]:
    """Boxes placed in rows and columns; returns (boxes by node id, width, height)."""
    boxes = {n.id: Box(n, width=_width(n), height=len(n.lines) * LINE_HEIGHT + PAD) for n in pic.nodes}
    operands: dict[str, list[str]] = {n: [] for n in boxes}
    for e in pic.edges:
        if e.delay == 0 and e.source in boxes and e.target in boxes:
            operands[e.target].append(e.source)
    rank: dict[str, int] = {}   # the longest path from an input, over links within a time step
    for n in TopologicalSorter(operands).static_order():
        rank[n] = 1 + max((rank[u] for u in operands[n]), default=-1)
    readers: dict[str, list[str]] = {n: [] for n in boxes}
    for n, ops in operands.items():
        for u in ops:
            readers[u].append(n)
    for n, b in boxes.items():     # an input, parameter or constant sits just below its first reader
        if b.node.kind != "op" and readers[n]:
            rank[n] = min(rank[v] for v in readers[n]) - 1
    top = max(rank.values(), default=0)
    row_height = [max((b.height for n, b in boxes.items() if rank[n] == r), default=0) for r in range(top + 1)]
    row_y, y = {}, PAD + 18
    for r in range(top, -1, -1):   # the highest rank at the top of the picture
        row_y[r] = y + row_height[r] / 2
        y += row_height[r] + ROW_GAP
    height = y - ROW_GAP + PAD

    columns = ([None] if any(n.cluster is None for n in pic.nodes) else []) + list(pic.clusters)
    x0 = PAD
    first_step: dict[str, int] = {}
    for column in columns:
        members = [n.id for n in pic.nodes if n.cluster == column]
        rows = {r: [n for n in members if rank[n] == r] for r in range(top + 1)}
        _place(rows, boxes, x0)
        if column is not None and first_step:   # every time step drawn in the order of the first
            for row in rows.values():
                row.sort(key=lambda n: first_step.get(n.rsplit("@", 1)[0], 0))
            _place(rows, boxes, x0)
        else:   # order each row by its neighbours: operands upward, readers downward, operands again
            for neighbours, ranks in ((operands, range(1, top + 1)), (readers, range(top - 1, -1, -1)),
                                      (operands, range(1, top + 1))):
                for r in ranks:
                    rows[r].sort(key=lambda n: _mean([boxes[u].x for u in neighbours[n] if u in boxes]
                                                     or [boxes[n].x]))
                    _place(rows, boxes, x0, only=r)
            if column is not None:
                first_step = {n.rsplit("@", 1)[0]: i for row in rows.values() for i, n in enumerate(row)}
        width = max((_row_width(row, boxes) for row in rows.values() if row), default=0)
        for r, row in rows.items():   # centre each row in its column
            shift = (width - _row_width(row, boxes)) / 2
            for n in row:
                boxes[n].x += shift
                boxes[n].y = row_y[r]
        x0 += width + COLUMN_GAP
    return boxes, x0 - COLUMN_GAP + PAD + 30, height


def _width(n: PictureNode) -> float:
    text = max(len(s) for s in n.lines) * CHAR_WIDTH + 2 * PAD
    if n.kind == "op":   # an ellipse: its upper and lower lines have less room than its middle
        return text * (1.3 if len(n.lines) > 2 else 1.12)
    return text


def _row_width(row: list[str], boxes: dict[str, Box]) -> float:
    return sum(boxes[n].width + NODE_GAP for n in row) - NODE_GAP


def _place(rows: dict[int, list[str]], boxes: dict[str, Box], x0: float, only: int | None = None) -> None:
    """Left to right in each row's order, from ``x0``, centred on the widest row seen so far."""
    for r, row in rows.items():
        if only is not None and r != only:
            continue
        cx = x0
        for n in row:
            boxes[n].x = cx + boxes[n].width / 2
            cx += boxes[n].width + NODE_GAP


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def svg(pic: Picture) -> str:
    """The picture as a standalone SVG document."""
    boxes, width, height = layout(pic)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#374151"/></marker>'
           '<marker id="arrow-red" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           f'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="{GRADIENT_COLOUR}"/></marker></defs>',
           '<rect width="100%" height="100%" fill="white"/>']
    for cluster, caption in pic.clusters.items():
        members = [b for b in boxes.values() if b.node.cluster == cluster]
        if members:
            left = min(b.x - b.width / 2 for b in members) - PAD
            right = max(b.x + b.width / 2 for b in members) + PAD
            top = min(b.y - b.height / 2 for b in members) - PAD - 14
            bottom = max(b.y + b.height / 2 for b in members) + PAD
            out.append(f'<rect x="{left:.1f}" y="{top:.1f}" width="{right - left:.1f}" height="{bottom - top:.1f}" '
                       f'fill="none" stroke="#9ca3af" stroke-dasharray="2,3"/>')
            out.append(f'<text x="{(left + right) / 2:.1f}" y="{top + 12:.1f}" text-anchor="middle" '
                       f'fill="#6b7280">{html.escape(caption)}</text>')
    arrivals: dict[str, list[str]] = {}   # the links into each node, spread along its lower side
    for e in pic.edges:
        if e.source in boxes and e.target in boxes and not (e.delay and not pic.clusters):
            arrivals.setdefault(e.target, []).append(e.source)
    for target, sources in arrivals.items():
        sources.sort(key=lambda n: boxes[n].x)
    for e in pic.edges:
        if e.source in boxes and e.target in boxes:
            shift = 0.0
            if e.source in arrivals.get(e.target, ()):
                k, b = len(arrivals[e.target]), boxes[e.target]
                shift = (arrivals[e.target].index(e.source) - (k - 1) / 2) * min(14.0, b.width / (k + 1))
            out.append(_edge(boxes[e.source], boxes[e.target], e.delay, unrolled=bool(pic.clusters), shift=shift))
    for b in boxes.values():
        out.append(_box(b))
    out.append("</svg>")
    return "\n".join(out)


def _edge(a: Box, b: Box, delay: int, unrolled: bool, shift: float = 0.0) -> str:
    if delay and not unrolled:
        # a link back in time: out of the source's right side, round, into the target's right side
        x1, y1 = a.x + a.width / 2, a.y
        x2, y2 = b.x + b.width / 2, b.y
        bend = max(x1, x2) + 40 + 10 * abs(delay)
        label_y = (y1 + y2) / 2
        return (f'<path d="M {x1:.1f} {y1:.1f} C {bend:.1f} {y1:.1f}, {bend:.1f} {y2:.1f}, {x2:.1f} {y2:.1f}" '
                f'fill="none" stroke="{GRADIENT_COLOUR}" stroke-dasharray="5,3" marker-end="url(#arrow-red)"/>'
                f'<text x="{bend - 8:.1f}" y="{label_y:.1f}" fill="{GRADIENT_COLOUR}" font-size="10">'
                f't{delay:+d}</text>')
    x1, y1 = a.x, a.y - a.height / 2
    x2, y2 = b.x + shift, b.y + b.height / 2
    if y2 > y1:                      # the target is not above (a link between time steps of one row)
        x1, y1 = a.x + a.width / 2, a.y
        x2, y2 = b.x - b.width / 2, b.y
    colour, dash, marker = ("#374151", "", "url(#arrow)") if not delay else \
        (GRADIENT_COLOUR, ' stroke-dasharray="5,3"', "url(#arrow-red)")
    mid = (y1 + y2) / 2
    return (f'<path d="M {x1:.1f} {y1:.1f} C {x1:.1f} {mid:.1f}, {x2:.1f} {mid:.1f}, {x2:.1f} {y2:.1f}" '
            f'fill="none" stroke="{colour}"{dash} marker-end="{marker}"/>')


def _box(b: Box) -> str:
    kind = b.node.kind
    x, y, w, h = b.x - b.width / 2, b.y - b.height / 2, b.width, b.height
    if kind == "op":
        shape = (f'<ellipse cx="{b.x:.1f}" cy="{b.y:.1f}" rx="{w / 2:.1f}" ry="{h / 2 + 2:.1f}" '
                 f'fill="{FILL[kind]}" stroke="#374151"/>')
    elif kind == "const":
        shape = ""
    else:
        rounded = ' rx="6"' if kind in ("input", "target") else ""
        shape = (f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}"{rounded} '
                 f'fill="{FILL[kind]}" stroke="#374151"/>')
    text = []
    first = b.y - (len(b.node.lines) - 1) * LINE_HEIGHT / 2 + 4
    for i, line in enumerate(b.node.lines):
        colour = GRADIENT_COLOUR if line.startswith("∂") else VALUE_COLOUR if line.startswith("=") else "#111827"
        weight = ' font-weight="bold"' if i == 0 and kind != "const" else ""
        text.append(f'<text x="{b.x:.1f}" y="{first + i * LINE_HEIGHT:.1f}" text-anchor="middle" '
                    f'fill="{colour}"{weight}>{html.escape(line)}</text>')
    return shape + "".join(text)


# ---- what notebooks show -----------------------------------------------------------------

class GraphPicture:
    """A computation graph, drawn: shows itself in a notebook, ``save``s as SVG."""

    def __init__(self, pic: Picture, values: dict | None = None, gradients: dict | None = None):
        self.picture = pic
        self.values = values or {}
        self.gradients = gradients or {}

    def __repr__(self) -> str:
        return (f"<GraphPicture {self.picture.name}: {len(self.picture.nodes)} nodes; "
                f".svg() or .save(path), and a notebook shows it>")

    def svg(self) -> str:
        return svg(self.picture)

    def _repr_svg_(self) -> str:
        return self.svg()

    def save(self, path) -> None:
        from pathlib import Path
        Path(path).write_text(self.svg(), encoding="utf-8")


def draw(compiled, values: dict | None = None, gradients: dict | None = None, unroll: int = 0,
         per_step: bool = False) -> GraphPicture:
    """The graph of a compiled spec, optionally with values and gradients (one example's) on its
    nodes; ``per_step``: those of time-varying nodes are given per time step (time first)."""
    return GraphPicture(picture(compiled.graph, values, gradients, unroll, per_step), values, gradients)


def graph_at(model, feeds: dict, of: str | None = None, unroll: int | None = None) -> GraphPicture:
    """Run ``model`` on one example and draw each node's value and the gradient of ``of``
    (the loss, else the single output) with respect to it. A sequence (a list of ids or of
    vectors, one a time step) is drawn unrolled, ``unroll`` steps (all, by default)."""
    plan = model.plan
    target = of or plan.loss or (plan.outputs[0] if len(plan.outputs) == 1 else None)
    if target is None:
        raise ValueError("say which value to differentiate (of=...): the network has several outputs and no loss")
    declared = {v.name: v for v in plan.inputs + plan.targets}
    feeds = {k: _one_example(v, declared[k].seq if k in declared else False,
                             declared[k].integer if k in declared else False, model.dtype)
             for k, v in feeds.items()}
    # the plan as compiled before optimisation: every node of the graph keeps its own value
    tape = model.trace(feeds, need_loss=plan.loss is not None and all(t.name in feeds for t in plan.targets))
    grads = model.unoptimized.backward(tape, seeds={target: np.ones_like(tape.values[target])})
    graph = model.compiled.graph
    steps = max((len(feeds[k]) for k in feeds if k in declared and declared[k].seq), default=0)

    def of_example(d: dict) -> dict:   # batch item 0; a time-varying value keeps its time axis
        out = {}
        for k, v in d.items():
            a = np.asarray(v)
            if k in model.params or k not in graph.g or a.ndim == 0:
                out[k] = a
            else:
                out[k] = a[:, 0] if graph.info(k).seq and a.ndim >= 2 else a[0]
        return out

    if steps:
        return draw(model.compiled, of_example(tape.values), of_example(grads),
                    unroll=steps if unroll is None else unroll, per_step=True)
    return draw(model.compiled, of_example(tape.values), of_example(grads))


def _one_example(v, seq: bool, integer: bool, dtype) -> np.ndarray:
    """One example's feed with the batch axis added: after time for a sequence, first otherwise."""
    a = np.asarray(v, dtype=np.int64 if integer else dtype)
    return a[:, None] if seq else a[None]


def summary_rows(compiled) -> list[tuple[str, str, str, str, str]]:
    """(value, kind, shape, time, parameters) for each named value, as ``nnspec check`` shows them."""
    rows = []
    g = compiled.graph
    for n in compiled.graph.g.nodes:
        info = g.info(n)
        if not (info.named or info.kind in ("input", "target", "param")):
            continue
        kind = info.kind if info.kind != "op" else info.op
        shape = "×".join(str(d) for d in info.shape) if info.shape else "scalar"
        time = "recurrent" if info.component is not None else ("sequence" if info.seq else "")
        count = ""
        if info.kind == "param" and info.shape is not None:
            count = f"{int(np.prod(info.shape)):,}" if all(isinstance(d, int) for d in info.shape) else "×".join(
                str(d) for d in info.shape)
        rows.append((n, kind, shape, time, count))
    return rows


def table_html(header: list[str], rows: list) -> str:
    """A plain HTML table (no styling a notebook would not already give)."""
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def compiled_html(compiled) -> str:
    total = compiled.parameter_count()
    title = (f"<p><b>{html.escape(compiled.name)}</b>: {compiled.kind}, "
             f"{total:,} parameters</p>")
    table = table_html(["value", "kind", "shape", "time", "parameters"], summary_rows(compiled))
    return f"<div>{title}{table}{draw(compiled).svg()}</div>"


def model_html(model) -> str:
    rows = [(name, "×".join(map(str, p.shape)) or "scalar", f"{p.size:,}", _preview(p))
            for name, p in model.params.items()]
    title = (f"<p><b>{html.escape(model.compiled.name)}</b>: {model.compiled.kind}, "
             f"{model.parameter_count():,} parameters ({model.dtype})</p>")
    return f"<div>{title}{table_html(['parameter', 'shape', 'size', 'first values'], rows)}" \
           f"{draw(model.compiled).svg()}</div>"


def _preview(a: np.ndarray) -> str:
    flat = np.asarray(a).ravel()
    shown = ", ".join(f"{float(v):.3g}" for v in flat[:4])
    return f"[{shown}{', …' if flat.size > 4 else ''}]"
