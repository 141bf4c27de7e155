"""OME-Zarr 0.5 (OME-NGFF) metadata of a case group, and where a case's masks live.

Since schema 1.3 every case group is an OME-Zarr 0.5 image with its masks as NGFF image-labels,
so napari (napari-ome-zarr), neuroglancer, ome-zarr-py or any NGFF reader opens a case with its
reference label, foreground and predictions::

    cases/<case_id>/                 ome.multiscales: axes (c, z, y, x), level 0 at "image", then "image_1", ...; ome.omero: channel names
      image                          float32 (C, Z, Y, X), dimension_names (c, z, y, x): level 0, what training reads
      image_1, image_2               the same downsampled (block mean) for viewers: schema 1.5, none for grids within 64³
      labels/                        ome.labels = ["reference", "foreground", "prediction-<model_version>", ...]
        reference/                   ome.multiscales: axes (z, y, x), levels "0", "1", ...; ome.image-label: colours, source ../../
          0                          uint8 (Z, Y, X), dimension_names (z, y, x)   the reference lesion mask
          1, 2                       the same downsampled (block maximum), as many levels as the image
        foreground/0                 uint8 (Z, Y, X)                               head/brain mask
        prediction-<model_version>/0 uint8 (Z, Y, X)                               a model's predicted mask
      patch_index/{lesion,background}  int32 (N, 3), dimension_names (patch, zyx)

Stores written before 1.3 keep the masks at ``label``, ``foreground`` and
``predictions/<model_version>/mask`` beside ``image``; every reader goes through
:func:`mask_array` (or :func:`reference_label`, :func:`foreground_mask`, :func:`prediction_mask`,
:func:`prediction_versions`), which look at the 1.3 place first and the old one second, so both
layouts (and a store half-way through ``lesionflow upgrade``) read the same.

Each label is ``(Z, Y, X)`` without the image's channel axis: it applies to every channel. The
specification's layout note asks that label dimensions be the image's "or 1"; a (1, Z, Y, X)
label would change every reader's indexing for no gain in napari or neuroglancer, which match
axes by name. NGFF 0.5 has no rotation: ``scale``/``translation`` are the spacing and the LPS
origin along the voxel axes, exact for unrotated grids; the exact (oblique) geometry is
``attributes['lesionflow_case'].geometry.affine_lps`` (also copied into the multiscale's
``metadata``).

Example:
    >>> import numpy as np
    >>> from pipeline.core.volume import Volume
    >>> from pipeline.store.cases import geometry_of
    >>> geo = geometry_of(Volume(np.zeros((4, 5, 6)), spacing=(0.5, 0.5, 2.0), origin=(10, 20, 30)))
    >>> ome = image_ome(geo, "sub-a_ses-b", ["FLAIR"])
    >>> [a["name"] for a in ome["multiscales"][0]["axes"]], ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    (['c', 'z', 'y', 'x'], {'type': 'scale', 'scale': [1.0, 2.0, 0.5, 0.5]})
    >>> label_array(prediction_label("unet3d-x")), legacy_array(prediction_label("unet3d-x"))
    ('labels/prediction-unet3d-x/0', 'predictions/unet3d-x/mask')
    >>> dimension_names("patch_index/lesion", (12, 3), (4, 5, 6)), dimension_names("labels/reference/0", (4, 5, 6), (4, 5, 6))
    (('patch', 'zyx'), ('z', 'y', 'x'))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import zarr

from storage_schemas.models import Geometry

NGFF_VERSION = "0.5"
NGFF_SINCE_SCHEMA = (1, 3)
"""The first store schema whose case groups are OME-Zarr 0.5 images with labels."""

IMAGE = "image"
LABELS = "labels"
LEVEL0 = "0"
REFERENCE = "reference"
FOREGROUND = "foreground"
PREDICTION_PREFIX = "prediction-"
LEGACY_PREDICTIONS = "predictions"
"""Schema ≤ 1.2: ``predictions/<model_version>/mask`` beside the image (also the logical path
that :func:`pipeline.store.write_case_array` still accepts for a prediction)."""

PYRAMID_SINCE_SCHEMA = (1, 5)
"""The first store schema whose cases carry a resolution pyramid (levels ``image_<k>`` and ``labels/<name>/<k>``)."""
PYRAMID_MAX_LEVELS = 2
"""Downsampled levels written beyond level 0 (at most; fewer for small grids, see :func:`pyramid_factors`).
Chosen by ``benchmarks/bench_pyramid.py`` (see ``storage_schemas/LAYOUT.md``, "OME-Zarr")."""
PYRAMID_FITS = 64
"""No further level once the last one fits this many voxels along every axis (one 64³ chunk)."""

IMAGE_DIMS = ("c", "z", "y", "x")
MASK_DIMS = ("z", "y", "x")
PATCH_DIMS = ("patch", "zyx")

LABEL_COLOURS = {
    REFERENCE: (230, 25, 75, 255),  # red
    FOREGROUND: (0, 130, 200, 90),  # translucent blue
}
PREDICTION_COLOURS = ((255, 200, 0, 255), (60, 180, 75, 255), (145, 30, 180, 255), (70, 240, 240, 255))
"""Yellow, green, purple, cyan: predictions cycle through these (by model version order)."""

DISPLAY_WINDOW = {"min": -10.0, "max": 10.0, "start": -2.5, "end": 5.0}
"""omero display window of the z-scored channels (z-scored within the foreground: tissue and
bright lesions both within -2.5…5)."""


# ------------------------------------------------------------------------------- names and paths
def prediction_label(model_version: str) -> str:
    """The label name of a model's prediction (``prediction-<model_version>``)."""
    if not model_version or "/" in model_version:
        raise ValueError(f"not a model version: {model_version!r}")
    return f"{PREDICTION_PREFIX}{model_version}"


