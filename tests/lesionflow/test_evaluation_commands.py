"""`lesionflow compare` (two mask files, every rule) and `lesionflow segment` (one session, no store)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from lesionflow.cli import app
from pipeline.core.volume import Volume
from pipeline.io.writers import write_nifti

GEOMETRY = {"spacing": (0.5, 0.5, 2.0), "origin": (10.0, -20.0, 5.0), "direction": np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])}


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture()
def masks(tmp_path):
    """A reference with two lesions (8 and 16 voxels of 0.5 mm³) and a prediction that finds
    the larger one exactly and adds a 12-voxel false positive; NIfTI and MetaImage."""
    ref = np.zeros((10, 12, 12), np.uint8)
    ref[1:3, 1:3, 1:3] = 1  # 8 voxels = 4 mm³ (> 3 mm³)
    ref[5:7, 5:9, 5:7] = 1  # 16 voxels = 8 mm³
    pred = np.zeros_like(ref)
    pred[5:7, 5:9, 5:7] = 1
    pred[8:9, 8:11, 8:12] = 1  # 12 voxels = 6 mm³, nowhere near the reference
    paths = {"ref": tmp_path / "ref.nii.gz", "pred": tmp_path / "pred.nii.gz", "pred_mha": tmp_path / "pred.mha"}
    write_nifti(Volume(ref, **GEOMETRY), paths["ref"])
    write_nifti(Volume(pred, **GEOMETRY), paths["pred"])
    sitk.WriteImage(Volume(pred, **GEOMETRY).to_sitk(), str(paths["pred_mha"]))
    return paths


def test_compare_json_has_the_issue_keys_with_hand_values_and_imports_neither_torch_nor_prefect(masks):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lesionflow.cli import app\n"
        f"r = CliRunner().invoke(app, ['compare', {str(masks['ref'])!r}, {str(masks['pred'])!r}, '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "bad = [m for m in ('torch', 'prefect', 'monai') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print(r.stdout)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["dice"] == pytest.approx(2 * 16 / (24 + 28))
    assert (got["ref_lesions"], got["pred_lesions"]) == (2, 2)
    assert got["lesion_sensitivity"] == 0.5 and got["lesion_precision"] == 0.5 and got["lesion_f1"] == 0.5
    assert got["volume_ref_ml"] == pytest.approx(24 * 0.5 / 1000) and got["volume_pred_ml"] == pytest.approx(28 * 0.5 / 1000)
    assert got["isles_f1"] == pytest.approx(1 / (1 + (1 + 1) / 2))
    assert got["hd95_mm"] > 0 and got["rel_volume_error_pct"] == pytest.approx(100 * 4 / 24)


def test_compare_reads_metaimage_and_writes_the_lesion_rows(masks, tmp_path):
    csv = tmp_path / "lesions.csv"
    r = run("compare", str(masks["ref"]), str(masks["pred_mha"]), "--out", str(csv))
    assert r.exit_code == 0, r.output
    assert "lesion-wise MSSEG-1: 1/2 reference lesions detected, 1/2 predicted lesions true" in r.output.splitlines()[3]
    rows = pd.read_csv(csv)
    assert set(rows["rule"]) == {"msseg", "isles"} and len(rows[(rows["rule"] == "msseg") & (rows["side"] == "reference")]) == 2


def test_compare_refuses_masks_on_different_grids_naming_both(masks, tmp_path):
    other = tmp_path / "shifted.nii.gz"
    write_nifti(Volume(np.zeros((10, 12, 12), np.uint8), **{**GEOMETRY, "origin": (10.0, -20.0, 7.0)}), other)
    r = CliRunner().invoke(app, ["compare", str(masks["ref"]), str(other)])
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert lines[0] == f"error: {masks['ref']} and {other} are not on the same grid:"
    assert lines[1].strip().startswith(f"{masks['ref']}: shape (12, 12, 10)") and "origin (10.0, -20.0, 5.0)" in lines[1]
    assert lines[2].strip().startswith(f"{other}: shape (12, 12, 10)") and "origin (10.0, -20.0, 7.0)" in lines[2]


def test_compare_refuses_a_probability_map_and_a_missing_file(masks, tmp_path):
    prob = tmp_path / "prob.nii.gz"
    write_nifti(Volume(np.full((10, 12, 12), 0.3, np.float32), **GEOMETRY), prob)
    r = CliRunner().invoke(app, ["compare", str(masks["ref"]), str(prob)])
    assert r.exit_code == 2 and "not a binary mask" in r.stderr and str(prob) in r.stderr
    r = CliRunner().invoke(app, ["compare", str(masks["ref"]), str(tmp_path / "nope.nii.gz")])
    assert r.exit_code == 2 and "nope.nii.gz does not exist" in r.stderr


# ------------------------------------------------------------------------------ segment
@pytest.mark.slow
def test_segment_writes_the_mask_in_the_session_reference_geometry(phantom_cohort, tiny_model, tmp_path):
    truth = pd.read_csv(phantom_cohort.truth_cases_csv)
    row = truth[truth["format"] == "dicom"].iloc[0]  # an oblique FLAIR: the geometry has to survive
    session = phantom_cohort.cohort_dir / row["session_dir"]
    out = tmp_path / "seg" / "mask.nii.gz"
    r = run("segment", str(session), "--model", str(tiny_model), "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["mask"] == str(out) and got["reference_modality"] == "FLAIR" and got["channels"] == ["FLAIR", "T1", "T2"]
    reference = sitk.ReadImage(str(phantom_cohort.cohort_dir / row["mask_relpath"]))  # the truth mask lies on the FLAIR grid
    mask = sitk.ReadImage(str(out))
    assert mask.GetSize() == reference.GetSize()
    assert np.allclose(mask.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    assert np.allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    assert np.allclose(mask.GetDirection(), reference.GetDirection(), atol=1e-5)
    assert set(np.unique(sitk.GetArrayFromImage(mask)).tolist()) <= {0, 1}
    table = pd.read_csv(tmp_path / "seg" / "mask_lesions.csv")
    assert list(table.columns[:3]) == ["lesion_id", "voxels", "volume_mm3"] and len(table) == got["lesion_count"]
    assert table["volume_mm3"].sum() / 1000 == pytest.approx(got["total_volume_ml"], abs=1e-5)
    assert 0.0 <= got["max_probability"] <= 1.0
    # the mask is ready for compare against the rater's
    assert run("compare", str(phantom_cohort.cohort_dir / row["mask_relpath"]), str(out), "--json").exit_code == 0


@pytest.mark.slow
def test_segment_refuses_what_it_cannot_do(phantom_cohort, tiny_model, tmp_path):
    r = run("segment", str(phantom_cohort.cohort_dir), "--model", str(tiny_model), "--out", str(tmp_path / "m.nii.gz"))
    assert r.exit_code == 2 and "holds 3 sessions" in r.stderr and "give the folder of one session" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("segment", str(empty), "--model", str(tiny_model), "--out", str(tmp_path / "m.nii.gz"))
    assert r.exit_code == 2 and "no usable images" in r.stderr
    r = run("segment", str(empty), "--model", str(tiny_model), "--out", str(tmp_path / "m.mha"))
    assert r.exit_code == 2 and "give a NIfTI file name" in r.stderr
