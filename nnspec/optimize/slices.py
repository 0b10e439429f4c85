"""``sink_slices``: an elementwise op applied to adjacent slices of one value (and, for binary ops, to
matching slices of another value or to parameter vectors) becomes one op over the union. ``simplify``:
slices of slices compose, whole-width slices disappear, and values nothing reads are removed."""
from __future__ import annotations

from ..ops import REGISTRY
from ..plan import LoopStep
from .work import Work, braced, drop_dead, first_in, known_size, new_step


def slice_of(w: Work, operand):
    """(source operand, start, stop) when operand is a slice read at the same step, else None."""
    src, d = operand
    ws = w.where.get(src)
    if d != 0 or ws is None or ws.step.op != "slice" or ws.step.inputs[0][1] != 0:
        return None
    a = int(ws.step.attrs.get("start", 0))
    width = known_size(ws.step.shape[-1]) if ws.step.shape else None
    if width is None:
        return None
    return (ws.step.inputs[0][0], 0), a, a + width


def sink_slices(w: Work) -> None:
    # Each round merges one level of a chain (the gates' adds, then their activations, ...). The
    # slices a round leaves unread are not elementwise, so they never join a later round's runs:
    # dead code goes once before and once after the rounds, not at every round.
    drop_dead(w)
    for _ in range(50):
        if not _sink_once(w):
            break
    drop_dead(w)


def _sink_once(w: Work) -> bool:
    """Merge one run of elementwise ops over adjacent slices; True if something changed.

    A member is (op step, width, parts): per operand either ``(source operand, start)``
    for a slice of that source or the name of a parameter vector. Members of a run
    apply the same op to the same sources, and each source's slices follow one
    another from member to member (the offsets may differ between sources).
    """
    contexts = [(None, [s for s in w.steps if type(s) is not LoopStep])]
    contexts += [(s, list(s.body)) for s in w.steps if type(s) is LoopStep]
    # elementwise: the output at position j reads only the inputs at j, so it commutes with slicing
    elementwise = {name for name, op in REGISTRY.items() if op.elementwise}
    for loop, steps in contexts:
        groups: dict[tuple, list] = {}
        for s in steps:
            if s.op not in elementwise or s.integer or not s.shape:
                continue
            width = known_size(s.shape[-1])
            if width is None:
                continue
            parts, kinds = [], []
            for operand in s.inputs:
                sl = slice_of(w, operand)
                if sl is not None and sl[2] - sl[1] == width:
                    parts.append((sl[0], sl[1]))
                    kinds.append(("slice", sl[0]))
                    continue
                p = w.params.get(operand[0])
                if (p is not None and operand[1] == 0 and len(s.shape) == 1
                        and list(p.shape) == [s.shape[-1]]):
                    parts.append(operand[0])
                    kinds.append(("param",))
                    continue
                break
            else:
                if not any(k[0] == "slice" for k in kinds):
                    continue
                key = (s.op, repr(sorted(s.attrs.items())), *kinds)
                groups.setdefault(key, []).append((s, width, parts))
        for key, members in groups.items():
            j = next(i for i, k in enumerate(key[2:]) if k[0] == "slice")
            members.sort(key=lambda m: m[2][j][1])
            runs, cur = [], [members[0]]
            for m in members[1:]:
                prev = cur[-1]
                if all(isinstance(a, str) or a[1] == b[1] + prev[1] for a, b in zip(m[2], prev[2])):
                    cur.append(m)
                else:
                    runs.append(cur)
                    cur = [m]
            runs.append(cur)
            for run in runs:
                if len(run) >= 2:
                    _merge_run(w, loop, run)
    return w.commit()


def _merge_run(w: Work, loop, run) -> None:
    total = sum(m[1] for m in run)
    first_member = first_in(w, loop, [m[0] for m in run])
    s0 = run[0][0]
    operands, outer_new, inner_new = [], [], []
    for pos, part in enumerate(run[0][2]):
        if isinstance(part, tuple):  # slices of one source: their union
            (src, d), lo = part
            full = w.shape(src)
            if full and known_size(full[-1]) == total and lo == 0:
                operands.append((src, d))
                continue
            sid = w.fresh(f"{src}.{lo}:{lo + total}")
            st = new_step(sid, "slice", [(src, d)], list(full[:-1]) + [total], w.seq(src),
                     {"start": lo, "stop": lo + total}, s0.span)
            if w.loop_of(src) is None and loop is not None:
                outer_new.append(st)   # a slice of a value from outside the loop is computed outside
            else:
                inner_new.append(st)
            operands.append((sid, 0))
        else:  # parameter vectors: concatenated once per pass
            names = [m[2][pos] for m in run]
            cid = w.fresh(braced(names))
            st = new_step(cid, "concat_rows", [(n, 0) for n in names], [total])
            (outer_new if loop is not None else inner_new).append(st)
            operands.append((cid, 0))
    uid = w.fresh(braced([m[0].id for m in run]))
    merged = new_step(uid, s0.op, operands, list(s0.shape[:-1]) + [total], s0.seq, s0.attrs, s0.span)
    if outer_new:
        w.insert_before(loop, outer_new)
    w.insert_before(first_member, inner_new + [merged])
    at = 0
    for s, width, _ in run:
        w.replace(s, new_step(s.id, "slice", [(uid, 0)], s.shape, s.seq, {"start": at, "stop": at + width}, s.span))
        at += width



def simplify(w: Work, drop_whole: bool = True) -> None:
    if drop_whole:
        _compose_slices(w)
    drop_dead(w)


def _compose_slices(w: Work) -> None:
    changed = True
    while changed:
        changed = False
        protected = w.protected()
        for v, ws in list(w.where.items()):
            s = ws.step
            if s.op != "slice":
                continue
            sl = slice_of(w, s.inputs[0])
            if sl is not None:  # slice of a slice
                a = int(s.attrs.get("start", 0))
                width = known_size(s.shape[-1])
                if width is not None:
                    s.inputs = [sl[0]]
                    s.attrs = {"start": sl[1] + a, "stop": sl[1] + a + width}
                    changed = True
            src, d = s.inputs[0]
            full = w.shape(src)
            if (d == 0 and full and s.shape and full[-1] == s.shape[-1] and int(s.attrs.get("start", 0)) == 0
                    and v not in protected and w.loop_of(src) is ws.loop):
                for r, pos, rd, _ in w.readers.get(v, []):  # a whole-width slice is its source
                    r.inputs[pos] = (src, rd)
                changed = True
        w.reindex()
        drop_dead(w)
