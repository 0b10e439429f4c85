"""A small directed graph: the part of networkx's ``DiGraph`` the compiler uses, and the two
algorithms it runs on it (strongly connected components, a cycle).

networkx imports all of its algorithms when it is imported (~0.15 s, a third of a command's
start-up); the compiler needs a dict of dicts. The views and the orders follow networkx's:
nodes and each node's readers in the order they were added, components in the order of
networkx's ``strongly_connected_components``, so that a spec gets the same plan either way.
``DiGraph.to_networkx()`` hands the graph to networkx's algorithms.
"""
from __future__ import annotations

from typing import Any, Iterator


class NodeView:
    """``g.nodes``: iterate over nodes, ``g.nodes[n]`` its attribute dict, ``g.nodes(data=True)``
    (node, attributes) pairs, ``g.nodes(data="info")`` (node, that attribute)."""

    def __init__(self, attrs: dict[str, dict]):
        self._attrs = attrs

    def __iter__(self) -> Iterator[str]:
        return iter(self._attrs)

    def __len__(self) -> int:
        return len(self._attrs)

    def __contains__(self, n) -> bool:
        return n in self._attrs

    def __getitem__(self, n) -> dict:
        return self._attrs[n]

    def get(self, n, default=None):
        return self._attrs.get(n, default)

    def __call__(self, data: bool | str = False, default=None):
        if data is False:
            return list(self._attrs)
        if data is True:
            return list(self._attrs.items())
        return [(n, d.get(data, default)) for n, d in self._attrs.items()]


class EdgeView:
    """``g.edges``: iterate over (u, v), ``g.edges[u, v]`` an edge's attribute dict,
    ``g.edges(data=True)`` (u, v, attributes)."""

    def __init__(self, succ: dict[str, dict[str, dict]]):
        self._succ = succ

    def __iter__(self):
        return ((u, v) for u, out in self._succ.items() for v in out)

    def __len__(self) -> int:
        return sum(len(out) for out in self._succ.values())

    def __contains__(self, edge) -> bool:
        u, v = edge
        return v in self._succ.get(u, ())

    def __getitem__(self, edge) -> dict:
        u, v = edge
        return self._succ[u][v]

    def __call__(self, data: bool = False):
        if data:
            return [(u, v, d) for u, out in self._succ.items() for v, d in out.items()]
        return list(self)


class DiGraph:
    """Nodes with attribute dicts, and edges u -> v with attribute dicts (networkx's API)."""

    def __init__(self):
        self._node: dict[str, dict[str, Any]] = {}
        self._succ: dict[str, dict[str, dict]] = {}
        self._pred: dict[str, dict[str, dict]] = {}
        self.nodes = NodeView(self._node)
        self.edges = EdgeView(self._succ)
        self.adj = self._succ    # g.adj[u]: u's readers -> the edges' attributes

    def __iter__(self) -> Iterator[str]:
        return iter(self._node)

    def __len__(self) -> int:
        return len(self._node)

    def __contains__(self, n) -> bool:
        return n in self._node

    def add_node(self, n: str, **attrs) -> None:
        if n not in self._node:
            self._node[n], self._succ[n], self._pred[n] = {}, {}, {}
        self._node[n].update(attrs)

    def add_nodes_from(self, nodes) -> None:
        for n in nodes:
            self.add_node(n)

    def add_edge(self, u: str, v: str, **attrs) -> None:
        self.add_node(u)
        self.add_node(v)
        data = self._succ[u].get(v)
        if data is None:
            data = self._succ[u][v] = self._pred[v][u] = {}
        data.update(attrs)

    def add_edges_from(self, edges) -> None:
        for u, v in edges:
            self.add_edge(u, v)

    def remove_node(self, n: str) -> None:
        for v in self._succ.pop(n):
            del self._pred[v][n]
        for u in self._pred.pop(n):
            del self._succ[u][n]
        del self._node[n]

    def remove_edge(self, u: str, v: str) -> None:
        del self._succ[u][v]
        del self._pred[v][u]

    def has_node(self, n) -> bool:
        return n in self._node

    def has_edge(self, u, v) -> bool:
        return v in self._succ.get(u, ())

    def successors(self, n: str) -> Iterator[str]:
        return iter(self._succ[n])

    def predecessors(self, n: str) -> Iterator[str]:
        return iter(self._pred[n])

    def out_degree(self, n: str) -> int:
        return len(self._succ[n])

    def in_degree(self, n: str) -> int:
        return len(self._pred[n])

    def adjacency(self):
        return iter(self._succ.items())

    def number_of_nodes(self) -> int:
        return len(self._node)

    def number_of_edges(self) -> int:
        return len(self.edges)

    def to_networkx(self):
        """The same graph as a ``networkx.DiGraph`` (networkx, not a dependency of nnspec, must be installed)."""
        import networkx as nx
        g = nx.DiGraph()
        for n, attrs in self._node.items():
            g.add_node(n, **attrs)
        for u, out in self._succ.items():
            for v, attrs in out.items():
                g.add_edge(u, v, **attrs)
        return g


def strongly_connected_components(g: DiGraph) -> Iterator[set[str]]:
    """The graph's strongly connected components, each a set, in the order of networkx's
    function of that name (Tarjan's algorithm without recursion, after Nuutila)."""
    preorder: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    found: set[str] = set()
    waiting: list[str] = []
    counter = 0
    succ = g._succ
    readers = {v: iter(succ[v]) for v in succ}
    for source in succ:
        if source in found:
            continue
        stack = [source]
        while stack:
            v = stack[-1]
            if v not in preorder:
                counter += 1
                preorder[v] = counter
            done = True
            for w in readers[v]:
                if w not in preorder:
                    stack.append(w)
                    done = False
                    break
            if not done:
                continue
            low = preorder[v]
            for w in succ[v]:
                if w not in found:
                    low = min(low, lowlink[w] if preorder[w] > preorder[v] else preorder[w])
            lowlink[v] = low
            stack.pop()
            if low == preorder[v]:
                component = {v}
                while waiting and preorder[waiting[-1]] > preorder[v]:
                    component.add(waiting.pop())
                found.update(component)
                yield component
            else:
                waiting.append(v)


def find_cycle(nodes: list[str], successors: dict[str, list[str]]) -> list[str] | None:
    """The nodes of the first cycle a depth-first walk finds (from each of ``nodes`` in turn,
    readers in the order of ``successors``), in order along it, as networkx's ``find_cycle``
    finds it; None when there is none."""
    explored: set[str] = set()
    for start in nodes:
        if start in explored:
            continue
        path, on_path, todo = [start], {start}, [iter(successors.get(start, ()))]
        while path:
            nxt = next((v for v in todo[-1] if v not in explored or v in on_path), None)
            if nxt is None:   # every reader walked: no cycle through it
                done = path.pop()
                on_path.discard(done)
                explored.add(done)
                todo.pop()
                continue
            if nxt in on_path:
                return path[path.index(nxt):]
            path.append(nxt)
            on_path.add(nxt)
            todo.append(iter(successors.get(nxt, ())))
    return None
