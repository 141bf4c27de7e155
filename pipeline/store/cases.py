"""Case groups: one Zarr v3 group per subject session under ``cases/<case_id>/``.

::

    cases/<case_id>/                     an OME-Zarr 0.5 image (see :mod:`pipeline.store.ngff`)
        image       float32 (C, Z, Y, X)   normalised channels, names in attrs; chunks (C, 64, 64, 64)
        image_1, image_2     the same, downsampled for viewers (schema 1.5; none for grids within 64³)
        labels/reference/0   uint8 (Z, Y, X)   reference lesion mask (when the source has one)
        labels/foreground/0  uint8 (Z, Y, X)   head/brain mask used for normalisation and sampling
        labels/prediction-<model_version>/0    written by `score` (:func:`write_label`)
        patch_index/…                       written by `prepare` (:func:`write_case_array`)

Stores written before schema 1.3 keep the masks at ``label``, ``foreground`` and
``predictions/<model_version>/mask``; read masks through :func:`pipeline.store.ngff.mask_array`
and friends (re-exported by :mod:`pipeline.store`), which find either.

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
    >>> write_case_array(root, "sub-a_ses-b", "predictions/m1/mask", np.zeros((4, 5, 6), np.uint8))
    >>> has_prediction(root, "sub-a_ses-b", "m1"), prediction_path("sub-a_ses-b", "m1")
    (True, 'cases/sub-a_ses-b/labels/prediction-m1/0')
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from pipeline.core.geometry import affine_ras, orientation_code
from pipeline.core.volume import Volume
from pipeline.store import ngff
from pipeline.store.backend.base import group_json, join
from pipeline.store.handle import StoreLike, open_store
from pipeline.store.layout import CASE_META_KEY, CASES, NODE_MARKER, StoreError
from storage_schemas.models import CaseMeta, Geometry


# ------------------------------------------------------------------------------- geometry
def geometry_of(volume: Volume) -> Geometry:
    """The stored-geometry record of a (3-D) volume (``source`` from ``volume.meta["geometry_source"]``, default ``"header"``)."""
    return Geometry(
        shape_zyx=volume.shape_zyx,
        spacing=volume.spacing,
        origin=volume.origin,
        direction=tuple(float(v) for v in volume.direction.reshape(-1)),
        affine_lps=tuple(float(v) for v in volume.affine_lps.reshape(-1)),
        affine_ras=tuple(float(v) for v in affine_ras(volume).reshape(-1)),
        orientation=orientation_code(volume.direction, "RAS"),
        source=volume.meta.get("geometry_source", "header"),
    )


def volume_from_geometry(geometry: Geometry, array: np.ndarray) -> Volume:
    """Attach a stored grid's geometry to a ``(Z, Y, X)`` array."""
    return Volume(array, spacing=geometry.spacing, origin=geometry.origin, direction=np.asarray(geometry.direction).reshape(3, 3))


# ------------------------------------------------------------------------------- encoding
def _compressor(dtype: np.dtype) -> BloscCodec | ZstdCodec:
    """Zstd level 3 for float images; Blosc-zstd with bit shuffle for uint8 masks (see LAYOUT.md)."""
    if np.dtype(dtype).itemsize == 1:
        return BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)
    return ZstdCodec(level=3)


def _write_array(group: zarr.Group, name: str, data: np.ndarray, chunks: tuple[int, ...], attrs: dict[str, Any] | None = None,
                 dims: Sequence[str] | None = None) -> None:
    chunks = tuple(min(c, s) for c, s in zip(chunks, data.shape))
    # masks: all-zero chunks (most of a label map) are not written; images: a z-scored chunk is
    # never all fill value, so zarr's per-chunk comparison (about 20 % of the write time) is skipped
    skip_empty = data.dtype == np.uint8
    arr = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=[_compressor(data.dtype)],
                             dimension_names=tuple(dims) if dims is not None else None,
                             config={"write_empty_chunks": not skip_empty})
    arr[...] = data
    if attrs:
        arr.attrs.update(attrs)


