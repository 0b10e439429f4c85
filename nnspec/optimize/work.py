"""The plan being optimised (``Work``: its steps with indexes of where each value is made and who
reads it; passes record edits and ``commit`` applies them) and what several passes share."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from ..plan import LoopStep, OpStep, Plan


class Where(NamedTuple):
    step: OpStep
    loop: LoopStep | None     # None: outside every loop


@dataclass
class Work:
    """The plan being optimised, with indexes; passes record edits and ``commit`` applies them.

    Edits are applied all at once and the indexes rebuilt once per round of a pass,
    so that optimising stays linear in the size of the plan (a 10,000-equation spec).
    """

    plan: Plan
    steps: list = field(init=False)
    where: dict = field(init=False)          # value id -> Where
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
            where[b.id] = Where(b, loop)
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
            where[b.id] = Where(b, loop)
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


def new_step(id: str, op: str, inputs, shape, seq=False, attrs=None, span=None) -> OpStep:
    """A new step; ``span``: the source of the step(s) it stands for, where a run-time failure points."""
    return OpStep.model_construct(kind="op", id=id, op=op, inputs=[tuple(x) for x in inputs],
                                  attrs=dict(attrs or {}), seq=bool(seq), integer=False, shape=list(shape),
                                  axes=[], span=span)


def braced(names: list[str]) -> str:
    """['h.Wf', 'h.Wi'] -> 'h.W{f,i}', ['h.fwd.Wf', 'h.fwd.Wi', 'h.bwd.Wf', 'h.bwd.Wi'] ->
    'h.{fwd,bwd}.W{f,i}': a readable name for a fused value.

    Compiler counters ('#12') are dropped from the parts: the braces name the
    gates, and ``Work.fresh`` keeps the result unique."""
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
            inner = groups[0][0] if len(groups[0]) == 1 else braced(groups[0])
            return f"{braced(uniq)}.{inner}{suffix}"
    prefix = os.path.commonprefix(core)
    rest = [c[len(prefix):] for c in core]
    if not all(rest):
        return "{" + ",".join(names) + "}"
    return f"{prefix}{{{','.join(rest)}}}{suffix}"


def known_size(d) -> int | None:
    """A dimension's size when it is a number (not a symbol the shapes left open), else None."""
    return d if isinstance(d, int) and not isinstance(d, bool) else None


def first_in(w: Work, loop: LoopStep | None, members) -> OpStep:
    """The member that comes first in its container (the positions are indexed once per round)."""
    pos = w.position(loop)
    return min(members, key=lambda m: pos[id(m)])


def drop_dead(w: Work) -> None:
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
