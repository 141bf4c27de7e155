"""The evaluation rules, checked by hand and against independent computations.

Hand-worked cases use 1 mm voxels (1 voxel = 1 mm³, so the MSSEG-1 size floor "more than
3 mm³" keeps lesions of 4 voxels or more). The independent computations are a brute-force
matcher written here from the rules' words (``scipy.ndimage.label`` instead of cc3d, Python
sets of voxels instead of an overlap table), MONAI's ``compute_hausdorff_distance`` for HD95,
and the pairwise definition of ROC AUC.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage

from pipeline.lesions.components import hausdorff95_mm, min_lesion_voxels
from pipeline.lesions.evaluation import (
    ISLES22,
    MSSEG1,
    DetectionRule,
    bland_altman,
    cohort_summary,
    compare_masks,
    lesion_detection,
    roc_auc,
    slice_rows,
)


def box(shape=(12, 16, 16)) -> np.ndarray:
    return np.zeros(shape, np.uint8)


# ------------------------------------------------------------------------------ hand-worked
def test_a_lesion_covered_5_percent_is_missed_15_percent_is_found():
    ref = box()
    ref[2:6, 2:7, 2:7] = 1  # one lesion of 4 x 5 x 5 = 100 voxels
    for inside, detected in ((5, False), (15, True)):
        pred = box()
        pred[tuple(np.argwhere(ref)[:inside].T)] = 1  # the first voxels in raster order: one 6-connected piece
        det = lesion_detection(ref, pred, 1.0, MSSEG1)
        assert (det.ref_lesions, det.pred_lesions) == (1, 1)
        assert det.ref_rows[0]["overlap_fraction"] == pytest.approx(inside / 100)
        assert det.tp_ref == int(detected) and det.sensitivity == float(detected)
        # the symmetric test: the prediction lies wholly inside, but 85-95 % of the reference
        # lesion lies outside it (more than beta = 70 %), so it is not a true-positive prediction
        assert det.tp_pred == 0 and det.precision == 0.0 and det.f1 == 0.0
    # covering 40 %: 60 % of the reference outside the prediction is within beta: both ways
    pred = box()
    pred[tuple(np.argwhere(ref)[:40].T)] = 1
    det = lesion_detection(ref, pred, 1.0, MSSEG1)
    assert (det.tp_ref, det.tp_pred, det.f1) == (1, 1, 1.0)


def test_coverage_must_be_more_than_10_percent():
    ref = box()
    ref[2:4, 2:6, 2:7] = 1  # 40 voxels
    pred = box()
    pred[2, 2, 2:6] = 1  # 4 voxels = 10 %: not more than alpha
    assert lesion_detection(ref, pred, 1.0, MSSEG1).tp_ref == 0
    pred[2, 2, 6] = 1  # 5 voxels = 12.5 %
    assert lesion_detection(ref, pred, 1.0, MSSEG1).tp_ref == 1


def test_a_prediction_spilling_80_percent_outside_does_not_detect():
    ref = box()
    ref[2:4, 2:4, 2:7] = 1  # 2 x 2 x 5 = 20 voxels
    spill = box()
    spill[2:4, 2:4, 2:12] = 1  # 40 voxels: the 20 of the lesion + 20 outside
    spill[4, 2:4, 2:7] = 1  # + 10 outside: 50 voxels, 30 outside = 60 %
    det = lesion_detection(ref, spill, 1.0, MSSEG1)
    assert det.pred_rows[0]["voxels"] == 50 and det.pred_rows[0]["outside_fraction"] == pytest.approx(0.6)
    assert det.tp_ref == 1
    spill[4:6, 2:4, 7:12] = 1  # + 20 outside: 70 voxels, 50 outside = 71 % > 70 %
    det = lesion_detection(ref, spill, 1.0, MSSEG1)
    assert det.pred_rows[0]["voxels"] == 70 and det.pred_rows[0]["outside_fraction"] == pytest.approx(50 / 70)
    assert det.tp_ref == 0 and det.sensitivity == 0.0
    # the other way round: the prediction is covered 20/70 > 10 % by the reference, and the
    # reference lesion lies wholly inside it (0 % outside), so the prediction is a true positive
    assert det.tp_pred == 1 and det.precision == 1.0 and det.f1 == 0.0
    spill = box()
    spill[2:4, 2:4, 2:7] = 1
    spill[2:6, 4:6, 2:12] = 1  # 20 on the lesion + 80 outside: 80 % outside
    det = lesion_detection(ref, spill, 1.0, MSSEG1)
    assert det.pred_rows[0]["outside_fraction"] == pytest.approx(0.8) and det.tp_ref == 0


def test_outside_may_be_exactly_70_percent():
    ref = box((4, 6, 24))
    ref[1, 1, 0:6] = 1  # 6 voxels
    pred = box((4, 6, 24))
    pred[1, 1, 0:6] = 1
    pred[1, 2, 0:14] = 1  # 20 voxels, 14 outside = 70 %: "no more than 70 %"
    assert lesion_detection(ref, pred, 1.0, MSSEG1).tp_ref == 1
    pred[1, 2, 14] = 1  # 21 voxels, 15 outside = 71 %
    assert lesion_detection(ref, pred, 1.0, MSSEG1).tp_ref == 0
    assert lesion_detection(ref, pred, 1.0, DetectionRule("msseg", 6, 3.0, max_outside=0.75)).tp_ref == 1


def test_gamma_walk_checks_the_largest_overlaps_until_65_percent():
    ref = box((4, 8, 24))
    ref[1:3, 1:6, 1:11] = 1  # 2 x 5 x 10 = 100 voxels, x 1..10
    pred = box((4, 8, 24))
    pred[1:3, 1:6, 1:7] = 1  # A: x 1..6, 60 voxels, all inside
    pred[1:3, 1:6, 8:19] = 1  # B: x 8..18, 30 inside (x 8..10) + 80 outside = 73 % outside
    det = lesion_detection(ref, pred, 1.0, MSSEG1)
    assert [r["voxels"] for r in det.pred_rows] == [110, 60]
    # A makes up 60/90 = 67 % >= 65 % of the covered voxels: B is never checked
    assert det.tp_ref == 1 and det.tp_pred == 2
    pred[1:3, 1:6, 6] = 0  # A: x 1..5, 50 voxels: 50/80 = 62.5 % < 65 %, so B is checked, and fails
    det = lesion_detection(ref, pred, 1.0, MSSEG1)
    assert det.ref_rows[0]["overlap_fraction"] == pytest.approx(0.8)
    assert det.tp_ref == 0 and det.tp_pred == 2


def test_a_2_voxel_lesion_is_under_the_size_floor():
    ref = box()
    ref[1:4, 1:4, 1:4] = 1  # 27 voxels
    ref[8, 8, 8:10] = 1  # 2 voxels (2 mm³ <= 3 mm³)
    pred = ref.copy()
    pred[8, 12, 12:14] = 1  # a 2-voxel false positive
    msseg = lesion_detection(ref, pred, 1.0, MSSEG1)
    assert (msseg.ref_lesions, msseg.pred_lesions, msseg.tp_ref, msseg.tp_pred) == (1, 1, 1, 1)
    assert msseg.f1 == 1.0
    isles = lesion_detection(ref, pred, 1.0, ISLES22)  # no floor: 2 + 3 lesions, one false positive
    assert (isles.ref_lesions, isles.pred_lesions, isles.tp_ref, isles.tp_pred) == (2, 3, 2, 2)
    assert isles.f1 == pytest.approx(2 / (2 + 0.5))  # TP / (TP + (FP + FN) / 2)
    # a prediction made of small pieces only covers nothing under MSSEG-1 (removed pieces are background)
    pieces = box()
    pieces[1, 1, 1:3] = 1
    pieces[3, 3, 1:3] = 1
    msseg = lesion_detection(ref, pieces, 1.0, MSSEG1)
    assert (msseg.pred_lesions, msseg.tp_ref, msseg.ref_rows[0]["overlap_fraction"]) == (0, 0, 0.0)
    assert lesion_detection(ref, pieces, 1.0, ISLES22).tp_ref == 1


def test_size_floor_is_strictly_more_than_3_mm3_in_physical_units():
    # 0.5 mm³ voxels: 6 voxels = 3.0 mm³ (dropped), 7 voxels = 3.5 mm³ (kept)
    assert min_lesion_voxels(3.0, 0.5) == 7
    ref = box()
    ref[2, 2, 0:6] = 1
    ref[6, 6, 0:7] = 1
    det = lesion_detection(ref, ref, 0.5, MSSEG1)
    assert det.ref_lesions == 1 and det.ref_rows[0]["volume_mm3"] == 3.5
    # at 1 mm voxels the 3-voxel lesion is dropped, the 4-voxel one kept
    ref = box()
    ref[2, 2, 0:3] = 1
    ref[6, 6, 0:4] = 1
    assert lesion_detection(ref, ref, 1.0, MSSEG1).ref_lesions == 1


def test_6_versus_26_connectivity():
    ref = box()
    ref[2:4, 2:4, 2:4] = 1
    ref[4:6, 4:6, 4:6] = 1  # touches the first only at a corner
    pred = box()
    pred[2:4, 2:4, 2:4] = 1  # finds the first cube only
    msseg = lesion_detection(ref, pred, 1.0, MSSEG1)  # 6-connected: two lesions, one found
    assert (msseg.ref_lesions, msseg.tp_ref, msseg.sensitivity) == (2, 1, 0.5)
    assert msseg.f1 == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    isles = lesion_detection(ref, pred, 1.0, ISLES22)  # 26-connected: one lesion, touched
    assert (isles.ref_lesions, isles.tp_ref, isles.f1) == (1, 1, 1.0)
    # the same 26-connected lesion under MSSEG's thresholds: 50 % covered, nothing outside
    rule26 = DetectionRule("msseg", 26, 3.0)
    assert lesion_detection(ref, pred, 1.0, rule26).tp_ref == 1


def test_empty_masks_and_one_sided_cases():
    empty = box()
    lesion = box()
    lesion[2:4, 2:4, 2:4] = 1
    both = lesion_detection(empty, empty, 1.0, MSSEG1)
    assert (both.ref_lesions, both.pred_lesions) == (0, 0)
    assert math.isnan(both.sensitivity) and math.isnan(both.precision) and math.isnan(both.f1)
    missed = lesion_detection(lesion, empty, 1.0, MSSEG1)
    assert missed.sensitivity == 0.0 and math.isnan(missed.precision) and missed.f1 == 0.0
    spurious = lesion_detection(empty, lesion, 1.0, MSSEG1)
    assert math.isnan(spurious.sensitivity) and spurious.precision == 0.0 and spurious.f1 == 0.0
    assert lesion_detection(empty, empty, 1.0, ISLES22).f1 == 1.0  # ISLES'22's empty value


def test_compare_masks_voxel_figures_by_hand():
    ref = box((10, 10, 10))
    ref[2:4, 2:4, 2:4] = 1  # 8 voxels
    pred = box((10, 10, 10))
    pred[2:4, 2:4, 3:5] = 1  # 8 voxels, 4 shared
    m, rows = compare_masks(ref, pred, spacing_xyz=(0.5, 0.5, 2.0))  # 0.5 mm³ voxels
    assert m["dice"] == pytest.approx(0.5)
    assert m["volume_ref_ml"] == pytest.approx(0.004) and m["volume_pred_ml"] == pytest.approx(0.004)
    assert m["volume_diff_ml"] == 0.0 and m["rel_volume_error_pct"] == 0.0
    assert m["hd95_mm"] == pytest.approx(0.5)  # one voxel along x, 0.5 mm
    assert m["msseg_ref_lesions"] == 1 and m["isles_ref_lesions"] == 1  # 4 mm³ > 3 mm³
    assert {(r["rule"], r["side"]) for r in rows} == {("msseg", "reference"), ("msseg", "prediction"),
                                                      ("isles", "reference"), ("isles", "prediction")}
    empty_ref, _ = compare_masks(box(), box(), (1, 1, 1))
    assert empty_ref["hd95_mm"] == 0.0 and math.isnan(empty_ref["rel_volume_error_pct"]) and not empty_ref["has_lesion"]


# ------------------------------------------------------------------------------ independent computations
def brute_force(ref, pred, voxel_mm3, connectivity, min_mm3, any_overlap, alpha=0.10, beta=0.70, gamma=0.65):
    """The detection rules as their words say them, with sets of voxels (not an overlap table)."""
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)

    def lesions(mask):
        labels, n = ndimage.label(mask != 0, structure=structure)
        found = []
        for k, sl in enumerate(ndimage.find_objects(labels), start=1):
            zyx = np.argwhere(labels[sl] == k) + [s.start for s in sl]
            if len(zyx) * voxel_mm3 > min_mm3:  # lesions of min_mm3 or less are ignored
                found.append(frozenset(map(tuple, zyx)))
        return found

    ref_l, pred_l = lesions(ref), lesions(pred)
    ref_all = set().union(*ref_l)
    pred_all = set().union(*pred_l)

    def detected(lesion, others, others_all, own_all):
        covered = lesion & others_all
        if any_overlap:
            return len(covered) > 0
        if not len(covered) / len(lesion) > alpha:
            return False
        contributors = sorted((o for o in others if o & lesion), key=lambda o: (-len(o & lesion), -len(o), min(o)))
        share = 0.0
        for o in contributors:
            if share >= gamma:
                break
            if len(o - own_all) / len(o) > beta:  # the contributor's voxels outside this side's lesions
                return False
            share += len(o & lesion) / len(covered)
        return True

    tp_ref = sum(detected(r, pred_l, pred_all, ref_all) for r in ref_l)
    tp_pred = sum(detected(p, ref_l, ref_all, pred_all) for p in pred_l)
    return len(ref_l), len(pred_l), tp_ref, tp_pred


def random_pair(rng, shape=(14, 20, 20)):
    """A reference of random blobs and a prediction made of shifted, grown, shrunk, missing and
    spurious versions of them."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    for _ in range(rng.integers(2, 7)):
        c = rng.uniform(0, shape)
        r = rng.uniform(0.7, 3.5, size=3)
        blob = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        ref |= blob
        what = rng.integers(0, 5)
        if what == 0:
            continue  # missed
        moved = np.roll(blob, tuple(rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
        if what == 1:
            moved = ndimage.binary_dilation(moved, iterations=int(rng.integers(1, 3)))
        elif what == 2:
            moved = ndimage.binary_erosion(moved)
        pred |= moved
    for _ in range(rng.integers(0, 3)):  # spurious
        c = rng.integers(0, shape)
        pred[c[0]: c[0] + rng.integers(1, 4), c[1]: c[1] + rng.integers(1, 4), c[2]: c[2] + rng.integers(1, 4)] = True
    return ref.astype(np.uint8), pred.astype(np.uint8)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 0.5, 2.0), (1.0, 1.0, 3.0)])
