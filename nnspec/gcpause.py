"""A pause of Python's cyclic garbage collector while the compiler runs.

Compiling a big spec allocates a few hundred thousand small objects (AST nodes,
graph nodes, plan steps) and makes almost no cyclic garbage. While they pile up,
the collector scans all of them again and again (a full collection each time the
number of objects grows by a quarter): a third of the time of a 10,000-equation
compile, and a share that grew with the size of the spec. Paused, they are scanned
once, by the first collection after the compile, which also frees any cycles made
meanwhile.
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
            gc.enable()
