"""Foreground masks and intensity normalisation.

* :func:`foreground_mask`: Otsu threshold of the (lightly smoothed) reference image, largest
  connected component kept, holes filled: the head or, for skull-stripped data, the brain.
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

    Steps: Gaussian smoothing (sigma 1 voxel), Otsu threshold on a 128-bin histogram, the
    largest 26-connected component, then holes filled in 3-D and slice by slice (dark lesions
    and ventricles inside the head stay foreground). Returns all-ones when the image is
    constant (nothing to separate).
    """
    import cc3d
    from scipy import ndimage

    a = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0)
    if float(a.max()) <= float(a.min()):
        return np.ones(a.shape, np.uint8)
    smooth = ndimage.gaussian_filter(a, 1.0, truncate=3.0)
    mask = smooth > otsu_threshold(smooth, bins=128)
    if not mask.any():
        return np.ones(a.shape, np.uint8)
    largest = cc3d.largest_k(mask, k=1, connectivity=26) > 0
    return fill_holes(largest).astype(np.uint8)


def otsu_threshold(array: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold: the histogram split that maximises the between-class variance.

    Returns the upper edge of the last bin of the dark class (values above it are bright).
    """
    lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(array, bins=bins, range=(lo, hi))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)[:-1]
    w1 = hist.sum() - w0
    m0 = np.cumsum(hist * centers)[:-1]
    m1 = (hist * centers).sum() - m0
    valid = (w0 > 0) & (w1 > 0)
    between = np.zeros_like(w0)
    between[valid] = w0[valid] * w1[valid] * (m0[valid] / w0[valid] - m1[valid] / w1[valid]) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` (bool, Z Y X) with its holes filled: background regions that do not reach the
    volume's border (6-connected, in 3-D), then, slice by slice, background regions that do not
    reach the slice's border (4-connected in plane).

    Equals ``scipy.ndimage.binary_fill_holes`` in 3-D followed by it on every z slice, from
    connected components instead of iterated dilations (4-5x faster on head-sized volumes).
    """
    import cc3d
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    labels = cc3d.connected_components(~mask, connectivity=6)
    faces = (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1])
    filled = mask | _enclosed(labels, int(labels.max()), faces)
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    labels, n = ndimage.label(~filled, structure=in_plane)
    return filled | _enclosed(labels, n, (labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]))


def _enclosed(labels: np.ndarray, n: int, border: tuple[np.ndarray, ...]) -> np.ndarray:
    """Voxels of the labelled regions (1..n) that do not appear on ``border``."""
    reaches_border = np.zeros(n + 1, bool)
    reaches_border[0] = True
    for face in border:
        reaches_border[np.unique(face)] = True
    return ~reaches_border[labels]


def intensity_stats(array: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean, std and 1st/99th percentiles of the voxels inside ``mask`` (all voxels if None)."""
    vals = np.asarray(array)[mask > 0] if mask is not None else np.asarray(array).reshape(-1)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "p01": float("nan"), "p99": float("nan")}
    p01, p99 = np.percentile(vals, [1, 99])
    return {"mean": float(vals.mean()), "std": float(vals.std()), "p01": float(p01), "p99": float(p99)}


def zscore(array: np.ndarray, mask: np.ndarray, stats: dict[str, float] | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Z-score normalisation with foreground statistics. Returns ``(float32 array, stats)``.

    ``stats``: :func:`intensity_stats` of ``array`` in ``mask`` when the caller has them already.
    """
    stats = intensity_stats(array, mask) if stats is None else stats
    std = stats["std"] if stats["std"] > 1e-8 else 1.0
    out = ((np.asarray(array, dtype=np.float32) - stats["mean"]) / std).astype(np.float32, copy=False)
    return out, stats
