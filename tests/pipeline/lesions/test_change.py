"""Lesion change between two masks on one grid: every planted change classified, volumes exact.

The expected classes and volumes are worked out from the planted boxes by hand (voxel counts of
boxes times the voxel size), never from the implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.core.volume import Volume
from pipeline.lesions.change import CHANGE_CODES, ChangeRules, classify_change, evaluate_change

SPACING = (0.5, 1.0, 3.0)  # x, y, z mm: voxel 1.5 mm³, anisotropic on purpose
VOXEL = 1.5


def _box(a: np.ndarray, z: int, y: int, x: int, dz: int, dy: int, dx: int) -> None:
    a[z:z + dz, y:y + dy, x:x + dx] = 1


@pytest.fixture
def planted():
    """48³ masks with one lesion of each kind; returns (baseline, follow-up, expected)."""
    b = np.zeros((48, 48, 48), np.uint8)
    f = np.zeros_like(b)
    # stable: 4x4x4 = 64 → 4x4x5 = 80 (+25 %, under 50 %)
    _box(b, 2, 2, 2, 4, 4, 4)
    _box(f, 2, 2, 2, 4, 4, 5)
    # enlarging: 3x3x3 = 27 → 3x3x6 = 54 (+100 %)
    _box(b, 2, 20, 2, 3, 3, 3)
    _box(f, 2, 20, 2, 3, 3, 6)
    # shrinking: 4x4x6 = 96 → 4x4x2 = 32 (baseline 3x follow-up)
    _box(b, 2, 36, 2, 4, 4, 6)
    _box(f, 2, 36, 2, 4, 4, 2)
    # disappeared: 3x3x3 = 27, nothing at follow-up
    _box(b, 20, 2, 20, 3, 3, 3)
    # new: 2x3x4 = 24 at follow-up only
    _box(f, 20, 20, 20, 2, 3, 4)
    # split: one baseline lesion 2x2x10 = 40 → two follow-up pieces 2x2x4 + 2x2x4 = 32 (40 < 1.5 x 32: stable)
    _box(b, 36, 36, 20, 2, 2, 10)
    _box(f, 36, 36, 20, 2, 2, 4)
    _box(f, 36, 36, 26, 2, 2, 4)
    # merge: two baseline lesions of 8 and 8 joined by growth into one of 2x2x9 = 36 (+125 %: enlarging)
    _box(b, 36, 2, 36, 2, 2, 2)
    _box(b, 36, 2, 43, 2, 2, 2)
    _box(f, 36, 2, 36, 2, 2, 9)
    expected = {
        # (class, baseline voxels, follow-up voxels, baseline lesions, follow-up lesions)
        "stable": [(64, 80, 1, 1), (40, 32, 1, 2)],
        "enlarging": [(27, 54, 1, 1), (16, 36, 2, 1)],
        "shrinking": [(96, 32, 1, 1)],
        "disappeared": [(27, 0, 1, 0)],
        "new": [(0, 24, 0, 1)],
    }
    return Volume(b, spacing=SPACING), Volume(f, spacing=SPACING), expected


def test_every_planted_change_is_classified_with_exact_volumes(planted):
    b, f, expected = planted
    r = classify_change(b, f)
    got: dict[str, list[tuple[int, int, int, int]]] = {}
    for t in r.tracks:
        got.setdefault(t["change"], []).append((t["baseline_voxels"], t["followup_voxels"], t["baseline_lesions"], t["followup_lesions"]))
        assert t["baseline_mm3"] == t["baseline_voxels"] * VOXEL and t["followup_mm3"] == t["followup_voxels"] * VOXEL
        assert t["delta_mm3"] == (t["followup_voxels"] - t["baseline_voxels"]) * VOXEL
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in expected.items()}
    assert r.counts() == {"new": 1, "enlarging": 2, "shrinking": 1, "disappeared": 1, "stable": 2}
    # changed volumes in mL (voxels x 1.5 mm³): new 24, enlarging gained 27 + 20, shrinking lost 64, disappeared 27, stable 80 + 32 at follow-up
    assert r.volumes_ml() == {"new": 0.036, "enlarging": 0.0705, "shrinking": 0.096, "disappeared": 0.0405, "stable": 0.168}
    assert r.summary()["n_new_or_enlarging"] == 3
    # numbered 1..n by class (new, enlarging, shrinking, disappeared, stable), then largest first
    assert [t["track_id"] for t in r.tracks] == list(range(1, 8))
    assert [(t["change"], max(t["baseline_voxels"], t["followup_voxels"])) for t in r.tracks] == [
        ("new", 24), ("enlarging", 54), ("enlarging", 36), ("shrinking", 96), ("disappeared", 27), ("stable", 80), ("stable", 40)]
    rel = {t["change"]: t["relative_change"] for t in r.tracks if t["track_id"] in (2, 4)}
    assert rel == {"enlarging": 1.0, "shrinking": round(-64 / 96, 6)} and math.isnan(r.tracks[0]["relative_change"])


def test_change_mask_marks_new_gained_lost_and_vanished_voxels(planted):
    b, f, _ = planted
    m = classify_change(b, f).mask
    assert int((m == CHANGE_CODES["new"]).sum()) == 24
    assert int((m == CHANGE_CODES["enlarging"]).sum()) == 27 + 20  # only the gained voxels
    assert int((m == CHANGE_CODES["shrinking"]).sum()) == 64
    assert int((m == CHANGE_CODES["disappeared"]).sum()) == 27
    assert m[2:6, 2:6, 2:7].max() == 0  # a stable lesion is not marked, although it grew by 16 voxels
    assert m[20, 20, 20] == CHANGE_CODES["new"] and m[2, 20, 5] == CHANGE_CODES["enlarging"] and m[2, 20, 2] == 0


def test_centroids_are_world_coordinates_of_the_followup_lesion():
    b = np.zeros((10, 12, 14), np.uint8)
    f = b.copy()
    f[4:6, 2:4, 6:8] = 1  # new: mean index z 4.5, y 2.5, x 6.5
    vol = Volume(b, spacing=(2.0, 1.0, 3.0), origin=(10.0, -5.0, 7.0))
    t = classify_change(vol, vol.with_array(f)).tracks[0]
    assert (t["centroid_x_mm"], t["centroid_y_mm"], t["centroid_z_mm"]) == (10 + 2 * 6.5, -5 + 2.5, 7 + 3 * 4.5)


def test_a_disappeared_lesion_is_placed_at_its_baseline_centroid():
    b = np.zeros((10, 12, 14), np.uint8)
    b[2:4, 6:10, 1:3] = 1  # mean index z 2.5, y 7.5, x 1.5
    vol = Volume(b, spacing=(2.0, 1.0, 3.0), origin=(10.0, -5.0, 7.0))
    t = classify_change(vol, vol.with_array(np.zeros_like(b))).tracks[0]
    assert t["change"] == "disappeared" and (t["centroid_x_mm"], t["centroid_y_mm"], t["centroid_z_mm"]) == (13.0, 2.5, 14.5)


def test_with_a_size_floor_rims_smaller_than_a_lesion_leave_the_change_mask():
    b = np.zeros((10, 10, 20), np.uint8)
    b[2:6, 2:6, 2:8] = 1  # 96
    f = b.copy()
    f[2:6, 2:6, 8:12] = 1  # +64 in one block: enlarging, gained part kept
    f[2:6, 2, 1] = 1  # +4 on the other side: a rim of 4 voxels (6 mm³)
    r = classify_change(Volume(b, spacing=SPACING), Volume(f, spacing=SPACING), ChangeRules(min_size_mm3=9.0))
    assert r.counts()["enlarging"] == 1 and r.tracks[0]["followup_voxels"] == 96 + 68  # the track's volume counts the rim
    assert int((r.mask == CHANGE_CODES["enlarging"]).sum()) == 64 and r.mask[2:6, 2, 1].max() == 0
    kept = classify_change(Volume(b, spacing=SPACING), Volume(f, spacing=SPACING), ChangeRules(min_size_mm3=6.0)).mask
    assert int((kept == CHANGE_CODES["enlarging"]).sum()) == 68  # 4 voxels x 1.5 mm³ = 6 mm³ is not under the floor
    # the same for a lost rim
    r = classify_change(Volume(f, spacing=SPACING), Volume(b, spacing=SPACING), ChangeRules(min_size_mm3=9.0))
    assert r.counts()["shrinking"] == 1 and int((r.mask == CHANGE_CODES["shrinking"]).sum()) == 64


def test_4d_masks_are_refused():
    m4 = Volume(np.zeros((2, 4, 4, 4), np.uint8))
    m3 = Volume(np.zeros((4, 4, 4), np.uint8))
    for b, f in ((m4, m3), (m3, m4)):
        with pytest.raises(ValueError, match="3-D"):
            classify_change(b, f)


def test_threshold_is_inclusive_and_configurable():
    b = np.zeros((8, 8, 20), np.uint8)
    f = b.copy()
    b[2:4, 2:4, 2:6] = 1  # 16
    f[2:4, 2:4, 2:8] = 1  # 24: exactly +50 %
    bv, fv = Volume(b), Volume(f)
    assert classify_change(bv, fv).tracks[0]["change"] == "enlarging"
    assert classify_change(bv, fv, ChangeRules(enlarge_fraction=0.51)).tracks[0]["change"] == "stable"
    assert classify_change(bv, fv, ChangeRules(min_growth_mm3=9)).tracks[0]["change"] == "stable"
    assert classify_change(bv, fv, ChangeRules(min_growth_mm3=8)).tracks[0]["change"] == "enlarging"  # grew by exactly 8 mm³
    wide = Volume(b, spacing=(1, 1, 2)), Volume(f, spacing=(1, 1, 2))  # voxel 2 mm³: grew by 16 mm³
    assert classify_change(*wide, ChangeRules(min_growth_mm3=16)).tracks[0]["change"] == "enlarging"
    assert classify_change(*wide, ChangeRules(min_growth_mm3=17)).tracks[0]["change"] == "stable"
    assert classify_change(fv, bv).tracks[0]["change"] == "shrinking"  # 24 → 16: baseline = 1.5 x follow-up
    assert classify_change(fv, bv, ChangeRules(enlarge_fraction=0.6)).tracks[0]["change"] == "stable"


def test_connectivity_and_size_floor_as_lesion_tables():
    b = np.zeros((8, 8, 8), np.uint8)
    f = b.copy()
    f[1, 1, 1] = f[2, 2, 2] = 1  # diagonal neighbours: one lesion at 26, two at 6
    f[5:7, 5:7, 5] = 1  # 4 voxels
    bv, fv = Volume(b), Volume(f)
    assert classify_change(bv, fv).counts()["new"] == 2
    assert classify_change(bv, fv, ChangeRules(connectivity=6)).counts()["new"] == 3
    # size floor as lesion_table: kept when voxels x voxel volume >= min_size_mm3
    assert classify_change(bv, fv, ChangeRules(min_size_mm3=4)).counts()["new"] == 1
    assert classify_change(bv, fv, ChangeRules(min_size_mm3=4.5)).counts()["new"] == 0
    bw, fw = Volume(b, spacing=(1, 1, 2)), Volume(f, spacing=(1, 1, 2))  # voxel 2 mm³: lesions of 4 and 8 mm³
    assert classify_change(bw, fw, ChangeRules(min_size_mm3=8)).counts()["new"] == 1
    assert classify_change(bw, fw, ChangeRules(min_size_mm3=8.5)).counts()["new"] == 0


def test_refuses_two_grids():
    with pytest.raises(ValueError, match="different grids"):
        classify_change(Volume(np.zeros((4, 4, 4), np.uint8)), Volume(np.zeros((4, 4, 5), np.uint8)))


def test_evaluation_against_an_expert_change_mask_by_hand():
    expert = np.zeros((20, 20, 20), np.uint8)
    det = np.zeros_like(expert)
    expert[2:5, 2:5, 2:5] = 1   # 27: found (det covers 18 of it, nothing outside)
    det[2:5, 2:5, 2:4] = 1
    expert[10:13, 10:13, 10:13] = 1  # 27: missed
    det[15:18, 2:4, 2:4] = 1    # 12: a false positive
    ev = evaluate_change(expert, det, 1.0)
    assert (ev["expert_changes"], ev["detected_changes"], ev["tp_expert"], ev["change_fp"]) == (2, 2, 1, 1)
    assert ev["change_sensitivity"] == 0.5 and ev["fp_per_true_change"] == 0.5
    assert ev["dice"] == pytest.approx(2 * 18 / (54 + 30))
    assert math.isnan(evaluate_change(np.zeros_like(det), det, 1.0)["fp_per_true_change"])


def test_rules_are_validated_and_recorded_in_the_summary():
    for bad in ({"connectivity": 8}, {"connectivity": 19}, {"enlarge_fraction": 0.0}, {"min_size_mm3": -1.0}, {"min_growth_mm3": -1.0}):
        with pytest.raises(ValueError, match="connectivity|enlarge_fraction"):
            ChangeRules(**bad)
    ChangeRules(connectivity=18)
    rules = ChangeRules(connectivity=6, min_size_mm3=2.0, enlarge_fraction=0.25, min_growth_mm3=3.0)
    s = classify_change(Volume(np.zeros((4, 4, 4), np.uint8)), Volume(np.zeros((4, 4, 4), np.uint8)), rules).summary()
    assert {k: s[k] for k in ("connectivity", "min_size_mm3", "enlarge_fraction", "min_growth_mm3")} == \
        {"connectivity": 6, "min_size_mm3": 2.0, "enlarge_fraction": 0.25, "min_growth_mm3": 3.0}
    assert all(s[f"n_{c}"] == 0 for c in ("new", "enlarging", "shrinking", "disappeared", "stable"))


def test_evaluation_volumes_and_rule_choice():
    from pipeline.lesions.evaluation import ISLES22

    expert = np.zeros((10, 10, 10), np.uint8)
    expert[1:3, 1:3, 1:3] = 1  # 8 voxels
    det = np.zeros_like(expert)
    det[1:3, 1:3, 2:4] = 1  # 8 voxels, 4 shared
    det[7, 7, 7] = 1  # one voxel: under MSSEG-1's 3 mm³ floor at 2 mm³ voxels, a lesion for ISLES'22
    ev = evaluate_change(expert, det, 2.0)
    assert (ev["expert_ml"], ev["detected_ml"], ev["rule"], ev["detected_changes"], ev["change_fp"]) == (0.016, 0.018, "msseg", 1, 0)
    assert (ev["tp_detected"], ev["change_precision"], ev["change_f1"]) == (1, 1.0, 1.0)
    isles = evaluate_change(expert, det, 2.0, ISLES22)
    assert (isles["rule"], isles["detected_changes"], isles["change_fp"], isles["fp_per_true_change"]) == ("isles", 2, 1, 1.0)
