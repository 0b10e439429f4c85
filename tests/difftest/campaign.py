"""A run over a range of seeds: generate, check against every oracle, sort the failures into known
bugs and findings, shrink the findings, and summarise (counts and worst errors per oracle)."""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field

from .generator import generate
from .known import known_bug
from .oracles import EXTRA_ORACLES, ORACLES, Failure, check
from .shrink import as_regression, shrink_failure


@dataclass
class Finding:
    seed: int
    failure: Failure
    text: str
    shrunk: str | None = None       # the minimal spec, printed as a regression test


@dataclass
class Summary:
    seeds: range
    generated: int = 0
    compiled: int = 0
    rejected_known: int = 0
    checked: Counter = field(default_factory=Counter)       # oracle -> specs it checked
    skipped: Counter = field(default_factory=Counter)       # oracle -> specs it could not check
    worst: dict = field(default_factory=dict)               # oracle -> (error, seed), known bugs left out
    known: Counter = field(default_factory=Counter)         # known bug -> specs it excused
    tags: Counter = field(default_factory=Counter)          # constructs generated, over compiled specs
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def compile_rate(self) -> float:
        """Specs that compiled, or that nnspec rejects because of a known bug."""
        return (self.compiled + self.rejected_known) / max(self.generated, 1)

    def line(self) -> str:
        worst = ", ".join(f"{o} {self.checked[o]} ({self.worst.get(o, (0.0,))[0]:.1e})" for o in ORACLES)
        known = ", ".join(f"{k} {n}" for k, n in sorted(self.known.items())) or "none"
        return (f"difftest seeds {self.seeds.start}..{self.seeds.stop - 1}: {self.generated} specs, "
                f"{self.compiled} compiled, {self.rejected_known} rejected by known bugs; checked (worst "
                f"error): {worst}; known bugs excused: {known}; findings: {len(self.findings)}; "
                f"{self.seconds:.0f} s")

    def table(self) -> str:
        rows = [f"seeds {self.seeds.start}..{self.seeds.stop - 1}: {self.generated} generated, {self.compiled} "
                f"compiled, {self.rejected_known} rejected by a known bug ({100 * self.compile_rate:.2f}% valid), "
                f"{self.seconds:.0f} s",
                f"{'oracle':<10}{'checked':>9}{'skipped':>9}{'worst error':>14}  at seed"]
        for o in ORACLES + [o for o in EXTRA_ORACLES if self.checked[o] or self.skipped[o]]:
            err, seed = self.worst.get(o, (0.0, None))
            rows.append(f"{o:<10}{self.checked[o]:>9}{self.skipped[o]:>9}{err:>14.2e}  {'' if seed is None else seed}")
        rows.append("known bugs (specs excused): " + (", ".join(f"{k} {n}" for k, n in sorted(self.known.items()))
                                                     or "none"))
        for f in self.findings:
            rows.append(f"FINDING seed {f.seed}: {f.failure.oracle}: {f.failure.message}")
            rows.append(f.shrunk or f.text)
        return "\n".join(rows)


def run(seeds: range, oracles=ORACLES, shrink: int = 3, progress=None) -> Summary:
    """Check every seed; shrink the first ``shrink`` findings."""
    s = Summary(seeds)
    start = time.perf_counter()
    for seed in seeds:
        spec = generate(seed)
        out = check(spec.text(), seed, oracles)
        s.generated += 1
        if not out.compiled:
            rejection = Failure("compile", out.rejected)
            bug = known_bug(out, None, rejection)
            if bug is not None:
                s.rejected_known += 1
                s.known[bug.name] += 1
            else:
                s.findings.append(Finding(seed, rejection, spec.text()))
            continue
        s.compiled += 1
        s.tags.update(spec.tags)
        excused = {}
        for f in out.failures:
            bug = known_bug(out, out.plan, f)
            if bug is not None:
                excused[f.oracle] = bug.name
            elif not s.findings or s.findings[-1].seed != seed:   # one finding a spec: its first failure
                s.findings.append(Finding(seed, f, spec.text()))
        for name in set(excused.values()):
            s.known[name] += 1
        for o in oracles:
            if o in out.skipped:
                s.skipped[o] += 1
            if o not in out.errors:   # skipped, or not reached (the reference run failed)
                continue
            s.checked[o] += 1
            err = out.errors.get(o, 0.0)
            if o not in excused and (o not in s.worst or err > s.worst[o][0] or math.isnan(err)):
                s.worst[o] = (err, seed)
        if progress is not None:
            progress(seed, s)
    s.seconds = time.perf_counter() - start
    for f in s.findings[:shrink]:
        small, outcome = shrink_failure(generate(f.seed), f.seed, f.failure.oracle)
        f.shrunk = as_regression(small, outcome, f.seed)
    return s
