"""convert_tree: real GE/Siemens DICOM against dcm2niix's reference output, plus naming/rejections."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.io.convert import convert_tree, sanitise
from tests import dicom_factory as fac


def _reference_for(ref_dir: Path, sidecar: dict) -> Path:
    """GE series N ↔ DCM2NIIX_regression_test_N.nii; Siemens series N ↔ EPI_PE=*_N.nii."""
    n = sidecar["SeriesNumber"]
    pattern = f"DCM2NIIX_regression_test_{n}.nii" if sidecar["Manufacturer"] == "GE" else f"EPI_PE=*_{n}.nii"
    matches = sorted(ref_dir.glob(pattern))
    assert len(matches) == 1, (pattern, matches)
    return matches[0]


@pytest.fixture(scope="module")
def converted(shared_data, tmp_path_factory):
    src = shared_data / "dcm_qa_nih" / "In"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    out = tmp_path_factory.mktemp("converted")
    return convert_tree(src, out), shared_data / "dcm_qa_nih" / "Ref"


@pytest.mark.realdata
def test_every_series_matches_dcm2niix(converted):
    summary, ref_dir = converted
    assert summary.rejected == []
    assert len(summary.converted) == 8
    kinds = {"GE": 0, "Siemens": 0}
    for item in summary.converted:
        side = json.loads(Path(item["sidecar"]).read_text())
        kinds[side["Manufacturer"]] += 1
        ref_path = _reference_for(ref_dir, side)
        ours = nib.as_closest_canonical(nib.load(item["output"]))
        ref = nib.as_closest_canonical(nib.load(ref_path))
        assert ours.shape == ref.shape, ref_path.name
        expected_shape = (64, 64, 15, 10) if side["Manufacturer"] == "GE" else (72, 72, 5, 2)
        assert ref.shape == expected_shape
        np.testing.assert_array_equal(ours.get_fdata(), ref.get_fdata(), err_msg=ref_path.name)
        np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3, err_msg=ref_path.name)
        # sidecar fields shared with dcm2niix agree
        ref_side = json.loads(ref_path.with_suffix(".json").read_text())
        for key in ("SeriesNumber", "SeriesDescription", "ProtocolName", "Modality", "Manufacturer", "ManufacturersModelName",
                    "MagneticFieldStrength", "EchoTime", "RepetitionTime", "FlipAngle", "SliceThickness"):
            assert side[key] == pytest.approx(ref_side[key]) if isinstance(ref_side[key], float) else side[key] == ref_side[key], key
        assert side["ConversionSoftware"] == "lesionflow"
    assert kinds == {"GE": 4, "Siemens": 4}


@pytest.mark.realdata
def test_real_output_names_and_no_phi(converted):
    summary, _ = converted
    names = sorted(Path(i["output"]).relative_to(Path(i["output"]).parents[2]).as_posix() for i in summary.converted)
    assert "20180918GE/mr_0004/4_Axial_EPI-FMRI_Interleaved_I_to_S.nii.gz" in names
    assert "20180918Si/mr_0003/3_EPI_PE_AP.nii.gz" in names
    for item in summary.converted:
        text = Path(item["sidecar"]).read_text()
        assert "Regression" not in text and "DEV" not in json.loads(text).values()
        assert "1.2.840.113619" not in text and "1.3.12.2.1107" not in text


# ----------------------------------------------------------------------------- synthetic tree
def _tree(root: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 100, size=(4, 6, 5)).astype(np.int16)
    study = root / "patientA" / "study1"
    fac.write_series(study / "s2", arr, spacing=(1, 1, 2), series_number=2, description="AX T2/FLAIR (fs)")
    fac.write_series(study / "s3", arr, spacing=(1, 1, 2), series_number=3, description="T1 mprage", extension="")
    # two series with the same number and description in ONE folder → _2 suffix
    fac.write_series(study / "mixed", arr, spacing=(1, 1, 2), series_number=5, description="dup", prefix="A")
    fac.write_series(study / "mixed", arr, spacing=(1, 1, 2), series_number=5, description="dup", prefix="B")
    bad = fac.write_series(study / "s9", arr, spacing=(1, 1, 2), series_number=9, description="broken")
    bad[2].unlink()  # slice missing
    (study / "zero.dcm").write_bytes(b"")
    (study / "notes.txt").write_text("hello")
    files = root / "files" / "sub-01"
    files.mkdir(parents=True)
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    nib.save(img, str(files / "sub-01_FLAIR.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint8)), str(files / "mask.mhd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.uint8)), str(files / "lost.mhd"))
    (files / "lost.raw").unlink()
    bad_nan = np.ones((3, 3, 3), np.float32)
    bad_nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(bad_nan, np.eye(4)), str(files / "nan.nii"))


@pytest.mark.parametrize("workers", [1, 2])
def test_convert_tree_synthetic(tmp_path, monkeypatch, workers):
    # the tree is far below the sizes at which the pool is used: lower them so that 2 workers
    # scan headers and convert in the pool
    monkeypatch.setattr("pipeline.io.convert.PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr("pipeline.io.readers.dicom.PARALLEL_SCAN_MIN_FILES", 0)
    src, out = tmp_path / "src", tmp_path / "out"
    _tree(src)
    summary = convert_tree(src, out, workers=workers)
    outputs = sorted(Path(i["output"]).relative_to(out).as_posix() for i in summary.converted)
    assert outputs == [
        "files/sub-01/mask.nii.gz",
        "files/sub-01/sub-01_FLAIR.nii.gz",
        "patientA/study1/mixed/5_dup.nii.gz",
        "patientA/study1/mixed/5_dup_2.nii.gz",
        "patientA/study1/s2/2_AX_T2_FLAIR_fs.nii.gz",
        "patientA/study1/s3/3_T1_mprage.nii.gz",
    ]
    for item in summary.converted:
        assert Path(item["output"]).exists() and Path(item["sidecar"]).exists()
    reasons = {Path(r["path"]).name: r["reason"] for r in summary.rejected}
    assert reasons["zero.dcm"] == "empty file (0 bytes)"
    assert reasons["lost.mhd"].startswith("data file lost.raw")
    assert reasons["nan.nii"] == "1 non-finite voxels"
    assert any(r.startswith("slice missing between positions") for r in reasons.values())
    assert len(summary.rejected) == 4
    side = json.loads((out / "patientA/study1/s2/2_AX_T2_FLAIR_fs.json").read_text())
    assert side["SeriesNumber"] == 2 and "SYNTH001" not in json.dumps(side)
    vol = nib.load(out / "patientA/study1/s3/3_T1_mprage.nii.gz")
    assert vol.shape == (5, 6, 4) and vol.get_data_dtype() == np.int16


def test_convert_tree_missing_source(tmp_path):
    summary = convert_tree(tmp_path / "nope", tmp_path / "out")
    assert summary.converted == [] and summary.rejected[0]["reason"] == "source does not exist"


def test_sanitise():
    assert sanitise("Axial EPI-FMRI (Interleaved I to S)") == "Axial_EPI-FMRI_Interleaved_I_to_S"
    assert sanitise("EPI PE=AP") == "EPI_PE_AP"
    assert sanitise("../..//etc") == "etc"
    assert sanitise("") == ""