def _build_array(scratch: zarr.Group, node: str, *, data: np.ndarray, chunks: tuple[int, ...], attrs: dict[str, Any] | None,
                 dims: Sequence[str]) -> None:
    """A :meth:`~pipeline.store.backend.base.Backend.commit_node` builder of one array."""
    _write_array(scratch, node, data, chunks, attrs, dims)


def _fill_label_group(g: zarr.Group, meta: CaseMeta, name: str, data: np.ndarray, chunk_zyx: Sequence[int],
                      attrs: dict[str, Any] | None = None, colour_index: int = 0,
                      factors: Sequence[tuple[int, int, int]] | None = None) -> None:
    """Write the NGFF label image ``name`` (its array ``0``, its downsampled levels ``1``, ``2``, ...
    of ``factors``, default the grid's, and its ``ome`` metadata) into an empty group."""
    mask = data.astype(np.uint8, copy=False)
    factors = ngff.pyramid_factors(meta.geometry) if factors is None else list(factors)
    _write_array(g, ngff.LEVEL0, mask, tuple(chunk_zyx), attrs, ngff.MASK_DIMS)
    for k, level in enumerate(ngff.pyramid_levels(mask, factors, "max"), start=1):
        _write_array(g, str(k), level, tuple(chunk_zyx), None, ngff.MASK_DIMS)
    g.attrs.update({"ome": ngff.label_ome(meta.geometry, name, colour_index, factors)})


def _fill_case_group(g: zarr.Group, meta: CaseMeta, image: np.ndarray, foreground: np.ndarray, label: np.ndarray | None,
                     chunk_zyx: tuple[int, int, int]) -> None:
    """Write a case's arrays and attributes into an empty group (the OME-Zarr 0.5 layout of :mod:`pipeline.store.ngff`)."""
    image = image.astype(np.float32, copy=False)
    factors = ngff.pyramid_factors(meta.geometry)
    _write_array(g, ngff.IMAGE, image, (image.shape[0], *chunk_zyx), {"channels": list(meta.channels)}, ngff.IMAGE_DIMS)
    for k, level in enumerate(ngff.pyramid_levels(image, factors, "mean"), start=1):  # for viewers; training reads level 0
        _write_array(g, ngff.image_level(k), level, (image.shape[0], *chunk_zyx), {"channels": list(meta.channels)}, ngff.IMAGE_DIMS)
    labels = g.create_group(ngff.LABELS)
    names = [ngff.FOREGROUND] if label is None else [ngff.REFERENCE, ngff.FOREGROUND]
    _fill_label_group(labels.create_group(ngff.FOREGROUND), meta, ngff.FOREGROUND, foreground, chunk_zyx)
    if label is not None:
        _fill_label_group(labels.create_group(ngff.REFERENCE), meta, ngff.REFERENCE, label, chunk_zyx)
    labels.attrs.update({"ome": ngff.labels_ome(names)})
    g.attrs.update({CASE_META_KEY: meta.model_dump(mode="json"),
                    "ome": ngff.image_ome(meta.geometry, meta.case_id, list(meta.channels), factors)})


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
                     attrs: dict[str, Any] | None = None, dimension_names: Sequence[str] | None = None) -> None:
    """Add or replace one array (e.g. ``patch_index/lesion``) inside a committed case, atomically.

    A mask given by its schema-1.2 path (``predictions/<model_version>/mask``, ``label``,
    ``foreground``) is written where schema 1.3 keeps it, as an NGFF label image
    (:func:`write_label`: ``labels/prediction-<model_version>/0``, ...). ``dimension_names``
    default to :func:`pipeline.store.ngff.dimension_names` of the path and shape.

    Missing intermediate groups are created first. Locally the array is written to staging, then
    moved into place with ``os.replace``. On an object store an existing array's ``zarr.json`` is
    deleted first (with its chunks), then the new chunks are uploaded and the array's
    ``zarr.json`` last.
    """
    label = ngff.label_of_legacy_path(path)
    if label is not None:
        write_label(root, case_id, label, data, chunk_zyx=chunk_zyx[-3:], attrs=attrs)
        return
    st = open_store(root)
    case = join(CASES, case_id)
    meta = _meta_for_write(st, case_id)
    chunks = chunk_zyx if data.ndim == len(chunk_zyx) else (*([1] * (data.ndim - len(chunk_zyx))), *chunk_zyx)
    dims = tuple(dimension_names) if dimension_names is not None else ngff.dimension_names(path, data.shape, meta.geometry.shape_zyx)
    parent, _, name = path.strip("/").rpartition("/")
    st.backend.ensure_groups(case, parent)

    def build(scratch: zarr.Group, node: str) -> None:
        _write_array(scratch, node, data, tuple(chunks), attrs, dims)

    st.backend.commit_node(join(case, parent, name), build)