def image_level(level: int) -> str:
    """Case-relative path of the image's resolution ``level`` (0: ``image``, the data training reads;
    ``k`` > 0: ``image_<k>``, downsampled for viewers)."""
    return IMAGE if level == 0 else f"{IMAGE}_{int(level)}"


def label_level(name: str, level: int) -> str:
    """Case-relative path of a label's resolution ``level`` (``labels/<name>/<level>``)."""
    return f"{LABELS}/{name}/{int(level)}"


def label_array(name: str) -> str:
    """Case-relative path of a label's full-resolution array (``labels/<name>/0``)."""
    return f"{LABELS}/{name}/{LEVEL0}"


def legacy_array(name: str) -> str:
    """Case-relative path of the same mask in a schema ≤ 1.2 case."""
    if name == REFERENCE:
        return "label"
    if name == FOREGROUND:
        return FOREGROUND
    if name.startswith(PREDICTION_PREFIX):
        return f"{LEGACY_PREDICTIONS}/{name[len(PREDICTION_PREFIX):]}/mask"
    raise ValueError(f"unknown label {name!r}")


def label_of_legacy_path(path: str) -> str | None:
    """The label name of a schema ≤ 1.2 case-relative path (``predictions/<m>/mask`` →
    ``prediction-<m>``, ``label`` → ``reference``), None for any other path."""
    parts = [p for p in path.strip("/").split("/") if p]
    if parts == ["label"]:
        return REFERENCE
    if parts == [FOREGROUND]:
        return FOREGROUND
    if len(parts) == 3 and parts[0] == LEGACY_PREDICTIONS and parts[2] == "mask":
        return prediction_label(parts[1])
    return None


def dimension_names(path: str, shape: Sequence[int], grid_zyx: Sequence[int] | None = None) -> tuple[str, ...]:
    """The ``dimension_names`` an array at case-relative ``path`` gets: ``(c, z, y, x)`` for the
    image, ``(z, y, x)`` for masks and anything else on the grid, ``(patch, zyx)`` for a patch
    index, ``dim_0, dim_1, ...`` otherwise."""
    shape = tuple(int(s) for s in shape)
    grid = tuple(int(s) for s in grid_zyx) if grid_zyx is not None else None
    parts = path.strip("/").split("/")
    if len(parts) == 1 and (parts[0] == IMAGE or parts[0].startswith(IMAGE + "_")) and len(shape) == 4:
        return IMAGE_DIMS
    if len(parts) == 3 and parts[0] == LABELS and len(shape) == 3:
        return MASK_DIMS
    if len(shape) == 3 and (grid is None or shape == grid):
        return MASK_DIMS
    if parts[0] == "patch_index" and len(shape) == 2:
        return PATCH_DIMS
    if grid is not None and len(shape) == 4 and shape[1:] == grid:
        return IMAGE_DIMS
    return tuple(f"dim_{i}" for i in range(len(shape)))


