"""Flow ``ingest``: discover studies, convert them in parallel on Dask, catalog, report."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import batches, progress_logger
from pipeline.core.config import PipelineConfig, load_config, pseudonym_key


@task(name="discover", cache_policy=NO_CACHE)
def discover_task(source: str, store: str, cfg: PipelineConfig, run_id: str, scheduler: str, force: bool) -> tuple[list[Any], list[dict[str, str]], list[str]]:
    """Open the store (staging cleared, catalog repaired and compacted), discover the source and
    return the sessions to convert, the rejected inputs and the ids of the cases up to date."""
    from dask.distributed import Client

    from pipeline.ingest.discover import discover
    from pipeline.ingest.session import open_store_for_ingest, record_rejected

    state = open_store_for_ingest(store, cfg, force)
    with Client(scheduler, timeout="30s") as client:
        disc = discover(source, cfg, pseudonym_key(), progress=progress_logger(), client=client, known=state.known)
    rejected = record_rejected(store, disc, cfg, run_id)
    todo, unchanged = state.pending(disc.sessions, cfg, force)
    return todo, rejected, disc.unchanged + unchanged


@task(name="convert-batch", cache_policy=NO_CACHE)
def convert_batch(plans: list[Any], store: str, cfg: PipelineConfig, run_id: str, scheduler: str, force: bool) -> list[Any]:
    from dask.distributed import Client

    from pipeline.ingest.cluster import map_sessions

    with Client(scheduler, timeout="30s") as client:
        return map_sessions(plans, store, cfg, run_id, client=client, progress=progress_logger(25), force=force)


@task(name="quality-report", cache_policy=NO_CACHE)
def report_task(store: str, channels: tuple[str, ...]) -> dict[str, Any] | None:
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
    from pipeline.ingest.session import new_run_id, summarize
    from pipeline.ingest.cluster import dask_client

    cfg = load_config(config_path, target_spacing=tuple(target_spacing) if target_spacing else None, dask_address=dask_address, n_workers=n_workers)
    t0 = time.perf_counter()
    run_id = new_run_id()
    results: list[Any] = []
    with dask_client(cfg.dask_address, cfg.n_workers) as client:
        scheduler = client.scheduler.address
        sessions, rejected, unchanged = discover_task(source, store, cfg, run_id, scheduler, force)
        if sessions:
            futures = convert_batch.map(batches(sessions, batch_size), unmapped(store), unmapped(cfg), unmapped(run_id), unmapped(scheduler), unmapped(force))
            for batch_result in futures.result():
                results.extend(batch_result)
    summary = summarize(results, rejected, run_id, store, time.perf_counter() - t0, unchanged).as_dict()
    summary["report"] = report_task(store, cfg.channels) if report else None
    print(f"ingest: {summary['converted']} converted, {summary['skipped']} up to date, {summary['rejected']} sessions rejected, "
          f"{summary['unused_sessions']} without usable images, "
          f"{len(summary['rejected_inputs'])} inputs rejected, {len(summary['unused_inputs'])} unused → {store}")
    return summary