def _meta_for_write(st: Any, case_id: str) -> CaseMeta:
    attrs = st.backend.committed_attrs(join(CASES, case_id), CASE_META_KEY)
    if attrs is None:
        raise StoreError(f"case {case_id!r} is not in store {st.root}")
    try:
        return CaseMeta.model_validate(attrs[CASE_META_KEY])
    except Exception as exc:
        raise StoreError(f"case {case_id}: invalid metadata: {exc}") from exc


def write_label(root: StoreLike, case_id: str, name: str, data: np.ndarray, chunk_zyx: Sequence[int] = (64, 64, 64),
                attrs: dict[str, Any] | None = None) -> Path | str:
    """Add or replace the NGFF label image ``labels/<name>`` of a committed case, atomically, and
    list it in ``labels/zarr.json``.

    ``name`` is :data:`~pipeline.store.ngff.REFERENCE`, :data:`~pipeline.store.ngff.FOREGROUND` or
    :func:`~pipeline.store.ngff.prediction_label`; ``data`` a ``(Z, Y, X)`` mask on the case grid
    (stored uint8); ``attrs`` go on its array ``0`` (e.g. a prediction's provenance). The label
    group (array and ``ome`` metadata) is committed whole like any node; the labels list is then
    rewritten from the committed label groups, so two writers of different labels of one case
    never lose a label for good (a list that missed one is complete again after the next write or
    ``lesionflow upgrade``). Returns the label group's location.
    """
    st = open_store(root)
    case = join(CASES, case_id)
    meta = _meta_for_write(st, case_id)
    if tuple(data.shape) != tuple(meta.geometry.shape_zyx):
        raise StoreError(f"case {case_id}: label {name} shape {tuple(data.shape)} is not the grid {tuple(meta.geometry.shape_zyx)}")
    st.backend.ensure_groups(case, ngff.LABELS)
    present = _label_names(st, case)
    colour = ngff.prediction_colour_index(present, name) if name.startswith(ngff.PREDICTION_PREFIX) else 0
    # the image's levels: a case written before schema 1.5 has one until `lesionflow upgrade` adds
    # the rest (to its labels too), so its labels match its image meanwhile
    ome = (st.backend.node_attrs(case) or {}).get("ome") or {}
    image_levels = len(((ome.get("multiscales") or [{}])[0]).get("datasets") or [None])
    factors = ngff.pyramid_factors(meta.geometry)[: max(0, image_levels - 1)]

    def build(scratch: zarr.Group, node: str) -> None:
        _fill_label_group(scratch.create_group(node), meta, name, data, chunk_zyx, attrs, colour, factors)

    where = st.backend.commit_node(join(case, ngff.LABELS, name), build)
    refresh_labels(st, case_id)
    return where


def _label_names(st: Any, case: str) -> list[str]:
    """Names of the committed NGFF label images of a case (groups under ``labels/`` with ``image-label``)."""
    labels = join(case, ngff.LABELS)
    names = []
    for child in st.backend.committed_children(labels, "ome"):
        ome = (st.backend.node_attrs(join(labels, child)) or {}).get("ome") or {}
        if "image-label" in ome:
            names.append(child)
    return names


