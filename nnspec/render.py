"""Drawing the computation graph as Graphviz DOT (and SVG/PNG when Graphviz is installed).

With values and gradients (``nnspec graph --at a=3 b=1 c=-2``) each node shows
its forward value and the gradient of the output with respect to it, as the
lecture draws computation graphs. ``unroll`` draws a recurrent net over that
many time steps; recurrence links (edges with a delay) are dashed and red.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .graph import Graph

_STYLE = {
    "input": 'shape=box, style="rounded,filled", fillcolor="#dbeafe"',
    "target": 'shape=box, style="rounded,filled", fillcolor="#fef3c7"',
    "param": 'shape=box, style="filled", fillcolor="#e5e7eb"',
    "const": "shape=plaintext",
    "op": 'shape=ellipse, style="filled", fillcolor="#ffffff"',
}
BREAK = "\\n"  # a line break inside a DOT label
_SYMBOL = {"add": "+", "sub": "−", "mul": "×", "div": "÷", "matmul": "@", "neg": "−"}


def _fmt(a: np.ndarray) -> str:
    a = np.asarray(a)
    if a.size == 1:
        return f"{float(a.ravel()[0]):.4g}"
    if a.size <= 6:
        return _nested(a)
    return f"{a.shape} array"


def _nested(a: np.ndarray) -> str:
    """A small array as nested lists: a sequence's steps stay apart."""
    if a.ndim == 0:
        return f"{float(a):.3g}"
    return "[" + ", ".join(_nested(x) for x in a) + "]"


def _quote(s: str) -> str:
    return '"' + s.replace('"', '\\"') + '"'


def _label(graph: Graph, n: str, values: dict | None, grads: dict | None) -> str:
    info = graph.info(n)
    if info.kind == "op":
        head = _SYMBOL.get(info.op, info.op)
        label = f"{n}\\n{head}" if info.named else head
    elif info.kind == "const":
        label = _fmt(info.value)
    else:
        label = n
    if info.shape and info.kind != "const":
        label += "\\n[" + ", ".join(str(d) for d in info.shape) + "]"
    if info.axes and info.axes != ("time",):   # a spec with named axes: each value's, outermost first
        label += "\\non " + " × ".join(info.axes)
    if values is not None and n in values and info.kind != "const":
        label += f"\\n= {_fmt(values[n])}"
    if grads is not None and n in grads:
        label += f"\\n∂ = {_fmt(grads[n])}"
    return label


@dataclass
class PictureNode:
    id: str
    lines: list[str]        # the label, one entry a line
    kind: str               # input | target | param | const | op: decides the style
    cluster: int | None = None   # the time step of an unrolled drawing


@dataclass
class PictureEdge:
    source: str
    target: str
    delay: int = 0          # a recurrence link when not 0: dashed and red
    constraint: bool = True  # False: does not decide the layering (a link back in time)


@dataclass
class Picture:
    """What a drawing of the graph shows, before anyone lays it out (Graphviz or nnspec.layout)."""
    name: str
    nodes: list[PictureNode]
    edges: list[PictureEdge]
    clusters: dict[int, str] = field(default_factory=dict)   # cluster -> its caption


