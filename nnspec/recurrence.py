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

from .axes import infer_axes, nested_axes
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
    _check_initials(graph, components, diags)
    return components


def _check_initials(graph: Graph, components: list[Component], diags: Diagnostics) -> None:
    """``initial`` is the value a recurrent state reads before its first step; the read of any other
    sequence before its start gives zeros (there is nothing there), so an ``initial`` of it would be
    silently ignored: an error at the statement."""
    states = {s for c in components for s in c.states}
    for name, init in graph.initials.items():
        if name in states:
            _check_initial_comes_first(graph, components, name, init, diags)
            continue
        info = graph.info(name)
        what = "an input" if info.kind in ("input", "target") else "not recurrent (it never reads itself at [t-1])"
        diags.error(f"'initial {name}': '{name}' is {what}; 'initial' sets the state a recurrent value reads "
                    f"at its first step, e.g. 'initial h = h0' for 'h = tanh(W @ x + U @ h[t-1])'. "
                    f"'{name}[t-1]' before the first step is zeros", graph.info(init).span)


def _check_initial_comes_first(graph: Graph, components: list[Component], state: str, init: str,
                               diags: Diagnostics) -> None:
    """A loop reads its initial states before its first step, so none of them may be computed from
    the loop's own values (through other values, or through the initial state of another loop that
    reads this one): an error at the statement, naming the value that reads the loop."""
    loop = set(components[graph.info(state).component].nodes)
    initials, g = graph.initials, graph.g

    def needs(n):     # what n is computed from, a loop's state from its initial state too
        yield from g.predecessors(n)
        if n in initials:
            yield initials[n]

    seen, stack, reader = {init}, [init], None
    while stack and reader is None:
        n = stack.pop()
        for m in needs(n):
            if m in loop:
                reader = n
                break
            if m not in seen:
                seen.add(m)
                stack.append(m)
    if reader is None:
        return
    span = graph.initial_statement(state) or graph.info(init).span
    via = "" if reader == init else f" through {user_name(graph.info(reader), diags.sources)}"
    diags.error(f"the initial state of '{state}' is computed from the values of its own loop{via}: the loop "
                f"reads its initial state before its first step, so it cannot come from '{state}' itself; "
                f"compute it from values made before the loop (an input, a parameter, another loop's last(...))",
                span)


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


def dependency_successors(g: nx.DiGraph, components: list[Component]) -> dict[str, list[str]]:
    """Each node's readers that must come after it: every reader at the same step, and every reader
    at another step outside the node's own loop (``c[t-1]`` of a sequence computed before the loop
    that reads it). Only the delayed links within a loop are left out, so the order is acyclic."""
    loop_of = {n: c.index for c in components for n in c.nodes}
    return {u: [v for v, data in readers.items()
                if 0 in data["delays"] or u not in loop_of or loop_of.get(v) != loop_of[u]]
            for u, readers in g.adjacency()}


