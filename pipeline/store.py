"""Zarr v3 store I/O: one group per case, an append-only Parquet catalog, lesion tables.

Layout (documented in ``storage_schemas/LAYOUT.md``)::

    STORE/
      zarr.json                      root group; attributes["lesionflow"] = StoreManifest
      cases/<case_id>/               one group per subject session (committed cases only)
          image       float32 (C, Z, Y, X)   normalised channels, names in attrs
          label       uint8   (Z, Y, X)      reference lesion mask (when the source has one)
          foreground  uint8   (Z, Y, X)      head/brain mask used for normalisation and sampling
          patch_index/…                       written by `prepare`
          predictions/<model_version>/mask  uint8 (Z, Y, X)   written by `score`
      catalog/part-*.parquet         append-only catalog rows (CatalogRow)
      tables/                        lesion-volume tables (Parquet + CSV)
      models/<model_version>/        checkpoints
      .staging/                      work in progress, never read

Commit protocol: a case is written completely under ``.staging/<uuid>/`` and then moved to
``cases/<case_id>`` with one ``os.replace`` (atomic on a POSIX file system), so a reader
never sees a half-written case; a crash leaves only staging debris, removed on the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from pipeline import __version__
from pipeline.geometry import affine_ras, orientation_code
from pipeline.volume import Volume
from storage_schemas.models import CaseMeta, CatalogRow, Geometry, StoreManifest

CASES = "cases"
CATALOG = "catalog"
TABLES = "tables"
MODELS = "models"
STAGING = ".staging"
MANIFEST_KEY = "lesionflow"
CASE_META_KEY = "lesionflow_case"


class StoreError(RuntimeError):
    """A store that cannot be used as asked (wrong schema, missing case, ...)."""


def _compressor(dtype: np.dtype) -> BloscCodec:
    shuffle = BloscShuffle.bitshuffle if np.dtype(dtype).itemsize == 1 else BloscShuffle.shuffle
    return BloscCodec(cname="zstd", clevel=3, shuffle=shuffle)


# ------------------------------------------------------------------------------- store
def init_store(root: str | Path) -> Path:
    """Create the store at ``root`` if needed and check its schema version. Returns the path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if (root / "zarr.json").exists():
        read_manifest(root)
    else:
        g = zarr.open_group(str(root), mode="a", zarr_format=3)
        g.attrs[MANIFEST_KEY] = StoreManifest(pipeline_version=__version__).model_dump(mode="json")
    for sub in (CASES, CATALOG, TABLES, MODELS, STAGING):
        (root / sub).mkdir(exist_ok=True)
    if not (root / CASES / "zarr.json").exists():
        zarr.open_group(str(root / CASES), mode="a", zarr_format=3)
    return root


def read_manifest(root: str | Path) -> StoreManifest:
    """Validated store manifest; raises :class:`StoreError` when absent or of another schema."""
    root = Path(root)
    try:
        attrs = zarr.open_group(str(root), mode="r").attrs.asdict()
    except Exception as exc:  # noqa: BLE001 - surfaced with the path
        raise StoreError(f"{root}: not a lesionflow store ({exc}); create one with `lesionflow ingest`") from exc
    if MANIFEST_KEY not in attrs:
        raise StoreError(f"{root}: a Zarr group but not a lesionflow store (no '{MANIFEST_KEY}' manifest)")
    try:
        return StoreManifest.model_validate(attrs[MANIFEST_KEY])
    except Exception as exc:  # pydantic ValidationError carries the migration note
        raise StoreError(f"{root}: {exc}") from exc


def clean_staging(root: str | Path, older_than_s: float = 6 * 3600) -> int:
    """Remove leftovers of interrupted writes older than ``older_than_s`` seconds.

    The age guard keeps a concurrent writer's work in progress alive. Returns how many
    entries were removed.
    """
    import time

    staging = Path(root) / STAGING
    n = 0
    if staging.exists():
        now = time.time()
        for entry in staging.iterdir():
            try:
                if now - entry.stat().st_mtime < older_than_s:
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            n += 1
    return n