def picture(graph: Graph, values: dict | None = None, grads: dict | None = None, unroll: int = 0,
            per_step: bool = False) -> Picture:
    """What a drawing shows. ``unroll=k``: every time-varying node once per step; its values and
    gradients are shown only when ``per_step`` says they are given per step (time first)."""
    g = graph.g

    def node(n: str, shown: str, with_values: bool, cluster: int | None = None) -> PictureNode:
        label = _label(graph, n, values if with_values else None, grads if with_values else None)
        return PictureNode(shown, label.split(BREAK), graph.info(n).kind, cluster)

    def step_node(n: str, t: int) -> PictureNode:   # a time-varying node at step t (1-based)
        def at(d: dict | None) -> dict | None:
            return {n: d[n][t - 1]} if per_step and d and n in d and len(d[n]) >= t else None
        label = _label(graph, n, at(values), at(grads))
        return PictureNode(f"{n}@{t}", label.split(BREAK), graph.info(n).kind, t)

    if unroll <= 0:
        nodes = [node(n, n, True) for n in g.nodes]
        edges = [PictureEdge(u, v, d, constraint=not d) for u, v, data in g.edges(data=True)
                 for d in sorted(data["delays"])]
        return Picture(graph.flat.name, nodes, edges)
    # unrolled: every time-varying node once per step, shared nodes (parameters) once
    timed = {n for n in g.nodes if graph.info(n).seq}
    nodes = [step_node(n, t) for t in range(1, unroll + 1) for n in g.nodes if n in timed]
    nodes += [node(n, n, per_step) for n in g.nodes if n not in timed]
    edges = []
    for u, v, data in g.edges(data=True):
        for d in sorted(data["delays"]):
            for t in range(1, unroll + 1):
                src_t = t + d
                if v in timed and u in timed:
                    if not 1 <= src_t <= unroll:
                        continue
                    edges.append(PictureEdge(f"{u}@{src_t}", f"{v}@{t}", d))
                elif v in timed:
                    edges.append(PictureEdge(u, f"{v}@{t}"))
                elif u in timed:
                    edges.append(PictureEdge(f"{u}@{t}", v))
                    break
                else:
                    edges.append(PictureEdge(u, v))
                    break
    return Picture(graph.flat.name, nodes, edges, {t: f"t = {t}" for t in range(1, unroll + 1)})


def to_dot(graph: Graph, values: dict | None = None, grads: dict | None = None, unroll: int = 0) -> str:
    return dot_of(picture(graph, values, grads, unroll))


def dot_of(pic: Picture) -> str:
    lines = [f"digraph {_quote(pic.name)} {{", "  rankdir=BT;",
             '  node [fontname="Helvetica", fontsize=11]; edge [fontname="Helvetica", fontsize=9];']

    def node_line(n: PictureNode, indent: str) -> str:
        return f"{indent}{_quote(n.id)} [label={_quote(BREAK.join(n.lines))}, {_STYLE[n.kind]}];"

    for c, caption in pic.clusters.items():
        lines.append(f'  subgraph "cluster_t{c}" {{ label="{caption}"; style=dotted;')
        lines += [node_line(n, "    ") for n in pic.nodes if n.cluster == c]
        lines.append("  }")
    lines += [node_line(n, "  ") for n in pic.nodes if n.cluster is None]
    for e in pic.edges:
        style = ""
        if e.delay:
            style = f' [style=dashed, color="#dc2626", label="t{e.delay:+d}"' + (
                ", constraint=false]" if not e.constraint else "]")
        lines.append(f"  {_quote(e.source)} -> {_quote(e.target)}{style};")
    lines.append("}")
    return "\n".join(lines)


def write_graph(dot: str, path: Path, drawn_svg: Callable[[], str] | None = None) -> str:
    """Write DOT, or render SVG/PNG with Graphviz's ``dot``; returns a note for the user. Without
    Graphviz, ``drawn_svg()`` (nnspec's own drawing, nnspec.display) makes the SVG, and other
    formats get that SVG beside them; with neither, the DOT is written."""
    fmt = path.suffix.lstrip(".").lower() or "dot"
    if fmt in ("dot", "gv"):
        path.write_text(dot, encoding="utf-8")
        return f"wrote {path}"
    exe = shutil.which("dot")
    if exe is not None:
        subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=dot.encode(), check=True)
        return f"wrote {path}"
    if drawn_svg is None:
        written, what = path.with_suffix(".dot"), dot
    else:
        written, what = path.with_suffix(".svg"), drawn_svg()
    written.write_text(what, encoding="utf-8")
    if written == path:
        return f"wrote {path}"
    drawing = " (nnspec's own drawing)" if drawn_svg is not None else ""
    return (f"Graphviz is not installed, so no {fmt.upper()}: wrote {written}{drawing} instead "
            f"(install graphviz, e.g. 'apt-get install graphviz', to render {fmt.upper()})")