def test_rules_agree_with_a_brute_force_matcher_on_random_masks(spacing):
    rng = np.random.default_rng(12)
    voxel = float(np.prod(spacing))
    checked = {"msseg": 0, "isles": 0}
    for _ in range(40):
        ref, pred = random_pair(rng)
        for rule in (MSSEG1, ISLES22, DetectionRule("msseg", 26, 3.0), DetectionRule("isles", 6, 3.0, any_overlap=True, f1="isles")):
            det = lesion_detection(ref, pred, voxel, rule)
            expected = brute_force(ref, pred, voxel, rule.connectivity, rule.min_lesion_mm3, rule.any_overlap)
            assert (det.ref_lesions, det.pred_lesions, det.tp_ref, det.tp_pred) == expected, (rule, spacing)
            checked[rule.name] += det.ref_lesions
    assert checked["msseg"] > 50 and checked["isles"] > 50  # the draw really held lesions


def test_brute_force_disagrees_when_a_threshold_moves():
    """The comparison above has teeth: changing one threshold of the implementation changes its answers."""
    rng = np.random.default_rng(3)
    differ = 0
    for _ in range(40):
        ref, pred = random_pair(rng)
        loose = DetectionRule("msseg", 6, 3.0, max_outside=0.95)
        det = lesion_detection(ref, pred, 1.0, loose)
        differ += (det.tp_ref, det.tp_pred) != brute_force(ref, pred, 1.0, 6, 3.0, False)[2:]
    assert differ > 0


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.47, 3.0)])
def test_hd95_matches_monai(spacing):
    import torch
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(5)
    for _ in range(6):
        ref, pred = random_pair(rng)
        if not ref.any() or not pred.any():
            continue
        expected = compute_hausdorff_distance(torch.from_numpy(pred[None, None].astype(np.float32)),
                                              torch.from_numpy(ref[None, None].astype(np.float32)),
                                              include_background=True, percentile=95, spacing=list(spacing[::-1]))
        assert hausdorff95_mm(ref, pred, spacing) == pytest.approx(float(expected), rel=1e-5)


