"""Evaluation by the field's rules: a predicted lesion mask against a reference mask.

Per case (:func:`compare_masks`, on two arrays of one grid):

* **voxel-wise**: Dice; 95th-percentile Hausdorff distance in mm on the (anisotropic) grid
  (:func:`pipeline.lesions.components.hausdorff95_mm`, MONAI's definition); total lesion
  volume of both masks (mL), their difference, absolute and relative error.
* **lesion-wise**, by a :class:`DetectionRule` (:func:`lesion_detection`):

  - ``MSSEG1`` (default), the MSSEG-1 challenge rules as Anima's segmentation performance
    analyzer (``animaSegPerfAnalyzer -l``) implements them (Commowick et al., Sci Rep 2018):
    lesions are 6-connected components; lesions of 3 mm³ or less are removed from both masks
    first (their voxels count as background); a reference lesion is *detected* when more than
    10 % (alpha) of its voxels are covered by predicted lesions **and** the predicted lesions
    overlapping it, taken in decreasing overlap until they make up 65 % (gamma) of its covered
    voxels, each have no more than 70 % (beta) of their voxels outside the reference (outside
    every reference lesion). Precision is the same test with the masks swapped (a predicted
    lesion is a true positive when it "detects" the reference the same way). Lesion-wise
    sensitivity = detected / reference lesions, precision = true-positive predictions /
    predicted lesions, F1 = 2PS / (P + S).
  - ``ISLES22``, the ISLES'22 challenge rule: 26-connected lesions, no size floor, a reference
    lesion is detected by any overlap, a predicted lesion is a false positive when it overlaps
    no reference voxel; F1 = TP / (TP + (FP + FN) / 2), 1.0 when both masks are empty.

  Where Anima divides by zero this module says what it means: sensitivity is NaN without
  reference lesions, precision NaN without predicted lesions; MSSEG F1 is 0 when exactly one
  side has lesions (Anima: NaN) or when P + S = 0, NaN when neither has any. Anima stops
  its gamma walk after as many predicted lesions as the *reference* has lesions (an indexing
  slip in ``falsePositiveRatioTester``); here the walk goes on until gamma is reached. Ties in
  overlap are taken larger lesion first, then lower label.
* **case level**, "is there a lesion?": ``has_lesion`` (the reference has a lesion voxel)
  against a score, the predicted volume (mL) or, when the caller has the probability map, its
  maximum; the same per slice (array axis 0) with the predicted area (mm²) or the slice's
  maximum probability. :func:`roc_auc` is the Mann-Whitney estimate (ties count one half).

Per cohort (:func:`cohort_summary`): Dice and HD95 over the cases with reference lesions,
volume errors, Pearson and Spearman correlation of the volumes, Bland-Altman bias and 95 %
limits of agreement, lesion counts pooled over cases (and the mean of the case F1s), ROC AUC
over cases and over slices.

In a store (:func:`evaluate_model`, :func:`write_evaluation`): every scored case's
``predictions/<model_version>/mask`` against its ``label``; tables ``evaluation_cases``,
``evaluation_lesions``, ``evaluation_slices`` and ``evaluation_cohort`` (rows of other model
versions kept). :func:`evaluate` returns the case table (with the truth-table columns of the
phantom: ``truth_volume_ml``, ``truth_lesions``, ``volume_error_pct``).

The store and the truth table may be local paths or fsspec URLs (``s3://...``); everything is
read through :mod:`pipeline.store`.

Example:
    >>> import numpy as np
    >>> ref = np.zeros((8, 8, 8), np.uint8); ref[1:4, 1:4, 1:4] = 1   # one 27 mm³ lesion
    >>> pred = np.zeros_like(ref); pred[1:4, 1:4, 2:5] = 1             # shifted by one voxel
    >>> m, _ = compare_masks(ref, pred, spacing_xyz=(1.0, 1.0, 1.0))
    >>> round(m["dice"], 3), m["msseg_tp_ref"], m["msseg_f1"], m["hd95_mm"]
    (0.667, 1, 1.0, 1.0)
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.lineage import source_relpaths
from pipeline.lesions.components import connected_lesions, dice, hausdorff95_mm, min_lesion_voxels, union_box
from pipeline.store import MODELS, list_cases, location, read_bytes, read_case_meta, read_table, write_table

CASE_TABLE = "evaluation_cases"
LESION_TABLE = "evaluation_lesions"
SLICE_TABLE = "evaluation_slices"
COHORT_TABLE = "evaluation_cohort"


# ------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class DetectionRule:
    """How lesions are found and matched.

    Attributes:
        name: column prefix, ``msseg`` or ``isles``.
        connectivity: 6, 18 or 26 (voxel neighbourhood of a lesion).
        min_lesion_mm3: lesions of this volume (mm³) or less are removed from both masks.
        any_overlap: a lesion is detected by any overlap (ISLES'22); otherwise by the three
            thresholds below (MSSEG-1).
        min_overlap: alpha, the fraction of a lesion's voxels that must be covered (strictly more).
        max_outside: beta, the largest fraction of an overlapping lesion's voxels that may lie outside.
        cover: gamma, the share of the covered voxels whose contributors are checked against beta.
        f1: ``"harmonic"`` (2PS / (P + S)) or ``"isles"`` (TP / (TP + (FP + FN) / 2)).
    """

    name: str
    connectivity: int
    min_lesion_mm3: float
    any_overlap: bool = False
    min_overlap: float = 0.10
    max_outside: float = 0.70
    cover: float = 0.65
    f1: str = "harmonic"


MSSEG1 = DetectionRule("msseg", connectivity=6, min_lesion_mm3=3.0)
ISLES22 = DetectionRule("isles", connectivity=26, min_lesion_mm3=0.0, any_overlap=True, f1="isles")
RULES: tuple[DetectionRule, ...] = (MSSEG1, ISLES22)


@dataclass
class LesionDetection:
    """Lesion-wise result of one mask pair under one rule (counts, rates, one row per lesion)."""

    rule: str
    ref_lesions: int
    pred_lesions: int
    tp_ref: int
    tp_pred: int
    sensitivity: float
    precision: float
    f1: float
    ref_rows: list[dict[str, Any]] = field(default_factory=list)
    pred_rows: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        """The figures under the rule's prefix, e.g. ``msseg_sensitivity``."""
        keys = ("ref_lesions", "pred_lesions", "tp_ref", "tp_pred", "sensitivity", "precision", "f1")
        return {f"{self.rule}_{k}": getattr(self, k) for k in keys}


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _detects(table: np.ndarray, sizes_other: np.ndarray, rule: DetectionRule) -> tuple[np.ndarray, np.ndarray]:
    """Which row lesions of an overlap ``table`` are detected by the column lesions.

    ``table[i, j]`` counts voxels of row lesion i (0 = row background) on column lesion j
    (0 = column background). Returns ``(detected, overlap_fraction)`` for rows 1..n.
    """
    overlap = table[1:, 1:]
    sizes = table[1:, :].sum(axis=1)
    covered = overlap.sum(axis=1)
    fraction = np.where(sizes > 0, covered / np.maximum(sizes, 1), 0.0)
    if rule.any_overlap:
        return covered > 0, fraction
    outside = np.where(sizes_other > 0, table[0, 1:] / np.maximum(sizes_other, 1), 0.0)  # column lesions off every row lesion
    detected = np.zeros(len(sizes), bool)
    for i in range(len(sizes)):
        if not fraction[i] > rule.min_overlap:
            continue
        contributors = sorted(np.flatnonzero(overlap[i]), key=lambda j: (-overlap[i, j], -sizes_other[j], j))
        share = 0.0
        ok = True
        for j in contributors:
            if share >= rule.cover:
                break
            if outside[j] > rule.max_outside:
                ok = False
                break
            share += overlap[i, j] / covered[i]
        detected[i] = ok
    return detected, fraction


def lesion_detection(ref: np.ndarray, pred: np.ndarray, voxel_mm3: float, rule: DetectionRule = MSSEG1) -> LesionDetection:
    """Lesion-wise detection of ``pred`` against ``ref`` (3-D masks of one grid) under ``rule``.

    Args:
        ref, pred: masks ``[z, y, x]``, non-zero = lesion.
        voxel_mm3: the grid's voxel volume (mm³), for the size floor and the lesion volumes.
        rule: :data:`MSSEG1` (default) or :data:`ISLES22`, or a variant with other thresholds.

    Returns:
        Counts, sensitivity / precision / F1 (see the module docstring for empty masks) and one
        row per lesion of each side (``lesion_id`` 1 = largest, ``voxels``, ``volume_mm3``,
        ``overlap_fraction``, ``outside_fraction``, ``detected``).
    """
    ref = np.asarray(ref)
    pred = np.asarray(pred)
    if ref.shape != pred.shape:
        raise ValueError(f"masks differ in shape: reference {ref.shape}, prediction {pred.shape}")
    box = union_box(ref, pred, margin=0)
    if box is None:
        n_r = n_p = 0
        table = np.zeros((1, 1), np.int64)
    else:
        floor = min_lesion_voxels(rule.min_lesion_mm3, voxel_mm3)
        ref_labels, _ = connected_lesions(ref[box], rule.connectivity, floor)
        pred_labels, _ = connected_lesions(pred[box], rule.connectivity, floor)
        n_r, n_p = int(ref_labels.max(initial=0)), int(pred_labels.max(initial=0))
        flat = ref_labels.ravel().astype(np.int64) * (n_p + 1) + pred_labels.ravel()
        table = np.bincount(flat, minlength=(n_r + 1) * (n_p + 1)).reshape(n_r + 1, n_p + 1)
    ref_sizes = table[1:, :].sum(axis=1)
    pred_sizes = table[:, 1:].sum(axis=0)
    ref_hit, ref_frac = _detects(table, pred_sizes, rule)
    pred_hit, pred_frac = _detects(table.T, ref_sizes, rule)
    tp_ref, tp_pred = int(ref_hit.sum()), int(pred_hit.sum())
    sens, prec = _ratio(tp_ref, n_r), _ratio(tp_pred, n_p)
    if rule.f1 == "isles":
        fp, fn = n_p - tp_pred, n_r - tp_ref
        f1 = 1.0 if tp_ref + fp + fn == 0 else tp_ref / (tp_ref + (fp + fn) / 2)
    elif n_r == 0 and n_p == 0:
        f1 = float("nan")
    elif n_r == 0 or n_p == 0 or sens + prec == 0:
        f1 = 0.0
    else:
        f1 = 2 * prec * sens / (prec + sens)

    def rows(sizes: np.ndarray, frac: np.ndarray, hit: np.ndarray) -> list[dict[str, Any]]:
        return [{"lesion_id": k + 1, "voxels": int(sizes[k]), "volume_mm3": round(float(sizes[k]) * voxel_mm3, 6),
                 "overlap_fraction": round(float(frac[k]), 6), "outside_fraction": round(1.0 - float(frac[k]), 6),
                 "detected": bool(hit[k])} for k in range(len(sizes))]

    return LesionDetection(rule.name, n_r, n_p, tp_ref, tp_pred, sens, prec, float(f1),
                           rows(ref_sizes, ref_frac, ref_hit), rows(pred_sizes, pred_frac, pred_hit))


# ------------------------------------------------------------------------------ one mask pair
def compare_masks(
    ref: np.ndarray,
    pred: np.ndarray,
    spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
    rules: Sequence[DetectionRule] = RULES,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every per-case figure of ``pred`` against ``ref`` (two 3-D masks on one grid).

    Args:
        ref, pred: masks ``[z, y, x]``, non-zero = lesion.
        spacing_xyz: voxel size (mm), ITK order, as ``Volume.spacing``.
        rules: the detection rules to apply (default both: MSSEG-1 and ISLES'22).

    Returns:
        ``(metrics, lesion_rows)``: metrics has ``dice``, ``hd95_mm``, ``volume_ref_ml``,
        ``volume_pred_ml``, ``volume_diff_ml`` (pred - ref), ``abs_volume_error_ml``,
        ``rel_volume_error_pct`` (NaN for an empty reference), ``has_lesion``,
        ``predicted_volume_ml`` (the default case score), ``voxel_volume_mm3`` and
        ``<rule>_{ref_lesions, pred_lesions, tp_ref, tp_pred, sensitivity, precision, f1}``;
        lesion rows carry ``rule`` and ``side``.
    """
    ref = np.asarray(ref) != 0
    pred = np.asarray(pred) != 0
    if ref.shape != pred.shape:
        raise ValueError(f"masks differ in shape: reference {ref.shape}, prediction {pred.shape}")
    voxel_mm3 = float(np.prod([float(s) for s in spacing_xyz]))
    v_ref = int(ref.sum()) * voxel_mm3 / 1000.0
    v_pred = int(pred.sum()) * voxel_mm3 / 1000.0
    metrics: dict[str, Any] = {
        "voxel_volume_mm3": voxel_mm3,
        "dice": dice(ref, pred),
        "hd95_mm": hausdorff95_mm(ref, pred, tuple(spacing_xyz)),  # type: ignore[arg-type]
        "volume_ref_ml": v_ref,
        "volume_pred_ml": v_pred,
        "volume_diff_ml": v_pred - v_ref,
        "abs_volume_error_ml": abs(v_pred - v_ref),
        "rel_volume_error_pct": 100.0 * (v_pred - v_ref) / v_ref if v_ref > 0 else float("nan"),
        "has_lesion": bool(ref.any()),
        "predicted_volume_ml": v_pred,
    }
    lesion_rows: list[dict[str, Any]] = []
    for rule in rules:
        det = lesion_detection(ref, pred, voxel_mm3, rule)
        metrics.update(det.counts())
        lesion_rows += [{"rule": rule.name, "side": "reference", **r} for r in det.ref_rows]
        lesion_rows += [{"rule": rule.name, "side": "prediction", **r} for r in det.pred_rows]
    return metrics, lesion_rows


def slice_rows(ref: np.ndarray, pred: np.ndarray, spacing_xyz: Sequence[float],
               slice_max_probability: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """One row per slice (array axis 0): ``z``, ``has_lesion``, ``ref_area_mm2``,
    ``pred_area_mm2`` and ``score`` (the predicted area, or the slice's maximum probability)."""
    ref = np.asarray(ref) != 0
    pred = np.asarray(pred) != 0
    pixel_mm2 = float(spacing_xyz[0]) * float(spacing_xyz[1])
    ref_px = ref.reshape(ref.shape[0], -1).sum(axis=1)
    pred_px = pred.reshape(pred.shape[0], -1).sum(axis=1)
    if slice_max_probability is not None and len(slice_max_probability) != ref.shape[0]:
        raise ValueError(f"{len(slice_max_probability)} slice probabilities for {ref.shape[0]} slices")
    out = []
    for z in range(ref.shape[0]):
        area = float(pred_px[z]) * pixel_mm2
        score = float(slice_max_probability[z]) if slice_max_probability is not None else area
        out.append({"z": z, "has_lesion": bool(ref_px[z] > 0), "ref_area_mm2": float(ref_px[z]) * pixel_mm2,
                    "pred_area_mm2": area, "score": score})
    return out


class MaskFileError(ValueError):
    """Two mask files that cannot be compared (unreadable, not 3-D, not binary, or on different grids)."""


GRID_ATOL_MM = 1e-3
"""Two masks are on one grid when shape matches and spacing, origin and direction agree within this."""


def _grid_text(v: Any) -> str:
    d = np.round(np.asarray(v.direction), 4).reshape(-1).tolist()
    return (f"shape {v.shape_xyz}, spacing {tuple(round(x, 4) for x in v.spacing)} mm, "
            f"origin {tuple(round(x, 3) for x in v.origin)} mm, direction {d}")


def read_mask(path: str | Path) -> Any:
    """A mask file (NIfTI or MetaImage) as a Volume whose array is 0/1 uint8.

    Any non-zero value is lesion (label maps are binarised, as Anima does); a floating-point
    image with values other than 0 and 1 (a probability map) is refused.

    Raises:
        MaskFileError: unreadable, 4-D, or not a mask; the message names the file.
    """
    from pipeline.io.readers import read_volume
    from pipeline.io.readers.errors import ReaderError

    try:
        vol = read_volume(path)
    except ReaderError as exc:
        raise MaskFileError(str(exc)) from exc
    if vol.is_4d:
        raise MaskFileError(f"{path}: a 4-D image ({vol.array.shape[0]} volumes), not a lesion mask")
    arr = vol.array
    if np.issubdtype(arr.dtype, np.floating):
        values = np.unique(arr[arr != 0])
        if values.size and not np.all(values == 1):
            raise MaskFileError(f"{path}: not a binary mask (values between {float(values.min()):.3g} and {float(values.max()):.3g}); "
                                "threshold it first (e.g. probability > 0.5)")
    return vol.with_array((arr != 0).astype(np.uint8))


def compare_files(ref_path: str | Path, pred_path: str | Path, rules: Sequence[DetectionRule] = RULES) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """:func:`compare_masks` of two mask files (NIfTI or MetaImage) on one grid.

    Raises:
        MaskFileError: a file cannot be read as a mask, or the two grids differ (the message
            names both files and both grids; nothing is resampled behind the user's back).
    """
    ref, pred = read_mask(ref_path), read_mask(pred_path)
    if not ref.same_grid(pred, atol=GRID_ATOL_MM):
        raise MaskFileError(f"{ref_path} and {pred_path} are not on the same grid:\n  {ref_path}: {_grid_text(ref)}\n"
                            f"  {pred_path}: {_grid_text(pred)}\nresample the prediction onto the reference grid first")
    return compare_masks(ref.array, pred.array, ref.spacing, rules)


# ------------------------------------------------------------------------------ cohort
def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve: the probability that a positive outscores a negative (ties
    count one half), from the rank sum (Mann-Whitney U). NaN unless both classes occur.

    Example:
        >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    from scipy.stats import rankdata

    y = np.asarray(labels, bool)
    s = np.asarray(scores, float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tversky_index(ref: np.ndarray, pred: np.ndarray, fn_weight: float = 0.7, fp_weight: float = 0.3) -> float:
    """Tversky index TI = TP / (TP + ``fn_weight`` FN + ``fp_weight`` FP) of two binary masks (Abraham &
    Khan 2019: alpha 0.7 on false negatives, beta 0.3 on false positives); 0.5 / 0.5 is Dice. NaN
    when both masks are empty.

    Example:
        >>> ref = np.array([1, 1, 1, 1, 0, 0], bool); pred = np.array([1, 1, 1, 0, 1, 0], bool)
        >>> round(tversky_index(ref, pred), 4)  # 3 / (3 + 0.7 * 1 + 0.3 * 1)
        0.75
        >>> round(tversky_index(ref, pred, 0.5, 0.5), 4)  # Dice: 2 * 3 / (4 + 4)
        0.75
    """
    r, p = np.asarray(ref) != 0, np.asarray(pred) != 0
    tp = float(np.count_nonzero(r & p))
    fn = float(np.count_nonzero(r & ~p))
    fp = float(np.count_nonzero(~r & p))
    den = tp + fn_weight * fn + fp_weight * fp
    return float("nan") if den == 0 else tp / den


def presence_metrics(labels: Sequence[bool], scores: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """"Is there a lesion?" as a classification: ROC AUC of ``scores`` against ``labels`` and, at the
    operating point ``score >= threshold``, sensitivity, specificity and counts (NaN where a class is absent).

    Example:
        >>> m = presence_metrics([1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.1, 0.0])
        >>> m["auc"], m["sensitivity"], round(m["specificity"], 4), m["tp"], m["fp"]
        (0.8333333333333334, 0.5, 0.6667, 1, 1)
    """
    y = np.asarray(labels, bool)
    s = np.asarray(scores, float)
    hit = s >= threshold
    tp, fn = int((y & hit).sum()), int((y & ~hit).sum())
    tn, fp = int((~y & ~hit).sum()), int((~y & hit).sum())
    return {"auc": roc_auc(y, s), "threshold": float(threshold), "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "accuracy": _ratio(tp + tn, len(y)), "tp": tp, "fn": fn, "tn": tn, "fp": fp, "n_positive": int(y.sum()), "n_negative": int((~y).sum())}


def slice_presence(ref: np.ndarray, prob: np.ndarray, threshold: float = 0.5, fn_weight: float = 0.7, fp_weight: float = 0.3) -> list[dict[str, Any]]:
    """Per axial slice (array axis 0) of a reference mask and a lesion probability ``(Z, Y, X)``: whether
    the reference has lesion, the slice score (its maximum probability), the predicted and reference
    areas (voxels) at ``threshold``, and on slices with lesion the Dice and Tversky index of the slice."""
    r = np.asarray(ref) != 0
    p = np.asarray(prob, np.float32)
    if r.shape != p.shape:
        raise ValueError(f"reference {r.shape} and probability {p.shape} differ in shape")
    rows = []
    for z in range(r.shape[0]):
        rz, pz = r[z], p[z] >= threshold
        lesion = bool(rz.any())
        rows.append({"z": z, "has_lesion": lesion, "score": float(p[z].max(initial=0.0)), "ref_voxels": int(rz.sum()),
                     "pred_voxels": int(pz.sum()), "tp_voxels": int((rz & pz).sum()),
                     "dice": tversky_index(rz, pz, 0.5, 0.5) if lesion else float("nan"),
                     "tversky": tversky_index(rz, pz, fn_weight, fp_weight) if lesion else float("nan")})
    return rows


def _nan(values: Any, fn: Any) -> float:
    arr = np.asarray(values, float)
    arr = arr[np.isfinite(arr)]
    return float(fn(arr)) if arr.size else float("nan")


def bland_altman(ref: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    """Bland-Altman agreement of two measurements (same units): ``bias`` = mean(pred - ref),
    ``sd`` of the differences (n - 1), limits ``loa_low`` / ``loa_high`` = bias ∓ 1.96 sd."""
    d = np.asarray(pred, float) - np.asarray(ref, float)
    if d.size == 0:
        return {"bias": float("nan"), "sd": float("nan"), "loa_low": float("nan"), "loa_high": float("nan")}
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
    return {"bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def _correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    return float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0])


def cohort_summary(cases: Any, slices: Any = None, rules: Sequence[DetectionRule] = RULES) -> dict[str, Any]:
    """The cohort's figures from a case table (and a slice table) as :func:`evaluate_model` builds them.

    Dice and HD95 are taken over cases whose reference has lesions (on a lesion-free case Dice is
    0 or 1 and says nothing of segmentation); volume agreement over every case with a
    reference; lesion counts pooled over cases.
    """
    ref = cases[cases["has_reference"].astype(bool)] if len(cases) else cases
    lesional = ref[ref["has_lesion"].astype(bool)] if len(ref) else ref
    pearson, spearman = _correlations(ref["volume_ref_ml"], ref["volume_pred_ml"]) if len(ref) else (float("nan"), float("nan"))
    ba = bland_altman(ref["volume_ref_ml"], ref["volume_pred_ml"]) if len(ref) else bland_altman([], [])
    out: dict[str, Any] = {
        "n_cases": int(len(ref)),
        "n_with_lesions": int(len(lesional)),
        "n_lesion_free": int(len(ref) - len(lesional)),
        "n_train_cases": int((ref["split"] == "train").sum()) if "split" in ref and len(ref) else 0,
        "dice_mean": _nan(lesional.get("dice", []), np.mean),
        "dice_median": _nan(lesional.get("dice", []), np.median),
        "dice_sd": _nan(lesional.get("dice", []), lambda a: a.std(ddof=1) if a.size > 1 else float("nan")),
        "hd95_mean_mm": _nan(lesional.get("hd95_mm", []), np.mean),
        "hd95_median_mm": _nan(lesional.get("hd95_mm", []), np.median),
        "abs_volume_error_ml_mean": _nan(ref.get("abs_volume_error_ml", []), np.mean),
        "rel_volume_error_pct_mean": _nan(ref.get("rel_volume_error_pct", []), np.mean),
        "abs_rel_volume_error_pct_mean": _nan(np.abs(np.asarray(ref.get("rel_volume_error_pct", []), float)), np.mean),
        "volume_pearson_r": pearson,
        "volume_spearman_rho": spearman,
        "bland_altman_bias_ml": ba["bias"],
        "bland_altman_loa_low_ml": ba["loa_low"],
        "bland_altman_loa_high_ml": ba["loa_high"],
    }
    for rule in rules:
        p = rule.name
        n_r, n_p = int(ref[f"{p}_ref_lesions"].sum()), int(ref[f"{p}_pred_lesions"].sum())
        tp_r, tp_p = int(ref[f"{p}_tp_ref"].sum()), int(ref[f"{p}_tp_pred"].sum())
        sens, prec = _ratio(tp_r, n_r), _ratio(tp_p, n_p)
        if rule.f1 == "isles":
            fp, fn = n_p - tp_p, n_r - tp_r
            f1 = 1.0 if tp_r + fp + fn == 0 else tp_r / (tp_r + (fp + fn) / 2)
        elif n_r == 0 and n_p == 0:
            f1 = float("nan")
        elif n_r == 0 or n_p == 0 or sens + prec == 0:
            f1 = 0.0
        else:
            f1 = 2 * sens * prec / (sens + prec)
        out.update({f"{p}_ref_lesions": n_r, f"{p}_pred_lesions": n_p, f"{p}_tp_ref": tp_r, f"{p}_tp_pred": tp_p,
                    f"{p}_sensitivity": sens, f"{p}_precision": prec, f"{p}_f1": float(f1),
                    f"{p}_f1_case_mean": _nan(ref[f"{p}_f1"], np.mean)})
    kinds = sorted(set(ref["case_score_kind"])) if len(ref) else []
    out["case_score_kind"] = ",".join(kinds) or "predicted_volume_ml"
    out["case_auc"] = roc_auc(ref["has_lesion"].astype(bool), ref["case_score"]) if len(ref) else float("nan")
    if slices is not None and len(slices):
        sl = slices[slices["case_id"].isin(set(ref["case_id"]))]
        out["slice_auc"] = roc_auc(sl["has_lesion"].astype(bool), sl["score"])
        out["n_slices"] = int(len(sl))
    else:
        out["slice_auc"], out["n_slices"] = float("nan"), 0
    out["rules_json"] = json.dumps([asdict(r) for r in rules], sort_keys=True)
    return out


# ------------------------------------------------------------------------------ store
def read_truth(truth_cases_csv: str | Path) -> Any:
    """The truth table (CSV with ``session_dir``, ``total_volume_ml``, ``lesion_count``) from a path or URL."""
    import pandas as pd

    blob = read_bytes(truth_cases_csv)
    if blob is None:
        raise FileNotFoundError(f"truth table {location(truth_cases_csv)} not found; give the truth_cases.csv written "
                                "with the phantom cohort (truth/truth_cases.csv), or no truth table")
    return pd.read_csv(io.BytesIO(blob))


@dataclass
class Evaluation:
    """Everything :func:`evaluate_model` found: three tables (pandas) and the cohort's figures."""

    model_version: str
    cases: Any
    lesions: Any
    slices: Any
    cohort: dict[str, Any]
    paths: dict[str, dict[str, str]] = field(default_factory=dict)


UNIT_METRICS = ("voxel_volume_mm3", "hd95_mm", "volume_ref_ml", "volume_pred_ml", "volume_diff_ml", "abs_volume_error_ml",
                "predicted_volume_ml")
"""Figures in mm, mm³ or mL: NaN for a case whose geometry is unknown (``Geometry.source == "unknown"``:
a slice stack without a configured spacing), whose sizes are in voxels only (``voxels_ref``,
``voxels_pred``); the relative volume error, Dice and the lesion-wise figures need no unit (the
size floor then counts unit voxels)."""


def evaluate_case(
    store_root: str | Path,
    case_id: str,
    model_version: str,
    rules: Sequence[DetectionRule] = RULES,
    probability: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]] | None:
    """One scored case of a store: ``(case row, lesion rows, slice rows)``; None when the case
    holds no prediction of ``model_version``.

    ``probability`` (optional) is ``{"max": float, "slice_max": [float per slice]}`` from the
    model's probability map; the case and slice scores are then probabilities instead of the
    predicted volume and area. A case without a reference label gets a row with
    ``has_reference`` False and NaN figures.
    """
    from pipeline.lesions.tables import mask_of

    pred = mask_of(store_root, case_id, model_version)
    if pred is None:
        return None
    meta = read_case_meta(store_root, case_id)
    label = mask_of(store_root, case_id, None)
    spacing = tuple(float(s) for s in meta.geometry.spacing)
    ids = {"case_id": case_id, "subject": meta.subject, "session": meta.session, "model_version": model_version}
    kind = "max_probability" if probability is not None else "predicted_volume_ml"
    if label is None:
        empty = np.zeros(pred.shape, np.uint8)
        metrics, _ = compare_masks(empty, pred, spacing, rules)
        nan_keys = [k for k, v in metrics.items() if isinstance(v, float) and k not in ("voxel_volume_mm3", "volume_pred_ml", "predicted_volume_ml")]
        metrics.update({k: float("nan") for k in nan_keys})
        metrics.update({k: 0 for k in metrics if k.endswith(("_ref_lesions", "_tp_ref", "_tp_pred"))})
        lesions: list[dict[str, Any]] = []
        slices: list[dict[str, Any]] = []
    else:
        metrics, lesions = compare_masks(label, pred, spacing, rules)
        slices = slice_rows(label, pred, spacing, probability["slice_max"] if probability is not None else None)
    known = meta.geometry.source != "unknown"  # a slice stack without a configured spacing: no mm, mm³ or mL
    n_ref, n_pred = (int(label.sum()) if label is not None else 0), int(pred.sum())
    if not known:
        metrics.update({k: float("nan") for k in UNIT_METRICS})
        if probability is None:
            kind = "predicted_voxels"
    score = float(probability["max"]) if probability is not None else (metrics["predicted_volume_ml"] if known else float(n_pred))
    row = {**ids, "has_reference": label is not None, **{k: v for k, v in metrics.items() if k != "predicted_volume_ml"},
           "voxels_ref": n_ref, "voxels_pred": n_pred, "geometry_source": meta.geometry.source,
           "case_score": score, "case_score_kind": kind}
    if label is None:
        row["has_lesion"] = False
    lesion_rows = [{"case_id": case_id, "model_version": model_version, **r} for r in lesions]
    slice_out = [{"case_id": case_id, "model_version": model_version, **r} for r in slices]
    return row, lesion_rows, slice_out


def _truth_columns(store_root: str | Path, case_id: str, truth: Any, pred_volume_ml: float | None, key: bytes | None = None) -> dict[str, Any]:
    """Truth-table columns of a case: its row is the one whose ``session_dir`` (relative to the
    ingested folder) holds the case's source files (lineage; the sealed paths opened with ``key``)."""
    sources = source_relpaths(read_case_meta(store_root, case_id), key)
    match = truth[[any(s.startswith(str(d).rstrip("/") + "/") for s in sources) for d in truth["session_dir"]]]
    if len(match) != 1:
        return {}
    t = match.iloc[0]
    out: dict[str, Any] = {"truth_volume_ml": float(t["total_volume_ml"]), "truth_lesions": int(t["lesion_count"])}
    if pred_volume_ml is not None and out["truth_volume_ml"] > 0:
        out["volume_error_pct"] = round(100 * (pred_volume_ml - out["truth_volume_ml"]) / out["truth_volume_ml"], 1)
    return out


def model_info_in_store(store_root: str | Path, model_version: str) -> dict[str, Any] | None:
    """``models/<model_version>/model.json`` of the store as a dict; None when the model is not there."""
    blob = read_bytes(store_root, f"{MODELS}/{model_version}/model.json")
    if blob is None:
        return None
    try:
        info = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def case_split(case_id: str, model_info: dict[str, Any] | None) -> str:
    """``train`` / ``validation`` when the model's ``model.json`` lists the case, ``unseen`` when
    it lists others, ``unknown`` without a ``model.json``."""
    if not model_info:
        return "unknown"
    if case_id in (model_info.get("train_case_ids") or ()):
        return "train"
    if case_id in (model_info.get("val_case_ids") or ()):
        return "validation"
    return "unseen"


def evaluate_model(
    store_root: str | Path,
    model_version: str,
    truth_cases_csv: str | Path | None = None,
    case_ids: Sequence[str] | None = None,
    rules: Sequence[DetectionRule] = RULES,
    probabilities: dict[str, dict[str, Any]] | None = None,
    rows: Sequence[tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]] | None = None,
    model_info: dict[str, Any] | None = None,
    key: bytes | None = None,
) -> Evaluation:
    """Evaluate every scored case of ``model_version`` (or ``case_ids``); nothing is written.

    Args:
        truth_cases_csv: optional truth table (the phantom's ``truth/truth_cases.csv``): adds
            ``truth_volume_ml``, ``truth_lesions`` and ``volume_error_pct`` (the predicted volume
            of the ``case_volumes`` table against the analytic truth).
        probabilities: ``case_id → {"max", "slice_max"}`` from the probability maps, to score
            cases and slices by probability (see :func:`evaluate_case`).
        rows: per-case results already computed (:func:`evaluate_case`, e.g. by a flow's tasks);
            the store is then read only for the truth columns.
        model_info: the model's ``model.json`` (its training and validation cases give each case's
            ``split``); default: the store's ``models/<model_version>/model.json`` if there.
        key: the pseudonymisation key that opens the store's sealed source paths, to match truth
            rows (default: the environment's, :func:`pipeline.core.config.pseudonym_key`).
    """
    import pandas as pd

    from storage_schemas.models import EvaluationCaseRow, EvaluationLesionRow, EvaluationSliceRow

    if rows is None:
        ids = list(case_ids) if case_ids is not None else list_cases(store_root)
        found = [evaluate_case(store_root, c, model_version, rules, (probabilities or {}).get(c)) for c in ids]
        rows = [r for r in found if r is not None]
    info = model_info if model_info is not None else model_info_in_store(store_root, model_version)
    case_rows = [EvaluationCaseRow(**{k: v for k, v in r[0].items() if k in EvaluationCaseRow.model_fields},
                                   split=case_split(r[0]["case_id"], info)).model_dump() for r in rows]
    lesion_rows = [EvaluationLesionRow(**x).model_dump() for r in rows for x in r[1]]
    slice_rows_ = [EvaluationSliceRow(**x).model_dump() for r in rows for x in r[2]]
    cases = pd.DataFrame(case_rows, columns=list(EvaluationCaseRow.model_fields))
    lesions = pd.DataFrame(lesion_rows, columns=list(EvaluationLesionRow.model_fields))
    slices = pd.DataFrame(slice_rows_, columns=list(EvaluationSliceRow.model_fields))
    cohort = {"model_version": model_version, **cohort_summary(cases, slices, rules)}

    # the columns evaluate() has always returned: the score table's volume and count, the truth table's
    volumes = read_table(store_root, "case_volumes")
    if volumes is not None:
        volumes = volumes[volumes["model_version"] == model_version].set_index("case_id")
    truth = read_truth(truth_cases_csv) if truth_cases_csv else None
    extra = []
    for cid in cases["case_id"]:
        e: dict[str, Any] = {}
        if volumes is not None and cid in volumes.index:
            ml = volumes.loc[cid, "total_volume_ml"]  # None for a case of unknown geometry (schema 1.6)
            e["pred_volume_ml"] = float("nan") if ml is None or pd.isna(ml) else float(ml)
            e["pred_lesions"] = int(volumes.loc[cid, "lesion_count"])
        if truth is not None:
            e.update(_truth_columns(store_root, cid, truth, e.get("pred_volume_ml"), key))
        extra.append(e)
    if extra and any(extra):
        cases = pd.concat([cases, pd.DataFrame(extra, index=cases.index)], axis=1)
    return Evaluation(model_version, cases, lesions, slices, cohort)


def _merge(store_root: str | Path, name: str, model_version: str, new: Any) -> Any:
    """``new`` replaces every row of ``model_version`` in table ``name``; other versions stay."""
    import pandas as pd

    old = read_table(store_root, name)
    if old is None or not len(old):
        return new.reset_index(drop=True)
    keep = old[old["model_version"] != model_version]
    merged = pd.concat([keep, new], ignore_index=True) if len(new) else keep
    sort = [c for c in ("model_version", "case_id", "rule", "side", "lesion_id", "z") if c in merged.columns]
    return merged.sort_values(sort).reset_index(drop=True)


def write_evaluation(store_root: str | Path, evaluation: Evaluation) -> dict[str, dict[str, str]]:
    """Write the four evaluation tables (Parquet + CSV under ``tables/``); returns their paths.

    Only the schema's columns go into ``evaluation_cases`` (the truth-table columns stay in the
    returned frame). Rows of other model versions are kept.
    """
    import pandas as pd

    from storage_schemas.models import EvaluationCaseRow, EvaluationCohortRow

    mv = evaluation.model_version
    cohort = pd.DataFrame([EvaluationCohortRow(**evaluation.cohort).model_dump()], columns=list(EvaluationCohortRow.model_fields))
    frames = {
        CASE_TABLE: evaluation.cases[list(EvaluationCaseRow.model_fields)],
        LESION_TABLE: evaluation.lesions,
        SLICE_TABLE: evaluation.slices,
        COHORT_TABLE: cohort,
    }
    paths = {name: write_table(store_root, name, _merge(store_root, name, mv, df)) for name, df in frames.items()}
    evaluation.paths = paths
    return paths


def evaluate(store_root: str | Path, model_version: str, truth_cases_csv: str | Path | None = None, **kwargs: Any) -> Any:
    """One row per scored case (pandas): Dice, HD95, volumes, lesion-wise detection by both
    rules, case score, and (as before) ``pred_volume_ml``, ``pred_lesions`` from the score
    tables and ``truth_volume_ml``, ``truth_lesions``, ``volume_error_pct`` from a truth table.

    Nothing is written; :func:`evaluate_model` + :func:`write_evaluation` (or the ``evaluate``
    flow) also give the cohort's figures and the tables. Keyword arguments go to
    :func:`evaluate_model`.
    """
    return evaluate_model(store_root, model_version, truth_cases_csv, **kwargs).cases


def nan_to_none(value: Any) -> Any:
    """NaN → None, for JSON output."""
    return None if isinstance(value, float) and math.isnan(value) else value


def write_truth_table(store_root: str | Path, sessions: dict[str, str], out_csv: str | Path) -> Path:
    """A truth table of the store's own labels, as :func:`evaluate` reads it: one row per
    ``{session_dir: case_id}`` of ``sessions`` with ``total_volume_ml`` and ``lesion_count`` of the
    case's stored label (the expert mask it was ingested with), so that :func:`evaluate` reports
    the volume error against it. Returns ``out_csv``."""
    import pandas as pd

    from pipeline.lesions.components import lesion_table
    from pipeline.lesions.tables import mask_of
    from pipeline.store import volume_from_geometry

    rows = []
    for session_dir, case_id in sessions.items():
        label = mask_of(store_root, case_id, None)
        summary, _ = lesion_table(volume_from_geometry(read_case_meta(store_root, case_id).geometry, label))
        rows.append({"session_dir": session_dir, "total_volume_ml": summary["total_volume_ml"], "lesion_count": summary["lesion_count"]})
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)
    return out
