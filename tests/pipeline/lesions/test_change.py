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

SPACING = (0.5, 1.0, 2.0)  # x, y, z mm: voxel 1 mm³, anisotropic on purpose
VOXEL = 1.0


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
    # changed volumes in mL: new 24, enlarging gained 27 + 20, shrinking lost 64, disappeared 27, stable 80 + 32 at follow-up
    assert r.volumes_ml() == {"new": 0.024, "enlarging": 0.047, "shrinking": 0.064, "disappeared": 0.027, "stable": 0.112}
    assert r.summary()["n_new_or_enlarging"] == 3


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


def test_threshold_is_inclusive_and_configurable():
    b = np.zeros((8, 8, 20), np.uint8)
    f = b.copy()
    b[2:4, 2:4, 2:6] = 1  # 16
    f[2:4, 2:4, 2:8] = 1  # 24: exactly +50 %
    bv, fv = Volume(b), Volume(f)
    assert classify_change(bv, fv).tracks[0]["change"] == "enlarging"
    assert classify_change(bv, fv, ChangeRules(enlarge_fraction=0.51)).tracks[0]["change"] == "stable"
    assert classify_change(bv, fv, ChangeRules(min_growth_mm3=9)).tracks[0]["change"] == "stable"
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
