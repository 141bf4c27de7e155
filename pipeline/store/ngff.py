"""OME-Zarr 0.5 (OME-NGFF) metadata of a case group, and where a case's masks live.

Since schema 1.3 every case group is an OME-Zarr 0.5 image with its masks as NGFF image-labels,
so napari (napari-ome-zarr), neuroglancer, ome-zarr-py or any NGFF reader opens a case with its
reference label, foreground and predictions::

    cases/<case_id>/                 ome.multiscales: axes (c, z, y, x), one level at "image"; ome.omero: channel names
      image                          float32 (C, Z, Y, X), dimension_names (c, z, y, x)
      labels/                        ome.labels = ["reference", "foreground", "prediction-<model_version>", ...]
        reference/                   ome.multiscales: axes (z, y, x), one level at "0"; ome.image-label: colours, source ../../
          0                          uint8 (Z, Y, X), dimension_names (z, y, x)   the reference lesion mask
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

from collections.abc import Sequence
from typing import Any

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
    if parts == [IMAGE] and len(shape) == 4:
        return IMAGE_DIMS
    if len(shape) == 3 and (grid is None or shape == grid):
        return MASK_DIMS
    if parts[0] == "patch_index" and len(shape) == 2:
        return PATCH_DIMS
    if grid is not None and len(shape) == 4 and shape[1:] == grid:
        return IMAGE_DIMS
    return tuple(f"dim_{i}" for i in range(len(shape)))


# ------------------------------------------------------------------------------- metadata
def _transforms(geometry: Geometry, channel: bool) -> list[dict[str, Any]]:
    sx, sy, sz = (float(v) for v in geometry.spacing)
    ox, oy, oz = (float(v) for v in geometry.origin)
    scale, translation = [sz, sy, sx], [oz, oy, ox]
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


def image_ome(geometry: Geometry, name: str, channels: Sequence[str]) -> dict[str, Any]:
    """The case group's ``ome`` attribute: one multiscale (c, z, y, x) at ``image``, channel names
    in ``omero`` (read by napari-ome-zarr for the layer names)."""
    channels = [str(c) for c in channels]
    return {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": name,
            "axes": _axes(channel=True),
            "datasets": [{"path": IMAGE, "coordinateTransformations": _transforms(geometry, channel=True)}],
            "metadata": {"channels": channels, **_geometry_note(geometry)},
        }],
        "omero": {
            "name": name,
            "version": NGFF_VERSION,
            "channels": [{"label": c, "color": "FFFFFF", "active": i == 0, "coefficient": 1, "family": "linear",
                          "inverted": False, "window": dict(DISPLAY_WINDOW)} for i, c in enumerate(channels)],
            "rdefs": {"model": "greyscale", "defaultZ": int(geometry.shape_zyx[0]) // 2, "defaultT": 0},
        },
    }


def label_ome(geometry: Geometry, name: str, colour_index: int = 0) -> dict[str, Any]:
    """The ``ome`` attribute of the label image ``labels/<name>``: one multiscale (z, y, x) at
    ``0`` with the image's spatial transforms, and ``image-label`` (colour of value 1, what it is,
    source image ``../../``)."""
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
            "datasets": [{"path": LEVEL0, "coordinateTransformations": _transforms(geometry, channel=False)}],
            "metadata": _geometry_note(geometry),
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
