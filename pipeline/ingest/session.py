"""Convert discovered sessions into store cases: read → one grid → normalise → commit.

:func:`convert_session` is the unit of parallel work (one subject session, run on a Dask
worker). It is incremental: it hashes the session's source bytes and skips the session when
the committed case has the same source fingerprint and configuration hash. Every input ends
up in the catalog: converted, unused (with why) or rejected (with the file and the reason).
A failure in one session never stops the others.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline import __version__
from pipeline.core.config import PipelineConfig
from pipeline.ingest.discover import Discovery, SessionPlan, SourceItem, file_sha256
from pipeline.core.geometry import orientation_code
from pipeline.ingest.normalize import foreground_mask, intensity_stats, zscore
from pipeline.ingest.resample import grid_with_spacing, read_transform, resample_to_grid
from pipeline.core.volume import Volume
from storage_schemas.models import CaseMeta, CatalogRow, ChannelInfo, SourceFile

log = logging.getLogger("lesionflow.ingest")

LABEL_GRID_ORIGIN_TOL_MM = 0.05
"""A mask is 'on the grid' of an image when origins agree within this (mm) and shape/spacing/direction match."""


@dataclass
class SessionResult:
    case_id: str
    status: str  # converted | skipped | rejected | unused
    seconds: float = 0.0
    reason: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    bytes_read: int = 0  # source bytes read to hash them (0 when every digest was reused)


@dataclass
class IngestSummary:
    run_id: str
    store: str
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


# ------------------------------------------------------------------------------ helpers
def _row(plan: SessionPlan | None, status: str, relpath: str, cfg: PipelineConfig, run_id: str, **kw: Any) -> dict[str, Any]:
    return CatalogRow(
        case_id=plan.case_id if plan else None,
        subject=plan.subject if plan else None,
        session=plan.session if plan else None,
        status=status,
        source_relpath=relpath,
        pipeline_version=__version__,
        config_hash=cfg.processing_hash(),
        run_id=run_id,
        **kw,
    ).model_dump()


def _item_relpath(item: SourceItem) -> str:
    if item.kind == "dicom" and len(item.relpaths) > 1:
        return str(Path(item.relpaths[0]).parent.as_posix()) + "/"
    return item.relpaths[0]


def _item_digest(item: SourceItem, digests: dict[str, str]) -> str:
    if len(item.relpaths) == 1:
        return digests[item.relpaths[0]]
    import hashlib

    h = hashlib.sha256()
    for rel in sorted(item.relpaths):
        h.update(digests[rel].encode())
    return h.hexdigest()


def read_item(item: SourceItem) -> Volume:
    """Read one source item (DICOM series or image file) into a Volume; raises ReaderError."""
    from pipeline.io.readers import read_volume
    from pipeline.io.readers.dicom import read_series

    if item.kind == "dicom":
        return read_series(item.series)
    return read_volume(item.paths[0])


def _on_grid(mask: Volume, image: Volume) -> bool:
    return (
        mask.shape_zyx == image.shape_zyx
        and np.allclose(mask.spacing, image.spacing, rtol=1e-3, atol=1e-4)
        and np.allclose(mask.direction, image.direction, atol=1e-3)
        and np.allclose(mask.origin, image.origin, atol=LABEL_GRID_ORIGIN_TOL_MM)
    )


def _grid_text(v: Volume) -> str:
    return f"shape {v.shape_xyz}, spacing {tuple(round(s, 3) for s in v.spacing)}, origin {tuple(round(o, 2) for o in v.origin)}"


def existing_case_meta(store_root: str | Path, case_id: str) -> CaseMeta | None:
    from pipeline.store import StoreError, read_case_meta

    try:
        return read_case_meta(store_root, case_id)
    except StoreError:
        return None


# ------------------------------------------------------------------------------ one session
def convert_session(plan: SessionPlan, store_root: str, cfg: PipelineConfig, run_id: str, force: bool = False) -> SessionResult:
    """Convert one session into a committed store case (or skip it when up to date).

    Never raises for bad input: unreadable files become ``rejected`` rows naming the file.
    Writes its catalog rows itself, right after the case is committed.
    """
    from pipeline.store import append_catalog

    t0 = time.perf_counter()
    try:
        result = _convert_session(plan, store_root, cfg, run_id, force)
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the cohort; it is recorded
        log.error("session %s failed: %s\n%s", plan.case_id, exc, traceback.format_exc())
        reason = f"internal error while converting ({type(exc).__name__}: {exc}); please report it with this message"
        result = SessionResult(plan.case_id, "rejected", reason=reason, rows=[_row(plan, "rejected", plan.root_relpath, cfg, run_id, reason=reason)])
    result.seconds = time.perf_counter() - t0
    if result.status != "skipped" and result.rows:
        append_catalog(store_root, [CatalogRow.model_validate(r) for r in result.rows])
    return result


def _convert_session(plan: SessionPlan, store_root: str, cfg: PipelineConfig, run_id: str, force: bool) -> SessionResult:
    from pipeline.io.readers.errors import ReaderError
    from pipeline.store import geometry_of, write_case

    used = [i for i in plan.items if not i.unused_reason]
    existing = existing_case_meta(store_root, plan.case_id)
    digests, file_stats, to_hash = _cached_digests(plan, existing if not force else None)
    nbytes = 0
    for rel, path in to_hash:
        digests[rel] = file_sha256(path)
        nbytes += file_stats[rel].st_size
    fingerprint = plan.fingerprint(digests)
    if not force and existing and existing.source_fingerprint == fingerprint and existing.config_hash == cfg.processing_hash():
        return SessionResult(plan.case_id, "skipped", bytes_read=nbytes)

    rows: list[dict[str, Any]] = []
    for item in plan.items:
        if item.unused_reason:
            rows.append(_row(plan, "unused", _item_relpath(item), cfg, run_id, modality=item.modality, reason=item.unused_reason, source_format=item.kind))

    # ---- read every usable input; one bad file never stops the session
    volumes: dict[str, tuple[Volume, SourceItem]] = {}
    for item in sorted(used, key=lambda i: (i.series.series_number or 0) if i.series is not None else 0, reverse=True):
        try:
            vol = read_item(item)
        except ReaderError as err:
            rel = _relpath_of_error(err, item)
            rows.append(_row(plan, "rejected", rel, cfg, run_id, modality=item.modality, reason=err.reason, source_format=item.kind))
            continue
        if vol.is_4d:
            rows.append(_row(plan, "unused", _item_relpath(item), cfg, run_id, modality=item.modality, source_format=item.kind,
                             reason=f"4-D image ({vol.array.shape[0]} volumes), not a structural scan"))
            continue
        if item.modality in volumes:
            kept = volumes[item.modality][1]
            rows.append(_row(plan, "unused", _item_relpath(item), cfg, run_id, modality=item.modality, source_format=item.kind,
                             reason=f"another {item.modality} input of this session was used ({kept.name})"))
            continue
        volumes[item.modality] = (vol, item)  # type: ignore[index]

    channels = [m for m in cfg.channels if m in volumes]
    if not channels:
        broken = any(r["status"] == "rejected" for r in rows)
        status = "rejected" if broken else "unused"
        reason = _nothing_usable_reason(plan, cfg, broken)
        rows.append(_row(plan, status, plan.root_relpath, cfg, run_id, reason=reason))
        return SessionResult(plan.case_id, status, reason=reason, rows=rows, bytes_read=nbytes)

    ref_mod = cfg.reference_modality if cfg.reference_modality in volumes else channels[0]
    ref_native = volumes[ref_mod][0]
    grid = ref_native if cfg.target_spacing is None else grid_with_spacing(ref_native, cfg.target_spacing)

    # ---- images onto the reference grid (physical space; supplied registrations applied)
    resampled: dict[str, np.ndarray] = {}
    for m in list(channels):
        vol, item = volumes[m]
        try:
            tx = read_transform(item.transform) if item.transform is not None else None
        except ValueError as exc:
            rows.append(_row(plan, "rejected", _item_relpath(item), cfg, run_id, modality=m, reason=str(exc), source_format=item.kind))
            channels.remove(m)
            continue
        resampled[m] = resample_to_grid(vol, grid, "linear", transform=tx).array
    fg = foreground_mask(resampled[ref_mod if ref_mod in resampled else channels[0]])

    stacked = np.zeros((len(channels), *grid.shape_zyx), np.float32)
    infos: list[ChannelInfo] = []
    for c, m in enumerate(channels):
        vol, item = volumes[m]
        raw = resampled[m]
        stats = intensity_stats(raw, fg)
        stacked[c] = zscore(raw, fg, stats)[0] if cfg.normalization == "zscore" else raw
        infos.append(
            ChannelInfo(
                modality=m,
                source_format=item.kind,  # type: ignore[arg-type]
                source_series=(f"series-{item.series.series_number}" if item.series is not None else Path(item.relpaths[0]).name),
                series_description=item.series_description,
                native_spacing=vol.spacing,
                native_shape_zyx=vol.shape_zyx,
                native_orientation=orientation_code(vol.direction, "RAS"),
                sources=[_source(r, digests, file_stats) for r in item.relpaths],
                intensity_mean=stats["mean"],
                intensity_std=stats["std"],
                intensity_p01=stats["p01"],
                intensity_p99=stats["p99"],
            )
        )
        rows.append(
            _row(plan, "converted", _item_relpath(item), cfg, run_id, modality=m, source_format=item.kind,
                 source_sha256=_item_digest(item, digests), shape_zyx="x".join(map(str, vol.shape_zyx)),
                 spacing_mm="x".join(f"{s:.4g}" for s in vol.spacing), orientation=orientation_code(vol.direction, "RAS"),
                 intensity_mean=stats["mean"], intensity_std=stats["std"])
        )

    # ---- label: must lie on the grid of one of the session's images
    label = None
    label_source = None
    if "MASK" in volumes:
        mask, item = volumes["MASK"]
        natives = {m: volumes[m][0] for m in channels}
        match = next((m for m, v in natives.items() if _on_grid(mask, v)), None)
        values = np.unique(mask.array)
        if match is None:
            reason = (f"label grid does not match any image of the session: label {_grid_text(mask)}; "
                      f"{ref_mod} {_grid_text(ref_native)}")
            rows.append(_row(plan, "rejected", _item_relpath(item), cfg, run_id, modality="MASK", reason=reason, source_format=item.kind))
        elif not set(values.tolist()) <= {0, 1}:
            reason = f"label values {values[:10].tolist()} outside the allowed set {{0, 1}}"
            rows.append(_row(plan, "rejected", _item_relpath(item), cfg, run_id, modality="MASK", reason=reason, source_format=item.kind))
        else:
            label = resample_to_grid(mask.with_array((mask.array > 0).astype(np.uint8)), grid, "label").array
            label_source = _source(item.relpaths[0], digests, file_stats)
            rows.append(_row(plan, "converted", _item_relpath(item), cfg, run_id, modality="MASK", source_format=item.kind,
                             source_sha256=digests[item.relpaths[0]], shape_zyx="x".join(map(str, mask.shape_zyx)),
                             spacing_mm="x".join(f"{s:.4g}" for s in mask.spacing), orientation=orientation_code(mask.direction, "RAS")))

    meta = CaseMeta(
        case_id=plan.case_id,
        subject=plan.subject,
        session=plan.session,
        channels=channels,
        channel_info=infos,
        has_label=label is not None,
        label_source=label_source,
        geometry=geometry_of(grid),
        source_fingerprint=fingerprint,
        config_hash=cfg.processing_hash(),
        pipeline_version=__version__,
        run_id=run_id,
        catalog_rows=[CatalogRow.model_validate(r) for r in rows],
    )
    try:
        write_case(store_root, meta, stacked, fg, label, chunk_zyx=cfg.chunk_zyx)
    except OSError:
        # another ingest committed this case between our check and our rename: fine if it is
        # the same conversion (same sources, same configuration)
        other = existing_case_meta(store_root, plan.case_id)
        if other and other.source_fingerprint == fingerprint and other.config_hash == cfg.processing_hash():
            return SessionResult(plan.case_id, "skipped", bytes_read=nbytes)
        raise
    return SessionResult(plan.case_id, "converted", rows=rows, bytes_read=nbytes)


def _nothing_usable_reason(plan: SessionPlan, cfg: PipelineConfig, broken: bool) -> str:
    """Why a session yields no case, in words a study coordinator can act on."""
    from collections import Counter

    wanted = "/".join(cfg.channels)
    if broken:
        return f"no readable {wanted} image in this session (its image inputs were rejected, see their rows)"
    mods = Counter(i.modality for i in plan.items if i.modality)
    if mods and set(mods) == {"MASK"}:
        return f"only a lesion mask, no {wanted} image in this session"
    reasons = Counter((i.unused_reason or "").split(" (")[0] for i in plan.items if i.unused_reason)
    detail = "; ".join(f"{n} × {r}" for r, n in reasons.most_common())
    return f"no structural {wanted} image for lesion work in this session ({detail or 'no image inputs'})"


def _cached_digests(plan: SessionPlan, existing: CaseMeta | None) -> tuple[dict[str, str], dict[str, os.stat_result], list[tuple[str, Path]]]:
    """Digests of the plan's used input files that are unchanged (same size and mtime) since the
    committed case ``existing`` hashed them, the stat of every used file, and the files that still
    need hashing."""
    known = _known_sources(existing) if existing is not None else {}
    digests: dict[str, str] = {}
    file_stats: dict[str, os.stat_result] = {}
    to_hash: list[tuple[str, Path]] = []
    for item in plan.items:
        if item.unused_reason:
            continue
        for rel, path in zip(item.relpaths, item.paths):
            st = file_stats[rel] = path.stat()
            cached = known.get(rel)
            if cached is not None and cached.size_bytes == st.st_size and cached.mtime_ns == st.st_mtime_ns:
                digests[rel] = cached.sha256  # unchanged since it was hashed: no need to read it again
            else:
                to_hash.append((rel, path))
    return digests, file_stats, to_hash


def is_up_to_date(plan: SessionPlan, existing: CaseMeta | None, cfg: PipelineConfig) -> bool:
    """True when the committed case ``existing`` was converted from exactly the plan's inputs
    (every file unchanged in size and mtime since it was hashed) with this configuration.

    Reads no image data: the driver uses it to leave unchanged sessions out of the work sent to
    the cluster. ``False`` means "convert_session decides" (it hashes what changed).
    """
    if existing is None or existing.config_hash != cfg.processing_hash():
        return False
    try:
        digests, _, to_hash = _cached_digests(plan, existing)
        return not to_hash and existing.source_fingerprint == plan.fingerprint(digests)
    except OSError:
        return False


def _known_sources(meta: CaseMeta) -> dict[str, SourceFile]:
    """The committed case's source records by relpath (a digest cache keyed by size + mtime)."""
    known = {s.relpath: s for ch in meta.channel_info for s in ch.sources}
    if meta.label_source is not None:
        known[meta.label_source.relpath] = meta.label_source
    return {k: v for k, v in known.items() if v.mtime_ns is not None}