def test_roc_auc_against_pairs_and_by_hand():
    assert roc_auc([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2]) == 1.0
    assert roc_auc([1, 0], [0.5, 0.5]) == 0.5  # a tie counts one half
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60).astype(bool)
    s = np.round(rng.normal(size=60) + y, 1)  # rounded: ties
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a, b in itertools.product(s[y], s[~y])]
    assert roc_auc(y, s) == pytest.approx(np.mean(pairs))


def test_slices_and_cohort_figures():
    import pandas as pd

    ref = box((4, 6, 6))
    ref[1, 1:3, 1:3] = 1
    pred = box((4, 6, 6))
    pred[1, 1:3, 1:2] = 1
    pred[3, 0, 0] = 1
    rows = slice_rows(ref, pred, (0.5, 0.5, 3.0))
    assert [r["has_lesion"] for r in rows] == [False, True, False, False]
    assert [r["pred_area_mm2"] for r in rows] == [0.0, 0.5, 0.0, 0.25]
    assert roc_auc([r["has_lesion"] for r in rows], [r["score"] for r in rows]) == 1.0

    ba = bland_altman([1.0, 2.0, 3.0], [1.5, 2.0, 3.5])
    assert ba["bias"] == pytest.approx(1 / 3) and ba["loa_high"] == pytest.approx(1 / 3 + 1.96 * np.std([0.5, 0, 0.5], ddof=1))

    def case(cid, has_lesion, score, tp, n):
        return {"case_id": cid, "has_reference": True, "has_lesion": has_lesion, "dice": 0.5 if has_lesion else 1.0,
                "hd95_mm": 2.0 if has_lesion else 0.0, "volume_ref_ml": 1.0 * has_lesion, "volume_pred_ml": score,
                "abs_volume_error_ml": abs(score - has_lesion), "rel_volume_error_pct": float("nan"),
                "case_score": score, "case_score_kind": "predicted_volume_ml",
                **{f"{p}_{k}": v for p in ("msseg", "isles") for k, v in
                   (("ref_lesions", n), ("pred_lesions", n), ("tp_ref", tp), ("tp_pred", tp), ("f1", tp / n if n else 1.0))}}

    cases = pd.DataFrame([case("a", True, 0.9, 2, 4), case("b", True, 0.7, 1, 1), case("c", False, 0.1, 0, 0)])
    out = cohort_summary(cases)
    assert (out["n_cases"], out["n_with_lesions"], out["n_lesion_free"]) == (3, 2, 1)
    assert out["dice_mean"] == 0.5  # lesion-free case left out
    assert out["msseg_sensitivity"] == pytest.approx(3 / 5) and out["msseg_f1"] == pytest.approx(3 / 5)
    assert out["case_auc"] == 1.0


