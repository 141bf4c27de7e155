"""Incremental ingest of DICOM studies: unchanged studies are not even re-read, every kind of
change is still picked up."""

from __future__ import annotations

import os
import shutil

import pydicom
import pytest

import pipeline.ingest.discover as discover_module
from pipeline.core.config import PipelineConfig
from pipeline.ingest import run_ingest
from pipeline.phantom import make_cohort
from pipeline.store import list_cases, read_case_meta

KEY = b"incremental-key"


@pytest.fixture()
def dicom_cohort(tmp_path):
    info = make_cohort(tmp_path / "phantom", n_subjects=3, seed=4, spacing_mm=4.0)
    return info, tmp_path / "store.zarr"


@pytest.fixture()
def parsed(monkeypatch):
    """The DICOM files whose headers discovery parses."""
    seen: list = []
    real = discover_module.scan_series_parallel

    def spy(files, pool=None, n_workers=None):
        seen.extend(files)
        return real(files, pool, n_workers)

    monkeypatch.setattr(discover_module, "scan_series_parallel", spy)
    return seen


def test_unchanged_studies_are_not_reread_and_changes_are_found(dicom_cohort, parsed):
    info, store = dicom_cohort
    cfg = PipelineConfig()
    first = run_ingest(info.cohort_dir, store, cfg, KEY)
    assert first.converted == 3
    study = info.cohort_dir / info.truth.loc[0, "session_dir"]
    (dicom_case,) = [c for c in list_cases(store) if read_case_meta(store, c).channel_info[0].source_format == "dicom"]

    parsed.clear()
    again = run_ingest(info.cohort_dir, store, cfg, KEY)
    assert (again.converted, again.skipped) == (0, 3)
    assert parsed == []  # not one DICOM header read: the localizer is accounted for too

    # same bytes, new mtime: headers are read again, digests recomputed, nothing re-converted
    flair = sorted((study / "s301_flair").iterdir())[3]
    st = flair.stat()
    os.utime(flair, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    parsed.clear()
    touched = run_ingest(info.cohort_dir, store, cfg, KEY)
    assert (touched.converted, touched.skipped) == (0, 3) and parsed

    # new bytes in one slice: that case is converted again
    ds = pydicom.dcmread(flair)
    arr = ds.pixel_array.copy()
    arr[0, 0] += 7
    ds.PixelData = arr.tobytes()
    ds.save_as(flair)
    changed = run_ingest(info.cohort_dir, store, cfg, KEY)
    assert (changed.converted, changed.skipped) == (1, 2) and changed.cases and dicom_case in list_cases(store)

    # a new file in the study folder: the study is planned again and the case re-converted
    shutil.copy(info.cohort_dir / info.truth.loc[2, "session_dir"] / "sub-PH002_ses-01_T2w.nii.gz", study / "extra_T2.nii.gz")
    parsed.clear()
    added = run_ingest(info.cohort_dir, store, cfg, KEY)
    assert parsed and added.converted == 1
    # and a removed series: the case is planned again without it
    shutil.rmtree(study / "s303_t2")
    (study / "extra_T2.nii.gz").unlink()
    removed = run_ingest(info.cohort_dir, store, cfg, KEY)
    assert removed.converted == 1
    assert read_case_meta(store, dicom_case).channels == ["FLAIR", "T1"]


def test_force_and_config_change_bypass_the_shortcut(dicom_cohort, parsed):
    info, store = dicom_cohort
    run_ingest(info.cohort_dir, store, PipelineConfig(), KEY)
    parsed.clear()
    forced = run_ingest(info.cohort_dir, store, PipelineConfig(), KEY, force=True)
    assert forced.converted == 3 and parsed
    other = run_ingest(info.cohort_dir, store, PipelineConfig(target_spacing=(4.0, 4.0, 4.0)), KEY)
    assert other.converted == 3