def _source(relpath: str, digests: dict[str, str], file_stats: dict[str, os.stat_result]) -> SourceFile:
    st = file_stats[relpath]
    return SourceFile(relpath=relpath, sha256=digests[relpath], size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)


def _relpath_of_error(err: Exception, item: SourceItem) -> str:
    path = Path(getattr(err, "path", "") or "")
    for rel, p in zip(item.relpaths, item.paths):
        if p == path or p.name == path.name:
            return rel
    return _item_relpath(item)


# ------------------------------------------------------------------------------ whole cohort
def record_rejected(store_root: str | Path, discovery: Discovery, cfg: PipelineConfig, run_id: str) -> list[dict[str, str]]:
    """Catalog rows for inputs rejected at discovery (unreadable, unsupported, unassignable)."""
    from pipeline.store import append_catalog

    rows = [CatalogRow.model_validate(_row(None, "rejected", r.relpath, cfg, run_id, reason=r.reason, source_format=r.kind)) for r in discovery.rejected]
    append_catalog(store_root, rows)
    return [{"path": r.relpath, "reason": r.reason} for r in discovery.rejected]


def committed_metas(store_root: str | Path) -> list[CaseMeta]:
    """The metadata of every committed case, read once per run (unreadable cases left out)."""
    from pipeline.store import list_cases

    metas = (existing_case_meta(store_root, case_id) for case_id in list_cases(store_root))
    return [m for m in metas if m is not None]


