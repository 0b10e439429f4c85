"""Plan-to-plan optimisation passes (work in progress)."""
from __future__ import annotations

from .plan import Plan


def optimize_plan(plan: Plan) -> Plan:
    return plan
