"""Parallel conversion on Dask: a LocalCluster of worker processes by default, or an existing
scheduler (``tcp://host:8786``) when the user has one.

SimpleITK uses every core per call; with several worker processes that oversubscribes the
machine, so each worker is limited to one SimpleITK thread (a worker plugin, so restarted or
late-joining workers get it too).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

log = logging.getLogger("lesionflow.parallel")


class SingleThreadedITK:
    """Dask worker plugin: one SimpleITK thread per worker process."""

    name = "lesionflow-sitk-threads"

    def setup(self, worker: Any = None) -> None:  # noqa: D401 - dask plugin hook
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)

    def teardown(self, worker: Any = None) -> None:
        pass


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

    plugin_cls = type("SingleThreadedITKPlugin", (SingleThreadedITK, WorkerPlugin), {})
    if address:
        try:
            client = Client(address, timeout=connect_timeout)
        except OSError as exc:
            raise RuntimeError(f"cannot reach the Dask scheduler at {address} ({exc}); check the address or omit it to use a local cluster") from exc
        cluster = None
    else:
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        client.register_plugin(plugin_cls(), name=SingleThreadedITK.name)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def map_sessions(
    plans: list[Any],
    store_root: str,
    cfg: Any,
    run_id: str,
    client: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
    force: bool = False,
) -> list[Any]:
    """Run :func:`pipeline.ingest.convert_session` over ``plans``; results in input order.

    With ``client`` the sessions run on the Dask cluster (one task per session); without, in
    this process one after another.
    """
    from pipeline.ingest import convert_session

    total = len(plans)
    results: list[Any] = [None] * total
    if progress:
        progress("convert", 0, total)
    if client is None or total == 0:
        for i, plan in enumerate(plans):
            results[i] = convert_session(plan, store_root, cfg, run_id, force)
            if progress:
                progress("convert", i + 1, total)
        return results
    from dask.distributed import as_completed

    futures = client.map(convert_session, plans, store_root=store_root, cfg=cfg, run_id=run_id, force=force, pure=False)
    index = {f.key: i for i, f in enumerate(futures)}
    for done, fut in enumerate(as_completed(futures), start=1):
        results[index[fut.key]] = fut.result()
        if progress:
            progress("convert", done, total)
    return results
