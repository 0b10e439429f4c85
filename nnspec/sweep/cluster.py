"""Where jobs run: a local Dask cluster (one single-threaded worker process per core), or a running
cluster joined by its scheduler's address (``dask scheduler`` and ``dask worker ADDRESS --nthreads 1``)."""
from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager

from . import SweepError, require


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, timeout: float = 10.0):
    """A connected ``distributed.Client``; the local cluster it started (if any) is closed on exit."""
    distributed = require("distributed")
    if workers is not None and workers < 1:
        raise SweepError("--workers takes a number from 1")
    cluster = None
    if scheduler:
        _check_reachable(scheduler, timeout)
        try:
            client = distributed.Client(scheduler, timeout=f"{timeout}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as e:
            raise SweepError(f"cannot reach the Dask scheduler at {scheduler}: {_reason(e)} (start one with "
                             f"`dask scheduler`, and workers with `dask worker {scheduler} --nthreads 1`)") from None
        if workers:  # a running cluster has the workers it has
            logging.getLogger("nnspec").info("--workers is ignored with --scheduler")
    else:
        cluster = distributed.LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                           processes=True, dashboard_address=":0",
                                           silence_logs=logging.ERROR)
        client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _check_reachable(scheduler: str, timeout: float) -> None:
    """A refused or unresolvable TCP address fails at once, with a message (Dask would retry until its
    timeout, then raise with a traceback's worth of context)."""
    from urllib.parse import urlsplit
    parts = urlsplit(scheduler if "://" in scheduler else f"tcp://{scheduler}")
    if parts.scheme not in ("tcp", "tls"):
        return  # inproc://, ucx://: let Dask judge
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise SweepError(f"--scheduler {scheduler}: give an address like tcp://HOST:PORT")
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise SweepError(f"cannot reach the Dask scheduler at {scheduler}: {e.strerror or e} (start one with "
                         f"`dask scheduler`, and workers with `dask worker {scheduler} --nthreads 1`)") from None


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def worker_slots(client) -> int:
    """How many jobs the cluster runs at once (threads over all workers), waiting briefly for one."""
    try:
        client.wait_for_workers(1, timeout=30)
    except TimeoutError:
        raise SweepError("the Dask cluster has no workers (start some with `dask worker ADDRESS "
                         "--nthreads 1`)") from None
    return max(1, sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()))