# ------------------------------------------------------------------------------- geometry
def geometry_of(volume: Volume) -> Geometry:
    """The stored-geometry record of a (3-D) volume."""
    return Geometry(
        shape_zyx=volume.shape_zyx,
        spacing=volume.spacing,
        origin=volume.origin,
        direction=tuple(float(v) for v in volume.direction.reshape(-1)),
        affine_lps=tuple(float(v) for v in volume.affine_lps.reshape(-1)),
        affine_ras=tuple(float(v) for v in affine_ras(volume).reshape(-1)),
        orientation=orientation_code(volume.direction, "RAS"),
    )


def _ome_multiscales(geometry: Geometry, name: str, channels: list[str]) -> dict[str, Any]:
    sx, sy, sz = geometry.spacing
    ox, oy, oz = geometry.origin
    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "z", "type": "space", "unit": "millimeter"},
                    {"name": "y", "type": "space", "unit": "millimeter"},
                    {"name": "x", "type": "space", "unit": "millimeter"},
                ],
                "datasets": [
                    {
                        "path": "image",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1.0, sz, sy, sx]},
                            {"type": "translation", "translation": [0.0, oz, oy, ox]},
                        ],
                    }
                ],
                "metadata": {
                    "channels": channels,
                    "note": "OME-NGFF has no rotation: translation/scale are LPS origin/spacing; "
                    "use attributes['lesionflow_case'].geometry.affine_lps for exact (oblique) geometry",
                },
            }
        ],
    }


# ------------------------------------------------------------------------------- cases
def _write_array(group: zarr.Group, name: str, data: np.ndarray, chunks: tuple[int, ...], attrs: dict[str, Any] | None = None) -> None:
    chunks = tuple(min(c, s) for c, s in zip(chunks, data.shape))
    arr = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=[_compressor(data.dtype)])
    arr[...] = data
    if attrs:
        arr.attrs.update(attrs)


def write_case(
    root: str | Path,
    meta: CaseMeta,
    image: np.ndarray,
    foreground: np.ndarray,
    label: np.ndarray | None = None,
    chunk_zyx: tuple[int, int, int] = (64, 64, 64),
) -> Path:
    """Write one case atomically and return its path.

    ``image`` is float32 ``(C, Z, Y, X)`` with ``C == len(meta.channels)``; ``foreground`` and
    ``label`` are ``(Z, Y, X)`` on the same grid (``meta.geometry``). An existing case with the
    same id is replaced only after the new one is complete.
    """
    root = Path(root)
    meta = CaseMeta.model_validate(meta.model_dump())  # validate on write
    shape = tuple(meta.geometry.shape_zyx)
    if image.ndim != 4 or image.shape[1:] != shape or image.shape[0] != len(meta.channels):
        raise StoreError(f"case {meta.case_id}: image shape {image.shape} does not match channels {meta.channels} x grid {shape}")
    for name, arr in (("foreground", foreground), ("label", label)):
        if arr is not None and arr.shape != shape:
            raise StoreError(f"case {meta.case_id}: {name} shape {arr.shape} is not the grid {shape}")

    staging = root / STAGING / uuid.uuid4().hex
    staging.mkdir(parents=True)
    try:
        g = zarr.open_group(str(staging), mode="w", zarr_format=3)
        _write_array(g, "image", image.astype(np.float32, copy=False), (1, *chunk_zyx), {"channels": list(meta.channels)})
        _write_array(g, "foreground", foreground.astype(np.uint8, copy=False), chunk_zyx)
        if label is not None:
            _write_array(g, "label", label.astype(np.uint8, copy=False), chunk_zyx)
        g.attrs.update({CASE_META_KEY: meta.model_dump(mode="json"), "ome": _ome_multiscales(meta.geometry, meta.case_id, list(meta.channels))})
        final = root / CASES / meta.case_id
        if final.exists():
            trash = root / STAGING / f"old-{uuid.uuid4().hex}"
            os.replace(final, trash)
            os.replace(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
        return final
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def list_cases(root: str | Path) -> list[str]:
    """Ids of the committed cases, sorted."""
    cases = Path(root) / CASES
    if not cases.exists():
        return []
    return sorted(p.name for p in cases.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "zarr.json").exists())


