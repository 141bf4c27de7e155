from pathlib import Path

import pytest

from pipeline.core.config import DEFAULT_MODALITY_RULES as RULES
from pipeline.core.config import PipelineConfig
from pipeline.ingest.discover import _modality_of_file
from pipeline.ingest.modality import modality_of_filename, modality_of_series, unusable_series
from storage_schemas.models import ReasonCode


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
        ("T1_SPACE.nii.gz", "T1"),  # "ce" ending a word is not "contrast-enhanced"
        ("BraTS20_Training_001_t1ce.nii.gz", "T1POST"),
        ("BraTS20_Training_001_t1.nii.gz", "T1"),
        ("BraTS20_Training_001_flair.nii.gz", "FLAIR"),
        ("BraTS20_Training_001_seg.nii.gz", "MASK"),
        ("sub-01_ce-gadolinium_T1w.nii.gz", "T1POST"),  # the BIDS contrast entity
        ("sub-01_ce-gadolinium_FLAIR.nii.gz", "FLAIR"),
        ("sub-01_acq-mprage_T1w.nii.gz", "T1"),
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


# Series as scanners name them: (SeriesDescription, ProtocolName, SequenceName, ImageType) and what
# ingest makes of them: a modality, or the ReasonCode of an unused series. "OP" = ORIGINAL\PRIMARY.
OP = ("ORIGINAL", "PRIMARY", "M", "ND")
DERIVED = ("DERIVED", "SECONDARY")
REAL_WORLD_SERIES = [
    # Siemens
    ("t1_mprage_sag_p2_iso", "t1_mprage_sag_p2_iso", "*tfl3d1_16ns", OP, "T1"),
    ("t1_mprage_sag_p2_iso_post", "t1_mprage_sag_p2_iso_post", "*tfl3d1_16ns", OP, "T1POST"),
    ("t1_mprage_tra_KM", "t1_mprage_tra_KM", "*tfl3d1_16ns", OP, "T1POST"),  # Kontrastmittel
    ("MPRAGE", "", "", OP, "T1"),
    ("MPRAGE POST", "", "", OP, "T1POST"),
    ("MPRAGE pre", "", "", OP, "T1"),
    ("MPRAGE_GD", "", "", OP, "T1POST"),
    ("T1 SPACE", "", "", OP, "T1"),  # issue 10: "ce" closing "SPACE" made it T1POST
    ("t1_space_sag_p2_iso", "t1_space_sag_p2_iso", "*spc3d1_175ns", OP, "T1"),
    ("t1_space_sag_p2_iso_post", "t1_space_sag_p2_iso_post", "*spc3d1_175ns", OP, "T1POST"),
    ("T1 SPACE GD", "", "", OP, "T1POST"),
    ("t2_space_sag_p2_iso", "t2_space_sag_p2_iso", "*spc3d1_182ns", OP, "T2"),
    ("t2_space_dark-fluid_sag_p2_iso", "t2_space_dark-fluid_sag_p2_iso", "*spcir3d1_278ns", OP, "FLAIR"),
    ("t2_tse_tra_p2", "t2_tse_tra_p2", "*tse2d1_11", OP, "T2"),
    ("t2_tirm_tra_dark-fluid", "t2_tirm_tra_dark-fluid", "*tir2d1_15", OP, "FLAIR"),
    ("t2_flair_tra", "", "", OP, "FLAIR"),
    ("t2_blade_tra", "t2_blade_tra", "*tseR2d1_21", OP, "T2"),
    ("pd_tse_tra", "", "*tse2d1_5", OP, "PD"),
    ("t1_se_tra", "t1_se_tra", "*se2d1", OP, "T1"),
    ("t1_tse_tra", "t1_tse_tra", "*tse2d1_3", OP, "T1"),
    ("t1_se_tra_fs_post", "t1_se_tra_fs_post", "*se2d1", OP, "T1POST"),
    ("SWI_Images", "t2_swi_tra_p2_1.5mm", "*swi3d1r", OP, None),  # susceptibility, not T2
    ("Mag_Images", "t2_swi_tra_p2_1.5mm", "*swi3d1r", OP, None),
    ("t2_fl2d_tra_hemo", "t2_fl2d_tra_hemo", "*fl2d1", OP, None),  # FLASH T2*, not FLAIR nor T2
    ("ep2d_diff_mddw_20_p2", "ep2d_diff_mddw_20_p2", "*ep_b1000#1", OP, None),
    ("ep2d_diff_tra_TRACEW", "ep2d_diff_tra", "*ep_b1000t", DERIVED, ReasonCode.DERIVED),
    ("ep2d_diff_tra_ADC", "ep2d_diff_tra", "*ep_b0_1000", DERIVED, ReasonCode.DERIVED),
    ("localizer", "localizer", "*fl2d1", OP, ReasonCode.LOCALIZER),
    ("AAHead_Scout_64ch-head-coil", "AAHead_Scout_64ch-head-coil", "*fl3d1_ns", OP, ReasonCode.LOCALIZER),
    ("t1_mprage_sag_p2_iso_MPR_Tra", "t1_mprage_sag_p2_iso", "*tfl3d1_16ns", DERIVED, ReasonCode.DERIVED),
    # GE
    ("Sag 3D BRAVO", "", "efgre3d", OP, "T1"),
    ("Ax BRAVO +C", "", "efgre3d", OP, "T1POST"),
    ("SAG FSPGR BRAVO POST", "", "", OP, "T1POST"),
    ("3D FSPGR", "", "", OP, "T1"),
    ("Ax 3D FSPGR +C", "", "", OP, "T1POST"),
    ("Sag CUBE FLAIR", "", "", OP, "FLAIR"),
    ("Sag CUBE T2", "", "", OP, "T2"),
    ("Sag CUBE T1", "", "", OP, "T1"),
    ("Sag CUBE T1 +C", "", "", OP, "T1POST"),
    ("Ax T2 FSE", "", "", OP, "T2"),
    ("Ax T2 PROPELLER", "", "", OP, "T2"),
    ("Ax T2 FLAIR", "", "", OP, "FLAIR"),
    ("Ax T1 FLAIR", "", "", OP, "T1"),  # GE's T1 FLAIR is T1-weighted
    ("Sag T1 FLAIR +C", "", "", OP, "T1POST"),
    ("Ax T1 SE C+", "", "", OP, "T1POST"),
    ("AX T1 FS POST GAD", "", "", OP, "T1POST"),
    ("AX T1 PRE", "", "", OP, "T1"),
    ("Ax PD FSE", "", "", OP, "PD"),
    ("Ax SWAN", "", "", OP, None),
    ("Ax T2* GRE", "", "", OP, None),
    ("AX DWI 1000b", "", "", OP, None),
    ("Apparent Diffusion Coefficient (mm2/s)", "", "", DERIVED, ReasonCode.DERIVED),
    ("3-Plane Loc", "", "", OP, ReasonCode.LOCALIZER),
    # Philips
    ("3D T1 TFE", "", "", OP, "T1"),
    ("sT1W_3D_TFE", "", "", OP, "T1"),
    ("WIP sT1W_3D_TFE SENSE", "", "", OP, "T1"),
    ("T1W_3D_TFE +C", "", "", OP, "T1POST"),
    ("T1W_3D_TFE_Gd", "", "", OP, "T1POST"),
    ("T1W_SE", "", "", OP, "T1"),
    ("T1W_SE_Gd", "", "", OP, "T1POST"),
    ("T2W_TSE", "", "", OP, "T2"),
    ("T2W_FLAIR", "", "", OP, "FLAIR"),
    ("sT2W_FLAIR", "", "", OP, "FLAIR"),
    ("3D_FLAIR", "", "", OP, "FLAIR"),
    ("T2W_FFE", "", "", OP, None),  # T2* gradient echo
    ("DWI_SENSE", "", "", OP, None),
    ("dADC", "", "", DERIVED, ReasonCode.DERIVED),
    ("Survey", "", "", OP, ReasonCode.LOCALIZER),
    # post-contrast spellings, and what must not read as contrast
    ("T1+C", "", "", OP, "T1POST"),
    ("T1 +C", "", "", OP, "T1POST"),
    ("T1 GAD", "", "", OP, "T1POST"),
    ("T1 POST", "", "", OP, "T1POST"),
    ("T1 POSTCONTRAST", "", "", OP, "T1POST"),
    ("POST GAD T1", "", "", OP, "T1POST"),
    ("T1C", "", "", OP, "T1POST"),
    ("T1CE", "", "", OP, "T1POST"),
    ("T1Gd", "", "", OP, "T1POST"),
    ("T1 W/ CONTRAST", "", "", OP, "T1POST"),
    ("T1 gadolinium", "", "", OP, "T1POST"),
    ("T1 W/O CONTRAST", "", "", OP, "T1"),
    ("T1 pre-contrast", "", "", OP, "T1"),
    ("T1 non contrast", "", "", OP, "T1"),
    ("T1 MPRAGE Pearce", "", "", OP, "T1"),  # a surname ending in "ce"
    ("T1 SAG PRINCE", "", "", OP, "T1"),
    ("T1 POSTERIOR FOSSA", "", "", OP, "T1"),
    ("SAG T1 C-SPINE", "", "", OP, "T1"),
    ("T12 SAG T2", "", "", OP, "T2"),  # a vertebra, not T1
]


