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

A poisoned session (one whose conversion kills its worker: memory past the worker's limit, a
crash in a native library) is isolated. The LocalCluster's workers have a memory limit
(``PipelineConfig.worker_memory_limit``; Dask's default shares the machine's memory among them),
past which the nanny restarts the worker; the scheduler retries the session once on another
worker (:data:`SESSION_SETTINGS`, ``allowed-failures: 1``), then gives up on it. Dask charges a
worker's death to every task the worker held, so a good session that shared a worker with a
poisoned one (a task queued behind it after a restart) can be given up on too: :func:`map_sessions`
therefore converts every session the scheduler gave up on once more *alone*, nothing else in
flight on the cluster, and only a session whose workers die while it runs alone is recorded as
rejected (``worker_died``); the other sessions are converted as usual. An existing scheduler
retries as its own configuration says (``deploy/dask.yaml`` sets the same).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.ingest.context import IngestContext
from pipeline.ingest.discover import SessionPlan
from pipeline.ingest.incremental import existing_case_meta
from pipeline.ingest.session import SessionResult, convert_session
from pipeline.store import append_catalog
from storage_schemas.models import ReasonCode

log = logging.getLogger("lesionflow.parallel")


class OneCorePerWorker:
    """Dask worker plugin: one SimpleITK thread and one Zarr codec thread per worker process."""

    name = "lesionflow-one-core-per-worker"

    def setup(self, worker: Any = None) -> None:
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

SESSION_SETTINGS = {
    # a session whose worker dies (out of memory, a native crash) is retried once on another
    # worker, then reported (KilledWorker) instead of killing a third and a fourth (Dask's default 3)
    "distributed.scheduler.allowed-failures": 1,
}
"""Scheduler settings of the LocalCluster (also in ``deploy/dask.yaml`` for a scheduler started by hand)."""


