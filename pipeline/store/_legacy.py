"""Zarr v3 store I/O: one group per case, an append-only Parquet catalog, lesion tables.

Layout (documented in ``storage_schemas/LAYOUT.md``)::

    STORE/
      zarr.json                      root group; attributes["lesionflow"] = StoreManifest
      cases/<case_id>/               one group per subject session (committed cases only)
          image       float32 (C, Z, Y, X)   normalised channels, names in attrs; chunks (C, 64, 64, 64)
          label       uint8   (Z, Y, X)      reference lesion mask (when the source has one)
          foreground  uint8   (Z, Y, X)      head/brain mask used for normalisation and sampling
          patch_index/…                       written by `prepare`
          predictions/<model_version>/mask  uint8 (Z, Y, X)   written by `score`
      catalog/part-*.parquet         append-only catalog rows (CatalogRow), merged when many
      tables/                        lesion-volume tables (Parquet + CSV)
      models/<model_version>/        checkpoints
      .staging/                      work in progress, never read

``root`` is a local path or an fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``memory://...``).

Commit protocol, local file system: a case is written completely under ``.staging/<uuid>/`` and
then moved to ``cases/<case_id>`` with one ``os.replace`` (atomic on a POSIX file system), so a
reader never sees a half-written case; a crash leaves only staging debris, removed on the next run.

Commit protocol, object store (no atomic rename): *marker last*. A Zarr node is visible only
once its ``zarr.json`` exists, and a case only once its group ``zarr.json`` carries the
``lesionflow_case`` metadata. Writing a case deletes an existing case's ``zarr.json`` first (the
case becomes invisible), then the rest of its old objects, then uploads every chunk, then every
array's ``zarr.json``, and the group's ``zarr.json`` last. Arrays added later follow the same rule
at array level. Catalog parts, tables and other single files (report, checkpoints: see
:func:`put_bytes`, :func:`read_bytes`, :func:`has_file`, :func:`list_dir`, :func:`location`)
are single-object PUTs, which are atomic on S3. Every module reaches the store through these
functions, so each works the same on a local path and on a URL.

Storage options for URLs come from the ``storage_options`` argument of each function, the
environment (``LESIONFLOW_STORAGE_OPTIONS`` as JSON, ``LESIONFLOW_S3_ENDPOINT_URL`` →
``client_kwargs.endpoint_url``) and whatever the file-system library reads itself (s3fs/botocore:
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ...).
Dask worker processes see only the environment, so configure remote stores there for ``ingest``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from pipeline import __version__
from pipeline.core.geometry import affine_ras, orientation_code
from pipeline.core.volume import Volume
from storage_schemas.models import CaseMeta, CatalogRow, Geometry, StoreManifest

CASES = "cases"
PREDICTIONS = "predictions"  # cases/<id>/predictions/<model_version>/mask
CATALOG = "catalog"
TABLES = "tables"
MODELS = "models"
STAGING = ".staging"
MANIFEST_KEY = "lesionflow"
CASE_META_KEY = "lesionflow_case"


class StoreError(RuntimeError):
    """A store that cannot be used as asked (wrong schema, missing case, ...)."""


def _compressor(dtype: np.dtype) -> BloscCodec | ZstdCodec:
    """Zstd level 3 for float images; Blosc-zstd with bit shuffle for uint8 masks (see LAYOUT.md)."""
    if np.dtype(dtype).itemsize == 1:
        return BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)
    return ZstdCodec(level=3)


# ------------------------------------------------------------------------------- URL stores
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/{1,2}(.*)$")
ENV_STORAGE_OPTIONS = "LESIONFLOW_STORAGE_OPTIONS"
ENV_S3_ENDPOINT = "LESIONFLOW_S3_ENDPOINT_URL"


def _url_of(root: str | Path) -> str | None:
    """The normalised URL of a remote ``root`` (``proto://rest`` without trailing slash), else None.

    A ``Path`` built from a URL (``Path("s3://b/x")`` reads ``s3:/b/x``) is recognised too;
    ``file://`` URLs are local paths.
    """
    m = _URL_RE.match(str(root))
    if m is None or m.group(1).lower() == "file":
        return None
    return f"{m.group(1).lower()}://{m.group(2).rstrip('/')}"


def _local(root: str | Path) -> Path:
    text = str(root)
    return Path(text[len("file://"):]) if text.lower().startswith("file://") else Path(root)


def is_remote(root: str | Path) -> bool:
    """True when ``root`` is an fsspec URL (object store) rather than a local path."""
    return _url_of(root) is not None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_storage_options(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """fsspec options for ``url``: environment defaults overridden by ``storage_options``."""
    opts: dict[str, Any] = {}
    protocol = url.split("://", 1)[0].lower()
    endpoint = os.environ.get(ENV_S3_ENDPOINT)
    if endpoint and protocol in ("s3", "s3a"):
        opts = {"client_kwargs": {"endpoint_url": endpoint}}
    env_json = os.environ.get(ENV_STORAGE_OPTIONS)
    if env_json:
        try:
            opts = _merge(opts, json.loads(env_json))
        except ValueError as exc:
            raise StoreError(f"{ENV_STORAGE_OPTIONS} is not valid JSON ({exc})") from exc
    return _merge(opts, storage_options or {})


@dataclass(frozen=True)
class _Remote:
    """A store on an fsspec file system: a synchronous fs for plain objects, Zarr via FsspecStore."""

    url: str
    fs: Any
    path: str
    options: dict[str, Any]

    def key(self, *parts: str) -> str:
        return "/".join([self.path, *(p.strip("/") for p in parts if p)])

    def url_of(self, *parts: str) -> str:
        return "/".join([self.url, *(p.strip("/") for p in parts if p)])

    def zarr_store(self, *parts: str, read_only: bool = False) -> Any:
        from zarr.storage import FsspecStore

        # no listing cache: zarr's file system instance is shared per thread and our writes go
        # through another one, so a cached listing would hide arrays added later (new predictions)
        options = {"use_listings_cache": False, **self.options}
        return FsspecStore.from_url(self.url_of(*parts), storage_options=options, read_only=read_only)

    def read(self, key: str) -> bytes | None:
        try:
            return self.fs.cat_file(key)
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(key, data)


def _remote(root: str | Path, storage_options: dict[str, Any] | None = None) -> _Remote | None:
    url = _url_of(root)
    if url is None:
        return None
    from fsspec.core import url_to_fs

    opts = resolve_storage_options(url, storage_options)
    fs, path = url_to_fs(url, **opts)
    return _Remote(url=url, fs=fs, path=path.rstrip("/"), options=opts)


def _group_json(attrs: dict[str, Any] | None = None) -> bytes:
    """The ``zarr.json`` bytes of a Zarr v3 group with ``attrs``, as zarr writes it."""
    objects: dict[str, Any] = {}
    g = zarr.open_group(zarr.storage.MemoryStore(store_dict=objects), mode="w", zarr_format=3)
    if attrs:
        g.attrs.update(attrs)
    return objects["zarr.json"].to_bytes()


def _node_attrs(blob: bytes | None) -> dict[str, Any] | None:
    if blob is None:
        return None
    try:
        doc = json.loads(blob)
    except ValueError:
        return None
    return doc.get("attributes", {}) if isinstance(doc, dict) else None


def _remove_node(r: _Remote, prefix: str) -> None:
    """Delete a node: its ``zarr.json`` first (it becomes invisible), then everything below it."""
    try:
        r.fs.rm_file(f"{prefix}/zarr.json")
    except FileNotFoundError:
        pass
    try:
        r.fs.rm(prefix + "/", recursive=True)
    except FileNotFoundError:
        pass
    r.fs.invalidate_cache(prefix)


def _upload_node(r: _Remote, prefix: str, objects: dict[str, Any]) -> None:
    """Upload a node built in memory, markers last: chunks, then array/group ``zarr.json`` files
    from the deepest up, the node's own ``zarr.json`` last."""
    blobs = {f"{prefix}/{k}": (v.to_bytes() if hasattr(v, "to_bytes") else bytes(v)) for k, v in objects.items()}
    chunks = {k: v for k, v in blobs.items() if not k.endswith("/zarr.json")}
    if chunks:
        r.fs.pipe(chunks)
    markers = sorted((k for k in blobs if k.endswith("/zarr.json")), key=lambda k: -k.count("/"))
    for depth in sorted({k.count("/") for k in markers}, reverse=True):
        r.fs.pipe({k: blobs[k] for k in markers if k.count("/") == depth})
    r.fs.invalidate_cache(prefix)


# ------------------------------------------------------------------------------- store
def init_store(root: str | Path, *, storage_options: dict[str, Any] | None = None) -> Path | str:
    """Create the store at ``root`` if needed and check its schema version.

    Returns the path (local) or the normalised URL (object store).
    """
    r = _remote(root, storage_options)
    if r is not None:
        if r.read(r.key("zarr.json")) is not None:
            read_manifest(r.url, storage_options=storage_options)
        else:
            r.put(r.key("zarr.json"), _group_json({MANIFEST_KEY: StoreManifest(pipeline_version=__version__).model_dump(mode="json")}))
        if r.read(r.key(CASES, "zarr.json")) is None:
            r.put(r.key(CASES, "zarr.json"), _group_json())
        return r.url
    root = _local(root)
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


def read_manifest(root: str | Path, *, storage_options: dict[str, Any] | None = None) -> StoreManifest:
    """Validated store manifest; raises :class:`StoreError` when absent or of another schema."""
    r = _remote(root, storage_options)
    if r is not None:
        root = r.url
        attrs = _node_attrs(r.read(r.key("zarr.json")))
        if attrs is None:
            raise StoreError(f"{root}: not a lesionflow store (no readable zarr.json); create one with `lesionflow ingest`")
    else:
        root = _local(root)
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


def clean_staging(root: str | Path, older_than_s: float = 6 * 3600, *, storage_options: dict[str, Any] | None = None) -> int:
    """Remove leftovers of interrupted writes older than ``older_than_s`` seconds.

    The age guard keeps a concurrent writer's work in progress alive. Returns how many
    entries were removed. A no-op (0) on object stores, which have no staging area: an
    interrupted case write there leaves an invisible case that the next write replaces.
    """
    import time

    if is_remote(root):
        return 0
    staging = _local(root) / STAGING
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
    # masks: all-zero chunks (most of a label map) are not written; images: a z-scored chunk is
    # never all fill value, so zarr's per-chunk comparison (about 20 % of the write time) is skipped
    skip_empty = data.dtype == np.uint8
    arr = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=[_compressor(data.dtype)],
                             config={"write_empty_chunks": not skip_empty})
    arr[...] = data
    if attrs:
        arr.attrs.update(attrs)


