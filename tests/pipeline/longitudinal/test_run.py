"""Every visit pair of a store, end to end on the two-visit phantom (ingest → common space → change → tables → export).

The follow-up is the baseline moved by a known rigid motion; the 'model' is the phantom's truth
written as a prediction of both visits (a stand-in for a trained network: what is tested here is
what happens after scoring). Expected classes come from the planted boxes.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.config import PipelineConfig, pseudonym_key
from pipeline.ingest import run_ingest
from pipeline.longitudinal import SubtractionConfig, run_change, visit_pairs
from pipeline.store import change_mask_name, list_pairs, read_pair_mask, read_pair_meta, read_table, write_case_array
from tests import longitudinal_factory as lf

pytestmark = pytest.mark.slow
SMALL_HEAD = SubtractionConfig(erode_mm=6.0)  # the phantom's brain is 48 mm across: the default 10 mm erosion takes its lesions


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The phantom ingested (no supplied transforms: registration is needed), the truth stored as
    the predictions of model 'truth'."""
    base = tmp_path_factory.mktemp("change")
    v = lf.write_source(base / "src")
    root = base / "s.zarr"
    run_ingest(base / "src", root, PipelineConfig(), pseudonym_key())
    (plan,), _ = visit_pairs(str(root))
    write_case_array(root, plan["baseline"], "predictions/truth/mask", v["lesions_b"].array)
    write_case_array(root, plan["followup"], "predictions/truth/mask", v["lesions_f"].array)
    return root, v


def test_model_change_classifies_every_planted_change(store):
    root, _ = store
    from pipeline.lesions.change import ChangeRules

    # 6-connected like the evaluation rule, a size floor of 3 voxels: rims a voxel thick, left by resampling the follow-up
    # mask twice, are no change
    out = run_change(str(root), method="model", model_version="truth", rules=ChangeRules(connectivity=6, min_size_mm3=10.0))
    (row,) = out["pairs"]
    assert row["registration_method"] == "rigid" and row["registration_ncc"] > 0.8
    assert {k: row[f"n_{k}"] for k in ("new", "enlarging", "shrinking", "disappeared", "stable")} == \
        {"new": 1, "enlarging": 1, "shrinking": 1, "disappeared": 1, "stable": 1}
    vox = float(np.prod(lf.SPACING))
    # volumes after two resamplings of the follow-up mask (the motion, then back): within 15 % of the planted ones
    assert row["new_ml"] == pytest.approx(4 * 3 * 3 * vox / 1000, rel=0.15)
    assert row["disappeared_ml"] == pytest.approx(27 * vox / 1000, rel=1e-9)  # baseline lesions are not resampled: exact
    assert row["has_expert"] and row["change_sensitivity"] == 1.0 and row["fp_per_true_change"] == 0.0 and row["dice"] > 0.7
    lesions = read_table(root, "change_lesions")
    assert sorted(lesions["change"]) == sorted(["new", "enlarging", "shrinking", "disappeared", "stable"])


def test_subtraction_change_and_export(store, tmp_path):
    from pipeline.export.change import export_change

    root, v = store
    out = run_change(str(root), method="subtraction", subtraction=SMALL_HEAD)
    (row,) = out["pairs"]
    assert row["has_expert"] and row["change_sensitivity"] == 1.0
    # each planted kind found (the subtraction counts components of change: an edge fragment counts apart)
    assert min(row["n_new"], row["n_enlarging"], row["n_shrinking"], row["n_disappeared"]) >= 1
    (pid,) = list_pairs(root)
    assert read_pair_mask(root, pid, change_mask_name("subtraction", None)) is not None
    meta = read_pair_meta(root, pid)
    assert meta.registration is not None and meta.registration.followup_transform is not None
    # the stored follow-up transform is the motion (within 0.5 mm at the centre of the new lesion)
    from pipeline.longitudinal.register import transform_from_json

    tx = transform_from_json(meta.registration.followup_transform)
    z, y, x, dz, dy, dx = lf.FOLLOWUP_LESIONS["new"]
    p = tuple(v["flair_b"].index_to_world((x + dx / 2, y + dy / 2, z + dz / 2)))
    assert np.linalg.norm(np.subtract(tx.TransformPoint(p), lf.motion().TransformPoint(p))) < 0.5
    # the change_pairs table keeps one row per (pair, method, model)
    assert sorted(read_table(root, "change_pairs")["method"]) == ["model", "subtraction"]
    files = export_change(root, tmp_path / "out", "subtraction")
    assert [f.name for f in files] == [f"{pid}_change-subtraction.nii.gz"]
    img = nib.load(files[0])
    gt = nib.load(next((root.parent / "src").rglob("gt.nii.gz")))
    assert np.allclose(img.affine, gt.affine, atol=1e-4) and img.shape == gt.shape  # on the expert mask's grid