def open_case(root: str | Path, case_id: str, mode: str = "r") -> zarr.Group:
    """The Zarr group of a committed case."""
    path = Path(root) / CASES / case_id
    if not (path / "zarr.json").exists():
        raise StoreError(f"case {case_id!r} is not in store {root}; `lesionflow ingest` it first")
    return zarr.open_group(str(path), mode=mode)


def read_case_meta(root: str | Path, case_id: str) -> CaseMeta:
    """Validated metadata of a committed case."""
    attrs = open_case(root, case_id).attrs.asdict()
    try:
        return CaseMeta.model_validate(attrs[CASE_META_KEY])
    except KeyError as exc:
        raise StoreError(f"case {case_id}: no '{CASE_META_KEY}' metadata") from exc
    except Exception as exc:
        raise StoreError(f"case {case_id}: invalid metadata: {exc}") from exc


def volume_from_geometry(geometry: Geometry, array: np.ndarray) -> Volume:
    """Attach a stored grid's geometry to a ``(Z, Y, X)`` array."""
    return Volume(array, spacing=geometry.spacing, origin=geometry.origin, direction=np.asarray(geometry.direction).reshape(3, 3))


def write_case_array(root: str | Path, case_id: str, path: str, data: np.ndarray, chunk_zyx: tuple[int, ...] = (64, 64, 64), attrs: dict[str, Any] | None = None) -> None:
    """Add or replace one array (e.g. ``predictions/<model>/mask``) inside a committed case, atomically.

    The array is written to staging, then moved into place with ``os.replace``.
    """
    root = Path(root)
    case_dir = root / CASES / case_id
    if not (case_dir / "zarr.json").exists():
        raise StoreError(f"case {case_id!r} is not in store {root}")
    staging = root / STAGING / uuid.uuid4().hex
    staging.mkdir(parents=True)
    try:
        g = zarr.open_group(str(staging), mode="w", zarr_format=3)
        chunks = chunk_zyx if data.ndim == len(chunk_zyx) else (*([1] * (data.ndim - len(chunk_zyx))), *chunk_zyx)
        _write_array(g, "a", data, tuple(chunks), attrs)
        parts = path.strip("/").split("/")
        parent = case_dir
        for part in parts[:-1]:  # make intermediate groups
            parent = parent / part
            if not (parent / "zarr.json").exists():
                zarr.open_group(str(parent), mode="a", zarr_format=3)
        target = parent / parts[-1]
        if target.exists():
            trash = root / STAGING / f"old-{uuid.uuid4().hex}"
            os.replace(target, trash)
            os.replace(staging / "a", target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging / "a", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------- catalog
def append_catalog(root: str | Path, rows: Iterable[CatalogRow]) -> Path | None:
    """Append validated rows as one new Parquet part (written to a temp name, then renamed)."""
    import pandas as pd

    rows = [CatalogRow.model_validate(r.model_dump()) for r in rows]
    if not rows:
        return None
    df = pd.DataFrame([r.model_dump() for r in rows])
    folder = Path(root) / CATALOG
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{rows[0].recorded_at.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}.tmp"
    df.to_parquet(tmp, index=False)
    os.replace(tmp, folder / name)
    return folder / name


def read_catalog(root: str | Path, latest_only: bool = True) -> "Any":
    """The catalog as a pandas DataFrame.

    With ``latest_only`` each (source, case, modality) keeps its most recent row, which is the
    current state; otherwise the full history is returned.
    """
    import pandas as pd

    parts = sorted((Path(root) / CATALOG).glob("part-*.parquet"))
    if not parts:
        return pd.DataFrame(columns=list(CatalogRow.model_fields))
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    if latest_only and len(df):
        df = df.sort_values("recorded_at").drop_duplicates(["source_relpath", "case_id", "modality"], keep="last")
    return df.reset_index(drop=True)


# ------------------------------------------------------------------------------- tables
def write_table(root: str | Path, name: str, df: "Any") -> dict[str, str]:
    """Write ``tables/<name>.parquet`` and ``.csv`` atomically; returns both paths."""
    folder = Path(root) / TABLES
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for ext in ("parquet", "csv"):
        final = folder / f"{name}.{ext}"
        tmp = folder / f".{name}.{ext}.tmp"
        if ext == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, final)
        out[ext] = str(final)
    return out


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON to ``path`` via a temporary file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)
