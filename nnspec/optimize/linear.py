"""``fuse_linear``: ``W @ x + b`` with a parameter bias becomes one ``linear`` step: the bias is added in
place into the product, no second array."""
from __future__ import annotations

from .work import Work, drop_dead


def fuse_linear(w: Work) -> None:
    protected = w.protected()
    fused: set[str] = set()
    changed = []
    for v, ws in list(w.where.items()):
        s = ws.step
        if s.op != "add" or s.integer:
            continue
        for pos in (0, 1):
            (m, dm), (b, db) = s.inputs[pos], s.inputs[1 - pos]
            mw = w.where.get(m)
            bshape = w.shape(b)
            if (dm != 0 or db != 0 or mw is None or mw.step.op != "matmul" or mw.loop is not ws.loop
                    or m in protected or not w.static(b) or bshape is None or len(bshape) != 1
                    or not mw.step.shape or list(bshape) != [mw.step.shape[-1]]
                    or list(s.shape) != list(mw.step.shape) or len(w.readers.get(m, [])) != 1):
                continue
            if m in fused:
                continue
            fused.add(m)
            changed.append((s, s.inputs))
            s.op = "linear"
            s.inputs = list(mw.step.inputs) + [(b, 0)]
            break
    for s, old in changed:   # after the sweep: it reads the indexes as they were before it
        w.rewired(s, old)
    drop_dead(w)