# ------------------------------------------------------------------------------- pyramid
def pyramid_factors(geometry: Geometry, max_levels: int | None = None, fits: int = PYRAMID_FITS) -> list[tuple[int, int, int]]:
    """Cumulative ``(z, y, x)`` downsampling factors of the levels after level 0 (empty: no pyramid).

    A level halves the axes whose spacing is less than twice the finest spacing of the level
    before (nnU-Net's rule for anisotropic grids: 0.7 x 0.7 x 4 mm is halved in-plane until it
    is about isotropic, then along every axis), and an axis of one voxel is left alone. Levels
    stop once the last one fits ``fits`` voxels along every axis (it then loads as one chunk) or
    after ``max_levels`` (default :data:`PYRAMID_MAX_LEVELS`). The factors follow from the grid
    alone, so every array of a case (the image and each label) gets the same levels.

    Example:
        >>> from pipeline.core.volume import Volume
        >>> from pipeline.store.cases import geometry_of
        >>> pyramid_factors(geometry_of(Volume(np.zeros((182, 218, 182)), spacing=(1.0, 1.0, 1.0))))
        [(2, 2, 2), (4, 4, 4)]
        >>> pyramid_factors(geometry_of(Volume(np.zeros((36, 320, 320)), spacing=(0.7, 0.7, 4.0))))
        [(1, 2, 2), (1, 4, 4)]
        >>> pyramid_factors(geometry_of(Volume(np.zeros((12, 40, 40)), spacing=(3.0, 3.0, 3.0))))
        []
    """
    max_levels = PYRAMID_MAX_LEVELS if max_levels is None else max_levels
    shape = [int(v) for v in geometry.shape_zyx]
    spacing = [float(v) for v in reversed(geometry.spacing)]  # (z, y, x)
    factor = [1, 1, 1]
    out: list[tuple[int, int, int]] = []
    while len(out) < max_levels:
        size = [math.ceil(n / f) for n, f in zip(shape, factor)]
        if max(size) <= fits:
            break
        current = [s * f for s, f in zip(spacing, factor)]
        finest = min(c for c, n in zip(current, size) if n > 1) if any(n > 1 for n in size) else min(current)
        step = [2 if (n > 1 and c < 2 * finest) else 1 for c, n in zip(current, size)]
        if step == [1, 1, 1]:
            break
        factor = [f * k for f, k in zip(factor, step)]
        out.append((factor[0], factor[1], factor[2]))
    return out


