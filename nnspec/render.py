"""Drawing the computation graph as Graphviz DOT (and SVG/PNG when Graphviz is installed).

With values and gradients (``nnspec graph --at a=3 b=1 c=-2``) each node shows
its forward value and the gradient of the output with respect to it, as the
lecture draws computation graphs. ``unroll`` draws a recurrent net over that
many time steps; recurrence links (edges with a delay) are dashed and red.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from .graph import Graph

_STYLE = {
    "input": 'shape=box, style="rounded,filled", fillcolor="#dbeafe"',
    "target": 'shape=box, style="rounded,filled", fillcolor="#fef3c7"',
    "param": 'shape=box, style="filled", fillcolor="#e5e7eb"',
    "const": "shape=plaintext",
    "op": 'shape=ellipse, style="filled", fillcolor="#ffffff"',
}
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
    if values is not None and n in values and info.kind != "const":
        label += f"\\n= {_fmt(values[n])}"
    if grads is not None and n in grads:
        label += f"\\n∂ = {_fmt(grads[n])}"
    return label


def to_dot(graph: Graph, values: dict | None = None, grads: dict | None = None, unroll: int = 0) -> str:
    g = graph.g
    lines = [f"digraph {_quote(graph.flat.name)} {{", "  rankdir=BT;",
             '  node [fontname="Helvetica", fontsize=11]; edge [fontname="Helvetica", fontsize=9];']
    if unroll <= 0:
        for n in g.nodes:
            info = graph.info(n)
            lines.append(f"  {_quote(n)} [label={_quote(_label(graph, n, values, grads))}, {_STYLE[info.kind]}];")
        for u, v, data in g.edges(data=True):
            for d in sorted(data["delays"]):
                lines.append(f"  {_quote(u)} -> {_quote(v)}" + (
                    f' [style=dashed, color="#dc2626", label="t{d:+d}", constraint=false];' if d else ";"))
        lines.append("}")
        return "\n".join(lines)
    # unrolled: every time-varying node once per step, shared nodes (parameters) once
    timed = {n for n in g.nodes if graph.info(n).seq}
    for t in range(1, unroll + 1):
        lines.append(f'  subgraph "cluster_t{t}" {{ label="t = {t}"; style=dotted;')
        for n in timed:
            lines.append(f"    {_quote(f'{n}@{t}')} [label={_quote(_label(graph, n, None, None))}, "
                         f"{_STYLE[graph.info(n).kind]}];")
        lines.append("  }")
    for n in g.nodes:
        if n not in timed:
            lines.append(f"  {_quote(n)} [label={_quote(_label(graph, n, None, None))}, {_STYLE[graph.info(n).kind]}];")
    for u, v, data in g.edges(data=True):
        for d in sorted(data["delays"]):
            for t in range(1, unroll + 1):
                src_t = t + d
                if v in timed and u in timed:
                    if not 1 <= src_t <= unroll:
                        continue
                    style = ' [style=dashed, color="#dc2626", label="t%+d"]' % d if d else ""
                    lines.append(f"  {_quote(f'{u}@{src_t}')} -> {_quote(f'{v}@{t}')}{style};")
                elif v in timed:
                    lines.append(f"  {_quote(u)} -> {_quote(f'{v}@{t}')};")
                elif u in timed:
                    lines.append(f"  {_quote(f'{u}@{t}')} -> {_quote(v)};")
                    break
                else:
                    lines.append(f"  {_quote(u)} -> {_quote(v)};")
                    break
    lines.append("}")
    return "\n".join(lines)


def write_graph(dot: str, path: Path) -> str:
    """Write DOT, or render SVG/PNG with Graphviz's ``dot``; returns a note for the user."""
    fmt = path.suffix.lstrip(".").lower() or "dot"
    if fmt in ("dot", "gv"):
        path.write_text(dot, encoding="utf-8")
        return f"wrote {path}"
    exe = shutil.which("dot")
    if exe is None:
        fallback = path.with_suffix(".dot")
        fallback.write_text(dot, encoding="utf-8")
        return (f"Graphviz is not installed, so no {fmt.upper()}: wrote {fallback} instead "
                f"(install graphviz, e.g. 'apt-get install graphviz', to render it)")
    subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=dot.encode(), check=True)
    return f"wrote {path}"
