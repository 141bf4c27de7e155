"""The whole ingest as one plain function: open the store → discover → convert → summarise.

:func:`run_ingest` is what ``lesionflow ingest --no-prefect`` runs; :mod:`flows.ingest` runs
the same steps as Prefect tasks, with the pieces here (:func:`new_run_id`,
:func:`record_rejected`, :func:`summarize`). After the sessions, the subjects' visit order
and the change masks of visit pairs are recorded (:mod:`pipeline.ingest.visits`). Inputs rejected at discovery are catalogued by
:func:`record_rejected`; every session's own rows by
:func:`~pipeline.ingest.session.convert_session`. The :class:`IngestSummary` lists every
rejected and unused input with its sealed path (a ``src:`` token: ``lesionflow lineage TOKEN``
opens it with the key, :mod:`pipeline.core.lineage`), reason and reason code; the summary is
logged (``lesionflow.ingest``, INFO) with the same sealed paths.

Example::

    from pipeline.core.config import PipelineConfig, pseudonym_key
    from pipeline.ingest import run_ingest
    summary = run_ingest("/data/incoming", "/data/ms.zarr", PipelineConfig(), pseudonym_key())
    summary.converted, summary.skipped, [r["code"] for r in summary.rejected_inputs]
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import PipelineConfig
from pipeline.core.lineage import lineage
from pipeline.ingest.cluster import map_sessions
from pipeline.ingest.context import IngestContext
from pipeline.ingest.discover import Discovery, discover
from pipeline.ingest.incremental import open_store_for_ingest
from pipeline.ingest.session import SessionResult
from pipeline.ingest.visits import committed_cases, record_longitudinal
from pipeline.store import append_catalog
from storage_schemas.models import CatalogRow

__all__ = ["IngestSummary", "new_run_id", "record_rejected", "run_ingest", "summarize"]

log = logging.getLogger("lesionflow.ingest")


@dataclass
class IngestSummary:
    """The outcome of one ingest run (``as_dict()`` is the ``--json`` output).

    ``rejected_inputs`` / ``unused_inputs``: ``{"path", "reason", "code"}`` per input, ``path``
    being its sealed path (``src:…``), ``code`` a :class:`~storage_schemas.models.ReasonCode`
    value. ``source``: the ingest folder, sealed (``root:…``).
    """

    run_id: str
    store: str
    source: str | None = None
    converted: int = 0
    skipped: int = 0
    rejected_sessions: int = 0
    unused_sessions: int = 0
    rejected_inputs: list[dict[str, str]] = field(default_factory=list)
    unused_inputs: list[dict[str, str]] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    seconds: float = 0.0
    bytes_read: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "store": self.store,
            "source": self.source,
            "converted": self.converted,
            "skipped": self.skipped,
            "rejected": self.rejected_sessions,
            "unused_sessions": self.unused_sessions,
            "rejected_inputs": self.rejected_inputs,
            "unused_inputs": self.unused_inputs,
            "cases": self.cases,
            "seconds": round(self.seconds, 2),
            "bytes_read": self.bytes_read,
        }


def new_run_id() -> str:
    """A sortable, unique run id: UTC time and six random hex digits."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def _listed(row: CatalogRow) -> dict[str, str]:
    return {"path": row.source_relpath, "reason": row.reason or "", "code": row.reason_code or ""}


def record_rejected(discovery: Discovery, ctx: IngestContext) -> list[dict[str, str]]:
    """Catalog rows for the inputs rejected at discovery (unreadable, unsupported, unassignable);
    returns them as ``{"path", "reason", "code"}`` (``path``: the sealed path)."""
    rows = [ctx.row(None, "rejected", r.sealed, reason=r.reason, reason_code=r.code, source_format=r.kind) for r in discovery.rejected]
    append_catalog(ctx.store_root, rows)
    return [_listed(r) for r in rows]


def summarize(results: list[SessionResult], discovery_rejected: list[dict[str, str]], ctx: IngestContext, seconds: float,
              unchanged: list[str] | None = None) -> IngestSummary:
    """Aggregate per-session results (and the cases discovery found unchanged) into the run summary."""
    s = IngestSummary(run_id=ctx.run_id, store=ctx.store_root, source=ctx.source_root, seconds=seconds)
    s.rejected_inputs = list(discovery_rejected)
    s.skipped = len(unchanged or [])
    s.cases = list(unchanged or [])
    for r in results:
        s.bytes_read += r.bytes_read
        if r.status == "converted":
            s.converted += 1
            s.cases.append(r.case_id)
        elif r.status == "skipped":
            s.skipped += 1
            s.cases.append(r.case_id)
        elif r.status == "unused":
            s.unused_sessions += 1
        else:
            s.rejected_sessions += 1
        for row in r.rows:
            if row.status == "rejected":
                s.rejected_inputs.append(_listed(row))
            elif row.status == "unused":
                s.unused_inputs.append(_listed(row))
    s.cases.sort()
    _log_summary(s)
    return s


def _log_summary(s: IngestSummary) -> None:
    """The run's outcome on ``lesionflow.ingest``: INFO for the counts and each rejected input,
    DEBUG for each unused one; inputs by sealed path only."""
    log.info("ingest %s: %d converted, %d up to date, %d sessions rejected, %d without usable images, %d inputs rejected, %d unused",
             s.run_id, s.converted, s.skipped, s.rejected_sessions, s.unused_sessions, len(s.rejected_inputs), len(s.unused_inputs))
    for r in s.rejected_inputs:
        log.info("rejected %s [%s]: %s", r["path"], r["code"], r["reason"])
    for r in s.unused_inputs:
        log.debug("unused %s [%s]: %s", r["path"], r["code"], r["reason"])
    if s.rejected_inputs or s.unused_inputs:
        log.info("inputs are named by sealed path; `lesionflow lineage TOKEN --store %s` opens one with the pseudonymisation key", s.store)


def run_ingest(
    source: str | Path,
    store_root: str | Path,
    cfg: PipelineConfig,
    key: bytes,
    client: Any = None,
    progress: Callable[[str, int, int], None] | None = None,
    force: bool = False,
) -> IngestSummary:
    """Discover, convert (on ``client`` when given, else in this process) and summarise.

    Args:
        source: the folder to ingest.
        store_root: the store (created when missing): a folder or an object-store URL.
        cfg: the pipeline configuration.
        key: the pseudonymisation key (:func:`pipeline.core.config.pseudonym_key`).
        client: an optional ``dask.distributed.Client``.
        progress: optional ``callback(stage, done, total)``.
        force: re-convert sessions even when their committed case is up to date.
    """
    t0 = time.perf_counter()
    lin = lineage(key)
    ctx = IngestContext(str(store_root), cfg, new_run_id(), force, source_root=lin.seal_root(str(Path(source).resolve())), stat_key=lin.stat_key)
    state = open_store_for_ingest(store_root, cfg, force, lineage=lin)
    disc = discover(source, cfg, key, progress=progress, client=client, known=state.known)
    rejected = record_rejected(disc, ctx)
    todo, unchanged = state.pending(disc.sessions, cfg, force)
    results = map_sessions(todo, ctx, client=client, progress=progress)
    pairs = record_longitudinal(disc, ctx, committed_cases(results, disc.unchanged + unchanged))
    return summarize(results, rejected + pairs["rejected"], ctx, time.perf_counter() - t0, disc.unchanged + unchanged)