def repair_catalog(store_root: str | Path, metas: list[CaseMeta] | None = None) -> int:
    """Append the catalog rows of committed cases whose conversion is missing from the catalog.

    A case commits its own catalog rows atomically (``CaseMeta.catalog_rows``); the Parquet
    catalog is appended right after. A crash between the two leaves a case the catalog does
    not list; this puts it back (every ingest does it when it starts). ``metas``: the
    :func:`committed_metas` when the caller has read them already. Returns the number of cases
    repaired.
    """
    from pipeline.store import append_catalog, read_catalog

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


def known_cases(store_root: str | Path, cfg: PipelineConfig, metas: list[CaseMeta] | None = None) -> list[Any]:
    """Committed DICOM cases converted with this configuration, with their source files' size and
    mtime, so that discovery can skip re-reading the headers of unchanged studies."""
    from pipeline.ingest.discover import KnownCase

    out = []
    for meta in committed_metas(store_root) if metas is None else metas:
        if meta.config_hash != cfg.processing_hash():
            continue
        files = [s for ch in meta.channel_info for s in ch.sources]
        dicom = [s.relpath for ch in meta.channel_info if ch.source_format == "dicom" for s in ch.sources]
        if meta.label_source is not None:
            files.append(meta.label_source)
        if not dicom or any(f.mtime_ns is None for f in files):
            continue
        root = os.path.commonpath([posixpath.dirname(r) or "." for r in dicom])  # relpaths are POSIX
        accounted = tuple(r.source_relpath for r in meta.catalog_rows if r.status in ("unused", "rejected") and r.case_id == meta.case_id)
        out.append(KnownCase(meta.case_id, "" if root == "." else root, {f.relpath: (f.size_bytes, f.mtime_ns) for f in files}, accounted))
    return out


