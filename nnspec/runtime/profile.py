"""Profiling as one wrapper: ``profiled(profile, phase, run_step)`` times each step it runs and
adds the seconds to ``profile[(phase, op or "loop", step id)]`` (``Executor.profile``)."""
from __future__ import annotations

import time

from ..plan import LoopStep


def profiled(profile: dict, phase: str, run_step):
    def timed(step, *args):
        t0 = time.perf_counter()
        try:
            return run_step(step, *args)
        finally:
            loop = isinstance(step, LoopStep)
            key = (phase, "loop" if loop else step.op, f"loop {step.index}" if loop else step.id)
            profile[key] = profile.get(key, 0.0) + time.perf_counter() - t0
    return timed
