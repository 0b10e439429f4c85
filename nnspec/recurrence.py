"""Loop analysis: which values form recurrent components, and in which direction.

In the manner of CNTK's loop analysis, the strongly connected components of the
graph are the candidate loops. Inside a component:
  * a cycle whose edges all have delay 0 is an algebraic loop: an error naming
    the values on it;
  * delays of both signs (``[t-1]`` and ``[t+1]``) are an error;
  * otherwise the component is recurrent, run forward in time (``[t-k]``) or
    backward (``[t+k]``).
Then each value learns whether it is a sequence (it has a time axis) and
whether it holds integers (token ids, classes).
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from .errors import Diagnostics
from .graph import Graph, closure, user_name, where
from .ops import REGISTRY



@dataclass
class Component:
    index: int
    nodes: list[str]       # in execution order within one time step
    direction: int         # +1 forward in time ([t-k] links), -1 backward ([t+k])
    states: list[str]      # values read at another time step inside the loop


def zero_delay_successors(g: nx.DiGraph) -> dict[str, list[str]]:
    """Each node's readers at the same time step, in the graph's order."""
    return {u: [v for v, data in readers.items() if 0 in data["delays"]] for u, readers in g.adjacency()}


def order_within_step(nodes: list[str], successors: dict[str, list[str]]) -> list[str] | None:
    """``nodes`` ordered so that each comes after the nodes it reads at the same step (Kahn's
    algorithm generation by generation, as ``nx.topological_sort``; ties in the order of ``nodes``);
    None when they read each other in a cycle at the same step."""
    members = set(nodes)
    waiting_on = dict.fromkeys(nodes, 0)
    for u in nodes:
        for v in successors[u]:
            if v in members:
                waiting_on[v] += 1
    ready = [n for n in nodes if waiting_on[n] == 0]
    order: list[str] = []
    while ready:
        generation, ready = ready, []
        for u in generation:
            order.append(u)
            for v in successors[u]:
                if v in members:
                    waiting_on[v] -= 1
                    if waiting_on[v] == 0:
                        ready.append(v)
    return order if len(order) == len(nodes) else None


def _named(graph: Graph, nodes) -> list[str]:
    names = [n for n in nodes if graph.info(n).named]
    return names or list(nodes)


def _in_stdlib(graph: Graph, n: str) -> bool:
    span = graph.info(n).span
    return span is not None and span.file.startswith("<stdlib>")


def find_components(graph: Graph, diags: Diagnostics) -> list[Component]:
    g = graph.g
    successors = zero_delay_successors(g)
    position = {n: i for i, n in enumerate(g)}
    components = []
    for comp in nx.strongly_connected_components(g):
        if len(comp) == 1:
            n = next(iter(comp))
            if not g.has_edge(n, n):
                continue
        # in graph order, not the component's (hash) order: the same spec gets the same plan in every run
        nodes = sorted(comp, key=position.__getitem__)
        order = order_within_step(nodes, successors)
        if order is None:
            _report_algebraic_loop(graph, nodes, successors, diags)
            continue
        links = [(u, data["delays"]) for u in nodes for v, data in g.adj[u].items() if v in comp]
        delays = {d for _, ds in links for d in ds if d != 0}
        if any(d > 0 for d in delays) and any(d < 0 for d in delays):
            names = sorted(_named(graph, comp))
            diags.error(f"the loop through {', '.join(names)} reads both earlier ([t-k]) and later ([t+k]) "
                        f"steps; a recurrent component must run in one direction — split it into a forward "
                        f"and a backward part", graph.info(names[0]).span)
            continue
        states = sorted({u for u, ds in links if ds - {0}})
        comp_obj = Component(len(components), order, -1 if any(d > 0 for d in delays) else +1, states)
        for n in comp:
            graph.info(n).component = comp_obj.index
        components.append(comp_obj)
    return components


def _report_algebraic_loop(graph: Graph, nodes: list[str], successors: dict[str, list[str]],
                           diags: Diagnostics) -> None:
    members = set(nodes)
    zero = nx.DiGraph()
    zero.add_nodes_from(nodes)
    zero.add_edges_from((u, v) for u in nodes for v in successors[u] if v in members)
    cycle = nx.find_cycle(zero)
    loop = _named(graph, [u for u, _ in cycle])
    mine = [i for i, n in enumerate(loop) if not _in_stdlib(graph, n)]
    if mine:  # start the loop at a value of the user's own file, not inside a library cell
        loop = loop[mine[0]:] + loop[:mine[0]]
    first = graph.info(loop[0])
    diags.error("algebraic loop: " + " -> ".join(loop + [loop[0]]) + " depends on itself at the same "
                "time step; read one of them at an earlier step, e.g. " + f"{loop[0]}[t-1]",
                first.span, [(f"'{n}' is defined here", graph.info(n).span) for n in loop[1:4]])


def infer_time_and_type(graph: Graph, components: list[Component], diags: Diagnostics) -> list[str]:
    """Mark sequences and integer values; returns an execution order of all nodes (delay-0 topological)."""
    g = graph.g
    in_component = {n for c in components for n in c.nodes}
    component_of = {n: c.index for c in components for n in c.nodes}
    # a value comes after everything it reads at the same step, and after what it reads at another
    # step outside its own loop (y = g[t-1] must know that g is a sequence before y is typed)
    successors = {u: [v for v, data in readers.items()
                      if 0 in data["delays"] or component_of.get(u, u) != component_of.get(v, v)]
                  for u, readers in g.adjacency()}
    order = order_within_step(list(g), successors)
    if order is None:  # find_components reports algebraic loops before anything asks for an order
        raise nx.NetworkXUnfeasible("the graph has a cycle at delay 0")
    for n in order:
        info = graph.info(n)
        if info.kind in ("input", "target"):
            info.seq = info.sequence
            info.integer = info.elem in ("token", "char", "class")
            continue
        if info.kind in ("param", "const"):
            continue
        op = REGISTRY[info.op]
        operands = [graph.info(src) for src, _ in info.inputs]
        for (src, delay), o in zip(info.inputs, operands):
            if delay and not (o.seq or o.id in in_component or o.kind in ("input", "target") and o.sequence):
                if o.component is None and not _depends_on_sequence(graph, o.id):
                    diags.error(f"'{o.id}' is read at [t{delay:+d}] but it is not a sequence; only values that "
                                f"change over time have earlier or later steps", info.span)
        if op.reduces_time:
            if operands and not operands[0].seq:
                diags.error(f"{info.op}(...) reduces over time, but its argument is not a sequence", info.span)
            info.seq = False
        elif op.scalar_output:  # a loss: one number for the whole batch, however long its sequences
            info.seq = False
        else:
            info.seq = any(o.seq for o in operands) or n in in_component
        integer_in = [o for i, o in enumerate(operands) if o.integer and i not in op.integer_inputs]
        keeps_ids = op.output_integer([True]) or info.op == "identity"
        if integer_in and not keeps_ids:
            o = integer_in[0]
            who = user_name(o, diags.sources)
            what = "token ids" if o.elem in ("token", "char") else "class labels"
            fix = f"embed({who.strip(chr(39))}, 64)" if o.elem in ("token", "char") else "a one-hot encoding"
            diags.error(f"{who} holds {what}, which {info.op} cannot take; use {fix} to turn them into "
                        f"vectors", info.span)
        info.integer = bool(operands) and (op.output_integer([o.integer for o in operands])
                                           or (info.op == "identity" and operands[0].integer))
        if info.integer and operands:
            info.elem = operands[0].elem
    on_sequences = _sequence_dependents(graph)
    for c in components:
        if not any(n in on_sequences for n in c.nodes):
            names = _named(graph, c.nodes)
            span, notes = where(graph, names[0])
            diags.error(f"'{names[0]}' is recurrent (it reads itself at another step) but depends on no "
                        f"sequence input; declare an input as a sequence, e.g. 'input x[8] : seq'", span, notes)
    return order


def _sequence_dependents(graph: Graph) -> set[str]:
    """Every value that depends on a sequence input (one graph walk for all of them, not one per
    component: a spec with hundreds of recurrent layers stays linear)."""
    sequences = [i.id for i in graph.nodes() if i.kind in ("input", "target") and i.sequence]
    return closure(sequences, graph.g.successors)


def _depends_on_sequence(graph: Graph, node: str) -> bool:
    g = graph.g
    return any(graph.info(a).kind in ("input", "target") and graph.info(a).sequence
               for a in nx.ancestors(g, node) | {node})
