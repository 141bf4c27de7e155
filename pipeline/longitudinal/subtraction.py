"""Change without a per-visit model: subtraction of intensity-normalised, co-registered FLAIR images.

The family of methods validated on the longitudinal MS database (Lesjak et al., Neuroinformatics
2016): both FLAIR images on one grid, each normalised within the common brain mask (median 0,
robust standard deviation 1: ``1.4826 x MAD``), the follow-up minus the baseline, the difference
normalised the same way; a voxel is positive change when

* the difference exceeds ``diff_z`` robust standard deviations,
* the follow-up is hyperintense (above ``followup_z``),
* it lies in the brain mask eroded by ``erode_mm`` (the skull, scalp and the brain's edge move
  most between visits and are not white matter);

then components smaller than ``min_size_mm3`` are dropped (26-connected). A component that
touches a baseline hyperintensity (a 26-connected component of baseline voxels above
``followup_z``, of at least ``min_size_mm3``) is called *enlarging*, any other *new*; the subtraction sees only what appeared, so nothing is shrinking or disappeared.

Defaults (``SubtractionConfig``) were set after looking at the shared longitudinal patient
(erosion 10 mm, hyperintensity 1.5 SD): change Dice 0.637, lesion-wise sensitivity 0.21 and 0.14
false positives per true change there (``benchmarks/bench_change.py``), figures that flatter it.

The brain mask is what the store has: the intersection of both visits' foreground masks
(:func:`pipeline.ingest.normalize.foreground_mask`, the head for data that is not skull-stripped),
eroded.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> b = rng.normal(0, 1, (32, 32, 32)).astype(np.float32); f = b + rng.normal(0, 0.2, b.shape).astype(np.float32)
    >>> f[14:18, 14:18, 14:18] += 6                        # a new bright lesion of 64 voxels
    >>> mask = subtraction_change(b, f, np.ones(b.shape, np.uint8), (1.0, 1.0, 1.0), SubtractionConfig(hyper_z=3.0, erode_mm=0))
    >>> int((mask == 1).sum()), int((mask > 1).sum())
    (64, 0)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.lesions.change import CHANGE_CODES
from pipeline.lesions.components import connected_lesions


@dataclass(frozen=True)
class SubtractionConfig:
    """Thresholds of :func:`subtraction_change` (units: robust standard deviations within the brain, mm, mm³).

    ``hyper_z`` None drops the hyperintensity condition; ``negative`` False looks for appearing
    change only.
    """

    diff_z: float = 4.0
    hyper_z: float | None = 1.5
    lesion_z: float = 3.0
    erode_mm: float = 10.0
    min_size_mm3: float = 10.0
    negative: bool = True
    min_diff_sd: float = 0.1
    """The difference's robust standard deviation is taken as at least this many robust standard
    deviations of the brain's intensities: two visits that agree more closely than scanner noise
    allows (a copy, one acquisition resampled twice) would otherwise turn interpolation error into
    change (a copied session gave 213 changes). Real rescans differ by more: the shared
    longitudinal pair's difference has a robust SD of 0.45 (the floor does not act there)."""

    def as_dict(self) -> dict[str, float | bool | None]:
        return asdict(self)


def robust_sd(a: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """``(median, 1.4826 x MAD)`` of ``a`` inside ``mask``."""
    vals = np.asarray(a, np.float32)[mask]
    med = float(np.median(vals)) if vals.size else 0.0
    return med, float(np.median(np.abs(vals - med))) * 1.4826 if vals.size else 1.0


def robust_z(a: np.ndarray, mask: np.ndarray, min_scale: float = 0.0) -> np.ndarray:
    """``(a - median) / max(1.4826 x MAD, min_scale)`` with the statistics of ``a`` inside ``mask`` (float32)."""
    med, sd = robust_sd(a, mask)
    scale = max(sd, min_scale)
    return ((np.asarray(a, np.float32) - med) / (scale if scale > 0 else 1.0)).astype(np.float32)


def erode_mm(mask: np.ndarray, spacing_xyz: tuple[float, float, float], mm: float) -> np.ndarray:
    """``mask`` eroded by an ellipsoid of radius ``mm`` (in voxels per axis from the spacing)."""
    from scipy import ndimage

    m = np.asarray(mask) != 0
    if mm <= 0:
        return m
    r = [max(0, int(np.floor(mm / s))) for s in spacing_xyz[::-1]]  # z, y, x
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    ball = ((zz / max(r[0], 1e-9)) ** 2 if r[0] else 0) + ((yy / max(r[1], 1e-9)) ** 2 if r[1] else 0) + ((xx / max(r[2], 1e-9)) ** 2 if r[2] else 0)
    return ndimage.binary_erosion(m, structure=np.asarray(ball <= 1.0), border_value=0)


def _touching(change: np.ndarray, sizes: np.ndarray, other: np.ndarray, floor: int) -> np.ndarray:
    """For each component of ``change`` (labels 1..n): whether it touches (26-neighbourhood) a
    component of the boolean ``other`` of at least ``floor`` voxels."""
    from scipy import ndimage

    blobs, blob_sizes = connected_lesions(other, 26, floor)
    if not len(blob_sizes):
        return np.zeros(len(sizes), bool)
    near = ndimage.binary_dilation(blobs > 0, structure=np.ones((3, 3, 3), bool))
    return np.bincount(change.ravel(), weights=near.ravel().astype(float), minlength=len(sizes) + 1)[1:] > 0


def subtraction_change(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray, spacing_xyz: tuple[float, float, float],
                       config: SubtractionConfig | None = None) -> np.ndarray:
    """The change mask of the subtraction method (:data:`~pipeline.lesions.change.CHANGE_CODES`: 1 new,
    2 enlarging, 3 shrinking, 4 disappeared, 0 else) from two FLAIR images and a brain mask on one grid ``[z, y, x]``."""
    cfg = config or SubtractionConfig()
    inside = erode_mm(brain, spacing_xyz, cfg.erode_mm)
    out = np.zeros(np.shape(baseline), np.uint8)
    if inside.sum() < 100:
        return out
    zb, zf = robust_z(baseline, inside), robust_z(followup, inside)
    zd = robust_z(zf - zb, inside, min_scale=cfg.min_diff_sd)
    voxel_mm3 = float(np.prod(spacing_xyz))
    floor = max(1, int(np.ceil(cfg.min_size_mm3 / voxel_mm3 - 1e-9)))
    hyper_b = inside & (zb > cfg.hyper_z) if cfg.hyper_z is not None else inside
    hyper_f = inside & (zf > cfg.hyper_z) if cfg.hyper_z is not None else inside
    lesion_b, lesion_f = inside & (zb > cfg.lesion_z), inside & (zf > cfg.lesion_z)
    # appearing: brighter at follow-up (and hyperintense there); vanishing: darker (and hyperintense before)
    sides = [(inside & (zd > cfg.diff_z) & hyper_f, lesion_b, "enlarging", "new")]
    if cfg.negative:
        sides.append((inside & (zd < -cfg.diff_z) & hyper_b, lesion_f, "shrinking", "disappeared"))
    for cand, other, touching, alone in sides:
        labels, sizes = connected_lesions(cand, 26, floor)
        if not len(sizes):
            continue
        code = np.zeros(len(sizes) + 1, np.uint8)
        code[1:] = np.where(_touching(labels, sizes, other, floor), CHANGE_CODES[touching], CHANGE_CODES[alone])
        hit = labels > 0
        out[hit] = code[labels[hit]]
    return out
