"""Case groups: one Zarr v3 group per subject session under ``cases/<case_id>/``.

::

    cases/<case_id>/
        image       float32 (C, Z, Y, X)   normalised channels, names in attrs; chunks (C, 64, 64, 64)
        label       uint8   (Z, Y, X)      reference lesion mask (when the source has one)
        foreground  uint8   (Z, Y, X)      head/brain mask used for normalisation and sampling
        patch_index/…                       written by `prepare` (:func:`write_case_array`)
        predictions/<model_version>/mask  uint8 (Z, Y, X)   written by `score`

A case and every array added later are committed whole through the store's backend
(:meth:`~pipeline.store.backend.base.Backend.commit_node`): staging and rename on a file system,
marker last on an object store (see :mod:`pipeline.store.backend.local` and
:mod:`pipeline.store.backend.fsspec`). Readers see only committed cases.

Example:
    >>> import tempfile, numpy as np
    >>> from pipeline.core.volume import Volume
    >>> from pipeline.store import init_store
    >>> from storage_schemas.models import CaseMeta
    >>> root = init_store(tempfile.mkdtemp() + "/s.zarr")
    >>> vol = Volume(np.zeros((4, 5, 6), np.float32))
    >>> meta = CaseMeta(case_id="sub-a_ses-b", subject="sub-a", session="ses-b", channels=["FLAIR"], channel_info=[],
    ...                 has_label=False, geometry=geometry_of(vol), source_fingerprint="f", config_hash="c", pipeline_version="0")
    >>> _ = write_case(root, meta, np.zeros((1, 4, 5, 6), np.float32), np.ones((4, 5, 6), np.uint8))
    >>> list_cases(root), open_case(root, "sub-a_ses-b")["image"].shape
    (['sub-a_ses-b'], (1, 4, 5, 6))
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from pipeline.core.geometry import affine_ras, orientation_code
from pipeline.core.volume import Volume
from pipeline.store.backend.base import join
from pipeline.store.handle import StoreLike, open_store
from pipeline.store.layout import CASE_META_KEY, CASES, StoreError
from storage_schemas.models import CaseMeta, Geometry


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


def volume_from_geometry(geometry: Geometry, array: np.ndarray) -> Volume:
    """Attach a stored grid's geometry to a ``(Z, Y, X)`` array."""
    return Volume(array, spacing=geometry.spacing, origin=geometry.origin, direction=np.asarray(geometry.direction).reshape(3, 3))


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


# ------------------------------------------------------------------------------- encoding
def _compressor(dtype: np.dtype) -> BloscCodec | ZstdCodec:
    """Zstd level 3 for float images; Blosc-zstd with bit shuffle for uint8 masks (see LAYOUT.md)."""
    if np.dtype(dtype).itemsize == 1:
        return BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)
    return ZstdCodec(level=3)


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
    """Write a case's arrays and attributes into an empty group."""
    _write_array(g, "image", image.astype(np.float32, copy=False), (image.shape[0], *chunk_zyx), {"channels": list(meta.channels)})
    _write_array(g, "foreground", foreground.astype(np.uint8, copy=False), chunk_zyx)
    if label is not None:
        _write_array(g, "label", label.astype(np.uint8, copy=False), chunk_zyx)
    g.attrs.update({CASE_META_KEY: meta.model_dump(mode="json"), "ome": _ome_multiscales(meta.geometry, meta.case_id, list(meta.channels))})


def _check_shapes(meta: CaseMeta, image: np.ndarray, foreground: np.ndarray, label: np.ndarray | None) -> None:
    shape = tuple(meta.geometry.shape_zyx)
    if image.ndim != 4 or image.shape[1:] != shape or image.shape[0] != len(meta.channels):
        raise StoreError(f"case {meta.case_id}: image shape {image.shape} does not match channels {meta.channels} x grid {shape}")
    for name, arr in (("foreground", foreground), ("label", label)):
        if arr is not None and arr.shape != shape:
            raise StoreError(f"case {meta.case_id}: {name} shape {arr.shape} is not the grid {shape}")


# ------------------------------------------------------------------------------- cases
def write_case(
    root: StoreLike,
    meta: CaseMeta,
    image: np.ndarray,
    foreground: np.ndarray,
    label: np.ndarray | None = None,
    chunk_zyx: tuple[int, int, int] = (64, 64, 64),
) -> Path | str:
    """Write one case atomically and return its path (local) or URL (object store).

    ``image`` is float32 ``(C, Z, Y, X)`` with ``C == len(meta.channels)``; ``foreground`` and
    ``label`` are ``(Z, Y, X)`` on the same grid (``meta.geometry``). Locally, an existing case
    with the same id is replaced only after the new one is complete; on an object store it is
    made invisible first and the new one becomes visible when its group ``zarr.json`` (written
    last) lands.
    """
    meta = CaseMeta.model_validate(meta.model_dump())  # validate on write
    _check_shapes(meta, image, foreground, label)

    def build(scratch: zarr.Group, name: str) -> None:
        _fill_case_group(scratch.create_group(name), meta, image, foreground, label, chunk_zyx)

    return open_store(root).backend.commit_node(join(CASES, meta.case_id), build)