def _fill_case_group(g: zarr.Group, meta: CaseMeta, image: np.ndarray, foreground: np.ndarray, label: np.ndarray | None, chunk_zyx: tuple[int, int, int]) -> None:
    """Write a case's arrays and attributes into an empty group (local staging or in memory)."""
    _write_array(g, "image", image.astype(np.float32, copy=False), (image.shape[0], *chunk_zyx), {"channels": list(meta.channels)})
    _write_array(g, "foreground", foreground.astype(np.uint8, copy=False), chunk_zyx)
    if label is not None:
        _write_array(g, "label", label.astype(np.uint8, copy=False), chunk_zyx)
    g.attrs.update({CASE_META_KEY: meta.model_dump(mode="json"), "ome": _ome_multiscales(meta.geometry, meta.case_id, list(meta.channels))})


def write_case(
    root: str | Path,
    meta: CaseMeta,
    image: np.ndarray,
    foreground: np.ndarray,
    label: np.ndarray | None = None,
    chunk_zyx: tuple[int, int, int] = (64, 64, 64),
    *,
    storage_options: dict[str, Any] | None = None,
) -> Path | str:
    """Write one case atomically and return its path (local) or URL (object store).

    ``image`` is float32 ``(C, Z, Y, X)`` with ``C == len(meta.channels)``; ``foreground`` and
    ``label`` are ``(Z, Y, X)`` on the same grid (``meta.geometry``). Locally, an existing case
    with the same id is replaced only after the new one is complete; on an object store it is
    made invisible first and the new one becomes visible when its group ``zarr.json`` (written
    last) lands (see the module docstring).
    """
    r = _remote(root, storage_options)
    root = _local(root) if r is None else root
    meta = CaseMeta.model_validate(meta.model_dump())  # validate on write
    shape = tuple(meta.geometry.shape_zyx)
    if image.ndim != 4 or image.shape[1:] != shape or image.shape[0] != len(meta.channels):
        raise StoreError(f"case {meta.case_id}: image shape {image.shape} does not match channels {meta.channels} x grid {shape}")
    for name, arr in (("foreground", foreground), ("label", label)):
        if arr is not None and arr.shape != shape:
            raise StoreError(f"case {meta.case_id}: {name} shape {arr.shape} is not the grid {shape}")

    if r is not None:
        objects: dict[str, Any] = {}  # the case, encoded in memory, then uploaded marker last
        g = zarr.open_group(zarr.storage.MemoryStore(store_dict=objects), mode="w", zarr_format=3)
        _fill_case_group(g, meta, image, foreground, label, chunk_zyx)
        case = r.key(CASES, meta.case_id)
        _remove_node(r, case)
        _upload_node(r, case, objects)
        return r.url_of(CASES, meta.case_id)

    staging = root / STAGING / uuid.uuid4().hex
    staging.mkdir(parents=True)
    try:
        g = zarr.open_group(str(staging), mode="w", zarr_format=3)
        _fill_case_group(g, meta, image, foreground, label, chunk_zyx)
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


