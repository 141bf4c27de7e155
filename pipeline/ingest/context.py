"""What every session of one ingest run shares: the store, the configuration, the run id, ``force``.

One frozen (and picklable) :class:`IngestContext` travels from the driver
(:mod:`~pipeline.ingest.run`, :mod:`flows.ingest`) to the Dask workers
(:mod:`~pipeline.ingest.cluster`) and into :func:`~pipeline.ingest.session.convert_session`,
instead of four parameters threaded through every call. It also stamps the catalog rows of the
run (:meth:`IngestContext.row`).

Example:
    >>> from pipeline.core.config import PipelineConfig
    >>> ctx = IngestContext("store.zarr", PipelineConfig(), run_id="20260101T000000-abcdef")
    >>> row = ctx.row(None, "rejected", "a/IM0001", reason="zero-byte file", reason_code=ReasonCode.EMPTY_FILE)
    >>> row.status, row.reason_code, row.run_id == ctx.run_id, row.config_hash == ctx.config_hash
    ('rejected', 'empty_file', True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.core.config import PipelineConfig
from storage_schemas.models import CatalogRow, ReasonCode

if TYPE_CHECKING:
    from pipeline.ingest.discover import SessionPlan

__all__ = ["IngestContext", "ReasonCode"]


@dataclass(frozen=True)
class IngestContext:
    """One ingest run, as every session sees it.

    Attributes:
        store_root: the store (a local folder or an object-store URL), as a string.
        cfg: the pipeline configuration.
        run_id: the run's id, recorded on every catalog row and committed case.
        force: re-convert sessions even when their committed case is up to date.
        source_root: the ingest folder, sealed (a ``root:`` token of :mod:`pipeline.core.lineage`),
            recorded on every catalog row and committed case.
        stat_key: the key of the files' stored (size, mtime) tags (:attr:`Lineage.stat_key
            <pipeline.core.lineage.Lineage.stat_key>`; derived, it opens no sealed path); None
            stores and compares no tag (every file is hashed).
    """

    store_root: str
    cfg: PipelineConfig
    run_id: str
    force: bool = False
    source_root: str | None = None
    stat_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "store_root", str(self.store_root))

    @cached_property
    def config_hash(self) -> str:
        """``cfg.processing_hash()``, computed once per run."""
        return self.cfg.processing_hash()

    def row(self, plan: SessionPlan | None, status: str, relpath: str, **fields: Any) -> CatalogRow:
        """A catalog row of this run for ``relpath`` (the input's sealed path; in ``plan``'s case,
        ``None`` for inputs that belong to no session). ``fields``: the other :class:`CatalogRow`
        fields, e.g. ``reason`` and ``reason_code``, which every rejected or unused row must have."""
        if status in ("rejected", "unused") and not (fields.get("reason") and fields.get("reason_code")):
            raise ValueError(f"a {status} catalog row needs a reason and a reason_code ({relpath})")
        return CatalogRow(
            case_id=plan.case_id if plan else None,
            subject=plan.subject if plan else None,
            session=plan.session if plan else None,
            status=status,
            source_relpath=relpath,
            source_root=self.source_root,
            pipeline_version=__version__,
            config_hash=self.config_hash,
            run_id=self.run_id,
            **fields,
        )
