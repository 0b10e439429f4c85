"""Plan-to-plan optimisation passes, applied by default after ``build_plan``.

Each pass takes a plan and returns an equivalent one (same outputs and
gradients up to floating-point reassociation); each can be switched off on its
own, so tests compare optimised with unoptimised plans. Nothing here knows
about LSTMs or GRUs: the passes look for general patterns, and a cell written
gate by gate gets the same plan as the library's.

``fuse_losses``
    ``cross_entropy(softmax(z), y)`` -> ``cross_entropy_logits(z, y)``,
    ``bce(sigmoid(z), y)`` -> ``bce_logits(z, y)`` and
    ``nll(log_softmax(z), y)`` -> ``cross_entropy_logits(z, y)``: stable and
    cheaper. The softmax stays only while something else (an output) reads it.
``hoist_sums``
    In a loop body, a sum whose addends are partly loop-invariant is
    reassociated so that the invariant addends are added once, over all time
    steps, before the loop: ``W@x + U@h[t-1] + b`` becomes ``(W@x + b)``
    outside plus one add inside.
``fuse_matmuls``
    Products with parameter weights that share their right operand (same
    value, same delay) become one product with the weights concatenated by
    ``concat_rows`` (once per pass, outside any loop), followed by ``slice``
    views: the four input projections of an LSTM are one ``(T*B, E) x (E, 4H)``
    product, and its four recurrent products one per step. Gates are ordered so
    that gates with the same activation sit side by side, and so that the
    recurrent slices line up with the input-projection slices they are added to.
``sink_slices``
    An elementwise op applied to adjacent slices of one value (and, for binary
    ops, to matching slices of another value or to parameter vectors) becomes
    one op over the union: four bias adds become one add of the concatenated
    biases, ``sigmoid`` over the three sigmoid gates runs once per step.
``fuse_linear``
    ``W @ x + b`` with a parameter bias becomes one ``linear`` step: the bias is
    added in place into the product, no second array.
``simplify``
    Slices of slices compose, whole-width slices disappear, and values nothing
    reads are removed.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from .gcpause import gc_paused
from .ops import REGISTRY
from .plan import LoopStep, OpStep, Plan, verify_plan
from .syntax.construct import construct

PASSES = ("fuse_losses", "hoist_sums", "fuse_matmuls", "sink_slices", "fuse_linear", "simplify")



def optimize_plan(plan: Plan, passes: tuple[str, ...] | list[str] | None = None) -> Plan:
    """The optimised copy of ``plan``; ``passes`` chooses which passes run (default: all).

    ``NNSPEC_PASSES`` in the environment (comma-separated; empty for none) overrides
    the default, for experiments.
    """
    if passes is None:
        env = os.environ.get("NNSPEC_PASSES")
        passes = PASSES if env is None else tuple(p for p in env.split(",") if p)
    unknown = set(passes) - set(PASSES)
    if unknown:
        raise ValueError(f"unknown optimisation pass(es) {sorted(unknown)}; known: {', '.join(PASSES)}")
    with gc_paused():   # many small objects, none cyclic: the collector would only rescan them
        return _optimize(plan, passes)


def _copy_step(s):
    """A copy of a step that passes may edit (validation-free: the fields are already valid)."""
    if type(s) is LoopStep:
        return construct(LoopStep, {"kind": "loop", "index": s.index, "direction": s.direction,
                                    "body": [_copy_step(b) for b in s.body], "states": list(s.states),
                                    "initials": dict(s.initials), "axis": s.axis})
    return construct(OpStep, {"kind": "op", "id": s.id, "op": s.op, "inputs": list(s.inputs), "attrs": dict(s.attrs),
                              "seq": s.seq, "integer": s.integer, "shape": list(s.shape), "axes": list(s.axes),
                              "span": s.span})


def _optimize(plan: Plan, passes) -> Plan:
    # (a copy as ``model_copy`` makes, sharing the fields set of a model given every field: the plan a model keeps)
    plan = construct(Plan, {**plan.__dict__, "steps": [_copy_step(s) for s in plan.steps]})
    w = _Work(plan)

    def run(name: str, apply) -> None:
        apply()
        # each pass hands on a plan the runtime can run: a pass that breaks one is named at once
        # (the shape rules, most of the checking's cost, run once on the last pass's plan below)
        verify_plan(plan.model_copy(update={"steps": w.steps}), stage=f"the optimisation pass {name}",
                    shapes=False)

    if "fuse_losses" in passes:
        run("fuse_losses", lambda: fuse_losses(w))
    if "hoist_sums" in passes:
        run("hoist_sums", lambda: hoist_sums(w))
    if "fuse_matmuls" in passes:
        run("fuse_matmuls (outside loops)", lambda: fuse_matmuls(w, outside=True, inside=False))
    if "sink_slices" in passes:
        run("sink_slices", lambda: sink_slices(w))
    if "fuse_matmuls" in passes:
        run("fuse_matmuls (inside loops)", lambda: fuse_matmuls(w, outside=False, inside=True))
    if "sink_slices" in passes:
        run("sink_slices (second round)", lambda: sink_slices(w))
    if "fuse_linear" in passes:
        run("fuse_linear", lambda: fuse_linear(w))
    if "simplify" in passes or passes:
        run("simplify", lambda: simplify(w, drop_whole=("simplify" in passes)))
    plan.steps = w.steps
    plan.passes = [p for p in PASSES if p in passes]
    verify_plan(plan, stage=f"the optimisation passes {', '.join(plan.passes) or '(none)'}")
    return plan


# ---- the working representation ---------------------------------------------------------

class _Where(NamedTuple):
    step: OpStep
    loop: LoopStep | None     # None: outside every loop


@dataclass
class _Work:
    """The plan being optimised, with indexes; passes record edits and ``commit`` applies them.

    Edits are applied all at once and the indexes rebuilt once per round of a pass,
    so that optimising stays linear in the size of the plan (a 10,000-equation spec).
    """

    plan: Plan
    steps: list = field(init=False)
    where: dict = field(init=False)          # value id -> _Where
    readers: dict = field(init=False)        # value id -> [(reader OpStep, position, delay, loop)]

    def __post_init__(self):
        self.steps = list(self.plan.steps)
        self.params = {p.name: p for p in self.plan.params}
        self.inputs = {v.name: v for v in self.plan.inputs + self.plan.targets}
        self.used = set(self.params) | set(self.inputs) | set(self.plan.consts)
        self._counter: dict[str, int] = {}
        self._before: dict[int, list] = {}
        self._instead: dict[int, list] = {}
        self.reindex()

    def reindex(self) -> None:
        """Rebuild ``where`` and ``readers`` from the steps (after a pass edited steps in place)."""
        where: dict = {}
        readers: dict = {}
        keep = set(self.plan.outputs) | ({self.plan.loss} if self.plan.loss else set())
        used_add, get = self.used.add, readers.get

        def index(b, loop):
            where[b.id] = _Where(b, loop)
            used_add(b.id)
            for pos, (src, d) in enumerate(b.inputs):
                lst = get(src)
                if lst is None:
                    readers[src] = [(b, pos, d, loop)]
                else:
                    lst.append((b, pos, d, loop))

        for s in self.steps:
            if type(s) is LoopStep:
                keep.update(s.states)
                keep.update(s.initials.values())
                for b in s.body:
                    index(b, s)
            else:
                index(s, None)
        self.where, self.readers, self._protected = where, readers, keep
        self._static = None
        self._positions: dict[int, dict] = {}

    def _unindex(self, gone: list) -> None:
        """Forget steps that left the plan (their ids may be defined again by new steps)."""
        where, readers = self.where, self.readers
        gone_ids = {id(b) for b in gone}
        sources = set()
        for b in gone:
            ws = where.get(b.id)
            if ws is not None and ws.step is b:
                del where[b.id]
            sources.update(src for src, _ in b.inputs)
        for src in sources:
            lst = readers.get(src)
            if lst:
                lst[:] = [r for r in lst if id(r[0]) not in gone_ids]

    def rewired(self, step: OpStep, old_inputs: list) -> None:
        """Update the readers after a pass changed ``step``'s inputs in place."""
        loop = self.where[step.id].loop
        for src in {src for src, _ in old_inputs}:
            lst = self.readers.get(src)
            if lst:
                lst[:] = [r for r in lst if r[0] is not step]
        self._index([(step, loop)])
        self._static = None

    def _index(self, new: list) -> None:
        """Index steps that joined the plan: ``new`` holds (step, its loop or None)."""
        where, readers, used_add = self.where, self.readers, self.used.add
        for b, loop in new:
            where[b.id] = _Where(b, loop)
            used_add(b.id)
            for pos, (src, d) in enumerate(b.inputs):
                readers.setdefault(src, []).append((b, pos, d, loop))

    def protected(self) -> set[str]:
        """Values the plan's users see or the loops need by name."""
        return self._protected

    def position(self, loop: LoopStep | None) -> dict[int, int]:
        """id(step) -> its index in the container (outer steps, or a loop's body)."""
        key = id(loop)
        if key not in self._positions:
            self._positions[key] = {id(s): i for i, s in enumerate(self.container(loop))}
        return self._positions[key]

    def fresh(self, base: str) -> str:
        name, k = base, self._counter.get(base, 1)
        while name in self.used:
            k += 1
            name = f"{base}#{k}"
        self._counter[base] = k
        self.used.add(name)
        return name

    def shape(self, v: str) -> list | None:
        if v in self.params:
            return list(self.params[v].shape)
        if v in self.inputs:
            return list(self.inputs[v].shape)
        if v in self.where:
            return list(self.where[v].step.shape)
        if v in self.plan.consts:
            import numpy as np
            return list(np.shape(self.plan.consts[v]))
        return None

    def seq(self, v: str) -> bool:
        if v in self.inputs:
            return self.inputs[v].seq
        if v in self.where:
            return self.where[v].step.seq
        return False

    def static(self, v: str) -> bool:
        """No batch or time axes: a parameter, a constant, or computed from those alone."""
        if self._static is None:   # worked out when first asked after a change (one pass asks)
            static = set(self.params) | set(self.plan.consts)
            for s in self.steps:
                if type(s) is not LoopStep and s.inputs and all(src in static for src, _ in s.inputs):
                    static.add(s.id)
            self._static = static
        return v in self._static

    def loop_of(self, v: str) -> LoopStep | None:
        w = self.where.get(v)
        return w.loop if w else None

    def container(self, loop: LoopStep | None) -> list:
        return self.steps if loop is None else loop.body

    # ---- edits (applied by commit) ----
    def insert_before(self, anchor, new: list[OpStep]) -> None:
        """Insert steps before ``anchor``: a step, a value id, or a loop step (outside it)."""
        if isinstance(anchor, str):
            anchor = self.where[anchor].step
        self._before.setdefault(id(anchor), []).extend(new)

    def replace(self, old: OpStep, new) -> None:
        """Replace a step by another step, or by a list of steps (empty: remove it)."""
        self._instead[id(old)] = list(new) if isinstance(new, list) else [new]

    def commit(self) -> bool:
        """Apply the recorded edits in one sweep and update the indexes; True if anything changed.

        The indexes are updated from the edits, not rebuilt: a round edits a few steps of many.
        """
        if not self._before and not self._instead:
            return False
        gone, new = [], []
        before, instead = self._before, self._instead

        def rebuild(seq, loop):
            out = []
            for s in seq:
                key = id(s)
                if key in before:
                    added = before.pop(key)
                    out += added
                    new.extend((b, loop) for b in added)
                if key in instead:
                    added = instead.pop(key)
                    out += added
                    new.extend((b, loop) for b in added)
                    gone.append(s)
                else:
                    out.append(s)
            return out

        self.steps = rebuild(self.steps, None)
        for s in self.steps:
            if type(s) is LoopStep:
                s.body = rebuild(s.body, s)
        assert not before and not instead, "an edit refers to a step that is not in the plan"
        # a loop is never inserted, replaced nor removed here: the values it protects stay the same
        self._unindex(gone)
        self._index(new)
        self._static = None
        self._positions = {}
        return True


