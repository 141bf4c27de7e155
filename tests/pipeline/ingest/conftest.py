"""Fixtures shared by the ingest tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.io.writers import write_nifti
from tests.session_factory import blob_image, lesion_mask_on, write_session


@pytest.fixture()
def cohort(tmp_path: Path) -> Path:
    """A small NIfTI cohort: a BIDS session, a plain folder, two sessions in one folder with a mask
    that belongs to neither, and a session whose only FLAIR is broken (plus a zero-byte file)."""
    src = tmp_path / "cohort"
    write_session(src / "bids" / "sub-01" / "ses-01" / "anat", "sub-01_ses-01_", seed=1)
    write_session(src / "site" / "patient02", "patient02_", seed=2)
    # two sessions in one folder (like the longitudinal MS data) plus a mask that belongs to neither
    write_session(src / "long" / "patient03", "study1_", seed=3, label=False)
    write_session(src / "long" / "patient03", "study2_", seed=4, label=False)
    write_nifti(lesion_mask_on(blob_image((12, 40, 40), (1.0, 1.0, 3.0))), src / "long" / "patient03" / "gt.nii.gz")
    # bad inputs
    bad = src / "site" / "patient04"
    bad.mkdir(parents=True)
    (bad / "patient04_FLAIR.nii.gz").write_bytes(b"this is not gzip")
    (bad / "IM0001").write_bytes(b"")
    return src