# ------------------------------------------------------------------------------ real lesion shapes
@pytest.mark.realdata
def test_real_masks_against_themselves_eroded_and_dilated(shared_data, patient="patient07"):
    """Real MS lesion shapes (native 0.8 x 0.47 x 0.47 mm grid): the implementation and the
    brute-force matcher agree on the mask against itself, eroded and dilated."""
    from pipeline.io.readers import read_volume

    vol = read_volume(shared_data / "open_ms" / "cross_sectional" / "raw" / patient / "consensus_gt.nii.gz")
    full = vol.array != 0
    sl = tuple(slice(max(0, s.start - 3), s.stop + 3) for s in ndimage.find_objects(full.astype(np.uint8))[0])
    ref = full[sl]
    voxel = vol.voxel_volume_mm3
    m, _ = compare_masks(ref, ref, vol.spacing)
    assert (m["dice"], m["hd95_mm"], m["msseg_sensitivity"], m["msseg_precision"]) == (1.0, 0.0, 1.0, 1.0)
    assert m["msseg_ref_lesions"] <= m["isles_ref_lesions"]
    for pred in (ndimage.binary_erosion(ref), ndimage.binary_dilation(ref, iterations=2)):
        for rule in (MSSEG1, ISLES22):
            det = lesion_detection(ref, pred, voxel, rule)
            assert (det.ref_lesions, det.pred_lesions, det.tp_ref, det.tp_pred) == brute_force(
                ref, pred, voxel, rule.connectivity, rule.min_lesion_mm3, rule.any_overlap)


