"""nnspec.digraph, the compiler's graph, against networkx: the same views, the same strongly
connected components in the same order, the same cycle found (so a spec's plan and its
algebraic-loop message do not depend on which of the two the compiler uses)."""
from __future__ import annotations

import random

import pytest

from nnspec.digraph import DiGraph, find_cycle, strongly_connected_components

nx = pytest.importorskip("networkx")


def random_graphs(count: int = 300):
    rng = random.Random(7)
    for _ in range(count):
        n = rng.randint(1, 12)
        names = [f"v{i}" for i in rng.sample(range(40), n)]
        edges = [(rng.choice(names), rng.choice(names)) for _ in range(rng.randint(0, 3 * n))]
        yield names, edges


def both(names, edges):
    ours, theirs = DiGraph(), nx.DiGraph()
    for g in (ours, theirs):
        for n in names:
            g.add_node(n, info=n.upper())
        for k, (u, v) in enumerate(edges):
            g.add_edge(u, v, delays={k})
    return ours, theirs


def test_views_match_networkx():
    for names, edges in random_graphs():
        ours, theirs = both(names, edges)
        assert list(ours) == list(theirs) and list(ours.nodes) == list(theirs.nodes)
        assert ours.nodes(data=True) == list(theirs.nodes(data=True))
        assert ours.nodes(data="info") == list(theirs.nodes(data="info"))
        assert ours.edges(data=True) == list(theirs.edges(data=True))
        for n in names:
            assert list(ours.successors(n)) == list(theirs.successors(n))
            assert list(ours.predecessors(n)) == list(theirs.predecessors(n))
            assert ours.out_degree(n) == theirs.out_degree(n)
        if names:
            ours.remove_node(names[0])
            theirs.remove_node(names[0])
            assert ours.edges(data=True) == list(theirs.edges(data=True))
            assert [list(ours.predecessors(n)) for n in ours] == [list(theirs.predecessors(n)) for n in theirs]


def test_components_in_networkx_order():
    for names, edges in random_graphs():
        ours, theirs = both(names, edges)
        assert list(strongly_connected_components(ours)) == list(nx.strongly_connected_components(theirs))


def test_the_cycle_networkx_finds():
    found = 0
    for names, edges in random_graphs():
        ours, theirs = both(names, edges)
        successors = {n: list(ours.successors(n)) for n in ours}
        try:
            expected = [u for u, _ in nx.find_cycle(theirs)]
        except nx.NetworkXNoCycle:
            expected = None
        assert find_cycle(list(ours), successors) == expected
        found += expected is not None
    assert found > 50   # the graphs have cycles to find