def list_cases(root: StoreLike) -> list[str]:
    """Ids of the committed cases, sorted.

    On an object store: the prefixes under ``cases/`` whose group ``zarr.json`` exists and
    carries the ``lesionflow_case`` metadata.
    """
    return open_store(root).backend.committed_children(CASES, CASE_META_KEY)


def _committed_case(root: StoreLike, case_id: str) -> dict[str, Any]:
    """Attributes of a committed case; :class:`StoreError` when it is not in the store."""
    st = open_store(root)
    attrs = st.backend.committed_attrs(join(CASES, case_id), CASE_META_KEY)
    if attrs is None:
        raise StoreError(f"case {case_id!r} is not in store {st.root}; `lesionflow ingest` it first")
    return attrs


def open_case(root: StoreLike, case_id: str, mode: str = "r") -> zarr.Group:
    """The Zarr group of a committed case."""
    _committed_case(root, case_id)
    store = open_store(root).backend.zarr_store(join(CASES, case_id), read_only=mode == "r")
    return zarr.open_group(store, mode=mode, zarr_format=3)


def read_case_meta(root: StoreLike, case_id: str) -> CaseMeta:
    """Validated metadata of a committed case (one read of its ``zarr.json``)."""
    attrs = _committed_case(root, case_id)
    try:
        return CaseMeta.model_validate(attrs[CASE_META_KEY])
    except KeyError as exc:
        raise StoreError(f"case {case_id}: no '{CASE_META_KEY}' metadata") from exc
    except Exception as exc:
        raise StoreError(f"case {case_id}: invalid metadata: {exc}") from exc


def write_case_array(root: StoreLike, case_id: str, path: str, data: np.ndarray, chunk_zyx: tuple[int, ...] = (64, 64, 64),
                     attrs: dict[str, Any] | None = None) -> None:
    """Add or replace one array (e.g. ``predictions/<model>/mask``) inside a committed case, atomically.

    Missing intermediate groups are created first. Locally the array is written to staging, then
    moved into place with ``os.replace``. On an object store an existing array's ``zarr.json`` is
    deleted first (with its chunks), then the new chunks are uploaded and the array's
    ``zarr.json`` last.
    """
    st = open_store(root)
    case = join(CASES, case_id)
    if st.backend.committed_attrs(case, CASE_META_KEY) is None:
        raise StoreError(f"case {case_id!r} is not in store {st.root}")
    chunks = chunk_zyx if data.ndim == len(chunk_zyx) else (*([1] * (data.ndim - len(chunk_zyx))), *chunk_zyx)
    parent, _, name = path.strip("/").rpartition("/")
    st.backend.ensure_groups(case, parent)

    def build(scratch: zarr.Group, node: str) -> None:
        _write_array(scratch, node, data, tuple(chunks), attrs)

    st.backend.commit_node(join(case, parent, name), build)


def write_case_group(root: StoreLike, case_id: str, path: str, build: Callable[[zarr.Group], None]) -> Path | str:
    """Add or replace a group ``path`` (e.g. ``augment``) inside a committed case, atomically.

    ``build(group)`` fills an empty group (arrays written chunk by chunk, attributes last); the
    group becomes visible whole, by the same commit as :func:`write_case_array` (staging and
    rename locally; on an object store the group is built in memory and its ``zarr.json`` goes last).
    Returns the group's location.
    """
    st = open_store(root)
    case = join(CASES, case_id)
    if st.backend.committed_attrs(case, CASE_META_KEY) is None:
        raise StoreError(f"case {case_id!r} is not in store {st.root}")
    parent, _, name = path.strip("/").rpartition("/")
    st.backend.ensure_groups(case, parent)

    def node(scratch: zarr.Group, node_name: str) -> None:
        build(scratch.create_group(node_name))

    return st.backend.commit_node(join(case, parent, name), node)


def has_node(root: StoreLike, relpath: str) -> bool:
    """True when the committed Zarr node ``relpath`` (e.g. ``cases/<id>/predictions/<v>/mask``) exists."""
    return open_store(root).backend.has_node(relpath)