def test_a_second_run_reuses_what_has_not_changed(store):
    root, _ = store
    first = run_change(str(root), method="subtraction", subtraction=SMALL_HEAD, force=True)  # whatever ran before
    again = run_change(str(root), method="subtraction", subtraction=SMALL_HEAD)
    assert again["computed"] == [] and [r["pair_id"] for r in again["pairs"]] == first["computed"] == again["up_to_date"]
    assert again["pairs"][0]["dice"] == pytest.approx(first["pairs"][0]["dice"])
    assert run_change(str(root), method="subtraction", subtraction=SubtractionConfig(erode_mm=5.0))["computed"] == first["computed"]
    assert run_change(str(root), method="subtraction", subtraction=SubtractionConfig(erode_mm=5.0), force=True)["computed"] == first["computed"]


def test_pairs_split_by_the_models_predictions_and_chosen_by_id(store):
    """How the chain's method 'auto' splits pairs: by the model where it scored both visits, else by subtraction."""
    from pipeline.longitudinal.run import pairs_scored_by

    root, _ = store
    plans, _ = visit_pairs(str(root))
    (pid,) = [p["pair_id"] for p in plans]
    assert pairs_scored_by(str(root), plans, "truth") == ([pid], [])
    assert pairs_scored_by(str(root), plans, "unet3d-never-scored") == ([], [pid])
    assert pairs_scored_by(str(root), plans, None) == ([], [pid])
    assert run_change(str(root), method="subtraction", subtraction=SMALL_HEAD, pair_ids=[])["pairs"] == []
    assert [r["pair_id"] for r in run_change(str(root), method="subtraction", subtraction=SMALL_HEAD, pair_ids=[pid])["pairs"]] == [pid]


def test_supplied_transforms_are_used_instead_of_registration(tmp_path):
    lf.write_source(tmp_path / "src", transforms=True)
    root = tmp_path / "s.zarr"
    run_ingest(tmp_path / "src", root, PipelineConfig(), pseudonym_key())
    (row,) = run_change(str(root), method="subtraction", subtraction=SMALL_HEAD)["pairs"]
    assert row["registration_method"] == "supplied" and row["registration_ncc"] > 0.8 and row["change_sensitivity"] == 1.0


def test_a_store_without_visits_table_says_why(tmp_path):
    from pipeline.store import init_store

    root = init_store(tmp_path / "s.zarr")
    out = run_change(str(root), method="subtraction")
    assert out["pairs"] == [] and out["skipped"] == []


def test_the_quality_report_shows_the_pair_and_its_registration(store):
    from pipeline.quality.report import build_report
    from pipeline.store import list_pairs

    root, _ = store
    run_change(str(root), method="subtraction")  # the pair's registration, whatever the test order
    html = build_report(root).html_path.read_text()
    (pid,) = list_pairs(root)
    section = html.split('id="pairs"')[1].split("</section>")[0]
    assert pid in section and "rigid" in section and "yes" in section  # registration method, expert mask


def test_the_evaluation_page_shows_the_models_change(store):
    from pipeline.lesions.change import ChangeRules
    from pipeline.quality.evaluation_page import build_evaluation_page

    root, _ = store
    (row,) = run_change(str(root), method="model", model_version="truth", rules=ChangeRules(connectivity=6, min_size_mm3=10.0))["pairs"]
    html = open(build_evaluation_page(root, model_version="truth", thumbnails=False)["html"]).read()
    section = html.split('id="change"')[1].split("</section>")[0]
    assert row["pair_id"] in section and "rigid (0." in section and "No visit pair" not in section
