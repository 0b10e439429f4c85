"""A pause of Python's cyclic garbage collector while the compiler runs.

Compiling a big spec allocates a few hundred thousand small objects (AST nodes,
graph nodes, plan steps) and makes almost no cyclic garbage. While they pile up,
the collector scans all of them again and again (a full collection each time the
number of objects grows by a quarter): a third of the time of a 10,000-equation
compile, and a share that grew with the size of the spec.

Paused, they would all be scanned by the first collection after the pause (of the
youngest generation, which now holds all of them: 40-70 ms after a 1,000-equation
compile, paid by whatever allocates next), and by the next one of the middle
generation again. What the compile keeps is long-lived (the program, the graph, the
plan), so the pause ends by moving the objects that survived it into the oldest
generation, where Python would move them after those two scans: ``gc.freeze()``
then at once ``gc.unfreeze()`` (both O(1): they splice the generations' lists).
Nothing stays frozen: the next full collection scans these objects like any other,
and frees any cycle among them. The compiler's passes make no cyclic garbage
(tests/test_compile_scaling.py checks it), so nothing waits there to be freed.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()      # every tracked object -> the permanent generation ...
            gc.unfreeze()    # ... -> the oldest one: promoted, not frozen
            gc.enable()