@dataclass
class StoreState:
    """What an ingest knows of its store before it starts: committed cases and the discovery
    shortcut derived from them."""

    metas: dict[str, CaseMeta]
    known: list[Any]

    def pending(self, plans: list[SessionPlan], cfg: PipelineConfig, force: bool = False) -> tuple[list[SessionPlan], list[str]]:
        """``plans`` split into those to send to the workers and the case ids already up to date."""
        if force:
            return list(plans), []
        todo, unchanged = [], []
        for plan in plans:
            if is_up_to_date(plan, self.metas.get(plan.case_id), cfg):
                unchanged.append(plan.case_id)
            else:
                todo.append(plan)
        return todo, unchanged


def open_store_for_ingest(store_root: str | Path, cfg: PipelineConfig, force: bool = False) -> StoreState:
    """Create the store if needed, clear what crashed runs left in staging, restore catalog rows
    a crash lost, merge the catalog's parts when there are many, and return the committed cases'
    metadata with the :func:`known_cases` for discovery (none with ``force``).

    Reads every committed case's metadata once for all of that.
    """
    from pipeline.store import clean_staging, compact_catalog, init_store

    init_store(store_root, channels=cfg.channels)
    clean_staging(store_root)
    metas = committed_metas(store_root)
    repair_catalog(store_root, metas)
    compact_catalog(store_root)
    return StoreState({m.case_id: m for m in metas}, [] if force else known_cases(store_root, cfg, metas))


