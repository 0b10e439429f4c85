"""Shrinking a failing spec to a small one that fails the same oracle in the same way.

Delta debugging over the typed model of ``generator.py``, greedy and 1-minimal:

* delete one statement, then everything that no longer leads to an output or a loss (values,
  inputs, targets, ``param`` and ``initial`` statements about names gone, unused cells);
* replace a subexpression by one of its operands of the same size and time type
  (``tanh(W @ x + b)`` -> ``W @ x + b`` -> ``W @ x`` -> ``x`` where sizes allow);
* replace a value by the value it copies, or by another value of its size and time type,
  everywhere it is read (``v6 = v3; output v6`` -> ``output v3``);

keeping a candidate only when it still compiles and fails the same oracle (``same_failure``),
until no candidate is kept or the budget of checks is spent.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable

from .generator import Expr, Spec, Stmt
from .known import known_bug
from .oracles import Failure, Outcome, check


def signature(outcome: Outcome) -> set[tuple[str, str]]:
    """What kind of failure: (oracle, 'crash' or 'mismatch' or the rejection)."""
    if outcome.rejected is not None:
        return {("compile", "crash" if outcome.rejected.startswith("crash") else "rejected")}
    return {(f.oracle, "crash" if f.message.startswith("crash") else "mismatch") for f in outcome.failures}


def collect_garbage(stmts: list[Stmt]) -> list[Stmt]:
    """Drop what no longer leads to an output or a loss, and what is about names gone."""
    while True:
        defined = {s.defines for s in stmts if s.defines}
        eqs = {s.defines: s for s in stmts if s.kind == "eq"}
        initials = {}
        for s in stmts:
            if s.kind == "initial":
                initials.setdefault(s.about, []).append(s)
        live: set[str] = set()
        todo = [n for s in stmts if s.kind in ("output", "loss") for n in s.reads()]
        while todo:
            n = todo.pop()
            if n in live:
                continue
            live.add(n)
            if n in eqs:
                todo.extend(eqs[n].reads())
            for s in initials.get(n, []):
                todo.extend(s.reads())
        texts = "\n".join(s.render() for s in stmts if s.kind in ("eq", "loss", "initial"))
        read_anywhere = {n for s in stmts if s.kind not in ("param",) for n in s.reads()}
        keep = []
        for s in stmts:
            if s.kind in ("eq", "input", "target") and s.defines not in live:
                continue
            if s.kind == "output" and s.about not in defined:
                continue
            if s.kind == "initial" and s.about.split(".")[0] not in live:
                continue
            if s.kind == "param" and s.about not in read_anywhere:
                continue
            if s.kind == "cell" and not re.search(rf"\b{re.escape(s.defines)}\(", texts):
                continue
            keep.append(s)
        if len(keep) == len(stmts):
            return keep
        stmts = keep


def _replace(e: Expr, path: tuple, new: Expr) -> Expr:
    if not path:
        return new
    e = copy.copy(e)
    e.args = list(e.args)
    e.args[path[0]] = _replace(e.args[path[0]], path[1:], new)
    return e


def _paths(e: Expr, path=()):
    yield path, e
    for i, a in enumerate(e.args):
        yield from _paths(a, path + (i,))


def _rename(e: Expr, old: str, new: str) -> Expr:
    pattern = re.compile(rf"(?<![\w.]){re.escape(old)}(?![\w.(])")
    return Expr(pattern.sub(new, e.fmt), [_rename(a, old, new) for a in e.args], e.size, e.seq)


def _bypass(stmts: list[Stmt], i: int, new: str) -> list[Stmt]:
    """Statement i removed, and every read of what it defined reading ``new`` instead."""
    old = stmts[i].defines
    pattern = re.compile(rf"(?<![\w.]){re.escape(old)}(?![\w.(])")
    out = []
    for j, s in enumerate(stmts):
        if j == i:
            continue
        t = copy.copy(s)
        if s.kind != "param":
            t.text = pattern.sub(new, s.text)
            t.expr = _rename(s.expr, old, new) if s.expr is not None else None
            if t.about == old:
                t.about = new
        out.append(t)
    return out


def _values(stmts: list[Stmt]) -> dict[str, tuple[int, bool]]:
    """Names with their (size, sequence) as far as the statements say."""
    vals = {}
    for s in stmts:
        m = re.match(r"input (\w+)\[(\d+)\]( : seq)?$", s.text)
        if m:
            vals[m.group(1)] = (int(m.group(2)), bool(m.group(3)))
        elif s.kind == "eq" and s.expr is not None and re.match(r"\w+\[\d+\] = \{e\}$", s.text):
            vals[s.defines] = (s.expr.size, s.expr.seq)
    return vals


def candidates(spec: Spec):
    """Smaller specs, the biggest cuts first."""
    stmts = spec.stmts
    for i in range(len(stmts)):
        yield Spec(collect_garbage(stmts[:i] + stmts[i + 1:]), spec.seed, spec.tags)
    vals = _values(stmts)
    for i, s in enumerate(stmts):   # a value replaced by another of its type, or by what it copies
        if s.kind != "eq" or s.defines not in vals:
            continue
        alias = s.expr.fmt if not s.expr.args and re.fullmatch(r"\w+", s.expr.fmt) else None
        others = [n for n, t in vals.items() if t == vals[s.defines] and n != s.defines]
        for new in ([alias] if alias else []) + others:
            yield Spec(collect_garbage(_bypass(stmts, i, new)), spec.seed, spec.tags)
    for i, s in enumerate(stmts):
        if s.expr is None:
            continue
        for path, node in _paths(s.expr):
            for child in node.args:
                if (child.size, child.seq) == (node.size, node.seq) or (path == () and s.kind != "loss"):
                    t = copy.copy(s)
                    t.expr = _replace(s.expr, path, child)
                    yield Spec(collect_garbage(stmts[:i] + [t] + stmts[i + 1:]), spec.seed, spec.tags)


def shrink(spec: Spec, still_fails: Callable[[str], bool], budget: int = 400) -> Spec:
    """The smallest spec found that ``still_fails``, within ``budget`` checks."""
    tried: set[str] = set()
    progress = True
    while progress and budget > 0:
        progress = False
        for cand in candidates(spec):
            text = cand.text()
            if text in tried or len(text) >= len(spec.text()):
                continue
            tried.add(text)
            budget -= 1
            if still_fails(text):
                spec, progress = cand, True
                break
            if budget <= 0:
                break
    return spec


def shrink_failure(spec: Spec, seed: int, oracle: str | None = None, budget: int = 400) -> tuple[Spec, Outcome]:
    """Shrink ``spec`` keeping one of its failures (of ``oracle``, or its first) the same kind."""
    first = check(spec.text(), seed)
    sig = signature(first)
    if oracle is not None:
        sig = {s for s in sig if s[0] == oracle} or sig
    want = sorted(sig)[0] if sig else None
    if want is None:
        return spec, first

    def still_fails(text: str) -> bool:
        """The same kind of failure of the same oracle, and not one a known bug explains."""
        out = check(text, seed)
        if out.rejected is not None:
            return want[0] == "compile" and known_bug(out, None, Failure("compile", out.rejected)) is None \
                and want in signature(out)
        return any((f.oracle, "crash" if f.message.startswith("crash") else "mismatch") == want
                   and known_bug(out, out.plan, f) is None for f in out.failures)

    small = shrink(spec, still_fails, budget)
    return small, check(small.text(), seed)


def as_regression(spec: Spec, outcome: Outcome, seed: int) -> str:
    """The failing case, printed ready to become a regression test."""
    lines = [f"# seed {seed}: " + ("; ".join(f"{f.oracle}: {f.message}" for f in outcome.failures[:3])
                                   if outcome.compiled else "rejected: " + outcome.rejected.splitlines()[0])]
    lines.append('SPEC = """\\\n' + spec.text() + '"""')
    lines.append(f"outcome = check(SPEC, seed={seed})")
    return "\n".join(lines)
