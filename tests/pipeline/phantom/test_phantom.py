"""The phantom cohort: determinism, real DICOM geometry, exact truth, lesion contrast, faults."""

from __future__ import annotations

import hashlib
import json

import cc3d
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from pipeline.phantom import anatomy as A
from pipeline.phantom import make_cohort


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_cohort(tmp_path / "a", n_subjects=3, seed=3, spacing_mm=4.0)
    b = make_cohort(tmp_path / "b", n_subjects=3, seed=3, spacing_mm=4.0)
    c = make_cohort(tmp_path / "c", n_subjects=3, seed=4, spacing_mm=4.0)
    files_a = sorted(p.relative_to(a.out) for p in a.out.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b.out) for p in b.out.rglob("*") if p.is_file())
    assert all(digest(a.out / f) == digest(b.out / f) for f in files_a)
    assert not a.truth.equals(c.truth)


def test_layout_dicom_tags_and_geometry(tmp_path):
    info = make_cohort(tmp_path, n_subjects=3, seed=1, spacing_mm=3.0)
    session = info.cohort_dir / info.truth.loc[0, "session_dir"]
    flair_files = sorted((session / "s301_flair").iterdir())
    ds = pydicom.dcmread(flair_files[0])
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert str(getattr(ds, tag))  # fake identifiers are present in the source
    assert (session / "s300_loc").is_dir() and (session / "lesion_mask.nii.gz").exists()
    loc = pydicom.dcmread(next((session / "s300_loc").iterdir()), stop_before_pixels=True)
    assert "LOCALIZER" in loc.ImageType
    # file names do not follow slice position: a reader has to sort by ImagePositionPatient
    normal = np.cross(np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float))
    proj = [float(np.dot(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient, normal)) for f in flair_files]
    assert proj != sorted(proj) and proj != sorted(proj, reverse=True)
    nii = nib.load(session / "lesion_mask.nii.gz")
    assert int(nii.header["sform_code"]) == 1 and int(nii.header["qform_code"]) == 1
    assert (info.cohort_dir / "metaimage/PH001/PH001_FLAIR.raw").exists()
    assert (info.cohort_dir / "bids/sub-PH002/ses-01/anat/sub-PH002_ses-01_T1w.nii.gz").exists()
    # the FLAIR series read by ITK/GDCM has exactly the grid we sampled
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(session / "s301_flair")))
    img = reader.Execute()
    grid = A.Grid.from_json(json.loads((info.out / "phantom.json").read_text())["subjects"][0]["grids"]["FLAIR"])
    np.testing.assert_allclose(img.GetSpacing(), grid.spacing, atol=1e-3)
    np.testing.assert_allclose(img.GetOrigin(), grid.origin, atol=1e-3)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)), grid.direction, atol=1e-3)
    assert A.Grid.from_json(json.loads((info.out / "phantom.json").read_text())["subjects"][0]["grids"]["FLAIR"]).direction[1, 2] != 0  # oblique


def test_truth_is_voxel_count_times_voxel_volume_and_components_are_lesions(tmp_path):
    info = make_cohort(tmp_path, n_subjects=3, seed=2, spacing_mm=3.0)
    lesions = pd.read_csv(info.truth_lesions_csv)
    for _, row in info.truth.iterrows():
        img = sitk.ReadImage(str(info.cohort_dir / row["mask_relpath"]))
        mask = sitk.GetArrayFromImage(img)
        voxel = float(np.prod(img.GetSpacing()))
        assert row["total_volume_ml"] == pytest.approx(mask.sum() * voxel / 1000, abs=1e-9)
        assert row["lesion_count"] == cc3d.connected_components(mask, connectivity=26, return_N=True)[1]
        assert lesions[lesions.subject_label == row["subject_label"]]["voxels"].sum() == mask.sum()


def test_lesions_are_bright_on_flair(tmp_path):
    info = make_cohort(tmp_path, n_subjects=3, seed=5, spacing_mm=3.0)
    row = info.truth.iloc[1]  # MetaImage subject: mask on the FLAIR grid
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(info.cohort_dir / "metaimage/PH001/PH001_FLAIR.mhd")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(info.cohort_dir / row["mask_relpath"])))
    assert flair[mask > 0].mean() > 1.5 * np.median(flair[flair > 0.2 * flair.max()])


def test_planted_faults(tmp_path):
    info = make_cohort(tmp_path, n_subjects=5, seed=0, spacing_mm=3.0, faults=["thick_slices", "missing_flair", "label_offgrid", "noisy"])
    assert set(info.faults) == {"thick_slices", "missing_flair", "label_offgrid", "noisy"}
    assert info.faults["thick_slices"] == "PH004" and "PH000" not in info.faults.values()  # one clean reference
    missing = info.truth.set_index("subject_label").loc[info.faults["missing_flair"]]
    assert not list((info.cohort_dir / missing["session_dir"]).glob("*FLAIR*"))
    with pytest.raises(ValueError, match="unknown phantom fault"):
        make_cohort(tmp_path / "x", n_subjects=3, faults=["bad"])


def test_rewriting_a_phantom_folder_leaves_no_stale_subjects_and_other_folders_are_refused(tmp_path):
    out = tmp_path / "ph"
    make_cohort(out, n_subjects=4, seed=1, spacing_mm=4.0)
    small = make_cohort(out, n_subjects=2, seed=1, spacing_mm=4.0)
    labels = sorted({p.name.split("_")[0].removeprefix("sub-") for fmt in ("dicom", "metaimage", "bids")
                     for p in (small.cohort_dir / fmt).glob("*")})
    assert labels == ["PH000", "PH001"] and len(small.truth) == 2
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an earlier phantom output"):
        make_cohort(mine, n_subjects=1, spacing_mm=4.0)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_lesion_free_subjects(tmp_path):
    """Lesion-free subjects have an empty mask and a zero truth row; the others are unchanged."""
    base = make_cohort(tmp_path / "base", n_subjects=3, seed=5, spacing_mm=4.0)
    info = make_cohort(tmp_path / "free", n_subjects=3, seed=5, spacing_mm=4.0, lesion_free=1)
    assert info.lesion_free == ["PH002"] and json.loads((info.out / "phantom.json").read_text())["lesion_free"] == ["PH002"]
    row = info.truth.set_index("subject_label").loc["PH002"]
    assert (row["lesion_count"], row["total_volume_ml"]) == (0, 0.0)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(info.cohort_dir / row["mask_relpath"])))
    assert mask.shape and not mask.any()
    pd.testing.assert_frame_equal(base.truth.iloc[:2], info.truth.iloc[:2])
    first = base.truth.loc[0, "mask_relpath"]
    assert digest(base.cohort_dir / first) == digest(info.cohort_dir / first)
    with pytest.raises(ValueError, match="lesion_free"):
        make_cohort(tmp_path / "bad", n_subjects=2, seed=5, lesion_free=2)