# ------------------------------------------------------------------------------ tumour present (issue 13)
def test_tversky_index_by_hand():
    from pipeline.lesions.evaluation import tversky_index

    ref = np.zeros((4, 5), bool)
    ref[0, :] = True  # 5 reference voxels
    pred = np.zeros((4, 5), bool)
    pred[0, :3] = True
    pred[1, :2] = True  # TP 3, FN 2, FP 2
    assert tversky_index(ref, pred) == pytest.approx(3 / (3 + 0.7 * 2 + 0.3 * 2))
    assert tversky_index(ref, pred, 0.5, 0.5) == pytest.approx(2 * 3 / (5 + 5))  # Dice
    assert tversky_index(ref, np.zeros_like(ref)) == 0.0
    assert np.isnan(tversky_index(np.zeros_like(ref), np.zeros_like(ref)))


def test_presence_metrics_against_pair_counting():
    from pipeline.lesions.evaluation import presence_metrics

    rng = np.random.default_rng(5)
    labels = rng.random(60) < 0.35
    scores = np.round(rng.random(60) * 0.5 + labels * 0.3, 1)  # ties on purpose
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    m = presence_metrics(labels, scores, threshold=0.5)
    assert m["auc"] == pytest.approx(pairs / (len(pos) * len(neg)))
    assert m["sensitivity"] == pytest.approx((pos >= 0.5).mean()) and m["specificity"] == pytest.approx((neg < 0.5).mean())
    assert m["tp"] + m["fn"] == labels.sum() and m["tn"] + m["fp"] == (~labels).sum()


def test_slice_presence_rows():
    from pipeline.lesions.evaluation import slice_presence

    ref = np.zeros((3, 4, 4), np.uint8)
    ref[1, :2, :2] = 1
    prob = np.zeros((3, 4, 4), np.float32)
    prob[1, 0, :] = 0.9  # 2 of 4 reference voxels found, 2 false positives
    prob[2, 3, 3] = 0.4  # under the threshold
    rows = slice_presence(ref, prob)
    assert [r["has_lesion"] for r in rows] == [False, True, False]
    assert [r["score"] for r in rows] == pytest.approx([0.0, 0.9, 0.4])
    assert rows[1]["dice"] == pytest.approx(0.5) and rows[1]["tversky"] == pytest.approx(2 / (2 + 0.7 * 2 + 0.3 * 2))
    assert np.isnan(rows[0]["dice"]) and rows[2]["pred_voxels"] == 0
