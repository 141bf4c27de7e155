"""The subtraction method on the two-visit phantom (registered with the known motion)."""

from __future__ import annotations

import numpy as np

from pipeline.ingest.resample import resample_to_grid
from pipeline.lesions.change import evaluate_change
from pipeline.longitudinal.subtraction import SubtractionConfig, erode_mm, robust_z, subtraction_change
from tests import longitudinal_factory as lf


def test_finds_every_planted_change_and_nothing_else():
    v = lf.visits()
    follow = resample_to_grid(v["flair_f"], v["flair_b"], "linear", transform=lf.motion()).array  # the known motion
    brain = (lf.anatomy() > 0).astype(np.uint8)
    change = subtraction_change(v["flair_b"].array, follow, brain, lf.SPACING, SubtractionConfig(erode_mm=6.0, min_size_mm3=10.0))
    ev = evaluate_change(v["expert"].array, change > 0, v["flair_b"].voxel_volume_mm3)
    # every planted change found; at most one false positive: a fragment of intensity difference at a lesion's edge
    # (the follow-up was interpolated twice, the baseline never), separate from its lesion under the rule's 6-connectivity
    assert ev["expert_changes"] == 4 and ev["tp_expert"] == 4 and ev["change_fp"] <= 1

    def codes(which, name, x0=0):
        z, y, x, dz, dy, dx = which[name]
        return set(np.unique(change[z:z + dz, y:y + dy, x + x0:x + dx])) - {0}

    # the new lesion (nothing bright before) is new, the grown part of the enlarging one enlarging; likewise shrinking / disappeared
    assert codes(lf.FOLLOWUP_LESIONS, "new") == {1}
    assert codes(lf.FOLLOWUP_LESIONS, "enlarging", 3) == {2}
    assert codes(lf.BASELINE_LESIONS, "shrinking", 2) == {3}
    assert codes(lf.BASELINE_LESIONS, "disappeared") == {4}
    assert codes(lf.BASELINE_LESIONS, "stable") == set()
    # appearing change only
    only_up = subtraction_change(v["flair_b"].array, follow, brain, lf.SPACING, SubtractionConfig(erode_mm=6.0, min_size_mm3=10.0, negative=False))
    assert set(np.unique(only_up)) == {0, 1, 2}


def test_robust_z_and_erosion():
    a = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    z = robust_z(a, np.ones(a.shape, bool))
    assert float(np.median(z)) == 0.0
    m = np.zeros((9, 9, 9), bool)
    m[1:8, 1:8, 1:8] = True
    assert erode_mm(m, (1.0, 1.0, 1.0), 2.0).sum() == 27  # 7³ eroded by 2 voxels each side → 3³
    assert erode_mm(m, (1.0, 1.0, 1.0), 0.0).sum() == 343


def test_two_visits_that_agree_closer_than_noise_show_no_change():
    """A follow-up that is the baseline but for a trace of interpolation (a thousandth of one
    Gaussian smoothing: error along the edges, as a copy resampled twice has) is no change; without
    the floor on the difference's scale (min_diff_sd) its near-zero spread made that trace change."""
    from scipy import ndimage

    v = lf.visits()
    brain = (lf.anatomy() > 0).astype(np.uint8)
    base = v["flair_b"].array.astype(np.float32)
    again = (base + 1e-3 * (ndimage.gaussian_filter(base, 1.0) - base)).astype(np.float32)
    assert not subtraction_change(base, again, brain, lf.SPACING, SubtractionConfig(erode_mm=6.0, min_size_mm3=10.0)).any()
    unfloored = SubtractionConfig(erode_mm=6.0, min_size_mm3=10.0, min_diff_sd=0.0)
    assert subtraction_change(base, again, brain, lf.SPACING, unfloored).sum() > 50  # what the floor prevents
