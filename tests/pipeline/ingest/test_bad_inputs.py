"""A cohort full of broken inputs: each gets a specific reason naming the file, the rest is
ingested, and the command exits with a summary rather than a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.core.volume import Volume
from pipeline.io.writers import write_nifti
from pipeline.store import list_cases, read_catalog
from storage_schemas.models import ReasonCode
from tests import dicom_factory as fac
from tests.sealed import reveal, reveal_text
from tests.session_factory import blob_image, write_session


def dicom_flair(folder: Path, study: str, n: int = 10) -> list[Path]:
    arr = (blob_image((n, 24, 24), (1.0, 1.0, 2.0)).array).astype(np.int16)
    return fac.write_series(folder, arr, spacing=(1.0, 1.0, 2.0), description="AX FLAIR", study_uid=study,
                            extra={"PatientID": f"PID-{study[-4:]}"})


@pytest.fixture()
def broken_cohort(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    src = tmp_path / "cohort"
    expected: dict[str, tuple[str, ReasonCode]] = {}  # relpath → (reason fragment, reason code)
    write_session(src / "good_nifti", "good_", seed=1)
    dicom_flair(src / "good_dicom" / "flair", "1.2.3.1000")

    files = dicom_flair(src / "truncated" / "flair", "1.2.3.1001")
    files[3].write_bytes(files[3].read_bytes()[:-40])
    expected[files[3].relative_to(src).as_posix()] = ("truncated", ReasonCode.TRUNCATED)

    files = dicom_flair(src / "nopixels" / "flair", "1.2.3.1002")
    d = pydicom.dcmread(files[4])
    del d.PixelData
    d.save_as(files[4])
    expected[files[4].relative_to(src).as_posix()] = ("no pixel data", ReasonCode.NO_PIXEL_DATA)

    files = dicom_flair(src / "gap" / "flair", "1.2.3.1003")
    files[5].unlink()
    expected[files[6].relative_to(src).as_posix()] = ("slice missing", ReasonCode.MISSING_SLICE)

    files = dicom_flair(src / "duplicate" / "flair", "1.2.3.1004")
    shutil.copy(files[2], files[2].with_name("copy.dcm"))
    expected["duplicate/flair/copy.dcm"] = ("duplicate slice", ReasonCode.DUPLICATE_SLICE)

    no_affine = src / "no_affine"
    no_affine.mkdir(parents=True)
    img = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, no_affine / "x_FLAIR.nii.gz")
    expected["no_affine/x_FLAIR.nii.gz"] = ("qform", ReasonCode.GEOMETRY_UNKNOWN)

    (src / "not_gzip").mkdir()
    (src / "not_gzip" / "y_FLAIR.nii.gz").write_bytes(b"plain text, not gzip")
    expected["not_gzip/y_FLAIR.nii.gz"] = ("gzip", ReasonCode.CORRUPT)

    (src / "mhd").mkdir()
    (src / "mhd" / "z_FLAIR.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = z_FLAIR.raw\n")
    expected["mhd/z_FLAIR.mhd"] = ("z_FLAIR.raw", ReasonCode.MISSING_DATA_FILE)

    (src / "zero").mkdir()
    (src / "zero" / "IM0001").write_bytes(b"")
    expected["zero/IM0001"] = ("zero-byte", ReasonCode.EMPTY_FILE)

    nan = blob_image((12, 40, 40), (1.0, 1.0, 3.0))
    arr = nan.array.copy()
    arr[5, 5, 5] = np.inf
    (src / "nan").mkdir()
    write_nifti(nan.with_array(arr), src / "nan" / "n_FLAIR.nii.gz")
    expected["nan/n_FLAIR.nii.gz"] = ("non-finite", ReasonCode.NON_FINITE_VOXELS)

    write_session(src / "offgrid", "o_", seed=3, label=False)
    flair = blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0))
    off_grid = Volume((flair.array > 110).astype(np.uint8), spacing=(1.0, 1.0, 2.0), origin=flair.origin)  # 2 mm, not 3 mm slices
    write_nifti(off_grid, src / "offgrid" / "o_lesion_mask.nii.gz")
    expected["offgrid/o_lesion_mask.nii.gz"] = ("label grid does not match", ReasonCode.LABEL_OFF_GRID)
    return src, expected


def test_every_bad_input_is_named_with_its_reason_and_the_rest_is_ingested(broken_cohort, tmp_path):
    src, expected = broken_cohort
    store = tmp_path / "store.zarr"
    env = {**os.environ, "LESIONFLOW_PSEUDONYM_KEY": "bad-input-test"}
    out = subprocess.run([sys.executable, "-m", "lesionflow.cli", "ingest", str(src), "--store", str(store), "--no-prefect", "--json", "--workers", "1"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    summary = json.loads(out.stdout)
    rejected = {reveal(r["path"], "bad-input-test"): r for r in summary["rejected_inputs"]}  # sealed paths
    for relpath, (fragment, code) in expected.items():
        assert relpath in rejected, f"{relpath} not reported; rejected: {sorted(rejected)}"
        assert fragment.lower() in reveal_text(rejected[relpath]["reason"], "bad-input-test").lower(), (relpath, rejected[relpath])
        assert rejected[relpath]["code"] == code, (relpath, rejected[relpath])
    # the good sessions (and the off-grid one, without its label) are in the store
    assert summary["converted"] == 3 and len(list_cases(store)) == 3
    # the catalog keeps every rejection with its reason
    cat = read_catalog(store)
    rej = cat[cat["status"] == "rejected"]
    assert set(expected) <= {reveal(p, "bad-input-test") for p in rej["source_relpath"]}
    assert rej["reason"].str.len().min() > 5
    # ... and its machine-readable code: every rejected or unused row has one
    outcome = cat[cat["status"].isin(["rejected", "unused"])]
    assert outcome["reason_code"].notna().all(), outcome[outcome["reason_code"].isna()][["source_relpath", "reason"]]
    codes = dict(zip((reveal(p, "bad-input-test") for p in rej["source_relpath"]), rej["reason_code"]))
    assert {p: codes[p] for p in expected} == {p: code.value for p, (_, code) in expected.items()}
    assert all(r["code"] for r in summary["rejected_inputs"] + summary["unused_inputs"])