@contextlib.contextmanager
def _local_cluster_config() -> Iterator[None]:
    """Settings for starting the LocalCluster: :data:`QUIET_CLUSTER`, and workers spawned
    without ``MALLOC_TRIM_THRESHOLD_``: not from Dask's configuration, and not inherited from
    this process, where an earlier Dask nanny may have left it (nannies set their worker
    environment in their own process before spawning)."""
    import dask

    inherited = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    try:
        with dask.config.set({**QUIET_CLUSTER, **SESSION_SETTINGS, "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            yield
    finally:
        if inherited is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = inherited


DASK_LOGGERS = ("distributed",)
"""Loggers of the in-process scheduler and nannies of the LocalCluster (no dashboard, so no bokeh)."""


@contextlib.contextmanager
def _quiet_dask_logs(level: int = logging.WARNING) -> Iterator[None]:
    """Dask's INFO records (scheduler start, workers registering, every client connection) kept
    out of this process's log while the LocalCluster runs: Dask's ``silence_logs`` only lowers its
    own stream handlers, and its records still reached the root logger's handler (Prefect's
    console under a flow: 20 lines per ingest). Warnings and errors still pass; a level the user
    set above ``level`` is kept."""
    saved = {}
    for name in DASK_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        if logger.getEffectiveLevel() < level:
            logger.setLevel(level)
    try:
        yield
    finally:
        for name, old in saved.items():
            logging.getLogger(name).setLevel(old)


@contextlib.contextmanager
def dask_client(address: str | None = None, n_workers: int = 2, connect_timeout: str = "20s",
                memory_limit: str | None = None) -> Iterator[Any]:
    """A connected ``dask.distributed.Client``.

    Args:
        address: scheduler address of an existing cluster; None starts a LocalCluster.
        n_workers: worker processes of the LocalCluster (one thread each).
        connect_timeout: how long to try reaching ``address``.
        memory_limit: memory per LocalCluster worker (``"4GiB"``); a worker past 95 % of it is
            restarted by its nanny. None: Dask's default (the machine's memory / ``n_workers``).
    """
    from dask.distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    plugin_cls = type("OneCorePerWorkerPlugin", (OneCorePerWorker, WorkerPlugin), {})
    with contextlib.ExitStack() as stack:
        if address:
            try:
                client = Client(address, timeout=connect_timeout)
            except OSError as exc:
                raise RuntimeError(f"cannot reach the Dask scheduler at {address} ({exc}); check the address or omit it to use a local cluster") from exc
        else:
            stack.enter_context(_quiet_dask_logs())
            with _local_cluster_config():
                # no dashboard; the scheduler's HTTP server (health checks only) on a free port, so a
                # second cluster on the machine does not warn "Port 8787 is already in use"
                cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                       scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                       silence_logs=logging.ERROR, memory_limit=memory_limit or "auto")
            stack.callback(cluster.close)
            client = Client(cluster)
        stack.callback(client.close)  # closed before the cluster (callbacks run last in, first out)
        client.register_plugin(plugin_cls(), name=OneCorePerWorker.name)
        yield client


def map_sessions(
    plans: list[SessionPlan],
    ctx: IngestContext,
    client: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[SessionResult]:
    """Run :func:`~pipeline.ingest.session.convert_session` over ``plans``; results in input order.

    With ``client`` the sessions run on the Dask cluster (one task per session, the largest
    first, at most one per worker thread at a time); without, in this process one after another.
    A session whose workers died while converting it (the scheduler gave up on it:
    ``KilledWorker``) is converted once more alone on the cluster after the others
    (:func:`_convert_alone`), since Dask also charges a death to the sessions queued on the dying
    worker; dying alone too, it is recorded as rejected with
    :attr:`~storage_schemas.models.ReasonCode.WORKER_DIED`.
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
    from collections import deque

    from distributed import wait
    from distributed.scheduler import KilledWorker

    # largest sessions first, so that no big one is left running alone at the end while the
    # other workers idle; and no more sessions in flight than the cluster has threads, counted
    # over every map_sessions of this process (the ingest flow converts batches concurrently): a
    # worker that dies takes every task the scheduler had sent it, so a session queued behind a
    # poisoned one would be charged with its death (and rejected at the second)
    work = [plan.work_estimate() for plan in plans]
    pending = deque(sorted(range(total), key=lambda i: -work[i]))
    in_flight: dict[Any, int] = {}
    scheduler = client.scheduler.address

    def submit_more() -> None:
        slots = max(1, sum(client.nthreads().values()))
        with _SLOTS:
            while pending and not _ALONE[scheduler] and _IN_FLIGHT[scheduler] < slots:
                i = pending.popleft()
                in_flight[client.submit(convert_session, plans[i], ctx, pure=False, priority=len(pending))] = i
                _IN_FLIGHT[scheduler] += 1

    done = 0
    suspects: list[int] = []  # given up on by the scheduler while sharing the cluster
    try:
        while pending or in_flight:
            submit_more()
            if not in_flight:  # every slot is another batch's: wait for one to free
                with _SLOTS:
                    _SLOTS.wait(timeout=0.5)
                continue
            try:
                finished = wait(list(in_flight), timeout=0.5, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                continue  # look again for slots other batches freed
            for fut in finished:
                i = in_flight.pop(fut)
                with _SLOTS:
                    _IN_FLIGHT[scheduler] -= 1
                    _SLOTS.notify_all()
                try:
                    results[i] = _converted_earlier_in_this_run(fut.result(), ctx)
                except KilledWorker:
                    log.warning("session %s: its workers died twice while sharing the cluster; converting it again alone", plans[i].case_id)
                    suspects.append(i)
                    continue
                done += 1
                if progress:
                    progress("convert", done, total)
    finally:
        with _SLOTS:
            _IN_FLIGHT[scheduler] -= len(in_flight)
            _SLOTS.notify_all()
    for i in suspects:
        results[i] = _convert_alone(client, plans[i], ctx)
        done += 1
        if progress:
            progress("convert", done, total)
    return results


def _convert_alone(client: Any, plan: SessionPlan, ctx: IngestContext) -> SessionResult:
    """:func:`convert_session` of ``plan`` with nothing else in flight on the cluster (over every
    :func:`map_sessions` of this process: they submit nothing new meanwhile), so that a worker
    dying now died of this session; given up on again (``KilledWorker``) it is rejected
    (:func:`worker_died`)."""
    from distributed.scheduler import KilledWorker

    scheduler = client.scheduler.address
    with _SLOTS:
        _ALONE[scheduler] += 1
        while _IN_FLIGHT[scheduler] > 0:  # other batches' sessions finish first
            _SLOTS.wait(timeout=0.5)
        _IN_FLIGHT[scheduler] += 1
    try:
        try:
            return _converted_earlier_in_this_run(client.submit(convert_session, plan, ctx, pure=False).result(), ctx)
        except KilledWorker as exc:
            return worker_died(plan, ctx, exc)
    finally:
        with _SLOTS:
            _IN_FLIGHT[scheduler] -= 1
            _ALONE[scheduler] -= 1
            _SLOTS.notify_all()


_SLOTS = threading.Condition()
_IN_FLIGHT: Counter[str] = Counter()
"""Sessions in flight per scheduler address, over every :func:`map_sessions` of this process."""
_ALONE: Counter[str] = Counter()
"""Sessions waiting to be converted alone (:func:`_convert_alone`) per scheduler address: while
any waits, no other session is submitted to that scheduler."""


def _converted_earlier_in_this_run(result: SessionResult, ctx: IngestContext) -> SessionResult:
    """A session's result as converted when its case was committed by this very run.

    A finished task's result lives in its worker's memory until fetched; when that worker dies
    first (a poisoned session after it), the scheduler runs the task again, which finds the case
    it committed up to date and says "skipped".
    """
    if result.status != "skipped":
        return result
    meta = existing_case_meta(ctx.store_root, result.case_id)
    if meta is None or meta.run_id != ctx.run_id:
        return result
    return dataclasses.replace(result, status="converted", rows=list(meta.catalog_rows))


def worker_died(plan: SessionPlan, ctx: IngestContext, exc: BaseException) -> SessionResult:
    """The rejected result (and catalog row) of a session whose conversion killed its workers."""
    attempts = getattr(exc, "allowed_failures", None)
    tried = f"{attempts + 1} workers" if isinstance(attempts, int) else "its workers"
    limit = ctx.cfg.worker_memory_limit or "Dask's default"
    reason = (f"worker died while converting: {tried} running this session alone died (out of memory past the worker memory "
              f"limit, {limit}, or a crash in a native library); the rest of the cohort was converted")
    log.error("session %s: %s", plan.case_id, reason)
    # the session folder by its sealed path: a folder name can be a patient's (DOE^JANE_MRN123/...)
    row = ctx.row(plan, "rejected", plan.root_sealed, reason=reason, reason_code=ReasonCode.WORKER_DIED)
    append_catalog(ctx.store_root, [row])
    return SessionResult(plan.case_id, "rejected", reason=reason, reason_code=ReasonCode.WORKER_DIED, rows=[row])