@pytest.mark.parametrize("description,protocol,sequence,image_type,expected", REAL_WORLD_SERIES,
                         ids=[f"{d}|{p}|{s}" for d, p, s, _, _ in REAL_WORLD_SERIES])
def test_real_world_series_descriptions(description, protocol, sequence, image_type, expected):
    """What discovery decides for a series: unusable (localizer, derived, ...) or the modality of the
    first default rule matching SeriesDescription, ProtocolName and SequenceName."""
    fields = {"SeriesDescription": description, "ProtocolName": protocol, "SequenceName": sequence}
    texts = {tuple(r.fields): " ".join(fields.get(f, "") for f in r.fields) for r in RULES}
    unusable = unusable_series(image_type, 1, description)
    got = unusable.code if unusable is not None else modality_of_series(texts, RULES)
    assert got == expected


def test_default_rules_are_hashed():
    """The rules shape stored data: other rules, another processing hash (a store is re-converted)."""
    other = PipelineConfig(modality_rules=RULES[:-1])
    assert other.processing_hash() != PipelineConfig().processing_hash()


def test_unusable_series_have_a_code_and_a_reason():
    assert unusable_series(("ORIGINAL", "PRIMARY", "LOCALIZER"), 1, "3-Plane Loc") == (ReasonCode.LOCALIZER, "localizer/scout series")
    code, reason = unusable_series(("ORIGINAL", "PRIMARY"), 10, "fMRI")
    assert code is ReasonCode.NOT_3D and "4-D" in reason
    code, reason = unusable_series(("DERIVED", "SECONDARY"), 1, "MPR")
    assert code is ReasonCode.DERIVED and "derived" in reason
    code, reason = unusable_series(("ORIGINAL", "PRIMARY", "MOSAIC"), 2, "ep2d")
    assert code is ReasonCode.MOSAIC and "mosaic" in reason
    assert unusable_series(("ORIGINAL", "PRIMARY", "M", "ND"), 1, "AX FLAIR") is None
