"""Bring volumes onto one grid through physical (LPS) space.

* Images: linear interpolation (never cubic: across 4–6 mm slices a cubic kernel rings and
  invents structure), 0 outside the field of view.
* Label maps: binary masks are interpolated linearly into a partial-volume map which is then
  thresholded at the level that preserves the mask's physical volume (a fixed 0.5 threshold
  shrinks small convex lesions: -1.4 to -6.2 % total volume on the open_ms consensus masks
  at 0.47→1 mm; nearest neighbour keeps volume only on average, ±1.2 %, with jagged shapes).
  Multi-label maps use one-hot linear interpolation: the label with the highest weight wins.
* Registration transforms (ITK transform files) map points of the *reference* space into the
  moving image, exactly as ``SimpleITK.Resample`` expects and as registration tools write
  ``moving_to_fixed`` transforms.

Example:
    >>> import numpy as np
    >>> from pipeline.core.volume import Volume
    >>> v = Volume(np.ones((10, 10, 10), np.float32), spacing=(1, 1, 3))
    >>> grid_with_spacing(v, (1.0, 1.0, 1.0)).shape_zyx
    (30, 10, 10)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.core.volume import Volume

Interpolation = Literal["linear", "nearest", "label"]


def grid_with_spacing(reference: Volume, spacing: tuple[float, float, float]) -> Volume:
    """An empty grid with the reference's direction and field of view at ``spacing`` (mm, x y z).

    The field of view (outer voxel edges) is kept: ``new_size = round(old_size * old_spacing / spacing)``
    and the origin moves so the first voxel's outer corner stays in place.
    """
    old_sp = np.asarray(reference.spacing)
    new_sp = np.asarray(spacing, dtype=float)
    size_xyz = np.maximum(1, np.round(np.asarray(reference.shape_xyz) * old_sp / new_sp)).astype(int)
    corner = np.asarray(reference.origin) - reference.direction @ (old_sp / 2.0)
    origin = corner + reference.direction @ (new_sp / 2.0)
    empty = np.zeros(tuple(int(s) for s in size_xyz[::-1]), dtype=np.uint8)
    return Volume(empty, spacing=tuple(new_sp), origin=tuple(origin), direction=reference.direction)


def read_transform(path: str | Path):
    """Read an ITK transform file (``Insight Transform File V1.0`` .txt or .tfm)."""
    import SimpleITK as sitk

    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a readable ITK transform file ({str(exc).splitlines()[-1] if str(exc) else exc})") from exc


def resample_to_grid(
    moving: Volume,
    grid: Volume,
    interpolation: Interpolation = "linear",
    transform=None,
    default_value: float = 0.0,
) -> Volume:
    """Resample ``moving`` onto ``grid`` (its shape, spacing, origin and direction).

    Args:
        moving: 3-D volume to resample.
        grid: volume whose geometry defines the output grid (its voxels are ignored).
        interpolation: ``"linear"`` for images, ``"label"`` (one-hot linear) for label maps,
            ``"nearest"`` when values must be copied exactly.
        transform: optional SimpleITK transform mapping grid (reference) points into ``moving``.
        default_value: value outside the moving image's field of view.

    Returns:
        A volume on ``grid``'s geometry; float32 for images, the moving dtype for labels.
    """
    import SimpleITK as sitk

    if moving.is_4d:
        raise ValueError("resample_to_grid needs a 3-D volume")
    if transform is None and moving.same_grid(grid, atol=1e-5):
        return grid.with_array(moving.array.copy(), meta=dict(moving.meta))
    ref_img = sitk.Image(list(grid.shape_xyz), sitk.sitkUInt8)
    ref_img.SetSpacing(grid.spacing)
    ref_img.SetOrigin(grid.origin)
    ref_img.SetDirection(tuple(grid.direction.reshape(-1)))
    tx = transform if transform is not None else sitk.Transform()

    if interpolation == "label":
        values = np.unique(moving.array)
        values = values[values != 0]
        out = np.zeros(grid.shape_zyx, moving.array.dtype)
        if values.size == 0:
            return grid.with_array(out, meta=dict(moving.meta))
        if values.size == 1:
            ind = moving.with_array((moving.array != 0).astype(np.float32))
            fraction = _resample_array(ind, ref_img, tx, sitk.sitkLinear, 0.0)
            target_voxels = float(ind.array.sum()) * moving.voxel_volume_mm3 / grid.voxel_volume_mm3
            out[fraction >= volume_preserving_threshold(fraction, target_voxels)] = values[0]
            return grid.with_array(out, meta=dict(moving.meta))
        bg = moving.with_array((moving.array == 0).astype(np.float32))
        best = _resample_array(bg, ref_img, tx, sitk.sitkLinear, 1.0)
        for value in values:
            weight = _resample_array(moving.with_array((moving.array == value).astype(np.float32)), ref_img, tx, sitk.sitkLinear, 0.0)
            win = weight > best
            out[win] = value
            best = np.where(win, weight, best)
        return grid.with_array(out, meta=dict(moving.meta))

    interp = sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor
    src = moving if interpolation == "nearest" else moving.with_array(moving.array.astype(np.float32, copy=False))
    arr = _resample_array(src, ref_img, tx, interp, default_value)
    return grid.with_array(arr, meta=dict(moving.meta))


def _resample_array(moving: Volume, ref_img, transform, interpolator, default_value: float) -> np.ndarray:
    import SimpleITK as sitk

    out = sitk.Resample(moving.to_sitk(), ref_img, transform, interpolator, float(default_value))
    return sitk.GetArrayFromImage(out)


def volume_preserving_threshold(fraction: np.ndarray, target_voxels: float) -> float:
    """Threshold of a partial-volume map whose super-level set has ``target_voxels`` voxels.

    Clamped to [0.05, 0.95] so that a mask moved mostly outside the grid does not grow, and
    returns +inf when nothing should be selected.
    """
    n = int(round(target_voxels))
    positive = fraction[fraction > 0]
    if n <= 0 or positive.size == 0:
        return float("inf")
    if n >= positive.size:
        return float(max(0.05, positive.min()))
    kth = np.partition(positive, positive.size - n)[positive.size - n]
    return float(min(0.95, max(0.05, kth)))
