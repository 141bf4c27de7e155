"""Incremental bookkeeping: what the store already holds, and what need not be read again.

An ingest starts with :func:`open_store_for_ingest` (create the store, clear crashed runs'
staging, restore catalog rows a crash lost, compact the catalog) and gets a :class:`StoreState`:
the committed cases' metadata, read once, and the :func:`known_cases` that let discovery skip
the headers of unchanged DICOM studies. :meth:`StoreState.pending` then leaves the sessions whose
committed case is up to date (:func:`is_up_to_date`: same files by size and mtime, same
configuration) out of the work sent to the cluster. In a worker, :func:`cached_digests` reuses
the committed digests of unchanged files, so only new or changed bytes are hashed.

Nothing here reads image data. The store holds sealed paths (:mod:`pipeline.core.lineage`):
digests are reused by sealed path (:func:`cached_digests` needs no key), and the driver, which
holds the key, opens the committed paths for discovery's shortcut (:func:`known_cases`), after
checking that the key opens them at all (:func:`check_key`).

Example (a store's state before an ingest)::

    state = open_store_for_ingest("ms.zarr", PipelineConfig())
    todo, unchanged = state.pending(discover(src, cfg, key, known=state.known).sessions, cfg)
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import PipelineConfig
from pipeline.core.lineage import Lineage, is_sealed, stat_tag
from pipeline.ingest.discover import KnownCase, SessionPlan
from pipeline.store import (
    StoreError,
    append_catalog,
    clean_staging,
    compact_catalog,
    init_store,
    list_cases,
    read_case_meta,
    read_catalog,
)
from storage_schemas.models import CaseMeta, SourceFile

log = logging.getLogger("lesionflow.ingest")

__all__ = [
    "StoreState",
    "cached_digests",
    "check_key",
    "committed_metas",
    "existing_case_meta",
    "is_up_to_date",
    "known_cases",
    "open_store_for_ingest",
    "repair_catalog",
]


def existing_case_meta(store_root: str | Path, case_id: str) -> CaseMeta | None:
    """The committed case's metadata, or ``None`` when there is none (or it cannot be read)."""
    try:
        return read_case_meta(store_root, case_id)
    except StoreError:
        return None


def committed_metas(store_root: str | Path) -> list[CaseMeta]:
    """The metadata of every committed case, read once per run (unreadable cases left out)."""
    metas = (existing_case_meta(store_root, case_id) for case_id in list_cases(store_root))
    return [m for m in metas if m is not None]


def _unchanged(src: SourceFile, st: os.stat_result, stat_key: bytes | None) -> bool:
    """True when ``st`` is the size and mtime ``src`` was hashed at (by its keyed tag; plain
    ``mtime_ns`` for records written before schema 1.4)."""
    if src.size_bytes != st.st_size:
        return False
    if src.stat_tag is not None:
        return stat_key is not None and src.stat_tag == stat_tag(stat_key, st.st_size, st.st_mtime_ns)
    return src.mtime_ns is not None and src.mtime_ns == st.st_mtime_ns


def cached_digests(plan: SessionPlan, existing: CaseMeta | None,
                   stat_key: bytes | None = None) -> tuple[dict[str, str], dict[str, os.stat_result], list[tuple[str, Path]]]:
    """Digests of the plan's used input files that are unchanged (same size and mtime) since the
    committed case ``existing`` hashed them, the stat of every used file, and the files that still
    need hashing (``(relpath, path)``); keyed by plain relpath, matched with the committed
    sources by sealed path (a case stored with plain paths, before schema 1.4, is hashed again)
    and compared by keyed (size, mtime) tag (``stat_key``: :attr:`IngestContext.stat_key`)."""
    known = _known_sources(existing) if existing is not None else {}
    digests: dict[str, str] = {}
    file_stats: dict[str, os.stat_result] = {}
    to_hash: list[tuple[str, Path]] = []
    for item in plan.items:
        if item.unused_reason:
            continue
        for rel, path, token in zip(item.relpaths, item.paths, item.sealed_files):
            if rel in file_stats:  # a file read by several items (the planes of a slice stack)
                continue
            st = file_stats[rel] = path.stat()
            cached = known.get(token)
            if cached is not None and _unchanged(cached, st, stat_key):
                digests[rel] = cached.sha256  # unchanged since it was hashed: no need to read it again
            else:
                to_hash.append((rel, path))
    return digests, file_stats, to_hash


def is_up_to_date(plan: SessionPlan, existing: CaseMeta | None, cfg: PipelineConfig, stat_key: bytes | None = None) -> bool:
    """True when the committed case ``existing`` was converted from exactly the plan's inputs
    (every file unchanged in size and mtime since it was hashed) with this configuration.

    Reads no image data: the driver uses it to leave unchanged sessions out of the work sent to
    the cluster. ``False`` means "convert_session decides" (it hashes what changed).
    """
    if existing is None or existing.config_hash != cfg.processing_hash():
        return False
    try:
        digests, _, to_hash = cached_digests(plan, existing, stat_key)
        return not to_hash and existing.source_fingerprint == plan.fingerprint(digests)
    except OSError:
        return False


def _known_sources(meta: CaseMeta) -> dict[str, SourceFile]:
    """The committed case's source records by their stored (sealed) relpath (a digest cache keyed by size + mtime)."""
    known = {s.relpath: s for ch in meta.channel_info for s in ch.sources}
    if meta.label_source is not None:
        known[meta.label_source.relpath] = meta.label_source
    return {k: v for k, v in known.items() if v.stat_tag is not None or v.mtime_ns is not None}


