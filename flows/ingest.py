"""Flow ``ingest``: discover studies, convert them in parallel on Dask, catalog, report."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import batches, progress_logger
from pipeline.core.config import load_config, pseudonym_key
from pipeline.ingest.cluster import dask_client, map_sessions
from pipeline.ingest.context import IngestContext
from pipeline.ingest.discover import SessionPlan, discover
from pipeline.ingest.incremental import open_store_for_ingest
from pipeline.ingest.run import new_run_id, record_rejected, summarize
from pipeline.ingest.session import SessionResult


@task(name="discover", cache_policy=NO_CACHE)
def discover_task(source: str, ctx: IngestContext, scheduler: str) -> tuple[list[SessionPlan], list[dict[str, str]], list[str]]:
    """Open the store (staging cleared, catalog repaired and compacted), discover the source and
    return the sessions to convert, the rejected inputs and the ids of the cases up to date."""
    from dask.distributed import Client

    state = open_store_for_ingest(ctx.store_root, ctx.cfg, ctx.force)
    with Client(scheduler, timeout="30s") as client:
        disc = discover(source, ctx.cfg, pseudonym_key(), progress=progress_logger(), client=client, known=state.known)
    rejected = record_rejected(disc, ctx)
    todo, unchanged = state.pending(disc.sessions, ctx.cfg, ctx.force)
    return todo, rejected, disc.unchanged + unchanged


@task(name="convert-batch", cache_policy=NO_CACHE)
def convert_batch(plans: list[SessionPlan], ctx: IngestContext, scheduler: str) -> list[SessionResult]:
    from dask.distributed import Client

    with Client(scheduler, timeout="30s") as client:
        return map_sessions(plans, ctx, client=client, progress=progress_logger(25))


@task(name="quality-report", cache_policy=NO_CACHE)
def report_task(store: str, channels: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """The data-quality report of ``store`` for ``channels`` (None: the store's, as recorded by ingest)."""
    from pipeline.quality.report import build_report, report_markdown

    result = build_report(store, channels=channels)
    create_markdown_artifact(report_markdown(result.summary), key="data-quality", description=f"data quality of {store}")
    return {"html": str(result.html_path), "flagged": result.flagged}


@flow(name="ingest", log_prints=True)
def ingest(
    source: str,
    store: str,
    config_path: str | None = None,
    target_spacing: list[float] | None = None,
    dask_address: str | None = None,
    n_workers: int = 2,
    batch_size: int = 32,
    force: bool = False,
    report: bool = True,
) -> dict[str, Any]:
    """Ingest every study under ``source`` into the Zarr ``store``; returns the run summary.

    Conversion runs on Dask: an existing scheduler at ``dask_address`` or a LocalCluster of
    ``n_workers`` processes. Unchanged sessions are skipped; bad inputs are recorded, not fatal.
    """
    cfg = load_config(config_path, target_spacing=tuple(target_spacing) if target_spacing else None, dask_address=dask_address, n_workers=n_workers)
    t0 = time.perf_counter()
    ctx = IngestContext(store, cfg, new_run_id(), force)
    results: list[SessionResult] = []
    with dask_client(cfg.dask_address, cfg.n_workers, memory_limit=cfg.worker_memory_limit) as client:
        scheduler = client.scheduler.address
        sessions, rejected, unchanged = discover_task(source, ctx, scheduler)
        if sessions:
            futures = convert_batch.map(batches(sessions, batch_size), unmapped(ctx), unmapped(scheduler))
            for batch_result in futures.result():
                results.extend(batch_result)
    summary = summarize(results, rejected, ctx, time.perf_counter() - t0, unchanged).as_dict()
    summary["report"] = report_task(store) if report else None  # the store's channels: cfg.channels, recorded at discovery
    print(f"ingest: {summary['converted']} converted, {summary['skipped']} up to date, {summary['rejected']} sessions rejected, "
          f"{summary['unused_sessions']} without usable images, "
          f"{len(summary['rejected_inputs'])} inputs rejected, {len(summary['unused_inputs'])} unused → {store}")
    return summary
