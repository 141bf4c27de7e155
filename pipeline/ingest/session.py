"""One subject session → one store case: read → one grid → normalise → commit.

:func:`convert_session` is the unit of parallel work (run on a Dask worker by
:mod:`~pipeline.ingest.cluster`). It is incremental: it hashes the session's changed source
bytes (:func:`~pipeline.ingest.incremental.cached_digests`) and skips the session when the
committed case has the same source fingerprint and configuration hash. Every input ends up in
the catalog: converted, unused or rejected, with the file, the reason in words and its
:class:`~storage_schemas.models.ReasonCode`. A failure in one session never stops the others.

Lesion masks are kept only when they lie on the native grid of one of the session's images
(:func:`on_grid`) and hold only 0 and 1; their catalog rows record ``label_on_grid``.

Nothing identifying is written: rows, case metadata and logs name inputs by their sealed path
(``SourceItem.sealed``, :mod:`pipeline.core.lineage`), reasons are scrubbed of the plain paths
and file names of the session (an exception's message may hold them), and descriptions are the
cleaned ones discovery made.

Example (in a worker, or in this process)::

    ctx = IngestContext("ms.zarr", PipelineConfig(), run_id="20260101T000000-abcdef")
    result = convert_session(plan, ctx)      # plan: a discover(...).sessions entry
    result.status, [r.reason_code for r in result.rows if r.status != "converted"]
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.core.descriptors import clean_descriptor
from pipeline.core.geometry import orientation_code
from pipeline.core.limits import ReadLimits
from pipeline.core.lineage import stat_tag
from pipeline.core.volume import Volume
from pipeline.ingest.context import IngestContext
from pipeline.ingest.discover import SessionPlan, SourceItem, file_sha256
from pipeline.ingest.incremental import cached_digests, existing_case_meta
from pipeline.ingest.modality import strip_extension
from pipeline.ingest.normalize import foreground_mask, intensity_stats, zscore
from pipeline.ingest.resample import grid_with_spacing, read_transform, resample_to_grid
from pipeline.io.readers import read_volume
from pipeline.io.readers.dicom import read_series
from pipeline.io.readers.errors import ReaderError
from pipeline.io.readers.slicestack import equal_planes, read_mask_stack, read_slice_stack
from pipeline.store import append_catalog, geometry_of, write_case
from storage_schemas.models import CaseMeta, CatalogRow, ChannelInfo, ReasonCode, SourceFile

log = logging.getLogger("lesionflow.ingest")

__all__ = ["LABEL_GRID_ORIGIN_TOL_MM", "SessionResult", "convert_session", "grid_fields", "on_grid", "read_item"]

LABEL_GRID_ORIGIN_TOL_MM = 0.05
"""A mask is 'on the grid' of an image when origins agree within this (mm) and shape/spacing/direction match."""


@dataclass
class SessionResult:
    """What :func:`convert_session` did with one session.

    Attributes:
        case_id: the session's case.
        status: ``converted`` | ``skipped`` (up to date) | ``rejected`` | ``unused``.
        seconds: wall time spent on it.
        reason, reason_code: why the session yields no case (``rejected`` / ``unused``).
        rows: the catalog rows it wrote (none when skipped).
        bytes_read: source bytes read to hash them (0 when every digest was reused).
    """

    case_id: str
    status: str
    seconds: float = 0.0
    reason: str | None = None
    reason_code: ReasonCode | None = None
    rows: list[CatalogRow] = field(default_factory=list)
    bytes_read: int = 0


# ------------------------------------------------------------------------------ helpers
def read_item(item: SourceItem, limits: ReadLimits | None = None) -> Volume:
    """Read one source item (DICOM series or image file) into a Volume, within ``limits`` (the
    readers' defaults when None); raises ReaderError."""
    if item.kind == "dicom":
        return read_series(item.series, limits=limits)
    if item.kind == "slicestack":
        ss = item.slice_stack
        if item.modality == "MASK":
            return read_mask_stack(item.paths, ss.spacing_mm, limits, ss.mask_suffix)
        return read_slice_stack(item.paths, item.plane or 0, ss.spacing_mm, limits, ss.mask_suffix)
    return read_volume(item.paths[0], limits=limits)


def on_grid(mask: Volume, image: Volume) -> bool:
    """True when ``mask`` lies on ``image``'s voxel grid: same shape, spacing and direction, and
    origins within :data:`LABEL_GRID_ORIGIN_TOL_MM`."""
    return (
        mask.shape_zyx == image.shape_zyx
        and np.allclose(mask.spacing, image.spacing, rtol=1e-3, atol=1e-4)
        and np.allclose(mask.direction, image.direction, atol=1e-3)
        and np.allclose(mask.origin, image.origin, atol=LABEL_GRID_ORIGIN_TOL_MM)
    )


def grid_fields(v: Volume) -> dict[str, Any]:
    """The catalog's native-grid fields of ``v``: numbers (ITK x, y, z order) and display text."""
    (nx, ny, nz), (sx, sy, sz) = v.shape_xyz, v.spacing
    return {
        "shape_x": int(nx), "shape_y": int(ny), "shape_z": int(nz),
        "spacing_x_mm": float(sx), "spacing_y_mm": float(sy), "spacing_z_mm": float(sz),
        "shape_zyx": "x".join(map(str, v.shape_zyx)), "spacing_mm": "x".join(f"{s:.4g}" for s in v.spacing),
        "orientation": orientation_code(v.direction, "RAS"),
        "geometry_source": v.meta.get("geometry_source", "header"),
    }


def _grid_text(v: Volume) -> str:
    return f"shape {v.shape_xyz}, spacing {tuple(round(s, 3) for s in v.spacing)}, origin {tuple(round(o, 2) for o in v.origin)}"


def _item_relpath(item: SourceItem) -> str:
    """The item's catalog path: sealed (the file, or a multi-file DICOM series' folder)."""
    return item.sealed


def _item_digest(item: SourceItem, digests: dict[str, str]) -> str:
    if len(item.relpaths) == 1:
        return digests[item.relpaths[0]]
    h = hashlib.sha256()
    for rel in sorted(item.relpaths):
        h.update(digests[rel].encode())
    return h.hexdigest()


def _relpath_of_error(err: ReaderError, item: SourceItem) -> str:
    """The sealed path of the file a reader error names (the item's, when it names none of them)."""
    path = Path(err.path or "")
    for token, p in zip(item.sealed_files, item.paths):
        if p == path or p.name == path.name:
            return token
    return _item_relpath(item)


def _source(item: SourceItem, index: int, digests: dict[str, str], file_stats: dict[str, os.stat_result], stat_key: bytes | None) -> SourceFile:
    """The stored record of the item's ``index``-th file: sealed path, digest, size and the keyed
    tag of (size, mtime) (no tag without ``stat_key``: the file is then hashed again next time)."""
    rel = item.relpaths[index]
    st = file_stats[rel]
    tag = stat_tag(stat_key, st.st_size, st.st_mtime_ns) if stat_key is not None else None
    return SourceFile(relpath=item.sealed_files[index], sha256=digests[rel], size_bytes=st.st_size, stat_tag=tag)


def _source_series(item: SourceItem) -> str:
    """``series-<n>`` for DICOM, ``file <cleaned name stem>`` for an image file (no file name verbatim)."""
    if item.series is not None:
        return f"series-{item.series.series_number}"
    if item.kind == "slicestack":
        return f"slice stack plane {item.plane}"
    return f"file {clean_descriptor(strip_extension(item.paths[0].name))}".strip()


# ------------------------------------------------------------------------------ one session
def convert_session(plan: SessionPlan, ctx: IngestContext) -> SessionResult:
    """Convert one session into a committed store case (or skip it when up to date).

    Never raises for bad input: unreadable files become ``rejected`` rows naming the file.
    Writes its catalog rows itself, right after the case is committed.
    """
    t0 = time.perf_counter()
    try:
        result = _SessionConversion(plan, ctx).run()
    except Exception as exc:
        log.error("session %s failed: %s\n%s", plan.case_id, plan.scrub(str(exc)), plan.scrub(traceback.format_exc()))
        reason = plan.scrub(f"internal error while converting ({type(exc).__name__}: {exc}); please report it with this message", any_path=True)
        row = ctx.row(plan, "rejected", plan.root_sealed, reason=reason, reason_code=ReasonCode.INTERNAL_ERROR)
        result = SessionResult(plan.case_id, "rejected", reason=reason, reason_code=ReasonCode.INTERNAL_ERROR, rows=[row])
    result.seconds = time.perf_counter() - t0
    if result.status != "skipped" and result.rows:
        append_catalog(ctx.store_root, result.rows)
    log.debug("session %s: %s in %.2f s (%d catalog rows)", plan.case_id, result.status, result.seconds, len(result.rows))
    return result


class _SessionConversion:
    """The steps of one :func:`convert_session` call, sharing the plan, context and rows so far."""

    def __init__(self, plan: SessionPlan, ctx: IngestContext) -> None:
        self.plan, self.ctx = plan, ctx
        self.rows: list[CatalogRow] = []
        self.digests: dict[str, str] = {}
        self.file_stats: dict[str, os.stat_result] = {}
        self.bytes_read = 0

    def row(self, status: str, relpath: str, **fields: Any) -> None:
        """A catalog row for the input at the sealed path ``relpath``; its reason is scrubbed of
        the session's plain paths and file names (:meth:`SessionPlan.scrub`)."""
        if fields.get("reason"):
            fields["reason"] = self.plan.scrub(fields["reason"], any_path=True)
        self.rows.append(self.ctx.row(self.plan, status, relpath, **fields))

    def item_row(self, status: str, item: SourceItem, **fields: Any) -> None:
        fields.setdefault("modality", item.modality)
        self.row(status, _item_relpath(item), source_format=item.kind, **fields)

    def result(self, status: str, reason: str | None = None, code: ReasonCode | None = None) -> SessionResult:
        rows = [] if status == "skipped" else self.rows  # a skipped session writes no rows
        return SessionResult(self.plan.case_id, status, reason=reason, reason_code=code, rows=rows, bytes_read=self.bytes_read)

    # ---- steps
    def run(self) -> SessionResult:
        fingerprint, existing = self.hash_sources()
        if self.up_to_date(existing, fingerprint):
            return self.result("skipped")
        for item in self.plan.items:
            if item.unused_reason:
                self.item_row("unused", item, reason=item.unused_reason, reason_code=item.unused_code)
        volumes = self.read_inputs()
        channels = [m for m in self.ctx.cfg.channels if m in volumes]
        if not channels:
            return self.nothing_usable()
        ref_mod = self.ctx.cfg.reference_modality if self.ctx.cfg.reference_modality in volumes else channels[0]
        ref_native = volumes[ref_mod][0]
        # a grid without geometry (a slice stack) is kept as it is: resampling it to mm means nothing
        spacing = self.ctx.cfg.target_spacing if ref_native.meta.get("geometry_source", "header") == "header" else None
        grid = ref_native if spacing is None else grid_with_spacing(ref_native, spacing)
        resampled = self.resample_images(volumes, channels, grid)
        if not channels:  # every image's registration was unreadable
            return self.nothing_usable()
        fg = foreground_mask(resampled[ref_mod if ref_mod in resampled else channels[0]])
        stacked, infos = self.normalise(volumes, channels, resampled, fg, grid)
        label, label_source = self.label(volumes, channels, ref_mod, grid)
        meta = CaseMeta(
            case_id=self.plan.case_id,
            subject=self.plan.subject,
            session=self.plan.session,
            channels=channels,
            channel_info=infos,
            has_label=label is not None,
            label_source=label_source,
            geometry=geometry_of(grid),
            source_fingerprint=fingerprint,
            source_root=self.ctx.source_root or self.plan.source_root,
            config_hash=self.ctx.config_hash,
            pipeline_version=__version__,
            run_id=self.ctx.run_id,
            catalog_rows=self.rows,
        )
        try:
            write_case(self.ctx.store_root, meta, stacked, fg, label, chunk_zyx=self.ctx.cfg.chunk_zyx)
        except OSError:
            # another ingest committed this case between our check and our rename: fine if it is
            # the same conversion (same sources, same configuration)
            if self.up_to_date(existing_case_meta(self.ctx.store_root, self.plan.case_id), fingerprint, force=False):
                return self.result("skipped")
            raise
        return self.result("converted")

    def hash_sources(self) -> tuple[str, CaseMeta | None]:
        """The plan's source fingerprint (hashing only what changed) and the committed case."""
        existing = existing_case_meta(self.ctx.store_root, self.plan.case_id)
        self.digests, self.file_stats, to_hash = cached_digests(self.plan, None if self.ctx.force else existing, self.ctx.stat_key)
        for rel, path in to_hash:
            self.digests[rel] = file_sha256(path)
            self.bytes_read += self.file_stats[rel].st_size
        return self.plan.fingerprint(self.digests), existing

    def up_to_date(self, existing: CaseMeta | None, fingerprint: str, force: bool | None = None) -> bool:
        force = self.ctx.force if force is None else force
        return bool(not force and existing and existing.source_fingerprint == fingerprint and existing.config_hash == self.ctx.config_hash)

    def read_inputs(self) -> dict[str, tuple[Volume, SourceItem]]:
        """Every usable input read, one per modality; one bad file never stops the session."""
        used = [i for i in self.plan.items if not i.unused_reason]
        volumes: dict[str, tuple[Volume, SourceItem]] = {}
        for item in sorted(used, key=lambda i: (i.series.series_number or 0) if i.series is not None else 0, reverse=True):
            try:
                vol = read_item(item, self.ctx.cfg.read_limits)
            except ReaderError as err:
                self.row("rejected", _relpath_of_error(err, item), modality=item.modality, source_format=item.kind,
                         reason=err.reason, reason_code=err.code)
                continue
            if vol.is_4d:
                self.item_row("unused", item, reason=f"4-D image ({vol.array.shape[0]} volumes), not a structural scan",
                              reason_code=ReasonCode.NOT_3D, **grid_fields(vol))
                continue
            if item.modality in volumes:
                kept = volumes[item.modality][1]
                self.item_row("unused", item, reason=f"another {item.modality} input of this session was used ({kept.name})",
                              reason_code=ReasonCode.DUPLICATE_MODALITY, **grid_fields(vol))
                continue
            volumes[item.modality] = (vol, item)  # type: ignore[index]
        self.drop_substituted(volumes)
        return volumes

    def drop_substituted(self, volumes: dict[str, tuple[Volume, SourceItem]]) -> None:
        """Slice-stack planes that are copies of the ``slice_stack.copies_of`` plane (the set's stand-in
        for a missing sequence) are marked absent: an ``unused`` row (``substituted_channel``), removed."""
        copies_of = self.ctx.cfg.slice_stack.copies_of
        if copies_of is None or copies_of not in volumes or volumes[copies_of][1].kind != "slicestack":
            return
        original, original_item = volumes[copies_of]
        for modality, (vol, item) in list(volumes.items()):
            if modality in (copies_of, "MASK") or item.kind != "slicestack" or item.paths != original_item.paths:
                continue
            if equal_planes(vol.array, original.array):
                self.item_row("unused", item, reason=f"plane {item.plane} ({modality}) is a copy of the {copies_of} plane "
                              f"{original_item.plane}: the data set's stand-in for a missing sequence, marked absent",
                              reason_code=ReasonCode.SUBSTITUTED_CHANNEL, **grid_fields(vol))
                del volumes[modality]

    def nothing_usable(self) -> SessionResult:
        """The session row when no configured channel could be read, in words a study
        coordinator can act on."""
        cfg = self.ctx.cfg
        wanted = "/".join(cfg.channels)
        if any(r.status == "rejected" for r in self.rows):
            status, code = "rejected", ReasonCode.NO_READABLE_IMAGE
            reason = f"no readable {wanted} image in this session (its image inputs were rejected, see their rows)"
        elif {i.modality for i in self.plan.items if i.modality} == {"MASK"}:
            status, code = "unused", ReasonCode.LABEL_ONLY
            reason = f"only a lesion mask, no {wanted} image in this session"
        else:
            status, code = "unused", ReasonCode.NO_STRUCTURAL_IMAGE
            counts = Counter((i.unused_reason or "").split(" (")[0] for i in self.plan.items if i.unused_reason)
            detail = "; ".join(f"{n} × {r}" for r, n in counts.most_common())
            reason = f"no structural {wanted} image for lesion work in this session ({detail or 'no image inputs'})"
        self.row(status, self.plan.root_sealed, reason=reason, reason_code=code)
        return self.result(status, reason, code)

    def resample_images(self, volumes: dict[str, tuple[Volume, SourceItem]], channels: list[str], grid: Volume) -> dict[str, np.ndarray]:
        """Each channel onto ``grid`` (physical space; supplied registrations applied). A channel
        whose transform cannot be read is rejected and dropped from ``channels``."""
        resampled: dict[str, np.ndarray] = {}
        for m in list(channels):
            vol, item = volumes[m]
            try:
                tx = read_transform(item.transform) if item.transform is not None else None
            except ValueError as exc:
                self.item_row("rejected", item, modality=m, reason=str(exc), reason_code=ReasonCode.BAD_TRANSFORM)
                channels.remove(m)
                continue
            resampled[m] = resample_to_grid(vol, grid, "linear", transform=tx).array
        return resampled

    def normalise(self, volumes: dict[str, tuple[Volume, SourceItem]], channels: list[str], resampled: dict[str, np.ndarray],
                  fg: np.ndarray, grid: Volume) -> tuple[np.ndarray, list[ChannelInfo]]:
        """The stacked (z-scored) image, each channel's record, and its converted catalog row."""
        stacked = np.zeros((len(channels), *grid.shape_zyx), np.float32)
        infos: list[ChannelInfo] = []
        for c, m in enumerate(channels):
            vol, item = volumes[m]
            raw = resampled[m]
            stats = intensity_stats(raw, fg)
            stacked[c] = zscore(raw, fg, stats)[0] if self.ctx.cfg.normalization == "zscore" else raw
            infos.append(
                ChannelInfo(
                    modality=m,
                    source_format=item.kind,  # type: ignore[arg-type]
                    source_series=_source_series(item),
                    series_description=item.series_description,
                    native_spacing=vol.spacing,
                    native_shape_zyx=vol.shape_zyx,
                    native_orientation=orientation_code(vol.direction, "RAS"),
                    sources=[_source(item, i, self.digests, self.file_stats, self.ctx.stat_key) for i in range(len(item.relpaths))],
                    intensity_mean=stats["mean"],
                    intensity_std=stats["std"],
                    intensity_p01=stats["p01"],
                    intensity_p99=stats["p99"],
                )
            )
            self.item_row("converted", item, modality=m, source_sha256=_item_digest(item, self.digests), **grid_fields(vol),
                          intensity_mean=stats["mean"], intensity_std=stats["std"])
        return stacked, infos

    def label(self, volumes: dict[str, tuple[Volume, SourceItem]], channels: list[str], ref_mod: str,
              grid: Volume) -> tuple[np.ndarray | None, SourceFile | None]:
        """The lesion mask on ``grid`` when the session has one that lies on the native grid of
        one of its images and is binary; otherwise ``(None, None)`` and a rejected row."""
        if "MASK" not in volumes:
            return None, None
        mask, item = volumes["MASK"]
        on = any(on_grid(mask, volumes[m][0]) for m in channels)
        fields = {"modality": "MASK", "label_on_grid": on, **grid_fields(mask)}
        if not on:
            reason = (f"label grid does not match any image of the session: label {_grid_text(mask)}; "
                      f"{ref_mod} {_grid_text(volumes[ref_mod][0])}")
            self.item_row("rejected", item, reason=reason, reason_code=ReasonCode.LABEL_OFF_GRID, **fields)
            return None, None
        values = np.unique(mask.array)
        if not set(values.tolist()) <= {0, 1}:
            reason = f"label values {values[:10].tolist()} outside the allowed set {{0, 1}}"
            self.item_row("rejected", item, reason=reason, reason_code=ReasonCode.LABEL_NOT_BINARY, **fields)
            return None, None
        label = resample_to_grid(mask.with_array((mask.array > 0).astype(np.uint8)), grid, "label").array
        # a slice stack's mask is many files: its catalog row holds the digest of them all (label_source: its first slice, a file)
        self.item_row("converted", item, source_sha256=_item_digest(item, self.digests), **fields)
        return label, _source(item, 0, self.digests, self.file_stats, self.ctx.stat_key)
