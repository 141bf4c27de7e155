"""Flow ``ingest``: discover studies, convert them in parallel on Dask, catalog, report.

Prefect records a flow run's parameters in its database, and an ingest folder may be named after
a patient (``/exports/DOE^JANE_MRN123``). So ``source`` is best given *sealed*: a ``root:`` token
(:func:`seal_source`, what ``lesionflow ingest`` passes), which the flow opens with the
pseudonymisation key; what Prefect then holds is the token, the same one the catalog records
(``source_root``). A plain path is accepted too (a deployment's fixed drop folder) and is then
recorded by Prefect as given. Tasks get the token, never the path; the summary, artefacts and
logs name inputs by sealed path only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import batches, progress_logger
from pipeline.core.config import load_config, pseudonym_key
from pipeline.core.lineage import ROOT, is_sealed, lineage
from pipeline.ingest.cluster import dask_client, map_sessions
from pipeline.ingest.context import IngestContext
from pipeline.ingest.discover import SessionPlan, discover
from pipeline.ingest.incremental import open_store_for_ingest
from pipeline.ingest.run import new_run_id, record_rejected, summarize
from pipeline.ingest.session import SessionResult


def seal_source(source: str | Path, key: bytes | None = None) -> str:
    """The ``root:`` token of the ingest folder ``source`` (absolute), to pass as the flow's
    ``source`` so that Prefect records no path; ``key``: the pseudonymisation key (default: the
    environment's)."""
    return lineage(key or pseudonym_key()).seal_root(str(Path(source).resolve()))


def open_source(source: str, key: bytes | None = None) -> Path:
    """The ingest folder of the flow's ``source``: a ``root:`` token opened with the key, or a plain path."""
    if is_sealed(source):
        if not source.startswith(ROOT):
            raise ValueError("source: a sealed ingest folder is a 'root:' token (seal_source), not a 'src:' one")
        return Path(lineage(key or pseudonym_key()).open(source))
    return Path(source).resolve()


@task(name="discover", cache_policy=NO_CACHE)
def discover_task(source: str, ctx: IngestContext, scheduler: str) -> tuple[list[SessionPlan], list[dict[str, str]], list[str]]:
    """Open the store (staging cleared, catalog repaired and compacted; refused when the key does
    not open its sealed paths), discover ``source`` (sealed or plain) and return the sessions to
    convert, the rejected inputs and the ids of the cases up to date."""
    from dask.distributed import Client

    key = pseudonym_key()
    state = open_store_for_ingest(ctx.store_root, ctx.cfg, ctx.force, lineage=lineage(key))
    with Client(scheduler, timeout="30s") as client:
        disc = discover(open_source(source, key), ctx.cfg, key, progress=progress_logger(), client=client, known=state.known)
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


NEW_CASES_EVENT = "lesionflow.ingest.new-cases"
"""The Prefect event an ingest run emits when it converted new or changed sessions (the chain's start:
the ``quality-gate`` deployment is triggered by it, see ``deploy/prefect.yaml``)."""


def store_resource(store: str) -> dict[str, str]:
    """The Prefect resource that names a store in events: ``lesionflow.store.<sha256 of its location, 16 hex>``."""
    import hashlib

    from pipeline.store import location

    digest = hashlib.sha256(str(location(store)).encode()).hexdigest()[:16]
    return {"prefect.resource.id": f"lesionflow.store.{digest}", "prefect.resource.role": "store"}


def announce_new_cases(store: str, run_id: str, converted: int) -> None:
    """Emit :data:`NEW_CASES_EVENT` with the store, the ingest ``run_id`` (the catalog's, which names
    the new cases) and their number; without a Prefect API (a library call) it goes nowhere."""
    from prefect.events import emit_event

    emit_event(event=NEW_CASES_EVENT, resource=store_resource(store),
               payload={"store": str(store), "run_id": run_id, "converted": int(converted)})


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

    ``source``: the ingest folder, best sealed (:func:`seal_source`; see the module docstring).
    Conversion runs on Dask: an existing scheduler at ``dask_address`` or a LocalCluster of
    ``n_workers`` processes. Unchanged sessions are skipped; bad inputs are recorded, not fatal.
    When sessions were converted the run emits :data:`NEW_CASES_EVENT` (the deployments' chain).
    """
    cfg = load_config(config_path, target_spacing=tuple(target_spacing) if target_spacing else None, dask_address=dask_address, n_workers=n_workers)
    t0 = time.perf_counter()
    key = pseudonym_key()
    lin = lineage(key)
    sealed = lin.seal_root(str(open_source(source, key)))
    ctx = IngestContext(store, cfg, new_run_id(), force, source_root=sealed, stat_key=lin.stat_key)
    results: list[SessionResult] = []
    with dask_client(cfg.dask_address, cfg.n_workers, memory_limit=cfg.worker_memory_limit) as client:
        scheduler = client.scheduler.address
        sessions, rejected, unchanged = discover_task(sealed, ctx, scheduler)
        if sessions:
            futures = convert_batch.map(batches(sessions, batch_size), unmapped(ctx), unmapped(scheduler))
            for batch_result in futures.result():
                results.extend(batch_result)
    summary = summarize(results, rejected, ctx, time.perf_counter() - t0, unchanged).as_dict()
    summary["report"] = report_task(store) if report else None  # the store's channels: cfg.channels, recorded at discovery
    if summary["converted"]:
        announce_new_cases(store, summary["run_id"], summary["converted"])
    print(f"ingest: {summary['converted']} converted, {summary['skipped']} up to date, {summary['rejected']} sessions rejected, "
          f"{summary['unused_sessions']} without usable images, "
          f"{len(summary['rejected_inputs'])} inputs rejected, {len(summary['unused_inputs'])} unused → {store}")
    return summary
