"""Ingest (discover → convert → store) on a small generated NIfTI cohort, in process."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from pipeline.core.config import PipelineConfig
from pipeline.core.volume import Volume
from pipeline.ingest import run_ingest
from pipeline.ingest.discover import discover
from pipeline.io.writers import write_nifti
from pipeline.store import list_cases, open_case, query_catalog, read_case_meta, read_catalog
from tests.sealed import reveal, revealed_catalog
from tests.session_factory import blob_image, lesion_mask_on, rot_x, write_session  # noqa: F401

KEY = b"unit-test-key"


def test_ingest_geometry_resampling_and_incremental_reruns(cohort, tmp_path):
    store = tmp_path / "store.zarr"
    cfg = PipelineConfig()
    s1 = run_ingest(cohort, store, cfg, KEY)
    assert (s1.converted, s1.skipped, s1.rejected_sessions) == (4, 0, 1)
    rejected = {reveal(r["path"], KEY.decode()): r["reason"] for r in s1.rejected_inputs}
    assert "not gzip" in rejected["site/patient04/patient04_FLAIR.nii.gz"].lower() or "gzip" in rejected["site/patient04/patient04_FLAIR.nii.gz"]
    assert len(list_cases(store)) == 4

    # the stored grid is the FLAIR grid, exactly
    disc = discover(cohort, cfg, KEY)
    plan = next(s for s in disc.sessions if s.root_relpath == "site/patient02")
    meta = read_case_meta(store, plan.case_id)
    flair = sitk.ReadImage(str(cohort / "site/patient02/patient02_FLAIR.nii.gz"))
    np.testing.assert_allclose(meta.geometry.spacing, flair.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(meta.geometry.origin, flair.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(np.reshape(meta.geometry.direction, 9), flair.GetDirection(), atol=1e-6)
    assert meta.channels == ["FLAIR", "T1", "T2"] and meta.has_label

    # T1 (oblique, other grid) equals an independent resampling onto the FLAIR grid (before z-scoring)
    g = open_case(store, plan.case_id)
    t1_stored = g["image"][1]
    t1 = sitk.ReadImage(str(cohort / "site/patient02/patient02_T1w.nii.gz"), sitk.sitkFloat32)
    expected = sitk.GetArrayFromImage(sitk.Resample(t1, flair, sitk.Transform(), sitk.sitkLinear, 0.0))
    fg = g["labels/foreground/0"][:] > 0
    corr = np.corrcoef(t1_stored[fg], expected[fg])[0, 1]
    assert corr > 0.9999
    # label is the source mask (same grid → identical voxels)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / "site/patient02/patient02_lesion_mask.nii.gz")))
    np.testing.assert_array_equal(g["labels/reference/0"][:], mask)

    # rerun: nothing converted, and nothing of the stored cases re-read (unchanged size + mtime reuse
    # the stored digests); only the rejected session's broken file is tried again
    s2 = run_ingest(cohort, store, cfg, KEY)
    assert (s2.converted, s2.skipped) == (0, 4)
    assert s2.bytes_read == (cohort / "site/patient04/patient04_FLAIR.nii.gz").stat().st_size

    # touch one file's bytes (same path): only that case is re-converted
    f = cohort / "site/patient02/patient02_T2w.nii.gz"
    data = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(data, compresslevel=1, mtime=12345))
    s3 = run_ingest(cohort, store, cfg, KEY)
    assert (s3.converted, s3.skipped) == (1, 3) and s3.cases == sorted(s3.cases)
    assert s3.bytes_read == f.stat().st_size + s2.bytes_read  # only the changed file was hashed again

    # a new session converts only itself
    write_session(cohort / "site" / "patient05", "patient05_", seed=5)
    s4 = run_ingest(cohort, store, cfg, KEY)
    assert (s4.converted, s4.skipped) == (1, 4)

    # a processing change (target spacing) re-converts everything it affects
    s5 = run_ingest(cohort, store, cfg.model_copy(update={"target_spacing": (2.0, 2.0, 2.0)}), KEY)
    assert (s5.converted, s5.skipped) == (5, 0)
    meta = read_case_meta(store, plan.case_id)
    assert meta.geometry.spacing == (2.0, 2.0, 2.0)

    cat = read_catalog(store)
    assert {"converted", "rejected", "unused"} >= set(cat["status"]) and (cat["status"] == "rejected").any()
    assert cat[cat["status"] == "rejected"]["reason"].notna().all()
    # the same current state through DuckDB
    counts = query_catalog(store, "SELECT status, count(*) AS n FROM catalog GROUP BY status ORDER BY status")
    assert dict(zip(counts["status"], counts["n"])) == cat["status"].value_counts().to_dict()
    history = query_catalog(store, "SELECT count(DISTINCT run_id) AS runs FROM catalog_history")
    assert int(history["runs"][0]) >= 5


def test_label_off_grid_is_rejected_and_case_kept(tmp_path):
    src = tmp_path / "c"
    write_session(src / "p1", "p1_", seed=1, label=False)
    flair = blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0))
    shifted = lesion_mask_on(Volume(flair.array, spacing=flair.spacing, origin=(5.0, 0.5, 0.0)))
    write_nifti(shifted, src / "p1" / "p1_lesion_mask.nii.gz")
    s = run_ingest(src, tmp_path / "s.zarr", PipelineConfig(), KEY)
    assert s.converted == 1
    reason = next(r["reason"] for r in s.rejected_inputs if reveal(r["path"], KEY.decode()).endswith("p1_lesion_mask.nii.gz"))
    assert "label grid does not match" in reason
    assert not read_case_meta(tmp_path / "s.zarr", list_cases(tmp_path / "s.zarr")[0]).has_label
    # the decision as columns: code, label_on_grid, and the mask's native grid as numbers (x, y, z)
    cat = revealed_catalog(tmp_path / "s.zarr", KEY.decode()).set_index("source_relpath")
    mask = cat.loc["p1/p1_lesion_mask.nii.gz"]
    assert (mask["status"], mask["reason_code"], mask["label_on_grid"]) == ("rejected", "label_off_grid", False)
    assert (mask["shape_x"], mask["shape_y"], mask["shape_z"]) == (40, 40, 12)
    assert (mask["spacing_x_mm"], mask["spacing_y_mm"], mask["spacing_z_mm"]) == (1.0, 1.0, 3.0)
    t1 = cat.loc["p1/p1_T1w.nii.gz"]  # converted rows: the native grid of the source, not the stored one
    assert (t1["shape_x"], t1["shape_y"], t1["shape_z"]) == (44, 44, 36) and t1["spacing_z_mm"] == pytest.approx(1.0) and pd.isna(t1["reason_code"])


def test_label_on_grid_and_label_values_are_recorded(tmp_path):
    src = tmp_path / "c"
    write_session(src / "p1", "p1_", seed=1)  # mask on the FLAIR grid
    write_session(src / "p2", "p2_", seed=2, label=False)
    flair = blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0))
    write_nifti(lesion_mask_on(flair).with_array(lesion_mask_on(flair).array * 2), src / "p2" / "p2_lesion_mask.nii.gz")
    s = run_ingest(src, tmp_path / "s.zarr", PipelineConfig(), KEY)
    assert s.converted == 2
    masks = revealed_catalog(tmp_path / "s.zarr", KEY.decode()).query("modality == 'MASK'").set_index("source_relpath")
    assert (masks.loc["p1/p1_lesion_mask.nii.gz", "status"], masks.loc["p1/p1_lesion_mask.nii.gz", "label_on_grid"]) == ("converted", True)
    bad = masks.loc["p2/p2_lesion_mask.nii.gz"]
    assert (bad["status"], bad["reason_code"], bad["label_on_grid"]) == ("rejected", "label_not_binary", True)


def test_nan_voxels_reject_only_that_input(tmp_path):
    src = tmp_path / "c"
    write_session(src / "p1", "p1_", seed=1)
    t2 = blob_image((18, 20, 20), (2.0, 2.0, 2.0))
    arr = t2.array.copy()
    arr[3, 3, 3] = np.nan
    write_nifti(t2.with_array(arr), src / "p1" / "p1_T2w.nii.gz")
    s = run_ingest(src, tmp_path / "s.zarr", PipelineConfig(), KEY)
    assert s.converted == 1
    reason = next(r["reason"] for r in s.rejected_inputs if reveal(r["path"], KEY.decode()).endswith("p1_T2w.nii.gz"))
    assert "non-finite" in reason
    meta = read_case_meta(tmp_path / "s.zarr", list_cases(tmp_path / "s.zarr")[0])
    assert meta.channels == ["FLAIR", "T1"]


def test_symlinked_inputs_keep_their_names_in_the_source_tree(tmp_path):
    """Sources are named as the tree the user points at names them, also when a file is a
    symlink to storage elsewhere (no absolute outside path in the catalog)."""
    elsewhere = tmp_path / "archive" / "x"
    write_session(elsewhere, "p_", seed=5)
    src = tmp_path / "cohort" / "patient05"
    src.mkdir(parents=True)
    for f in elsewhere.iterdir():
        (src / f.name).symlink_to(f)
    disc = discover(tmp_path / "cohort", PipelineConfig(), b"k")
    (plan,) = disc.sessions
    assert sorted(r for i in plan.items for r in i.relpaths) == sorted(f"patient05/{f.name}" for f in elsewhere.iterdir())
    summary = run_ingest(tmp_path / "cohort", tmp_path / "s.zarr", PipelineConfig(), b"k")
    assert summary.converted == 1
    assert all(p.startswith("patient05/") for p in revealed_catalog(tmp_path / "s.zarr", "k")["source_relpath"])


def test_unreadable_registration_rejects_only_that_image(tmp_path):
    src = tmp_path / "c"
    write_session(src / "p1", "p1_", seed=1)
    (src / "p1" / "p1_T1w_reg_to_FLAIR.txt").write_text("not an ITK transform\n")
    s = run_ingest(src, tmp_path / "s.zarr", PipelineConfig(), KEY)
    assert s.converted == 1
    (t1,) = [r for r in s.rejected_inputs if reveal(r["path"], KEY.decode()) == "p1/p1_T1w.nii.gz"]
    assert t1["code"] == "bad_transform" and "ITK transform" in t1["reason"]
    assert read_case_meta(tmp_path / "s.zarr", list_cases(tmp_path / "s.zarr")[0]).channels == ["FLAIR", "T2"]