def _op(id: str, op: str, inputs, shape, seq=False, attrs=None, span=None) -> OpStep:
    """A new step; ``span``: the source of the step(s) it stands for, where a run-time failure points."""
    return OpStep.model_construct(kind="op", id=id, op=op, inputs=[tuple(x) for x in inputs],
                                  attrs=dict(attrs or {}), seq=bool(seq), integer=False, shape=list(shape),
                                  axes=[], span=span)


def _braced(names: list[str]) -> str:
    """['h.Wf', 'h.Wi'] -> 'h.W{f,i}', ['h.fwd.Wf', 'h.fwd.Wi', 'h.bwd.Wf', 'h.bwd.Wi'] ->
    'h.{fwd,bwd}.W{f,i}': a readable name for a fused value.

    Compiler counters ('#12') are dropped from the parts: the braces name the
    gates, and ``_Work.fresh`` keeps the result unique."""
    names = [re.sub(r"#\d+", "", n) for n in names]
    if len(set(names)) < len(names):
        return "{" + ",".join(names) + "}"
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    suffix = suffix[suffix.find("."):] if "." in suffix else ""
    core = [n[:len(n) - len(suffix)] for n in names]
    heads = [c.rsplit(".", 1)[0] if "." in c else "" for c in core]
    tails = [c.rsplit(".", 1)[1] if "." in c else c for c in core]
    uniq = list(dict.fromkeys(heads))
    if len(uniq) > 1 and all(heads.count(h) == len(names) // len(uniq) for h in uniq):
        groups = [[t for h2, t in zip(heads, tails) if h2 == h] for h in uniq]
        if all(g == groups[0] for g in groups) and all(uniq) and len(groups[0]) > 0:
            inner = groups[0][0] if len(groups[0]) == 1 else _braced(groups[0])
            return f"{_braced(uniq)}.{inner}{suffix}"
    prefix = os.path.commonprefix(core)
    rest = [c[len(prefix):] for c in core]
    if not all(rest):
        return "{" + ",".join(names) + "}"
    return f"{prefix}{{{','.join(rest)}}}{suffix}"


def _int(d) -> int | None:
    return d if isinstance(d, int) and not isinstance(d, bool) else None


# ---- fuse_losses -------------------------------------------------------------------------

def fuse_losses(w: _Work) -> None:
    for s in list(w.steps):
        if isinstance(s, LoopStep) or not s.inputs:
            continue
        src, d = s.inputs[0]
        prod = w.where.get(src)
        if d != 0 or prod is None:
            continue
        form = REGISTRY[s.op].logits_form   # (activation, the loss of its input)
        if form is None or form[0] != prod.step.op or prod.step.inputs[0][1] != 0:
            continue
        old = s.inputs
        s.op = form[1]
        s.inputs = [prod.step.inputs[0]] + list(s.inputs[1:])
        w.rewired(s, old)
    _dead_code(w)


# ---- hoist_sums --------------------------------------------------------------------------

def hoist_sums(w: _Work) -> None:
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
                outside.append(_op(nid, "neg", [acc], w.shape(acc[0]) or [], w.seq(acc[0]) or acc[1] != 0,
                                   span=root.span))
                acc = (nid, 0)
            for k, (o, sg) in enumerate(rest):
                nid = w.fresh(base)
                outside.append(_op(nid, "add" if sg > 0 else "sub", [acc, o], shape, seq, span=root.span))
                acc = (nid, 0)
            w.insert_before(loop, outside)
            # inside: the hoisted sum plus the loop-variant terms
            new_body = []
            for k, (o, sg) in enumerate(variant):
                last = k == len(variant) - 1
                nid = root.id if last else w.fresh(root.id + ".sum")
                st = _op(nid, "add" if sg > 0 else "sub", [acc, o], root.shape, root.seq, span=root.span)
                new_body.append(st)
                acc = (nid, 0)
            w.replace(root, new_body)
            for st in inner:
                w.replace(st, [])
    w.commit()


def _sum_terms(w: _Work, absorbable, operand, sign: int, leaves: list, inner: list) -> None:
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


# ---- fuse_matmuls ------------------------------------------------------------------------

def _chain_activation(w: _Work, v: str, depth: int = 0) -> str:
    """The first op other than add/sub/slice reached by following single readers from v."""
    rs = w.readers.get(v, [])
    if len(rs) != 1 or depth > 20:
        return ""
    r = rs[0][0]
    if r.op in ("add", "sub", "slice"):
        return _chain_activation(w, r.id, depth + 1)
    return r.op


def _destination(w: _Work, v: str, depth: int = 0):
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


def _partner(w: _Work, v: str):
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


def fuse_matmuls(w: _Work, outside: bool = True, inside: bool = True) -> None:
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
            if dw != 0 or p is None or len(p.shape) != 2 or _int(p.shape[0]) is None:
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


def _first_in(w: _Work, loop: LoopStep | None, members) -> OpStep:
    """The member that comes first in its container (the positions are indexed once per round)."""
    pos = w.position(loop)
    return min(members, key=lambda m: pos[id(m)])


def _fuse_group(w: _Work, loop: LoopStep | None, members: list[OpStep]) -> None:
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
    rows = [_int(w.params[n].shape[0]) for n in weights]
    cols = w.params[weights[0]].shape[1]
    wcat = w.fresh(_braced(weights))
    x = order[0].inputs[1]
    prod = w.fresh(f"{wcat}@{x[0]}")
    m0 = _first_in(w, loop, members)
    cat = _op(wcat, "concat_rows", [(n, 0) for n in weights], [sum(rows), cols])
    mm = _op(prod, "matmul", [(wcat, 0), x], list(m0.shape[:-1]) + [sum(rows)], m0.seq, span=m0.span)
    if loop is None:
        w.insert_before(m0, [cat, mm])
    else:
        w.insert_before(loop, [cat])
        w.insert_before(m0, [mm])
    start = 0
    for m, n in zip(order, rows):
        sl = _op(m.id, "slice", [(prod, 0)], m.shape, m.seq, {"start": start, "stop": start + n}, m.span)
        w.replace(m, sl)
        start += n


# ---- sink_slices -------------------------------------------------------------------------

def _slice_of(w: _Work, operand):
    """(source operand, start, stop) when operand is a slice read at the same step, else None."""
    src, d = operand
    ws = w.where.get(src)
    if d != 0 or ws is None or ws.step.op != "slice" or ws.step.inputs[0][1] != 0:
        return None
    a = int(ws.step.attrs.get("start", 0))
    width = _int(ws.step.shape[-1]) if ws.step.shape else None
    if width is None:
        return None
    return (ws.step.inputs[0][0], 0), a, a + width


def sink_slices(w: _Work) -> None:
    # Each round merges one level of a chain (the gates' adds, then their activations, ...). The
    # slices a round leaves unread are not elementwise, so they never join a later round's runs:
    # dead code goes once before and once after the rounds, not at every round.
    _dead_code(w)
    for _ in range(50):
        if not _sink_once(w):
            break
    _dead_code(w)


def _sink_once(w: _Work) -> bool:
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
            width = _int(s.shape[-1])
            if width is None:
                continue
            parts, kinds = [], []
            for operand in s.inputs:
                sl = _slice_of(w, operand)
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


def _merge_run(w: _Work, loop, run) -> None:
    total = sum(m[1] for m in run)
    first_member = _first_in(w, loop, [m[0] for m in run])
    s0 = run[0][0]
    operands, outer_new, inner_new = [], [], []
    for pos, part in enumerate(run[0][2]):
        if isinstance(part, tuple):  # slices of one source: their union
            (src, d), lo = part
            full = w.shape(src)
            if full and _int(full[-1]) == total and lo == 0:
                operands.append((src, d))
                continue
            sid = w.fresh(f"{src}.{lo}:{lo + total}")
            st = _op(sid, "slice", [(src, d)], list(full[:-1]) + [total], w.seq(src),
                     {"start": lo, "stop": lo + total}, s0.span)
            if w.loop_of(src) is None and loop is not None:
                outer_new.append(st)   # a slice of a value from outside the loop is computed outside
            else:
                inner_new.append(st)
            operands.append((sid, 0))
        else:  # parameter vectors: concatenated once per pass
            names = [m[2][pos] for m in run]
            cid = w.fresh(_braced(names))
            st = _op(cid, "concat_rows", [(n, 0) for n in names], [total])
            (outer_new if loop is not None else inner_new).append(st)
            operands.append((cid, 0))
    uid = w.fresh(_braced([m[0].id for m in run]))
    merged = _op(uid, s0.op, operands, list(s0.shape[:-1]) + [total], s0.seq, s0.attrs, s0.span)
    if outer_new:
        w.insert_before(loop, outer_new)
    w.insert_before(first_member, inner_new + [merged])
    at = 0
    for s, width, _ in run:
        w.replace(s, _op(s.id, "slice", [(uid, 0)], s.shape, s.seq, {"start": at, "stop": at + width}, s.span))
        at += width


# ---- fuse_linear ------------------------------------------------------------------------

def fuse_linear(w: _Work) -> None:
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
    _dead_code(w)


# ---- simplify ----------------------------------------------------------------------------

def simplify(w: _Work, drop_whole: bool = True) -> None:
    if drop_whole:
        _compose_slices(w)
    _dead_code(w)


def _compose_slices(w: _Work) -> None:
    changed = True
    while changed:
        changed = False
        protected = w.protected()
        for v, ws in list(w.where.items()):
            s = ws.step
            if s.op != "slice":
                continue
            sl = _slice_of(w, s.inputs[0])
            if sl is not None:  # slice of a slice
                a = int(s.attrs.get("start", 0))
                width = _int(s.shape[-1])
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
        _dead_code(w)


def _dead_code(w: _Work) -> None:
    """Drop steps nothing needs: from the values no step reads, back through what only they read.

    The readers index says who reads what, so this touches each value once. Within a loop a
    value read at another step is a state, and states are protected: no dead cycle survives."""
    protected, readers, where = w.protected(), w.readers, w.where
    unread = [v for v in where if v not in protected and not readers.get(v)]
    if not unread:
        return
    dead: set[str] = set()
    left: dict[str, int] = {}     # value -> how many of its reading steps are not dead yet
    while unread:
        v = unread.pop()
        dead.add(v)
        for src, _ in where[v].step.inputs:
            if src not in where or src in protected or src in dead:
                continue
            n = left.get(src)
            n = (len(readers[src]) if n is None else n) - 1
            left[src] = n
            if n == 0:
                unread.append(src)
    # remove in place and update the indexes (cheaper than rebuilding them)
    steps = []
    for s in w.steps:
        if isinstance(s, LoopStep):
            s.body = [b for b in s.body if b.id not in dead]
            if s.body:
                steps.append(s)
        elif s.id not in dead:
            steps.append(s)
    w.steps = steps
    for v in [v for v in w.where if v in dead]:
        b = w.where.pop(v).step
        for src, _ in b.inputs:
            lst = w.readers.get(src)
            if lst:
                lst[:] = [r for r in lst if r[0] is not b]
        w.readers.pop(v, None)
    w._positions = {}
