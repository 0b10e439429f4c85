"""Hyper-parameter sweeps and cross-validation on Optuna and Dask (the optional ``nnspec[sweep]`` extra).

    space.py    the spec's ``sweep { ... }`` block as a search space; a trial's settings as spec text
    jobs.py     one training (a trial, or a fold of one): a pure function run on a Dask worker
    cluster.py  a local Dask cluster, or a running one by its scheduler's address
    driver.py   the Optuna study: asks, hands trials to the cluster, prunes, tells; resumable
    cv.py       k-fold and nested cross-validation as Dask tasks
    report.py   the table of trials, plots, the best trial as a spec

Only driver.py, cluster.py and report.py import optuna or dask, and only when called, so the rest
of nnspec works without the extra.
"""
from __future__ import annotations

import importlib


class SweepError(Exception):
    """A sweep cannot go on (no extra installed, no scheduler, a sweep directory that does not fit)."""


INSTALL_HINT = "pip install 'nnspec[sweep]'"


def require(module: str):
    """Import optuna or dask lazily, with an error that says how to install them."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise SweepError(f"sweeps and cross-validation on a cluster need {module.split('.')[0]}: "
                         f"install the extra with  {INSTALL_HINT}") from None


def available() -> bool:
    try:
        import distributed  # noqa: F401
        import optuna  # noqa: F401
    except ImportError:
        return False
    return True