def downsample(data: np.ndarray, step_zyx: Sequence[int], how: Literal["mean", "max"]) -> np.ndarray:
    """``data`` (``(..., Z, Y, X)``) reduced by whole blocks of ``step_zyx`` voxels along its last
    three axes: the block mean (float32; images) or maximum (masks: a lesion voxel anywhere in the
    block marks it, so small lesions stay visible in an overview). A block cut short by the edge
    is reduced over the voxels it has, so the level covers the whole grid:
    ``ceil(n / step)`` voxels per axis.

    Example:
        >>> downsample(np.arange(6, dtype=np.float32).reshape(1, 1, 6), (1, 1, 4), "mean").tolist()
        [[[1.5, 4.5]]]
        >>> downsample(np.array([[[0, 0, 1]]], np.uint8), (1, 1, 2), "max").tolist()
        [[[0, 1]]]
    """
    step = [int(k) for k in step_zyx]
    shape = data.shape[-3:]
    out = data if how == "max" else data.astype(np.float32, copy=False)
    for axis, k in enumerate(step):  # one axis at a time: each pass shrinks what the next one reads
        if k == 1:
            continue
        ax = out.ndim - 3 + axis
        n = out.shape[ax]
        if n % k:  # an edge block cut short: zeros (neutral for the sum; masks are >= 0 for the maximum)
            pad = [(0, 0)] * out.ndim
            pad[ax] = (0, k - n % k)
            out = np.pad(out, pad)
        split = (*out.shape[:ax], out.shape[ax] // k, k, *out.shape[ax + 1:])
        out = out.reshape(split).max(axis=ax + 1) if how == "max" else out.reshape(split).sum(axis=ax + 1, dtype=np.float32)
    if how == "max":
        return out
    # voxels per block, separable: a block cut by the edge counts only the voxels it has
    counts = [np.minimum(k, n - np.arange(-(-n // k)) * k).astype(np.float32) for n, k in zip(shape, step)]
    return out / (counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :])


def pyramid_levels(data: np.ndarray, factors: Sequence[Sequence[int]], how: Literal["mean", "max"]) -> list[np.ndarray]:
    """The downsampled levels of ``data`` for the cumulative ``factors`` of :func:`pyramid_factors`,
    each computed from the level before it (the first from ``data``)."""
    out: list[np.ndarray] = []
    previous, before = data, (1, 1, 1)
    for factor in factors:
        step = tuple(int(f) // int(b) for f, b in zip(factor, before))
        previous = downsample(previous, step, how)
        out.append(previous)
        before = tuple(int(f) for f in factor)
    return out


# ------------------------------------------------------------------------------- metadata
def _transforms(geometry: Geometry, channel: bool, factor: Sequence[int] = (1, 1, 1)) -> list[dict[str, Any]]:
    """scale / translation of a level downsampled by ``factor`` (z, y, x): a block's centre, so
    level ``k``'s voxel ``i`` sits at ``origin + ((f - 1) / 2 + f * i) * spacing`` along each axis."""
    sx, sy, sz = (float(v) for v in geometry.spacing)
    ox, oy, oz = (float(v) for v in geometry.origin)
    fz, fy, fx = (int(f) for f in factor)
    scale = [sz * fz, sy * fy, sx * fx]
    translation = [oz + (fz - 1) / 2 * sz, oy + (fy - 1) / 2 * sy, ox + (fx - 1) / 2 * sx]
    if channel:
        scale, translation = [1.0, *scale], [0.0, *translation]
    return [{"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]


def _axes(channel: bool) -> list[dict[str, Any]]:
    space = [{"name": n, "type": "space", "unit": "millimeter"} for n in MASK_DIMS]
    return [{"name": "c", "type": "channel"}, *space] if channel else space


def _geometry_note(geometry: Geometry) -> dict[str, Any]:
    return {
        "note": "OME-NGFF 0.5 has no rotation: scale/translation are the spacing and the LPS origin along the voxel axes; "
                "affine_lps (row-major 4x4, voxel (x, y, z, 1) -> LPS mm) is the exact geometry",
        "affine_lps": list(geometry.affine_lps),
        "orientation_ras": geometry.orientation,
    }


def _levels_note(factors: Sequence[Sequence[int]], path: Any) -> dict[str, Any]:
    if not factors:
        return {}
    return {"levels": [{"path": path(k), "factors_zyx": [int(f) for f in factor],
                        "method": "block mean" if path(k).startswith(IMAGE) else "block maximum"}
                       for k, factor in enumerate(factors, start=1)]}


def image_ome(geometry: Geometry, name: str, channels: Sequence[str], factors: Sequence[Sequence[int]] = ()) -> dict[str, Any]:
    """The case group's ``ome`` attribute: one multiscale (c, z, y, x) with level 0 at ``image``
    and the downsampled levels of ``factors`` (:func:`pyramid_factors`) at ``image_<k>``, channel
    names in ``omero`` (read by napari-ome-zarr for the layer names)."""
    channels = [str(c) for c in channels]
    datasets = [{"path": IMAGE, "coordinateTransformations": _transforms(geometry, channel=True)}]
    datasets += [{"path": image_level(k), "coordinateTransformations": _transforms(geometry, True, f)} for k, f in enumerate(factors, 1)]
    return {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": name,
            "axes": _axes(channel=True),
            "datasets": datasets,
            "metadata": {"channels": channels, **_geometry_note(geometry), **_levels_note(factors, image_level)},
        }],
        "omero": {
            "name": name,
            "version": NGFF_VERSION,
            "channels": [{"label": c, "color": "FFFFFF", "active": i == 0, "coefficient": 1, "family": "linear",
                          "inverted": False, "window": dict(DISPLAY_WINDOW)} for i, c in enumerate(channels)],
            "rdefs": {"model": "greyscale", "defaultZ": int(geometry.shape_zyx[0]) // 2, "defaultT": 0},
        },
    }


def label_ome(geometry: Geometry, name: str, colour_index: int = 0, factors: Sequence[Sequence[int]] = ()) -> dict[str, Any]:
    """The ``ome`` attribute of the label image ``labels/<name>``: one multiscale (z, y, x) with
    level 0 at ``0`` and the levels of ``factors`` at ``1``, ``2``, ... (the image's levels, with
    the image's spatial transforms), and ``image-label`` (colour of value 1, what it is, source
    image ``../../``)."""
    if name.startswith(PREDICTION_PREFIX):
        rgba = PREDICTION_COLOURS[colour_index % len(PREDICTION_COLOURS)]
        what = {"label-value": 1, "class": "lesion", "source": "prediction", "model_version": name[len(PREDICTION_PREFIX):]}
    elif name == REFERENCE:
        rgba, what = LABEL_COLOURS[REFERENCE], {"label-value": 1, "class": "lesion", "source": "reference"}
    else:
        rgba, what = LABEL_COLOURS.get(name, (0, 130, 200, 90)), {"label-value": 1, "class": name}
    return {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": name,
            "axes": _axes(channel=False),
            "datasets": [{"path": str(k), "coordinateTransformations": _transforms(geometry, False, f)}
                         for k, f in enumerate([(1, 1, 1), *factors])],
            "metadata": {**_geometry_note(geometry), **_levels_note(factors, str)},
        }],
        "image-label": {
            "version": NGFF_VERSION,
            "colors": [{"label-value": 1, "rgba": list(rgba)}],
            "properties": [what],
            "source": {"image": "../../"},
        },
    }


def labels_ome(names: Sequence[str]) -> dict[str, Any]:
    """The ``ome`` attribute of the ``labels`` group: the label names, reference and foreground
    first, then the predictions in name order."""
    order = {REFERENCE: 0, FOREGROUND: 1}
    return {"version": NGFF_VERSION, "labels": sorted(set(names), key=lambda n: (order.get(n, 2), n))}


def prediction_colour_index(names: Sequence[str], name: str) -> int:
    """Index of ``name`` among the prediction labels of ``names`` (sorted), for its colour."""
    preds = sorted({n for n in names if n.startswith(PREDICTION_PREFIX)} | {name})
    return preds.index(name)


# ------------------------------------------------------------------------------- reading masks
def mask_array(group: zarr.Group, name: str) -> zarr.Array | None:
    """The label ``name`` of an opened case group (1.3 place first, then the ≤ 1.2 one); None when
    the case has none."""
    for path in (label_array(name), legacy_array(name)):
        try:
            node = group[path]
        except KeyError:
            continue
        if isinstance(node, zarr.Array):
            return node
    return None


def reference_label(group: zarr.Group) -> zarr.Array | None:
    """The reference lesion mask (uint8 ``(Z, Y, X)``), None when the source had none."""
    return mask_array(group, REFERENCE)


def foreground_mask(group: zarr.Group) -> zarr.Array | None:
    """The head/brain foreground mask (uint8 ``(Z, Y, X)``)."""
    return mask_array(group, FOREGROUND)


def prediction_mask(group: zarr.Group, model_version: str) -> zarr.Array | None:
    """The mask predicted by ``model_version`` (uint8 ``(Z, Y, X)``), None when not scored."""
    return mask_array(group, prediction_label(model_version))


def prediction_versions(group: zarr.Group) -> list[str]:
    """Model versions with a prediction in this case (either layout), sorted."""
    found: set[str] = set()
    for parent, pick in ((LABELS, lambda n: n[len(PREDICTION_PREFIX):] if n.startswith(PREDICTION_PREFIX) else None),
                         (LEGACY_PREDICTIONS, lambda n: n)):
        try:
            sub = group[parent]
        except KeyError:
            continue
        if not isinstance(sub, zarr.Group):
            continue
        for name in sub.group_keys():
            version = pick(name)
            if version and prediction_mask(group, version) is not None:
                found.add(version)
    return sorted(found)