def _remote_case_attrs(r: _Remote, case_id: str) -> dict[str, Any] | None:
    """Attributes of a committed case on an object store, None when absent or not committed."""
    attrs = _node_attrs(r.read(r.key(CASES, case_id, "zarr.json")))
    return attrs if attrs is not None and CASE_META_KEY in attrs else None


def list_cases(root: str | Path, *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Ids of the committed cases, sorted.

    On an object store: the prefixes under ``cases/`` whose group ``zarr.json`` exists and
    carries the ``lesionflow_case`` metadata.
    """
    r = _remote(root, storage_options)
    if r is not None:
        prefix = r.key(CASES)
        r.fs.invalidate_cache(prefix)
        try:
            entries = r.fs.ls(prefix, detail=True)
        except FileNotFoundError:
            return []
        names = sorted({e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"})
        names = [n for n in names if n and not n.startswith(".")]
        if not names:
            return []
        blobs = r.fs.cat([r.key(CASES, n, "zarr.json") for n in names], on_error="omit")
        return [n for n in names if CASE_META_KEY in (_node_attrs(blobs.get(r.key(CASES, n, "zarr.json"))) or {})]
    cases = _local(root) / CASES
    if not cases.exists():
        return []
    return sorted(p.name for p in cases.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "zarr.json").exists())


def open_case(root: str | Path, case_id: str, mode: str = "r", *, storage_options: dict[str, Any] | None = None) -> zarr.Group:
    """The Zarr group of a committed case."""
    r = _remote(root, storage_options)
    if r is not None:
        if _remote_case_attrs(r, case_id) is None:
            raise StoreError(f"case {case_id!r} is not in store {r.url}; `lesionflow ingest` it first")
        return zarr.open_group(r.zarr_store(CASES, case_id, read_only=mode == "r"), mode=mode, zarr_format=3)
    path = _local(root) / CASES / case_id
    if not (path / "zarr.json").exists():
        raise StoreError(f"case {case_id!r} is not in store {root}; `lesionflow ingest` it first")
    return zarr.open_group(str(path), mode=mode)


def read_case_meta(root: str | Path, case_id: str, *, storage_options: dict[str, Any] | None = None) -> CaseMeta:
    """Validated metadata of a committed case."""
    r = _remote(root, storage_options)
    if r is not None:
        remote_attrs = _remote_case_attrs(r, case_id)  # one GET, no Zarr round trip
        if remote_attrs is None:
            raise StoreError(f"case {case_id!r} is not in store {r.url}; `lesionflow ingest` it first")
        attrs = remote_attrs
    else:
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


def write_case_array(root: str | Path, case_id: str, path: str, data: np.ndarray, chunk_zyx: tuple[int, ...] = (64, 64, 64), attrs: dict[str, Any] | None = None, *, storage_options: dict[str, Any] | None = None) -> None:
    """Add or replace one array (e.g. ``predictions/<model>/mask``) inside a committed case, atomically.

    Locally the array is written to staging, then moved into place with ``os.replace``. On an
    object store an existing array's ``zarr.json`` is deleted first (with its chunks), then the
    new chunks are uploaded and the array's ``zarr.json`` last.
    """
    r = _remote(root, storage_options)
    if r is not None:
        _write_case_array_remote(r, case_id, path, data, chunk_zyx, attrs)
        return
    root = _local(root)
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


def _write_case_array_remote(r: _Remote, case_id: str, path: str, data: np.ndarray, chunk_zyx: tuple[int, ...], attrs: dict[str, Any] | None) -> None:
    if _remote_case_attrs(r, case_id) is None:
        raise StoreError(f"case {case_id!r} is not in store {r.url}")
    objects: dict[str, Any] = {}
    g = zarr.open_group(zarr.storage.MemoryStore(store_dict=objects), mode="w", zarr_format=3)
    chunks = chunk_zyx if data.ndim == len(chunk_zyx) else (*([1] * (data.ndim - len(chunk_zyx))), *chunk_zyx)
    _write_array(g, "a", data, tuple(chunks), attrs)
    parts = path.strip("/").split("/")
    parent = r.key(CASES, case_id)
    for part in parts[:-1]:  # make intermediate groups
        parent = f"{parent}/{part}"
        if r.read(f"{parent}/zarr.json") is None:
            r.put(f"{parent}/zarr.json", _group_json())
    target = f"{parent}/{parts[-1]}"
    _remove_node(r, target)
    _upload_node(r, target, {k[len("a/"):]: v for k, v in objects.items() if k.startswith("a/")})


def has_node(root: str | Path, relpath: str, *, storage_options: dict[str, Any] | None = None) -> bool:
    """True when the committed Zarr node ``relpath`` (e.g. ``cases/<id>/predictions/<v>/mask``) exists."""
    r = _remote(root, storage_options)
    if r is not None:
        return r.read(r.key(relpath, "zarr.json")) is not None
    return (_local(root) / relpath / "zarr.json").exists()


# ------------------------------------------------------------------------------- catalog
def _part_name(when: Any, kind: str = "") -> str:
    return f"part-{when.strftime('%Y%m%dT%H%M%S')}-{kind + '-' if kind else ''}{uuid.uuid4().hex[:8]}.parquet"


def _parquet_bytes(df: "Any") -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def catalog_arrow_schema() -> "Any":
    """The Arrow schema of catalog parts, from :class:`CatalogRow` (same column types in every
    part, whatever values a part holds, so any Parquet reader can read them as one dataset)."""
    import datetime as _dt
    import types
    import typing

    import pyarrow as pa

    arrow = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_(), _dt.datetime: pa.timestamp("us", tz="UTC")}
    fields = []
    for name, info in CatalogRow.model_fields.items():
        ann = info.annotation
        optional = typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in typing.get_args(ann)
        if optional:
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        kind = str if typing.get_origin(ann) is typing.Literal else ann
        fields.append(pa.field(name, arrow[kind], nullable=optional))
    return pa.schema(fields)


def _write_part(root: str | Path, table: "Any", name: str, storage_options: dict[str, Any] | None) -> Path | str:
    """One catalog part, atomically: temp name + rename locally, one PUT on an object store."""
    import pyarrow.parquet as pq

    r = _remote(root, storage_options)
    if r is not None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        r.put(r.key(CATALOG, name), buf.getvalue())
        return r.url_of(CATALOG, name)
    folder = _local(root) / CATALOG
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, folder / name)
    return folder / name


def append_catalog(root: str | Path, rows: Iterable[CatalogRow], *, storage_options: dict[str, Any] | None = None) -> Path | str | None:
    """Append validated rows as one new Parquet part (written to a temp name, then renamed;
    on an object store one PUT). Returns the part's path or URL."""
    import pyarrow as pa

    rows = [CatalogRow.model_validate(r.model_dump()) for r in rows]
    if not rows:
        return None
    table = pa.Table.from_pylist([r.model_dump() for r in rows], schema=catalog_arrow_schema())
    return _write_part(root, table, _part_name(rows[0].recorded_at), storage_options)


def _catalog_parts(root: str | Path, storage_options: dict[str, Any] | None) -> tuple[list[str], Any]:
    """The catalog's part files (paths or object keys, sorted) and the file system to read them with."""
    r = _remote(root, storage_options)
    if r is not None:
        folder = r.key(CATALOG)
        r.fs.invalidate_cache(folder)
        return sorted(r.fs.glob(f"{folder}/part-*.parquet")), r.fs
    return [str(p) for p in sorted((_local(root) / CATALOG).glob("part-*.parquet"))], None


def _read_parts(parts: list[str], fs: Any, columns: list[str] | None) -> "Any":
    """Catalog parts as one Arrow table in today's schema, exact duplicate rows dropped."""
    import pyarrow.dataset as pads

    table = pads.dataset(parts, schema=catalog_arrow_schema(), format="parquet", filesystem=fs).to_table()
    if table.num_rows:
        table = table.group_by(table.column_names, use_threads=False).aggregate([]).sort_by("recorded_at")
    return table.select(columns) if columns is not None else table


def _catalog_table(root: str | Path, columns: list[str] | None = None, storage_options: dict[str, Any] | None = None) -> "Any":
    """Every catalog part as one Arrow table in :func:`catalog_arrow_schema` (``columns``: only these)."""
    parts, fs = _catalog_parts(root, storage_options)
    if not parts:
        return catalog_arrow_schema().empty_table().select(columns or catalog_arrow_schema().names)
    return _read_parts(parts, fs, columns)


COMPACT_MIN_PARTS = 64
"""Every ingest merges the catalog's parts into one when there are at least this many."""


def compact_catalog(root: str | Path, min_parts: int | None = None, *, storage_options: dict[str, Any] | None = None) -> int:
    """Merge the catalog's parts into one (each converted session appends a part, so a store fed
    every night would otherwise collect thousands of small files). Returns the parts merged.

    Crash- and concurrency-safe: the merged part is written (atomically) before the parts it
    holds are deleted, and only those; a crash in between leaves rows twice, which readers drop
    (exact duplicate rows are removed on read), as they do when two ingests compact the same
    parts at once.
    """
    from datetime import datetime, timezone

    parts, fs = _catalog_parts(root, storage_options)
    if len(parts) < max(2, COMPACT_MIN_PARTS if min_parts is None else min_parts):
        return 0
    table = _read_parts(parts, fs, None)
    _write_part(root, table, _part_name(datetime.now(timezone.utc), "compact"), storage_options)
    for part in parts:
        try:
            if fs is not None:
                fs.rm_file(part)
            else:
                os.remove(part)
        except FileNotFoundError:
            pass  # another ingest compacted it first
    return len(parts)


def read_catalog(root: str | Path, latest_only: bool = True, *, columns: list[str] | None = None,
                 storage_options: dict[str, Any] | None = None) -> "Any":
    """The catalog as a pandas DataFrame (``columns``: only these).

    With ``latest_only`` each (source, case, modality) keeps its most recent row, which is the
    current state; otherwise the full history is returned. Parts written by older versions
    (whose column types pandas inferred) are read into today's schema.
    """
    wanted = None
    if columns is not None:
        wanted = list(columns)
        if latest_only:
            wanted += [c for c in ("recorded_at", "source_relpath", "case_id", "modality") if c not in wanted]
    df = _catalog_table(root, wanted, storage_options).to_pandas()
    if latest_only and len(df):
        df = df.sort_values("recorded_at").drop_duplicates(["source_relpath", "case_id", "modality"], keep="last")
    if columns is not None:
        df = df[list(columns)]
    return df.reset_index(drop=True)


def query_catalog(root: str | Path, sql: str, *, storage_options: dict[str, Any] | None = None) -> "Any":
    """Run DuckDB SQL over a store's catalog (local or URL); the current rows are the view ``catalog``.

    Example: ``query_catalog(store, "SELECT status, count(*) FROM catalog GROUP BY status")``.
    The full history (every run's rows) is ``catalog_history``. For a local store DuckDB can
    also read the parts directly, ``read_parquet('STORE/catalog/part-*.parquet')``, but then
    does not drop the duplicate rows an interrupted compaction may leave (use ``SELECT DISTINCT``).
    """
    import duckdb

    history = _catalog_table(root, None, storage_options)
    con = duckdb.connect()
    try:
        con.register("catalog_history", history)
        con.execute(
            "CREATE VIEW catalog AS SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER ("
            "PARTITION BY source_relpath, case_id, modality ORDER BY recorded_at DESC) AS rn FROM catalog_history) WHERE rn = 1"
        )
        return con.execute(sql).df()
    finally:
        con.close()


# ------------------------------------------------------------------------------- tables
def write_table(root: str | Path, name: str, df: "Any", *, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """Write ``tables/<name>.parquet`` and ``.csv`` atomically; returns both paths (or URLs)."""
    r = _remote(root, storage_options)
    if r is not None:
        r.put(r.key(TABLES, f"{name}.parquet"), _parquet_bytes(df))
        r.put(r.key(TABLES, f"{name}.csv"), df.to_csv(index=False).encode())
        return {ext: r.url_of(TABLES, f"{name}.{ext}") for ext in ("parquet", "csv")}
    folder = _local(root) / TABLES
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


def read_table(root: str | Path, name: str, *, storage_options: dict[str, Any] | None = None) -> "Any | None":
    """``tables/<name>.parquet`` as a DataFrame, or None when the table does not exist yet."""
    import pandas as pd

    r = _remote(root, storage_options)
    if r is not None:
        blob = r.read(r.key(TABLES, f"{name}.parquet"))
        return None if blob is None else pd.read_parquet(io.BytesIO(blob))
    path = _local(root) / TABLES / f"{name}.parquet"
    return pd.read_parquet(path) if path.exists() else None


def write_json_atomic(path: str | Path, payload: Any, *, storage_options: dict[str, Any] | None = None) -> None:
    """Write JSON to ``path`` via a temporary file and rename (a URL: one PUT)."""
    write_bytes_atomic(path, json.dumps(payload, indent=2, default=str).encode(), storage_options=storage_options)


# ------------------------------------------------------------------------------- plain files
# Reports, checkpoints and other single files kept in the store: each is written whole, locally
# to a temporary name then renamed, on an object store with one PUT (atomic there), so a reader
# sees the old file or the new one. ``relpath`` is store-relative with "/" separators.
def location(root: str | Path, relpath: str = "") -> Path | str:
    """``relpath`` inside ``root``: a local ``Path``, or the URL on an object store."""
    url = _url_of(root)
    if url is not None:
        return "/".join([url, *(p for p in relpath.strip("/").split("/") if p)])
    relpath = relpath.strip("/")
    return _local(root) / relpath if relpath else _local(root)


def split_location(path: str | Path) -> tuple[Path | str, str]:
    """``(parent, name)`` of a local path or a URL (``s3://b/x/model.pt`` → ``("s3://b/x", "model.pt")``)."""
    url = _url_of(path)
    if url is None:
        p = _local(path)
        return p.parent, p.name
    parent, _, name = url.rpartition("/")
    if parent.endswith(":/"):  # the bucket itself
        return url, ""
    return parent, name


def store_name(root: str | Path) -> str:
    """The last component of a store's path or URL (for titles)."""
    return split_location(root)[1] or str(location(root))


def write_bytes_atomic(path: str | Path, data: bytes, *, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename (a URL: one PUT)."""
    r = _remote(path, storage_options)
    if r is not None:
        r.put(r.path, bytes(data))
        return
    path = _local(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def put_bytes(root: str | Path, relpath: str, data: bytes, *, storage_options: dict[str, Any] | None = None) -> Path | str:
    """Write the file ``relpath`` of the store whole (see :func:`write_bytes_atomic`); returns its location."""
    target = location(root, relpath)
    write_bytes_atomic(target, data, storage_options=storage_options)
    return target


def read_bytes(root: str | Path, relpath: str = "", *, storage_options: dict[str, Any] | None = None) -> bytes | None:
    """Content of the file ``relpath`` of the store, or None when there is no such file."""
    r = _remote(root, storage_options)
    if r is not None:
        return r.read(r.key(relpath))
    try:
        return Path(location(root, relpath)).read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def has_file(root: str | Path, relpath: str = "", *, storage_options: dict[str, Any] | None = None) -> bool:
    """True when the file (object) ``relpath`` exists; a folder (prefix) is not a file."""
    r = _remote(root, storage_options)
    if r is not None:
        key = r.key(relpath)
        r.fs.invalidate_cache(key)  # ask the server, not a listing cached before a write
        try:
            return bool(r.fs.isfile(key))
        except FileNotFoundError:
            return False
    return Path(location(root, relpath)).is_file()


def list_dir(root: str | Path, relpath: str = "", *, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Sorted names of the entries (files and folders/prefixes) directly under ``relpath``; [] when absent."""
    r = _remote(root, storage_options)
    if r is not None:
        prefix = r.key(relpath)
        r.fs.invalidate_cache(prefix)
        try:
            entries = r.fs.ls(prefix, detail=False)
        except FileNotFoundError:
            return []
        below = [str(e).rstrip("/") for e in entries]
        return sorted({e.rsplit("/", 1)[-1] for e in below if e != prefix.rstrip("/")} - {""})
    try:
        return sorted(p.name for p in Path(location(root, relpath)).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
