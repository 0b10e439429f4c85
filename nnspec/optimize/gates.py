"""``fuse_matmuls``: products with parameter weights that share their right operand (same value, same
delay) become one product with the weights concatenated by ``concat_rows`` (once per pass, outside any
loop), followed by ``slice`` views. Gates are ordered so that gates with the same activation sit side by
side, and so that the recurrent slices line up with the input-projection slices they are added to."""
from __future__ import annotations

from ..plan import LoopStep, OpStep
from .work import Work, braced, first_in, known_size, new_step


def _chain_activation(w: Work, v: str, depth: int = 0) -> str:
    """The first op other than add/sub/slice reached by following single readers from v."""
    rs = w.readers.get(v, [])
    if len(rs) != 1 or depth > 20:
        return ""
    r = rs[0][0]
    if r.op in ("add", "sub", "slice"):
        return _chain_activation(w, r.id, depth + 1)
    return r.op


def _destination(w: Work, v: str, depth: int = 0):
    """The loop that v's value flows into, following single readers (None: it stays outside)."""
    rs = w.readers.get(v, [])
    if len(rs) != 1 or depth > 20:
        return None
    r, _, _, loop = rs[0]
    if loop is not None:
        return loop.index
    if r.op in ("add", "sub", "slice"):
        return _destination(w, r.id, depth + 1)
    return None


def _partner(w: Work, v: str):
    """For v read once by an add/sub, the (source, start) of the slice it is added to."""
    rs = w.readers.get(v, [])
    if len(rs) != 1 or rs[0][0].op not in ("add", "sub") or rs[0][2] != 0:
        return None
    r, pos = rs[0][0], rs[0][1]
    other, d = r.inputs[1 - pos]
    ws = w.where.get(other)
    if d != 0 or ws is None or ws.step.op != "slice" or ws.step.inputs[0][1] != 0:
        return None
    return ws.step.inputs[0][0], int(ws.step.attrs.get("start", 0))


def fuse_matmuls(w: Work, outside: bool = True, inside: bool = True) -> None:
    groups: dict[tuple, list[OpStep]] = {}
    contexts = []
    if outside:
        contexts.append((None, [s for s in w.steps if not isinstance(s, LoopStep)]))
    if inside:
        contexts += [(s, list(s.body)) for s in w.steps if isinstance(s, LoopStep)]
    for loop, steps in contexts:
        for s in steps:
            if s.op != "matmul" or s.integer:
                continue
            (wt, dw), x = s.inputs
            p = w.params.get(wt)
            if dw != 0 or p is None or len(p.shape) != 2 or known_size(p.shape[0]) is None:
                continue
            key = (id(loop), tuple(x))
            groups.setdefault(key, []).append(s)
    for (lid, x), members in groups.items():
        seen, uniq = set(), []
        for m in members:
            if m.inputs[0][0] not in seen:
                seen.add(m.inputs[0][0])
                uniq.append(m)
        if len(uniq) < 2:
            continue
        loop = w.loop_of(uniq[0].id)
        _fuse_group(w, loop, uniq)
    w.commit()


def _fuse_group(w: Work, loop: LoopStep | None, members: list[OpStep]) -> None:
    partners = {m.id: _partner(w, m.id) for m in members}
    sources = {p[0] for p in partners.values() if p is not None}
    dest = {m.id: _destination(w, m.id) for m in members}
    act = {m.id: _chain_activation(w, m.id) for m in members}
    count: dict[tuple, int] = {}
    for m in members:
        count[dest[m.id], act[m.id]] = count.get((dest[m.id], act[m.id]), 0) + 1

    def key(m):
        # Gates that flow into the same loop side by side; within one loop, aligned with
        # the slices they are added to, else grouped by activation (the most common
        # first), so that one op can serve adjacent gates. Independent of plan order.
        d = dest[m.id]
        where = (0, d) if d is not None else (1, -1)
        p = partners[m.id]
        if len(sources) == 1 and p is not None:
            return (where, 0, p[1], 0, "", m.inputs[0][0])
        a = act[m.id]
        return (where, 1, 0, -count[d, a], a, m.inputs[0][0])

    order = sorted(members, key=key)
    weights = [m.inputs[0][0] for m in order]
    rows = [known_size(w.params[n].shape[0]) for n in weights]
    cols = w.params[weights[0]].shape[1]
    wcat = w.fresh(braced(weights))
    x = order[0].inputs[1]
    prod = w.fresh(f"{wcat}@{x[0]}")
    m0 = first_in(w, loop, members)
    cat = new_step(wcat, "concat_rows", [(n, 0) for n in weights], [sum(rows), cols])
    mm = new_step(prod, "matmul", [(wcat, 0), x], list(m0.shape[:-1]) + [sum(rows)], m0.seq, span=m0.span)
    if loop is None:
        w.insert_before(m0, [cat, mm])
    else:
        w.insert_before(loop, [cat])
        w.insert_before(m0, [mm])
    start = 0
    for m, n in zip(order, rows):
        sl = new_step(m.id, "slice", [(prod, 0)], m.shape, m.seq, {"start": start, "stop": start + n}, m.span)
        w.replace(m, sl)
        start += n
