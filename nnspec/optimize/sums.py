"""``hoist_sums``: in a loop body, a sum whose addends are partly loop-invariant is reassociated so
that the invariant addends are added once, over all time steps, before the loop: ``W@x + U@h[t-1] + b``
becomes ``(W@x + b)`` outside plus one add inside."""
from __future__ import annotations

from ..plan import LoopStep
from .work import Work, new_step


def hoist_sums(w: Work) -> None:
    protected = w.protected()
    for loop in [s for s in w.steps if isinstance(s, LoopStep)]:
        body_ids = {b.id for b in loop.body}

        def absorbable(v: str) -> bool:
            """An add/sub inside this loop read once, at the same step, by an add/sub of this loop."""
            ws = w.where.get(v)
            if ws is None or ws.loop is not loop or ws.step.op not in ("add", "sub") or v in protected:
                return False
            rs = w.readers.get(v, [])
            return (len(rs) == 1 and rs[0][2] == 0 and rs[0][3] is loop
                    and rs[0][0].op in ("add", "sub") and not ws.step.integer)

        roots = [b for b in loop.body if b.op in ("add", "sub") and not absorbable(b.id) and not b.integer]
        for root in roots:
            leaves, inner = [], []
            _sum_terms(w, absorbable, root.inputs[0], 1, leaves, inner)
            _sum_terms(w, absorbable, root.inputs[1], 1 if root.op == "add" else -1, leaves, inner)
            invariant = [(o, sg) for o, sg in leaves if o[0] not in body_ids]
            variant = [(o, sg) for o, sg in leaves if o[0] in body_ids]
            if len(invariant) < 2 or not variant:
                continue
            if any(w.shape(o[0]) is None for o, _ in invariant):
                continue
            # the invariant part, once over all steps, before the loop
            invariant.sort(key=lambda x: -x[1])  # positive terms first
            shapes = [w.shape(o[0]) for o, _ in invariant]
            shape = next((sh for sh in shapes if sh), [])
            seq = any(w.seq(o[0]) or o[1] != 0 for o, _ in invariant)
            outside = []
            base = root.id + ".hoisted"
            (acc, sg0), rest = invariant[0], invariant[1:]
            if sg0 < 0:
                nid = w.fresh(base)
                outside.append(new_step(nid, "neg", [acc], w.shape(acc[0]) or [], w.seq(acc[0]) or acc[1] != 0,
                                   span=root.span))
                acc = (nid, 0)
            for k, (o, sg) in enumerate(rest):
                nid = w.fresh(base)
                outside.append(new_step(nid, "add" if sg > 0 else "sub", [acc, o], shape, seq, span=root.span))
                acc = (nid, 0)
            w.insert_before(loop, outside)
            # inside: the hoisted sum plus the loop-variant terms
            new_body = []
            for k, (o, sg) in enumerate(variant):
                last = k == len(variant) - 1
                nid = root.id if last else w.fresh(root.id + ".sum")
                st = new_step(nid, "add" if sg > 0 else "sub", [acc, o], root.shape, root.seq, span=root.span)
                new_body.append(st)
                acc = (nid, 0)
            w.replace(root, new_body)
            for st in inner:
                w.replace(st, [])
    w.commit()


def _sum_terms(w: Work, absorbable, operand, sign: int, leaves: list, inner: list) -> None:
    """The terms of the sum that ``operand`` heads, with their signs, into ``leaves``; the add/sub
    steps it absorbs into ``inner``. (A function of its own, not a closure calling itself: that
    would be a reference cycle keeping the whole working plan alive until the collector runs.)"""
    src, d = operand
    if d == 0 and absorbable(src):
        st = w.where[src].step
        inner.append(st)
        _sum_terms(w, absorbable, st.inputs[0], sign, leaves, inner)
        _sum_terms(w, absorbable, st.inputs[1], sign if st.op == "add" else -sign, leaves, inner)
    else:
        leaves.append((operand, sign))