def infer_time_and_type(graph: Graph, components: list[Component], diags: Diagnostics) -> list[str]:
    """Mark sequences and integer values; returns an execution order of all nodes: each after every
    value it reads, except the links at another step within a loop."""
    g = graph.g
    order = order_within_step(list(g), dependency_successors(g, components))
    if order is None:  # find_components reports algebraic loops before anything asks for an order
        raise nx.NetworkXUnfeasible("the graph has a cycle at delay 0")
    in_component = {n for c in components for n in c.nodes}
    static: set[str] = set()   # parameters, constants and what is computed from them alone
    axes = infer_axes(graph, order, components, diags)   # each value's sequence axes (axes.py)
    for n in order:
        info = graph.info(n)
        info.axes = axes[n]
        if info.kind in ("input", "target"):
            info.seq = info.sequence
            info.integer = info.elem in ("token", "char", "class")
            continue
        if info.kind in ("param", "const"):
            static.add(n)
            continue
        op = REGISTRY[info.op]
        operands = [graph.info(src) for src, _ in info.inputs]
        if operands and all(o.id in static for o in operands):
            static.add(n)
        whole_batch = _whole_batch(info, op, operands, static, diags)
        _check_shared_inputs(info, op, operands, static, diags)
        # over the loop's own axis (a reduction over an encoder's steps inside a decoder loop is fine)
        time_op_in_loop = (op.over_time and n in in_component
                           and len(axes.get(info.inputs[0][0], ()) if info.inputs else ()) <= 1)
        if time_op_in_loop:
            _report_time_op_in_loop(graph, info, components, diags)
        for (src, delay), o in zip(info.inputs, operands):
            if delay and o.whole_batch:
                diags.error(f"{user_name(o, diags.sources)} is a loss, one number for the whole batch; it has no "
                            f"earlier or later steps to read at [t{delay:+d}]", info.span)
            elif delay and not (o.seq or o.id in in_component):
                # o comes before its reader in ``order`` (a delayed link leaves out only links within
                # a loop), so o.seq is final: a value reduced over time (first(x)) has no steps
                diags.error(f"{user_name(o, diags.sources)} is read at [t{delay:+d}] but it is not a sequence; "
                            f"only values that change over time have earlier or later steps", info.span)
        if op.target == "class" and len(operands) == 2 and not time_op_in_loop:
            _check_class_steps(info, operands, diags)
        if whole_batch:  # a loss: one number for the whole batch, however long its sequences
            info.seq = False
            info.axes = ()
        elif op.reduces_time or op.over_time and not op.scalar_output:
            if operands and not operands[0].seq and not time_op_in_loop:
                what = "reduces over time" if op.reduces_time else "works along a sequence's steps"
                diags.error(f"{info.op}(...) {what}, but its argument is not a sequence", info.span)
            info.seq = bool(info.axes)     # a reduction removes the innermost axis only
        else:
            info.seq = bool(info.axes)     # on some axis: of an operand, or of its loop
        integer_in = [o for i, o in enumerate(operands) if o.integer and i not in op.integer_inputs]
        keeps_ids = op.output_integer([True])
        if integer_in and not keeps_ids:
            o = integer_in[0]
            who = user_name(o, diags.sources)
            what = "token ids" if o.elem in ("token", "char") else "class labels"
            fix = f"embed({who.strip(chr(39))}, 64)" if o.elem in ("token", "char") else "a one-hot encoding"
            diags.error(f"{who} holds {what}, which {info.op} cannot take; use {fix} to turn them into "
                        f"vectors", info.span)
        info.integer = bool(operands) and op.output_integer([o.integer for o in operands])
        if info.integer and operands:
            info.elem = operands[0].elem
    nested = nested_axes(graph)
    per_example = closure([i.id for i in graph.nodes() if i.kind in ("input", "target")], graph.g.successors)
    for state, init in graph.initials.items():
        if any(a in nested for a in axes.get(state, ())) and init in per_example and not axes.get(init):
            # a loop over each word's characters starts once per word: its rows are words, not examples
            stmt = graph.initial_statement(state)
            span, notes = (stmt, []) if stmt is not None else where(graph, init)
            diags.error(f"the initial state of '{state}' is {user_name(graph.info(init), diags.sources)}, one value "
                        f"per example, but '{state}' runs over the characters of each word "
                        f"({', '.join(axes[state])}): its initial state is a parameter (or the default zeros)",
                        span, notes)
        if axes.get(init):   # read where a loop starts, for each example: no steps of its own
            stmt = graph.initial_statement(state)
            span, notes = (stmt, []) if stmt is not None else where(graph, init)
            on = "a sequence" if axes[init] == ("time",) else f"on the axes ({', '.join(axes[init])})"
            diags.error(f"the initial state of '{state}' is {user_name(graph.info(init), diags.sources)}, which is "
                        f"{on}: an initial state is one value per example; reduce it first, e.g. last(...)",
                        span, notes)
    on_sequences = _sequence_dependents(graph)
    for c in components:
        if not any(n in on_sequences for n in c.nodes):
            names = _named(graph, c.nodes)
            span, notes = where(graph, names[0])
            diags.error(f"'{names[0]}' is recurrent (it reads itself at another step) but depends on no "
                        f"sequence input; declare an input as a sequence, e.g. 'input x[8] : seq'", span, notes)
    return order


