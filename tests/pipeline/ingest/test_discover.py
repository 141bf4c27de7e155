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
    # the mask beside the two sessions is their change mask: the pair's label, not a rejected input (issue 15)
    assert "long/patient03/gt.nii.gz" not in reasons
    (pair,) = disc.pair_labels
    assert pair.relpath == "long/patient03/gt.nii.gz" and {s for _, s in pair.sessions} == {s.session for s in long_sessions}
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