def repair_catalog(store_root: str | Path, metas: list[CaseMeta] | None = None) -> int:
    """Append the catalog rows of committed cases whose conversion is missing from the catalog.

    A case commits its own catalog rows atomically (``CaseMeta.catalog_rows``); the Parquet
    catalog is appended right after. A crash between the two leaves a case the catalog does
    not list; this puts it back (every ingest does it when it starts). ``metas``: the
    :func:`committed_metas` when the caller has read them already. Returns the number of cases
    repaired.
    """
    cat = read_catalog(store_root, latest_only=False, columns=["case_id", "run_id"])
    known = set(zip(cat["case_id"], cat["run_id"]))
    repaired = 0
    for meta in committed_metas(store_root) if metas is None else metas:
        if meta.run_id and meta.catalog_rows and (meta.case_id, meta.run_id) not in known:
            append_catalog(store_root, meta.catalog_rows)
            repaired += 1
    if repaired:
        log.warning("catalog: restored the rows of %d case(s) committed by an interrupted run", repaired)
    return repaired


def known_cases(store_root: str | Path, cfg: PipelineConfig, metas: list[CaseMeta] | None = None,
                lineage: Lineage | None = None) -> list[KnownCase]:
    """Committed DICOM cases converted with this configuration, with their source files' size and
    (size, mtime) tag, so that discovery can skip re-reading the headers of unchanged studies. Their sealed
    paths are opened with ``lineage``; without it (or for cases stored with plain paths, before
    schema 1.4, which ingest converts again) a case is left out and discovery reads its headers."""
    out = []
    for meta in committed_metas(store_root) if metas is None else metas:
        if meta.config_hash != cfg.processing_hash():
            continue
        files = [s for ch in meta.channel_info for s in ch.sources]
        if meta.label_source is not None:
            files.append(meta.label_source)
        if lineage is None or not files or not all(is_sealed(f.relpath) for f in files):
            continue
        dicom = [lineage.open(s.relpath) for ch in meta.channel_info if ch.source_format == "dicom" for s in ch.sources]
        if not dicom or any(f.stat_tag is None for f in files):
            continue
        root = os.path.commonpath([posixpath.dirname(r) or "." for r in dicom])  # relpaths are POSIX
        accounted = tuple(lineage.reveal(r.source_relpath) for r in meta.catalog_rows
                          if r.status in ("unused", "rejected") and r.case_id == meta.case_id)
        sources = {lineage.open(f.relpath): (f.size_bytes, f.stat_tag) for f in files}
        out.append(KnownCase(meta.case_id, "" if root == "." else root, sources, accounted))
    return out


def check_key(metas: list[CaseMeta], lineage: Lineage) -> None:
    """Raise :class:`~pipeline.core.lineage.LineageKeyError` when ``lineage``'s key does not open
    the store's sealed paths: ingesting with another key would give every subject a second
    pseudonym in the same store. Checks one sealed path (stores before schema 1.4 have none: a
    warning says that their catalog keeps plain paths)."""
    plain = sum(1 for m in metas if any(not is_sealed(s.relpath) for ch in m.channel_info for s in ch.sources))
    if plain:
        log.warning("%d case(s) of this store were written before schema 1.4 with plain source paths: they are converted again "
                    "(and sealed), but the catalog parts written then keep the plain paths; ingest into a new store to be rid of them", plain)
    for meta in metas:
        for ch in meta.channel_info:
            for src in ch.sources:
                if is_sealed(src.relpath):
                    lineage.open(src.relpath)
                    return


@dataclass
class StoreState:
    """What an ingest knows of its store before it starts: committed cases and the discovery
    shortcut derived from them."""

    metas: dict[str, CaseMeta]
    known: list[KnownCase]
    stat_key: bytes | None = None

    def pending(self, plans: list[SessionPlan], cfg: PipelineConfig, force: bool = False) -> tuple[list[SessionPlan], list[str]]:
        """``plans`` split into those to send to the workers and the case ids already up to date."""
        if force:
            return list(plans), []
        todo, unchanged = [], []
        for plan in plans:
            if is_up_to_date(plan, self.metas.get(plan.case_id), cfg, self.stat_key):
                unchanged.append(plan.case_id)
            else:
                todo.append(plan)
        return todo, unchanged


def open_store_for_ingest(store_root: str | Path, cfg: PipelineConfig, force: bool = False, lineage: Lineage | None = None) -> StoreState:
    """Create the store if needed, clear what crashed runs left in staging, restore catalog rows
    a crash lost, merge the catalog's parts when there are many, and return the committed cases'
    metadata with the :func:`known_cases` for discovery (none with ``force``).

    ``lineage``: the run's key (:func:`pipeline.core.lineage.lineage`); when given, a store whose
    sealed paths this key does not open is refused (:func:`check_key`) before anything is written.
    Reads every committed case's metadata once for all of that.
    """
    init_store(store_root, channels=cfg.channels)
    metas = committed_metas(store_root)
    if lineage is not None:
        check_key(metas, lineage)
    clean_staging(store_root)
    repair_catalog(store_root, metas)
    compact_catalog(store_root)
    return StoreState({m.case_id: m for m in metas}, [] if force else known_cases(store_root, cfg, metas, lineage),
                      lineage.stat_key if lineage is not None else None)
