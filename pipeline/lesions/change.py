"""Lesion change between two visits of one subject: new, enlarging, shrinking, disappeared, stable.

:func:`classify_change` takes a baseline and a follow-up lesion mask **on one grid** (the pair's
common space, :mod:`pipeline.longitudinal`) and tracks lesions between them:

* lesions are connected components (connectivity and size floor as :func:`lesion_table`:
  26-connected by default, components of less than ``min_size_mm3`` dropped on both sides);
* baseline and follow-up lesions that overlap (share a voxel) belong to one *track*; the tracks
  are the connected parts of the overlap graph, so a lesion that splits or two that merge are
  one track with their volumes summed;
* a follow-up lesion overlapping no baseline lesion is **new**; a baseline lesion overlapping no
  follow-up lesion has **disappeared**; a track with both is **enlarging** when its volume grew
  by at least ``enlarge_fraction`` of its baseline volume (and by at least ``min_growth_mm3``),
  **shrinking** when it lost at least the same fraction of its *follow-up* volume (the inverse
  ratio: ``baseline >= (1 + enlarge_fraction) * follow-up``), otherwise **stable**.

Default ``enlarge_fraction = 0.5`` (a 50 % volume increase). Its source: the repeated-measurement
study of lesion areas on MRI in MS (Arch Neurol 1992;49(3):261-263,
doi:10.1001/archneur.1992.00530270075021) found that a change must exceed 45.2 % for the common
small lesions (< 0.67 cm²) and 24.2 % for larger ones to exceed measurement variability; 50 % is
the rounded bound of the small lesions, which are 80 % of lesions in that study. It is
configurable (:class:`ChangeRules`); a trial with its own reading rules sets its own.

The **change mask** (uint8, the grid of the inputs) marks where the lesion load changed:
:data:`CHANGE_CODES` ``1`` new lesion (all its voxels), ``2`` the voxels an enlarging track gained,
``3`` the voxels a shrinking track lost, ``4`` a disappeared lesion (all its voxels); 0 elsewhere,
stable tracks included. With a size floor, gained or lost parts smaller than it are left out of
the mask (a rim at a lesion's edge; the track's volumes still count every voxel). The *positive* change (``1`` and ``2``) is what expert masks of new and
enlarging lesions mark (MSSEG-2); the longitudinal MS database's masks mark change both ways
(compare ``mask > 0`` with them, :func:`evaluate_change`).

Volumes are ``voxels * prod(spacing)`` in mm³ (exact on the grid), totals in mL; centroids are
LPS world coordinates (mm) of the mean voxel index, on the pair grid (the baseline's space when
the pair grid is the baseline grid). Tracks are numbered by class, then largest first.

Example:
    >>> import numpy as np
    >>> from pipeline.core.volume import Volume
    >>> b = np.zeros((12, 12, 12), np.uint8); b[1:3, 1:3, 1:3] = 1; b[6:8, 6:8, 6:8] = 1
    >>> f = b.copy(); f[6:9, 6:8, 6:8] = 1; f[1:3, 9:11, 9:11] = 1      # one enlarged by 50 %, one new
    >>> r = classify_change(Volume(b), Volume(f))
    >>> r.counts()
    {'new': 1, 'enlarging': 1, 'shrinking': 0, 'disappeared': 0, 'stable': 1}
    >>> [(t["change"], t["baseline_mm3"], t["followup_mm3"]) for t in r.tracks]
    [('new', 0.0, 8.0), ('enlarging', 8.0, 12.0), ('stable', 8.0, 8.0)]
    >>> int((r.mask == 2).sum()), int((r.mask == 1).sum())
    (4, 8)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as graph_components

from pipeline.core.volume import Volume
from pipeline.lesions.components import connected_lesions, dice
from pipeline.lesions.evaluation import MSSEG1, DetectionRule, lesion_detection

CLASSES: tuple[str, ...] = ("new", "enlarging", "shrinking", "disappeared", "stable")
"""The change classes, in the order tables and JSON list them."""

CHANGE_CODES: dict[str, int] = {"new": 1, "enlarging": 2, "shrinking": 3, "disappeared": 4}
"""Values of the change mask (0 = no change); stable tracks are not marked."""

POSITIVE_CODES: tuple[int, ...] = (1, 2)
"""Change-mask values of the positive change (new lesions, voxels gained by enlarging ones)."""


@dataclass(frozen=True)
class ChangeRules:
    """How lesions are found and classified between two visits.

    Attributes:
        connectivity: 6, 18 or 26 (voxel neighbourhood of a lesion), as ``lesionflow lesions``.
        min_size_mm3: lesions smaller than this (mm³) are dropped on both sides before tracking,
            as :func:`~pipeline.lesions.components.lesion_table` (a lesion of exactly this size is kept).
        enlarge_fraction: relative volume increase (0.5 = 50 %) from which an overlapping track is
            enlarging; its inverse (baseline >= (1 + f) x follow-up) makes it shrinking. The
            default's source is in the module docstring.
        min_growth_mm3: an enlarging track must also gain at least this much (mm³); 0 = no floor.
    """

    connectivity: int = 26
    min_size_mm3: float = 0.0
    enlarge_fraction: float = 0.5
    min_growth_mm3: float = 0.0

    def __post_init__(self) -> None:
        if self.connectivity not in (6, 18, 26):
            raise ValueError(f"connectivity must be 6, 18 or 26, got {self.connectivity}")
        if self.enlarge_fraction <= 0 or self.min_size_mm3 < 0 or self.min_growth_mm3 < 0:
            raise ValueError("enlarge_fraction must be > 0, min_size_mm3 and min_growth_mm3 >= 0")


@dataclass
class ChangeResult:
    """The outcome of :func:`classify_change`.

    Attributes:
        tracks: one dict per track (``track_id``, ``change``, ``baseline_lesions``,
            ``followup_lesions``, ``baseline_voxels``, ``followup_voxels``, ``baseline_mm3``,
            ``followup_mm3``, ``delta_mm3``, ``relative_change`` (NaN for new lesions),
            ``centroid_{x,y,z}_mm`` of the follow-up lesions, or of the baseline ones for a
            disappeared lesion, LPS mm).
        mask: the change mask (:data:`CHANGE_CODES`), uint8 ``[z, y, x]``.
        voxel_mm3: the grid's voxel volume.
        rules: the rules used.
    """

    tracks: list[dict[str, Any]]
    mask: np.ndarray
    voxel_mm3: float
    rules: ChangeRules = field(default_factory=ChangeRules)

    def counts(self) -> dict[str, int]:
        """Tracks per class, every class present (0 when none)."""
        return {c: sum(t["change"] == c for t in self.tracks) for c in CLASSES}

    def volumes_ml(self) -> dict[str, float]:
        """Per class, the volume that changed (mL): new and enlarging gained, shrinking and
        disappeared lost (positive numbers), stable the follow-up volume of its tracks."""
        out = {}
        for c in CLASSES:
            ts = [t for t in self.tracks if t["change"] == c]
            if c == "stable":
                mm3 = sum(t["followup_mm3"] for t in ts)
            else:
                mm3 = sum(abs(t["delta_mm3"]) for t in ts)
            out[c] = round(mm3 / 1000.0, 6)
        return out

    def summary(self) -> dict[str, Any]:
        """Counts (``n_<class>``) and changed volumes (``<class>_ml``) per class, ``new_or_enlarging``
        (the trial endpoint's count) and the rules."""
        counts, vols = self.counts(), self.volumes_ml()
        out: dict[str, Any] = {f"n_{c}": counts[c] for c in CLASSES}
        out.update({f"{c}_ml": vols[c] for c in CLASSES})
        out["n_new_or_enlarging"] = counts["new"] + counts["enlarging"]
        out.update(connectivity=self.rules.connectivity, min_size_mm3=self.rules.min_size_mm3,
                   enlarge_fraction=self.rules.enlarge_fraction, min_growth_mm3=self.rules.min_growth_mm3)
        return out

    def positive(self) -> np.ndarray:
        """The positive change (new lesions and voxels gained by enlarging ones) as a binary mask."""
        return np.isin(self.mask, POSITIVE_CODES).astype(np.uint8)


def _classify(b_vox: int, f_vox: int, voxel_mm3: float, rules: ChangeRules) -> str:
    """The class of a track from its voxel counts (ratios in voxels: exact on one grid)."""
    if b_vox == 0:
        return "new"
    if f_vox == 0:
        return "disappeared"
    if f_vox >= (1 + rules.enlarge_fraction) * b_vox and (f_vox - b_vox) * voxel_mm3 >= rules.min_growth_mm3:
        return "enlarging"
    if b_vox >= (1 + rules.enlarge_fraction) * f_vox:
        return "shrinking"
    return "stable"


def classify_change(baseline: Volume, followup: Volume, rules: ChangeRules | None = None) -> ChangeResult:
    """Track and classify the lesions of two masks of one subject on one grid (see the module docstring).

    Args:
        baseline, followup: 3-D masks on the same grid (non-zero = lesion); geometry from ``baseline``.
        rules: connectivity, size floor and thresholds (:class:`ChangeRules` defaults when None).

    Returns:
        A :class:`ChangeResult`: tracks, the change mask, volumes in mm³ / mL.
    """
    rules = rules or ChangeRules()
    if baseline.is_4d or followup.is_4d:
        raise ValueError("classify_change needs 3-D masks")
    if not baseline.same_grid(followup):
        raise ValueError(f"masks are on different grids: baseline {baseline.shape_xyz} spacing {baseline.spacing}, "
                         f"follow-up {followup.shape_xyz} spacing {followup.spacing}; resample onto the pair grid first")
    voxel_mm3 = baseline.voxel_volume_mm3
    # as lesion_table: a component is dropped when voxels * voxel_mm3 < min_size_mm3
    floor = max(1, int(np.ceil(rules.min_size_mm3 / voxel_mm3 - 1e-9)))
    b_lab, b_sizes = connected_lesions(baseline.array, rules.connectivity, floor)
    f_lab, f_sizes = connected_lesions(followup.array, rules.connectivity, floor)
    nb, nf = len(b_sizes), len(f_sizes)
    # overlap graph: nodes 0..nb-1 baseline lesions, nb..nb+nf-1 follow-up lesions
    both = (b_lab > 0) & (f_lab > 0)
    pairs = np.unique(np.stack([b_lab[both], f_lab[both]], axis=1), axis=0) if both.any() else np.zeros((0, 2), np.int64)
    n = nb + nf
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0].astype(np.int64) - 1, nb + pairs[:, 1].astype(np.int64) - 1)), shape=(n, n))
    n_tracks, comp = graph_components(graph, directed=False) if n else (0, np.zeros(0, np.int64))
    # per lesion: centre of mass (z, y, x voxel index) times voxel count, so tracks sum them
    from scipy import ndimage

    def weighted_centres(lab: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        if not len(sizes):
            return np.zeros((0, 3))
        com = np.asarray(ndimage.center_of_mass(lab > 0, lab, np.arange(1, len(sizes) + 1)), float).reshape(-1, 3)
        return com * sizes[:, None]

    b_sum, f_sum = weighted_centres(b_lab, b_sizes), weighted_centres(f_lab, f_sizes)
    comp_b, comp_f = comp[:nb], comp[nb:]
    bv = np.bincount(comp_b, weights=b_sizes, minlength=n_tracks).astype(np.int64)
    fv = np.bincount(comp_f, weights=f_sizes, minlength=n_tracks).astype(np.int64)
    nbl = np.bincount(comp_b, minlength=n_tracks)
    nfl = np.bincount(comp_f, minlength=n_tracks)
    zyx_b = np.stack([np.bincount(comp_b, weights=b_sum[:, a], minlength=n_tracks) for a in range(3)], axis=1) if nb else np.zeros((n_tracks, 3))
    zyx_f = np.stack([np.bincount(comp_f, weights=f_sum[:, a], minlength=n_tracks) for a in range(3)], axis=1) if nf else np.zeros((n_tracks, 3))
    tracks: list[dict[str, Any]] = []
    code = np.zeros(n_tracks + 1, np.uint8)  # change-mask value of each track (index 0: no track)
    for t in range(n_tracks):
        change = _classify(int(bv[t]), int(fv[t]), voxel_mm3, rules)
        code[t + 1] = CHANGE_CODES.get(change, 0)
        zyx = zyx_f[t] / fv[t] if fv[t] else zyx_b[t] / bv[t]
        world = baseline.index_to_world(np.asarray(zyx)[::-1])
        tracks.append({
            "change": change,
            "baseline_lesions": int(nbl[t]),
            "followup_lesions": int(nfl[t]),
            "baseline_voxels": int(bv[t]),
            "followup_voxels": int(fv[t]),
            "baseline_mm3": round(int(bv[t]) * voxel_mm3, 6),
            "followup_mm3": round(int(fv[t]) * voxel_mm3, 6),
            "delta_mm3": round(int(fv[t] - bv[t]) * voxel_mm3, 6),
            "relative_change": round(float(fv[t] - bv[t]) / float(bv[t]), 6) if bv[t] else float("nan"),
            "centroid_x_mm": round(float(world[0]), 4),
            "centroid_y_mm": round(float(world[1]), 4),
            "centroid_z_mm": round(float(world[2]), 4),
        })
    # the change mask: a voxel of a follow-up lesion takes its track's code when the track is new, or
    # enlarging and the voxel was no baseline lesion; a baseline voxel likewise for disappeared and
    # shrinking tracks (overlapping voxels always share a track, so "no baseline lesion" is b_lab == 0)
    track_b = np.concatenate([[0], comp_b + 1])[b_lab]
    track_f = np.concatenate([[0], comp_f + 1])[f_lab]
    code_f, code_b = code[track_f], code[track_b]
    mask = np.zeros(baseline.shape_zyx, np.uint8)
    gained = (code_f == CHANGE_CODES["new"]) | ((code_f == CHANGE_CODES["enlarging"]) & (b_lab == 0))
    lost = (code_b == CHANGE_CODES["disappeared"]) | ((code_b == CHANGE_CODES["shrinking"]) & (f_lab == 0))
    mask[gained] = code_f[gained]
    mask[lost] = code_b[lost]
    if floor > 1:  # a rim gained or lost at a lesion's edge smaller than a lesion is no change (registration, partial volume)
        for c in (CHANGE_CODES["enlarging"], CHANGE_CODES["shrinking"]):
            part = mask == c
            if part.any():
                kept, _ = connected_lesions(part, rules.connectivity, floor)
                mask[part & (kept == 0)] = 0
    tracks.sort(key=lambda r: (CLASSES.index(r["change"]), -max(r["baseline_voxels"], r["followup_voxels"]),
                               r["centroid_z_mm"], r["centroid_y_mm"], r["centroid_x_mm"]))
    for i, r in enumerate(tracks, start=1):
        r["track_id"] = i
    tracks = [{"track_id": r.pop("track_id"), **r} for r in tracks]
    return ChangeResult(tracks=tracks, mask=mask, voxel_mm3=voxel_mm3, rules=rules)


def evaluate_change(expert: np.ndarray, detected: np.ndarray, voxel_mm3: float, rule: DetectionRule = MSSEG1) -> dict[str, Any]:
    """Detected change against an expert change mask on one grid, MSSEG-2 style.

    ``detected`` is what the method marks as change, in the sense the expert mask has: its
    positive change (:meth:`ChangeResult.positive`) for a mask of new and enlarging lesions, the
    whole change mask (``mask > 0``) for one that also marks shrinking and vanished lesions (the
    shared longitudinal database's). Voxel-wise Dice; lesion-wise by
    ``rule`` (default the MSSEG-1 rules of :mod:`pipeline.lesions.evaluation`, which MSSEG-2 reused
    for new lesions): sensitivity = detected expert changes / expert changes, and false positives
    per true change = detected-change lesions that detect nothing / expert changes (MSSEG-2 counts
    false-positive lesions; dividing by the number of true changes makes pairs comparable).

    Returns:
        ``dice``, ``change_sensitivity``, ``change_fp``, ``fp_per_true_change``,
        ``expert_changes``, ``detected_changes``, ``tp_expert``, ``tp_detected``, ``change_precision``,
        ``change_f1``, ``expert_ml``, ``detected_ml``, ``rule``.
    """
    expert = np.asarray(expert) != 0
    detected = np.asarray(detected) != 0
    det = lesion_detection(expert, detected, voxel_mm3, rule)
    fp = det.pred_lesions - det.tp_pred
    return {
        "dice": round(dice(expert, detected), 6),
        "change_sensitivity": det.sensitivity,
        "change_precision": det.precision,
        "change_f1": det.f1,
        "expert_changes": det.ref_lesions,
        "detected_changes": det.pred_lesions,
        "tp_expert": det.tp_ref,
        "tp_detected": det.tp_pred,
        "change_fp": fp,
        "fp_per_true_change": fp / det.ref_lesions if det.ref_lesions else float("nan"),
        "expert_ml": round(int(expert.sum()) * voxel_mm3 / 1000.0, 6),
        "detected_ml": round(int(detected.sum()) * voxel_mm3 / 1000.0, 6),
        "rule": rule.name,
    }
