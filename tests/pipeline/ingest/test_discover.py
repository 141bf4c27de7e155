"""Discovery: sessions from folders and DICOM studies, every input accounted for with a reason code."""

from __future__ import annotations

import numpy as np

from pipeline.core.config import PipelineConfig
from pipeline.ingest.discover import discover
from storage_schemas.models import ReasonCode
from tests import dicom_factory as fac

KEY = b"unit-test-key"


def test_discovery_groups_sessions_and_records_rejects(cohort):
    disc = discover(cohort, PipelineConfig(), KEY)
    by_root = {s.root_relpath: s for s in disc.sessions}
    assert set(by_root) == {"bids/sub-01/ses-01/anat", "site/patient02", "long/patient03", "site/patient04"}
    long_sessions = [s for s in disc.sessions if s.root_relpath == "long/patient03"]
    assert len(long_sessions) == 2 and len({s.subject for s in long_sessions}) == 1  # same subject, two sessions
    reasons = {r.relpath: (r.reason, r.code) for r in disc.rejected}
    assert reasons["site/patient04/IM0001"] == ("zero-byte file", ReasonCode.EMPTY_FILE)
    assert "several sessions" in reasons["long/patient03/gt.nii.gz"][0]
    assert reasons["long/patient03/gt.nii.gz"][1] is ReasonCode.UNASSIGNABLE
    # identifiers are pseudonyms, never folder names
    assert all(s.subject.startswith("sub-") and "patient" not in s.case_id for s in disc.sessions)


def test_unused_inputs_carry_their_reason_code(tmp_path):
    src = tmp_path / "study"
    img = np.zeros((4, 8, 8), np.int16)
    fac.write_series(src / "s1", img, series_number=1, description="AX FLAIR", study_uid="1.2.3.9")
    fac.write_series(src / "s2", img, series_number=2, description="3-Plane Loc", study_uid="1.2.3.9",
                     extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    fac.write_series(src / "s3", img, series_number=3, description="mystery", study_uid="1.2.3.9")
    fac.write_series(src / "s4", img, series_number=4, description="AX PD", study_uid="1.2.3.9")
    (plan,) = discover(src, PipelineConfig(), KEY).sessions
    codes = {i.series_description: i.unused_code for i in plan.items}  # descriptions as stored: cleaned (clean_descriptor)
    assert codes == {"AX FLAIR": None, "3 Plane Loc": ReasonCode.LOCALIZER, "": ReasonCode.NO_MODALITY_RULE,
                     "AX PD": ReasonCode.MODALITY_NOT_CONFIGURED}
    assert all(bool(i.unused_reason) == bool(i.unused_code) for i in plan.items)


def test_special_files_are_rejected_without_being_opened(tmp_path):
    """A FIFO named like a volume would block the digest's open() for ever, and a MetaImage data
    file that is /dev/zero (or lies outside the header's folder) would be hashed for ever (or read
    from another patient's folder): discovery rejects the first and never lists the others among
    the files to hash; the reader then rejects their headers, naming them."""
    import os

    src = tmp_path / "cohort"
    (src / "fifo").mkdir(parents=True)
    os.mkfifo(src / "fifo" / "p_FLAIR.nii.gz")
    (src / "dev").mkdir()
    (src / "dev" / "d_FLAIR.mhd").write_text("NDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = /dev/zero\n")
    (tmp_path / "DOE^JANE").mkdir()
    (tmp_path / "DOE^JANE" / "t1.raw").write_bytes(b"\0" * 128)
    (src / "out").mkdir()
    (src / "out" / "o_FLAIR.mhd").write_text("NDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = ../../DOE^JANE/t1.raw\n")
    disc = discover(src, PipelineConfig(), KEY)
    rejected = {r.relpath: r for r in disc.rejected}
    assert rejected["fifo/p_FLAIR.nii.gz"].code is ReasonCode.NOT_REGULAR_FILE and "FIFO" in rejected["fifo/p_FLAIR.nii.gz"].reason
    files = {rel for s in disc.sessions for i in s.items for rel in i.relpaths}
    assert files == {"dev/d_FLAIR.mhd", "out/o_FLAIR.mhd"}  # neither data file is hashed or listed
    assert all(str(p) not in ("/dev/zero",) and "DOE" not in str(p) for s in disc.sessions for i in s.items for p in i.paths)
