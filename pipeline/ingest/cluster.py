"""Parallel conversion on Dask: a LocalCluster of worker processes by default, or an existing
scheduler (``tcp://host:8786``) when the user has one. :func:`map_sessions` runs
:func:`~pipeline.ingest.session.convert_session` over the sessions, on the cluster or in process.

SimpleITK uses every core per call, and Zarr encodes chunks on a pool as large as the machine;
with one worker process per core that oversubscribes it, so each worker is limited to one
SimpleITK thread and one Zarr codec thread (a worker plugin, so restarted or late-joining
workers get it too). One worker is then one core, and adding workers is what scales.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``. That setting also switches
off glibc's adaptive mmap threshold, so every array above 128 KiB is a fresh ``mmap`` whose
pages the kernel must fault in and zero, on every allocation. Conversion allocates a few dozen
volume-sized arrays per session: with the setting, a phantom session took 0.63 s instead of
0.41 s in a worker, and the page-zeroing is memory traffic that two workers then fight over. The
LocalCluster is started without it; for workers started by hand, ``deploy/dask.yaml`` does the
same, and the worker plugin logs a warning when a worker still has it. The LocalCluster also runs
without what only a dashboard uses (:data:`QUIET_CLUSTER`), whose CPU time the workers would
otherwise lose when every core converts.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Iterator

from pipeline.ingest.context import IngestContext
from pipeline.ingest.discover import SessionPlan
from pipeline.ingest.session import SessionResult, convert_session

log = logging.getLogger("lesionflow.parallel")


class OneCorePerWorker:
    """Dask worker plugin: one SimpleITK thread and one Zarr codec thread per worker process."""

    name = "lesionflow-one-core-per-worker"

    def setup(self, worker: Any = None) -> None:  # noqa: D401 - dask plugin hook
        import SimpleITK as sitk
        import zarr

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        zarr.config.set({"threading.max_workers": 1})  # its codec pool would use every core too
        if os.environ.get("MALLOC_TRIM_THRESHOLD_"):
            log.warning(
                "Dask worker runs with MALLOC_TRIM_THRESHOLD_=%s, which makes conversion about 1.5x slower; "
                "start workers with the configuration in deploy/dask.yaml (DASK_CONFIG=deploy/dask.yaml)",
                os.environ["MALLOC_TRIM_THRESHOLD_"],
            )

    def teardown(self, worker: Any = None) -> None:
        pass


QUIET_CLUSTER = {
    # what the dashboard would show (lesionflow starts none): a 10 ms stack sampler in every
    # worker and 0.5 s system metrics; with them an idle 2-worker cluster used 10 % of a core
    # (client 3.8 %, each worker 3.1 %), 2.5 % without
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.admin.tick.interval": "200ms",
    "distributed.worker.memory.monitor-interval": "500ms",
}
"""Dask settings of the LocalCluster (also in ``deploy/dask.yaml`` for workers started by hand)."""


@contextlib.contextmanager
def _local_cluster_config() -> Iterator[None]:
    """Settings for starting the LocalCluster: :data:`QUIET_CLUSTER`, and workers spawned
    without ``MALLOC_TRIM_THRESHOLD_``: not from Dask's configuration, and not inherited from
    this process, where an earlier Dask nanny may have left it (nannies set their worker
    environment in their own process before spawning)."""
    import dask

    inherited = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    try:
        with dask.config.set({**QUIET_CLUSTER, "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            yield
    finally:
        if inherited is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = inherited


@contextlib.contextmanager
def dask_client(address: str | None = None, n_workers: int = 2, connect_timeout: str = "20s") -> Iterator[Any]:
    """A connected ``dask.distributed.Client``.

    Args:
        address: scheduler address of an existing cluster; None starts a LocalCluster.
        n_workers: worker processes of the LocalCluster (one thread each).
        connect_timeout: how long to try reaching ``address``.
    """
    from dask.distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    plugin_cls = type("OneCorePerWorkerPlugin", (OneCorePerWorker, WorkerPlugin), {})
    if address:
        try:
            client = Client(address, timeout=connect_timeout)
        except OSError as exc:
            raise RuntimeError(f"cannot reach the Dask scheduler at {address} ({exc}); check the address or omit it to use a local cluster") from exc
        cluster = None
    else:
        with _local_cluster_config():
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        client.register_plugin(plugin_cls(), name=OneCorePerWorker.name)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def map_sessions(
    plans: list[SessionPlan],
    ctx: IngestContext,
    client: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[SessionResult]:
    """Run :func:`~pipeline.ingest.session.convert_session` over ``plans``; results in input order.

    With ``client`` the sessions run on the Dask cluster (one task per session, the largest
    first); without, in this process one after another.
    """
    total = len(plans)
    results: list[Any] = [None] * total
    if progress:
        progress("convert", 0, total)
    if client is None or total == 0:
        for i, plan in enumerate(plans):
            results[i] = convert_session(plan, ctx)
            if progress:
                progress("convert", i + 1, total)
        return results
    from dask.distributed import as_completed

    # largest sessions first (higher priority runs first), so that no big one is left running
    # alone at the end while the other workers idle
    work = [plan.work_estimate() for plan in plans]
    order = sorted(range(total), key=lambda i: -work[i])
    futures = [client.submit(convert_session, plans[i], ctx, pure=False, priority=total - rank) for rank, i in enumerate(order)]
    index = {f.key: i for f, i in zip(futures, order)}
    for done, fut in enumerate(as_completed(futures), start=1):
        results[index[fut.key]] = fut.result()
        if progress:
            progress("convert", done, total)
    return results