def _check_class_steps(info, operands, diags: Diagnostics) -> None:
    """A class loss pairs each prediction with one class: a prediction at every step against one
    class per example (or the reverse) has no pairing."""
    pred, target = operands
    if pred.seq == target.seq:
        return
    def count(o):
        return "a sequence, one per step" if o.seq else "one per example"
    fix = (f"declare '{target.id} : seq of class[...]' for a class at every step, or reduce the prediction "
           f"over time, e.g. last(...)" if pred.seq and target.kind == "target" else
           "make both sequences or neither")
    diags.error(f"{info.op}: the prediction {user_name(pred, diags.sources)} is {count(pred)}, but the target "
                f"{user_name(target, diags.sources)} is {count(target)}; {fix}", info.span)


def _whole_batch(info, op, operands, static: set[str], diags: Diagnostics) -> bool:
    """Mark a value that is one number for the whole batch: a loss (the mean over the examples and
    their real steps), or arithmetic on losses with numbers and parameters (``0.5 * mse(p, y)``,
    the sum of several losses). Combining one with a value of each example has no meaning: an
    error (and the value is not marked, so that its readers do not repeat it). True when the value
    is whole-batch."""
    totals = [o for o in operands if o.whole_batch]
    if op.scalar_output:
        if totals:
            diags.error(f"{user_name(totals[0], diags.sources)} is already a loss, one number for the whole "
                        f"batch; {info.op} compares a prediction with a target of each example", info.span)
            return False
        info.whole_batch = True
        return True
    if not totals:
        return False
    for (src, delay), o in zip(info.inputs, operands):
        if not o.whole_batch and o.id not in static:
            name = user_name(o, diags.sources)
            if delay:
                name = f"{name[:-1]}[t{delay:+d}]'"
            steps = " and each step" if o.seq or o.component is not None else ""
            diags.error(f"{user_name(totals[0], diags.sources)} is a loss, one number for the whole batch (the "
                        f"mean over its examples), but {name} has a value for each example{steps}; a loss "
                        f"combines only with numbers, parameters and other losses", info.span)
            return False
    info.whole_batch = True
    return True


def _check_shared_inputs(info, op, operands, static: set[str], diags: Diagnostics) -> None:
    """A weight (the left of ``@``) or a table is one for the whole batch; a value of each example
    there would be read with the batch axis as one of its own."""
    shared = range(len(operands)) if op.shared_inputs == "all" else op.shared_inputs
    for i, o in enumerate(operands):
        if i in shared and o.id not in static:
            place = "the left of '@'" if info.op == "matmul" else f"argument {i + 1} of {info.op}"
            diags.error(f"{place} is a weight shared by every example (a parameter, a constant, or computed from "
                        f"them alone), but {user_name(o, diags.sources)} has a value for each example"
                        f"{' and each step' if o.seq else ''}", info.span)
            return


def _report_time_op_in_loop(graph: Graph, info, components: list[Component], diags: Diagnostics) -> None:
    """A reduction over time (or a shift) of a value computed step by step inside a recurrent loop,
    read inside that loop: within a step the value has only its batch axis, and its later steps are
    not computed yet. (Of a value from outside the loop, it is computed once, before the loop.)"""
    comp = next(c for c in components if info.id in c.nodes)
    loop = ", ".join(_named(graph, comp.nodes)[:3])
    src, delay = info.inputs[0]
    arg = user_name(graph.info(src), diags.sources)
    if delay:
        arg = f"{arg[:-1]}[t{delay:+d}]'"
    what = "reduces over the time axis of" if REGISTRY[info.op].reduces_time else "moves along the time axis of"
    diags.error(f"{info.op}(...) {what} {arg}, which is computed inside the recurrent loop through {loop}, one "
                f"step at a time: within a step it has no time axis (only the batch's, which a reduction never "
                f"crosses), and its later steps are not computed yet; reduce over time after the loop, or of a "
                f"value from outside it", info.span)


def _sequence_dependents(graph: Graph) -> set[str]:
    """Every value that depends on a sequence input (one graph walk for all of them, not one per
    component: a spec with hundreds of recurrent layers stays linear)."""
    sequences = [i.id for i in graph.nodes() if i.kind in ("input", "target") and i.sequence]
    return closure(sequences, graph.g.successors)

