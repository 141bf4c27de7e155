"""The shared longitudinal MS patient (../shared/data/open_ms/longitudinal/raw/patient01): its two
visits and expert change mask through ingest and ``change``; the supplied transforms' convention
checked by image agreement (an independent reference: the images themselves)."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.config import PipelineConfig

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
KEY = b"realdata-change-key"


def test_patient01_pair_in_the_common_space(shared_data, tmp_path):
    from pipeline.ingest import run_ingest
    from pipeline.longitudinal import run_change, visit_pairs
    from pipeline.longitudinal.register import transform_from_json, transform_to_json
    from pipeline.longitudinal.run import _common_space, pair_grid
    from pipeline.store import EXPERT, read_pair_mask, read_pair_meta

    src = shared_data / "open_ms" / "longitudinal" / "raw" / "patient01"
    store = str(tmp_path / "s.zarr")
    summary = run_ingest(src, store, PipelineConfig(), KEY)
    assert summary.converted == 2 and summary.rejected_inputs == []
    (plan,), skipped = visit_pairs(store)
    assert skipped == [] and plan["baseline_transform"] and plan["followup_transform"]
    meta = read_pair_meta(store, plan["pair_id"])
    gt = nib.load(src / "gt.nii.gz")
    assert meta.grid == "expert" and tuple(meta.geometry.shape_zyx) == gt.shape[::-1]
    np.testing.assert_allclose(np.reshape(meta.geometry.affine_ras, (4, 4)), gt.affine, atol=1e-3)
    assert int(read_pair_mask(store, plan["pair_id"], EXPERT).sum()) == int(np.asarray(gt.dataobj).sum())
    # the supplied transforms map common-space points into each visit: the two FLAIRs then agree;
    # inverted (the other convention) they do not
    grid, kind, _ = pair_grid(store, plan)
    ncc = _common_space(store, plan, grid, kind)[1].ncc
    inverted = dict(plan, baseline_transform=transform_to_json(transform_from_json(plan["baseline_transform"]).GetInverse()),
                    followup_transform=transform_to_json(transform_from_json(plan["followup_transform"]).GetInverse()))
    assert ncc > 0.85 > 0.3 > _common_space(store, inverted, grid, kind)[1].ncc
    (row,) = run_change(store, method="subtraction")["pairs"]
    assert row["registration_method"] == "supplied" and row["expert_changes"] == 14
    assert all(math.isfinite(row[k]) for k in ("dice", "change_sensitivity", "fp_per_true_change"))
