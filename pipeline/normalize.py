"""Foreground masks and intensity normalisation.

* :func:`foreground_mask`: Otsu threshold of the (lightly smoothed) reference image, holes
  filled, largest connected component kept: the head or, for skull-stripped data, the brain.
* :func:`zscore`: ``(x - mean_fg) / std_fg`` using foreground statistics (MR intensities have
  no absolute unit; nnU-Net's choice for MR). Background keeps the same transform.

Example:
    >>> import numpy as np
    >>> a = np.zeros((20, 20, 20), np.float32); a[5:15, 5:15, 5:15] = 100 + np.arange(10)
    >>> fg = foreground_mask(a)
    >>> int(fg[10, 10, 10]), 900 < int(fg.sum()) <= 1000
    (1, True)
    >>> z, stats = zscore(a, fg)
    >>> round(float(z[fg > 0].mean()), 6), round(float(z[fg > 0].std()), 4)
    (0.0, 1.0)
"""

from __future__ import annotations

import numpy as np


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """uint8 mask (same shape) of the largest bright connected region (Otsu threshold).

    Returns all-ones when the image is constant (nothing to separate).
    """
    import cc3d
    import SimpleITK as sitk
    from scipy import ndimage

    a = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0)
    if float(a.max()) <= float(a.min()):
        return np.ones(a.shape, np.uint8)
    img = sitk.GetImageFromArray(a)
    img = sitk.SmoothingRecursiveGaussian(img, 1.0)
    otsu = sitk.OtsuThreshold(img, 0, 1, 128)
    mask = sitk.GetArrayFromImage(otsu).astype(np.uint8)
    if mask.sum() == 0:
        return np.ones(a.shape, np.uint8)
    largest = cc3d.largest_k(mask, k=1, connectivity=26) > 0
    filled = ndimage.binary_fill_holes(largest)
    # fill holes slice-wise too: dark lesions/ventricles inside the head must stay foreground
    for z in range(filled.shape[0]):
        filled[z] = ndimage.binary_fill_holes(filled[z])
    return filled.astype(np.uint8)


def intensity_stats(array: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean, std and 1st/99th percentiles of the voxels inside ``mask`` (all voxels if None)."""
    vals = np.asarray(array)[mask > 0] if mask is not None else np.asarray(array).reshape(-1)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "p01": float("nan"), "p99": float("nan")}
    p01, p99 = np.percentile(vals, [1, 99])
    return {"mean": float(vals.mean()), "std": float(vals.std()), "p01": float(p01), "p99": float(p99)}


def zscore(array: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Z-score normalisation with foreground statistics. Returns ``(float32 array, stats)``."""
    stats = intensity_stats(array, mask)
    std = stats["std"] if stats["std"] > 1e-8 else 1.0
    out = ((np.asarray(array, dtype=np.float32) - stats["mean"]) / std).astype(np.float32)
    return out, stats
