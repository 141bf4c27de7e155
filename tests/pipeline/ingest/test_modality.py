import pytest

from pipeline.core.config import DEFAULT_MODALITY_RULES as RULES
from pipeline.ingest.discover import _modality_of_file
from pipeline.core.config import PipelineConfig
from pipeline.ingest.modality import modality_of_filename, modality_of_series, unusable_series
from storage_schemas.models import ReasonCode
from pathlib import Path


@pytest.mark.parametrize(
    "name,expected",
    [
        ("sub-01_ses-02_FLAIR.nii.gz", "FLAIR"),
        ("sub-01_ses-02_T1w.nii.gz", "T1"),
        ("sub-01_ses-02_T2w.nii.gz", "T2"),
        ("sub-01_ses-02_label-lesion_mask.nii.gz", "MASK"),
        ("patient1_FLAIR.nii.gz", "FLAIR"),  # 't1' inside 'patient1' is not T1
        ("patient1_T1.mha", "T1"),
        ("patient1_T2.mha", "T2"),
        ("T1POST_brain.nii.gz", "T1POST"),
        ("consensus_gt.nii.gz", "MASK"),
        ("study1_T2W.nii.gz", "T2"),
        ("scan.nii.gz", None),
    ],
)
def test_filename_rules(name, expected):
    assert modality_of_filename(name, RULES) == expected


@pytest.mark.parametrize(
    "name,expected",
    [
        ("T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz", "T2"),
        ("T1POST_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz", "T1POST"),
        ("GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz", "MASK"),
        ("FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz", "FLAIR"),
    ],
)
def test_registration_suffixes_do_not_decide_modality(name, expected):
    assert _modality_of_file(Path(name), PipelineConfig()) == expected


@pytest.mark.parametrize(
    "description,expected",
    [("AX T2 FLAIR", "FLAIR"), ("SAG T1 MPRAGE", "T1"), ("AX T1 POST GD", "T1POST"), ("COR T2 TSE", "T2"), ("Axial EPI-FMRI", None)],
)
def test_series_rules(description, expected):
    texts = {tuple(r.fields): description for r in RULES}
    assert modality_of_series(texts, RULES) == expected


def test_unusable_series_have_a_code_and_a_reason():
    assert unusable_series(("ORIGINAL", "PRIMARY", "LOCALIZER"), 1, "3-Plane Loc") == (ReasonCode.LOCALIZER, "localizer/scout series")
    code, reason = unusable_series(("ORIGINAL", "PRIMARY"), 10, "fMRI")
    assert code is ReasonCode.NOT_3D and "4-D" in reason
    code, reason = unusable_series(("DERIVED", "SECONDARY"), 1, "MPR")
    assert code is ReasonCode.DERIVED and "derived" in reason
    code, reason = unusable_series(("ORIGINAL", "PRIMARY", "MOSAIC"), 2, "ep2d")
    assert code is ReasonCode.MOSAIC and "mosaic" in reason
    assert unusable_series(("ORIGINAL", "PRIMARY", "M", "ND"), 1, "AX FLAIR") is None