def summarize(results: list[SessionResult], discovery_rejected: list[dict[str, str]], run_id: str, store: str, seconds: float,
              unchanged: list[str] | None = None) -> IngestSummary:
    """Aggregate per-session results (and the cases discovery found unchanged) into the run summary."""
    s = IngestSummary(run_id=run_id, store=str(store), seconds=seconds)
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
            if row["status"] == "rejected":
                s.rejected_inputs.append({"path": row["source_relpath"], "reason": row["reason"]})
            elif row["status"] == "unused":
                s.unused_inputs.append({"path": row["source_relpath"], "reason": row["reason"]})
    s.cases.sort()
    return s


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


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

    This is the whole ingest as one plain function; :mod:`flows.ingest` runs the same steps
    as Prefect tasks.
    """
    from pipeline.ingest.discover import discover
    from pipeline.ingest.cluster import map_sessions

    t0 = time.perf_counter()
    run_id = new_run_id()
    state = open_store_for_ingest(store_root, cfg, force)
    disc = discover(source, cfg, key, progress=progress, client=client, known=state.known)
    rejected = record_rejected(store_root, disc, cfg, run_id)
    todo, unchanged = state.pending(disc.sessions, cfg, force)
    results = map_sessions(todo, str(store_root), cfg, run_id, client=client, progress=progress, force=force)
    return summarize(results, rejected, run_id, str(store_root), time.perf_counter() - t0, disc.unchanged + unchanged)