def refresh_labels(root: StoreLike, case_id: str) -> list[str]:
    """Rewrite a case's ``labels/zarr.json`` (one atomic file write) to list its committed label
    images; returns the names listed."""
    st = open_store(root)
    case = join(CASES, case_id)
    names = _label_names(st, case)
    st.backend.put(join(case, ngff.LABELS, NODE_MARKER), group_json({"ome": ngff.labels_ome(names)}))
    return ngff.labels_ome(names)["labels"]


def write_missing_levels(root: StoreLike, case_id: str, dry_run: bool = False) -> list[str]:
    """Add the resolution levels (:func:`pipeline.store.ngff.pyramid_factors`) that a committed
    case lacks: ``image_<k>`` from ``image`` (block mean) and ``labels/<name>/<k>`` from each
    label's ``0`` (block maximum), each committed whole like any array. Level 0 and every array
    already there are left as they are (read, never rewritten); the metadata that lists the
    levels is the caller's (``lesionflow upgrade`` writes it after the arrays). Returns what was
    (with ``dry_run``: would be) written, one line per array.
    """
    st = open_store(root)
    case = join(CASES, case_id)
    meta = _meta_for_write(st, case_id)
    factors = ngff.pyramid_factors(meta.geometry)
    if not factors:
        return []
    b = st.backend
    targets: list[tuple[str, list[str], str]] = [(ngff.IMAGE, [ngff.image_level(k) for k in range(1, len(factors) + 1)], "mean")]
    for name in _label_names(st, case):
        if b.has_node(join(case, ngff.label_array(name))):
            targets.append((ngff.label_array(name), [ngff.label_level(name, k) for k in range(1, len(factors) + 1)], "max"))
    done: list[str] = []
    group = None
    for source, paths, how in targets:
        missing = [p for p in paths if not b.has_node(join(case, p))]
        if not missing:
            continue
        done += [f"level {p} from {source} (block {'mean' if how == 'mean' else 'maximum'})" for p in missing]
        if dry_run:
            continue
        group = group if group is not None else open_case(st, case_id)
        level0 = group[source]
        levels = ngff.pyramid_levels(np.asarray(level0[...]), factors, how)  # type: ignore[arg-type]
        chunks = tuple(level0.chunks)
        attrs = {"channels": list(meta.channels)} if how == "mean" else None
        for path, data in zip(paths, levels):
            if path not in missing:
                continue
            dims = ngff.IMAGE_DIMS if how == "mean" else ngff.MASK_DIMS
            b.commit_node(join(case, path), functools.partial(_build_array, data=data, chunks=chunks, attrs=attrs, dims=dims))
    return done


def prediction_path(case_id: str, model_version: str) -> str:
    """Store-relative path of the array of a model's prediction (schema 1.3:
    ``cases/<id>/labels/prediction-<model_version>/0``)."""
    return join(CASES, case_id, ngff.label_array(ngff.prediction_label(model_version)))


def has_prediction(root: StoreLike, case_id: str, model_version: str) -> bool:
    """True when the case holds a committed prediction of ``model_version`` (either layout)."""
    label = ngff.prediction_label(model_version)
    b = open_store(root).backend
    return any(b.has_node(join(CASES, case_id, p)) for p in (ngff.label_array(label), ngff.legacy_array(label)))


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
    """True when the committed Zarr node ``relpath`` (e.g. ``cases/<id>/labels/prediction-<v>/0``) exists.

    A case mask named by its schema-1.2 path (``cases/<id>/predictions/<v>/mask``, ``cases/<id>/label``)
    counts when it exists at either place (see :mod:`pipeline.store.ngff`).
    """
    b = open_store(root).backend
    if b.has_node(relpath):
        return True
    parts = relpath.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == CASES:
        label = ngff.label_of_legacy_path("/".join(parts[2:]))
        if label is not None:
            return b.has_node(join(CASES, parts[1], ngff.label_array(label)))
    return False
