"""Versioned pydantic models for everything lesionflow writes.

Every model carries ``schema_version``; readers validate on read and refuse a
different major version with a message that says how to migrate (see ``LAYOUT.md``).
No model has a field for a name, birth date, patient ID or accession number:
identifiers are keyed-hash pseudonyms (``sub-…``/``ses-…``), source paths are sealed
(``src:…``/``root:…`` tokens, :mod:`pipeline.core.lineage`, schema 1.4) and free-text
descriptions are cleaned (:mod:`pipeline.core.descriptors`). ``storage_schemas/LAYOUT.md`` ("What
is stored about the sources") lists every field and why it is safe.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = "1.6"
"""Version of the store layout and of every model below (major.minor)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Versioned(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: str = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _readable(cls, v: str) -> str:
        major, minor = (int(x) for x in v.split("."))
        code_major, code_minor = (int(x) for x in SCHEMA_VERSION.split("."))
        if major != code_major:
            raise ValueError(
                f"schema_version {v} is not readable by this lesionflow (schema {SCHEMA_VERSION}); "
                "re-ingest into a new store or run the migration described in storage_schemas/LAYOUT.md"
            )
        if minor > code_minor:
            raise ValueError(f"schema_version {v} was written by a newer lesionflow (this one reads up to {SCHEMA_VERSION}); upgrade lesionflow")
        return v


GeometrySource = Literal["header", "configured_spacing", "unknown"]
"""Where a grid's geometry comes from (schema 1.6); see :attr:`Geometry.source`."""


class Geometry(BaseModel):
    """Voxel-to-world geometry of a stored grid (LPS, mm, ITK (x, y, z) order)."""

    model_config = ConfigDict(extra="forbid")
    shape_zyx: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = Field(description="row-major 3x3 direction cosines; column i = voxel axis i in LPS")
    affine_lps: tuple[float, ...] = Field(description="row-major 4x4, voxel index (x,y,z) → LPS mm")
    affine_ras: tuple[float, ...] = Field(description="row-major 4x4, voxel index (x,y,z) → RAS mm (NIfTI convention)")
    orientation: str = Field(description="RAS-convention axis code like nibabel's aff2axcodes, e.g. 'LPS'")
    source: GeometrySource = Field("header", description="where the geometry comes from (schema 1.6): 'header' (the files'), "
                                   "'configured_spacing' (a slice stack with slice_stack.spacing_mm; orientation unknown) or "
                                   "'unknown' (unit spacing assumed: lesion sizes in voxels, not mm³)")


class SourceFile(BaseModel):
    """One input that contributed to a stored case: its sealed path, digest, size and time."""

    model_config = ConfigDict(extra="forbid")
    relpath: str = Field(description="the path relative to the ingest folder, sealed (a 'src:' token, schema 1.4; "
                                     "stores written before hold it in the clear); `lesionflow lineage` opens it with the key")
    sha256: str
    size_bytes: int
    mtime_ns: int | None = Field(None, description="modification time when hashed; unchanged size+mtime lets a rerun reuse sha256 (schema 1.1; "
                                                   "not written since 1.4: stat_tag)")
    stat_tag: str | None = Field(None, description="keyed HMAC of (size, mtime) when hashed, in place of the time (schema 1.4; "
                                                   "pipeline.core.lineage.stat_tag); an unchanged tag lets a rerun reuse sha256")


class ChannelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modality: str
    source_format: Literal["dicom", "nifti", "metaimage", "slicestack"]
    source_series: str = Field(description="'series-<SeriesNumber>' for DICOM, 'file <cleaned name stem>' for image files, "
                                           "'slice stack plane <i>' for a plane of a numbered TIFF slice stack (schema 1.6)")
    series_description: str | None = Field(None, description="SeriesDescription (else ProtocolName) after clean_descriptor (schema 1.4)")
    native_spacing: tuple[float, float, float]
    native_shape_zyx: tuple[int, int, int]
    native_orientation: str
    sources: list[SourceFile]
    intensity_mean: float
    intensity_std: float
    intensity_p01: float
    intensity_p99: float
    present: bool = True


class ReasonCode(StrEnum):
    """Why an input (or a whole session) was rejected or left unused, as a machine-readable code:
    one value per decision that discovery, the readers and the ingest make. ``CatalogRow.reason``
    says the same in words (with the file's particulars); group and filter by the code.

    Example:
        >>> ReasonCode("label_off_grid") is ReasonCode.LABEL_OFF_GRID, f"{ReasonCode.NOT_3D}"
        (True, 'not_3d')
    """

    # a file that cannot be read (discovery, readers)
    UNREADABLE = "unreadable"
    """the file cannot be opened or its header parsed"""
    EMPTY_FILE = "empty_file"
    """zero bytes"""
    UNSUPPORTED_FORMAT = "unsupported_format"
    """an image format lesionflow does not read (.nrrd, .mgz, …)"""
    NOT_DICOM = "not_dicom"
    """named like DICOM (.dcm, .ima, no extension) but not DICOM"""
    NOT_AN_IMAGE = "not_an_image"
    """DICOM without an image (structured report, DICOMDIR in a series), or not a NIfTI image"""
    TRUNCATED = "truncated"
    """the file ends early (header or pixel data cut short)"""
    CORRUPT = "corrupt"
    """damaged content, e.g. named .gz but not gzip-compressed"""
    NO_PIXEL_DATA = "no_pixel_data"
    """DICOM without a PixelData element"""
    NO_DECODER = "no_decoder"
    """compressed DICOM pixel data and no decoder installed for its transfer syntax"""
    DECODE_FAILED = "decode_failed"
    """pixel data present but not decodable"""
    UNSUPPORTED_IMAGE = "unsupported_image"
    """an image kind not supported: colour, multi-component, more than 4-D, multi-echo multi-frame"""
    GEOMETRY_UNKNOWN = "geometry_unknown"
    """no usable voxel-to-world geometry (no position/orientation/spacing, no sform/qform, degenerate)"""
    NON_FINITE_VOXELS = "non_finite_voxels"
    """NaN or infinite voxel values"""
    MISSING_DATA_FILE = "missing_data_file"
    """a MetaImage header whose data file is missing"""
    TOO_LARGE = "too_large"
    """the header declares more voxels, bytes or files than a reader limit allows (``ReadLimits``)"""
    OUTSIDE_SOURCE = "outside_source"
    """a header names a data file outside the header's own folder"""
    NOT_REGULAR_FILE = "not_regular_file"
    """a device, FIFO, socket or folder where a regular file was expected"""
    # DICOM series assembly (readers)
    NO_SERIES_UID = "no_series_uid"
    """no SeriesInstanceUID: cannot be grouped into a series"""
    EMPTY_SERIES = "empty_series"
    """a series without images"""
    INCONSISTENT_SERIES = "inconsistent_series"
    """mixed orientation, matrix, pixel spacing or pixel type within one series"""
    MISSING_SLICE = "missing_slice"
    """a gap in the slice positions"""
    DUPLICATE_SLICE = "duplicate_slice"
    """two images at one position and time point"""
    INCOMPLETE_4D = "incomplete_4d"
    """a 4-D series with a slice missing from some volumes"""
    # sessions and modalities (discovery): mostly "unused", not errors
    UNASSIGNABLE = "unassignable"
    """a file that cannot be assigned to one session"""
    NO_MODALITY_RULE = "no_modality_rule"
    """no modality rule matched the series or file name"""
    MODALITY_NOT_CONFIGURED = "modality_not_configured"
    """a recognised modality that is not among the configured channels"""
    LOCALIZER = "localizer"
    """a localizer / scout series"""
    DERIVED = "derived"
    """a derived or secondary image (reformat, map, screenshot)"""
    MOSAIC = "mosaic"
    """a Siemens mosaic (EPI: fMRI, diffusion, field map)"""
    NOT_3D = "not_3d"
    """a 4-D series or image (fMRI, diffusion, perfusion), not a structural scan"""
    # session conversion (ingest)
    DUPLICATE_MODALITY = "duplicate_modality"
    """another input of the same modality in the session was used"""
    SUBSTITUTED_CHANNEL = "substituted_channel"
    """a slice-stack plane that is a copy of another plane (the data set's stand-in for a missing sequence): absent"""
    INCOMPLETE_STACK = "incomplete_stack"
    """a numbered slice stack with slices missing, slices of different sizes, or mask slices without images"""
    BAD_TRANSFORM = "bad_transform"
    """the registration transform supplied with an image cannot be read"""
    LABEL_OFF_GRID = "label_off_grid"
    """a lesion mask that lies on no image grid of its session (see ``label_on_grid``)"""
    LABEL_NOT_BINARY = "label_not_binary"
    """a lesion mask with values other than 0 and 1"""
    NO_READABLE_IMAGE = "no_readable_image"
    """session: every image input of a configured channel was rejected"""
    LABEL_ONLY = "label_only"
    """session: a lesion mask and no image"""
    NO_STRUCTURAL_IMAGE = "no_structural_image"
    """session: no input of a configured channel (only localizers, 4-D series, unmapped series…)"""
    INTERNAL_ERROR = "internal_error"
    """a bug in lesionflow while converting the session (please report it)"""
    WORKER_DIED = "worker_died"
    """session: the Dask worker converting it died twice (out of memory past the worker's memory
    limit, or a crash in a native library); the rest of the cohort was converted"""


ReasonCodeValue = Literal[tuple(code.value for code in ReasonCode)]  # type: ignore[valid-type]
"""The values of :class:`ReasonCode` as a ``Literal`` (string-typed in the catalog's Arrow
schema, which maps ``Literal`` annotations to ``string``)."""


class CatalogRow(_Versioned):
    """One row of the catalog: a case × modality, or a rejected/unused input with its reason.

    Machine-readable outcomes beside the human ones (schema 1.2): ``reason_code`` next to
    ``reason``; the native grid as numbers (``shape_*``, ``spacing_*_mm``, ITK x, y, z order) next
    to the display strings ``shape_zyx`` / ``spacing_mm``; ``label_on_grid`` for lesion-mask rows.
    Rows written by schema 1.1 read with these fields empty. Schema 1.4 seals the source paths
    (``source_relpath``, ``source_root``) and keeps no path or identifier in ``reason``.
    """

    case_id: str | None = None
    subject: str | None = None
    session: str | None = None
    modality: str | None = None
    status: Literal["converted", "skipped", "rejected", "unused"]
    reason: str | None = None
    reason_code: ReasonCodeValue | None = Field(None, description="ReasonCode of a rejected/unused row (schema 1.2)")
    source_format: str | None = None
    source_relpath: str = Field(description="the input's path relative to the ingest folder, sealed (a 'src:' token, schema 1.4; "
                                            "a DICOM series' folder ends in '/'); stores written before hold it in the clear")
    source_root: str | None = Field(None, description="the ingest folder of the run, sealed (a 'root:' token, schema 1.4)")
    source_sha256: str | None = None
    shape_zyx: str | None = Field(None, description="display text 'ZxYxX'; use shape_x/_y/_z")
    spacing_mm: str | None = Field(None, description="display text 'XxYxZ' (mm); use spacing_x_mm/_y_mm/_z_mm")
    shape_x: int | None = Field(None, description="native matrix size along x (columns), voxels (schema 1.2)")
    shape_y: int | None = None
    shape_z: int | None = None
    spacing_x_mm: float | None = Field(None, description="native voxel spacing along x, mm (schema 1.2)")
    spacing_y_mm: float | None = None
    spacing_z_mm: float | None = None
    label_on_grid: bool | None = Field(None, description="lesion-mask rows: whether the mask lies on the native grid of one of the session's images (schema 1.2)")
    orientation: str | None = None
    geometry_source: str | None = Field(None, description="'header', 'configured_spacing' or 'unknown' (Geometry.source; schema 1.6)")
    intensity_mean: float | None = None
    intensity_std: float | None = None
    pipeline_version: str
    config_hash: str
    run_id: str
    recorded_at: datetime = Field(default_factory=utcnow)


class CaseMeta(_Versioned):
    """Metadata of one stored case (one subject session), kept in the case group's attributes."""

    case_id: str
    subject: str
    session: str
    channels: list[str]
    channel_info: list[ChannelInfo]
    has_label: bool
    label_source: SourceFile | None = None
    geometry: Geometry
    source_fingerprint: str = Field(description="sha256 over the sorted (sealed path, digest) pairs of the sources")
    source_root: str | None = Field(None, description="the ingest folder it was converted from, sealed (a 'root:' token, schema 1.4)")
    config_hash: str
    pipeline_version: str
    run_id: str | None = None
    catalog_rows: list[CatalogRow] = Field(default_factory=list, description="the catalog rows of this conversion, committed with the case")
    created_at: datetime = Field(default_factory=utcnow)


class LesionRow(_Versioned):
    """One connected lesion component of a mask (predicted or reference)."""

    case_id: str
    subject: str
    session: str
    model_version: str
    lesion_id: int
    voxels: int
    volume_mm3: float | None = Field(description="mm³; None when the case's geometry is unknown (a slice stack without a configured spacing; schema 1.6)")
    centroid_x_mm: float = Field(description="LPS world x of the component centroid, mm (voxel index when the geometry is unknown)")
    centroid_y_mm: float
    centroid_z_mm: float
    bbox_min_zyx: str = Field(description="inclusive voxel bounding box, 'z,y,x'")
    bbox_max_zyx: str


class CaseVolumeRow(_Versioned):
    """One row per (case, model version): the lesion load."""

    case_id: str
    subject: str
    session: str
    model_version: str
    total_volume_ml: float | None = Field(description="mL; None when the case's geometry is unknown (schema 1.6): use total_voxels")
    lesion_count: int
    connectivity: int
    min_lesion_mm3: float
    voxel_volume_mm3: float | None = Field(description="mm³ per voxel; None when the geometry is unknown")
    total_voxels: int | None = Field(None, description="lesion voxels in all (schema 1.6)")
    geometry_source: str | None = Field(None, description="Geometry.source of the case (schema 1.6): 'unknown' means sizes in voxels only")
    source_fingerprint: str = Field(description="lineage: the case's source fingerprint (see the catalog for its files)")
    config_hash: str
    scored_at: datetime = Field(default_factory=utcnow)


class StoreManifest(_Versioned):
    """Store-level manifest at ``<store>/zarr.json`` attributes['lesionflow']."""

    kind: Literal["lesionflow-store"] = "lesionflow-store"
    created_at: datetime = Field(default_factory=utcnow)
    pipeline_version: str
    layout_doc: str = "storage_schemas/LAYOUT.md"
    channels: list[str] | None = Field(
        None, description="modalities stacked into each case's image, in order, as ingest was configured; None: not recorded (schema < 1.2)")


# ------------------------------------------------------------------------------ evaluation (schema 1.3)
class EvaluationCaseRow(_Versioned):
    """One row per (case, model version): a prediction against the case's reference label.

    Voxel-wise figures use every lesion voxel; lesion-wise ones follow the two detection rules
    (``msseg_*``: MSSEG-1 as Anima's analyzer, 6-connected, lesions > 3 mm³; ``isles_*``:
    ISLES'22, 26-connected, any overlap). NaN where a figure is undefined (see
    :mod:`pipeline.lesions.evaluation`).
    """

    case_id: str
    subject: str
    session: str
    model_version: str
    has_reference: bool = Field(description="the case holds a reference label; without one every figure is NaN")
    split: Literal["train", "validation", "unseen", "unknown"] = Field(
        "unknown", description="the case's part in this model's training (its model.json); unknown without one")
    voxel_volume_mm3: float
    dice: float
    hd95_mm: float = Field(description="95th-percentile symmetric surface distance, mm; NaN when exactly one mask is empty")
    volume_ref_ml: float
    volume_pred_ml: float
    volume_diff_ml: float = Field(description="predicted minus reference total lesion volume, mL")
    abs_volume_error_ml: float
    rel_volume_error_pct: float = Field(description="100 x (pred - ref) / ref; NaN when the reference is empty")
    has_lesion: bool = Field(description="case-level truth: the reference has at least one lesion voxel")
    case_score: float = Field(description="case-level 'is there a lesion?' score (see case_score_kind)")
    case_score_kind: Literal["predicted_volume_ml", "max_probability", "predicted_voxels"] = Field(
        description="predicted_voxels where the geometry is unknown (schema 1.6)")
    voxels_ref: int | None = Field(None, description="reference lesion voxels (schema 1.6; None in tables written before it)")
    voxels_pred: int | None = Field(None, description="predicted lesion voxels (schema 1.6; None in tables written before it)")
    geometry_source: str | None = Field(None, description="Geometry.source of the case (schema 1.6): 'unknown' means the mm, mm³ "
                                        "and mL figures are NaN, sizes in voxels only")
    msseg_ref_lesions: int
    msseg_pred_lesions: int
    msseg_tp_ref: int = Field(description="reference lesions detected")
    msseg_tp_pred: int = Field(description="predicted lesions that detect the reference (the symmetric rule)")
    msseg_sensitivity: float
    msseg_precision: float
    msseg_f1: float
    isles_ref_lesions: int
    isles_pred_lesions: int
    isles_tp_ref: int
    isles_tp_pred: int
    isles_sensitivity: float
    isles_precision: float
    isles_f1: float
    evaluated_at: datetime = Field(default_factory=utcnow)


class EvaluationLesionRow(_Versioned):
    """One lesion of the reference or of the prediction of a case, as a detection rule sees it."""

    case_id: str
    model_version: str
    rule: Literal["msseg", "isles"]
    side: Literal["reference", "prediction"]
    lesion_id: int = Field(description="1 = largest lesion of that side under that rule's connectivity and size floor")
    voxels: int
    volume_mm3: float
    overlap_fraction: float = Field(description="fraction of its voxels covered by the other side's lesions")
    outside_fraction: float = Field(description="fraction of its voxels outside the other side's lesions (1 - overlap_fraction)")
    detected: bool = Field(description="reference side: detected; prediction side: a true-positive prediction")


class EvaluationSliceRow(_Versioned):
    """One slice (array axis 0 of the stored grid) of a case: slice-level 'is there a lesion?'."""

    case_id: str
    model_version: str
    z: int
    has_lesion: bool
    ref_area_mm2: float
    pred_area_mm2: float
    score: float = Field(description="predicted lesion area (mm²) or the slice's maximum probability, as the case score")


class EvaluationCohortRow(_Versioned):
    """One row per model version: the cohort's figures (means over cases with reference lesions,
    lesion counts pooled over cases, ROC AUC over cases and over slices)."""

    model_version: str
    n_cases: int
    n_with_lesions: int
    n_lesion_free: int
    n_train_cases: int = Field(0, description="cases among n_cases the model was trained on (figures include them)")
    dice_mean: float
    dice_median: float
    dice_sd: float
    hd95_mean_mm: float
    hd95_median_mm: float
    abs_volume_error_ml_mean: float
    rel_volume_error_pct_mean: float = Field(description="mean of the signed relative volume errors, %")
    abs_rel_volume_error_pct_mean: float
    volume_pearson_r: float
    volume_spearman_rho: float
    bland_altman_bias_ml: float = Field(description="mean of (pred - ref) total lesion volume, mL")
    bland_altman_loa_low_ml: float = Field(description="bias - 1.96 SD of the differences")
    bland_altman_loa_high_ml: float
    msseg_ref_lesions: int
    msseg_pred_lesions: int
    msseg_tp_ref: int
    msseg_tp_pred: int
    msseg_sensitivity: float = Field(description="pooled over cases: detected reference lesions / reference lesions")
    msseg_precision: float
    msseg_f1: float
    msseg_f1_case_mean: float
    isles_ref_lesions: int
    isles_pred_lesions: int
    isles_tp_ref: int
    isles_tp_pred: int
    isles_sensitivity: float
    isles_precision: float
    isles_f1: float
    isles_f1_case_mean: float
    case_score_kind: str
    case_auc: float = Field(description="ROC AUC of the case score against has_lesion; NaN without both classes")
    slice_auc: float
    n_slices: int
    rules_json: str = Field(description="the detection rules' parameters as used (JSON)")
    evaluated_at: datetime = Field(default_factory=utcnow)


# ------------------------------------------------------------------------------ augmentation bank (schema 1.4)
class BankSample(BaseModel):
    """One stored sample of an augmentation bank: its seed and every parameter drawn from it (schema 1.4)."""

    model_config = ConfigDict(extra="forbid")
    index: int = Field(description="position along the bank's first axis")
    seed: int = Field(description="63-bit seed the parameters were drawn from (pipeline.prepare.augment.sample_seed)")
    kind: Literal["lesion", "background"]
    centre_zyx: tuple[int, int, int] = Field(description="source voxel (z, y, x) the sample is centred on")
    rotation_rad: tuple[float, float, float] | None = Field(None, description="angles about array axes 0, 1, 2 (MONAI rotate_params); None: no rotation")
    scale: tuple[float, float, float] | None = Field(None, description="per-axis scale (> 1: anatomy smaller); None: no scaling")
    elastic: dict[str, float | int] | None = Field(None, description="MONAI Rand3DElasticd sigma, magnitude and seed (2-D banks: its algorithm in the slice plane); None: no elastic deformation")
    lowres_zoom: list[float | None] = Field(default_factory=list, description="per stored channel: zoom of the simulated low resolution, or None")
    matrix_zyx: tuple[float, ...] = Field(description="row-major 4x4: sample voxel (z, y, x, 1) -> source voxel (elastic displacement on top)")
    lesion_voxels: int = Field(description="label voxels in the sample")


class AugmentBank(_Versioned):
    """An augmentation bank: ``cases/<case_id>/augment`` group attributes['lesionflow_bank'] (schema 1.4).

    Up to date while ``bank_config_hash``, ``source_fingerprint`` and ``case_config_hash`` match the
    requested config and the case; anything else is rebuilt by ``prepare``.
    """

    bank_id: str
    case_id: str
    bank_config: dict = Field(description="pipeline.prepare.augment.BankConfig as used (JSON)")
    bank_config_hash: str
    source_fingerprint: str = Field(description="the case's source fingerprint when the bank was built")
    case_config_hash: str = Field(description="the case's pipeline config hash when the bank was built")
    channels: list[str] = Field(description="channels of the stored image axis 1, in order")
    patch_zyx: tuple[int, int, int]
    n_samples: int
    n_lesion: int
    dtype: Literal["int16", "float16"]
    scale: float = Field(description="stored value x scale = z-scored intensity (1.0 for float16)")
    compressor: str
    image_bytes: int = Field(description="compressed bytes of the image array (all samples)")
    label_bytes: int = Field(description="compressed bytes of the label array")
    build_seconds: float
    pipeline_version: str
    created_at: datetime = Field(default_factory=utcnow)
    samples: list[BankSample]

    @property
    def bytes_stored(self) -> int:
        return self.image_bytes + self.label_bytes


# ------------------------------------------------------------------------------ longitudinal change (schema 1.5)
class VisitRow(_Versioned):
    """One row per case of the ``visits`` table: where the session stands in its subject's timeline.

    No date is stored: only the order and the days since the subject's first visit (when every
    visit of the subject had a date). ``order_source`` says what ordered them: ``study_date``
    (DICOM StudyDate), ``scans_tsv`` (BIDS ``*_scans.tsv`` acq_time), ``config`` (``PipelineConfig.visit_days``), ``label`` (BIDS ``ses-``
    labels or file-name prefixes such as ``study1``/``study2`` in natural order; days unknown).
    """

    case_id: str
    subject: str
    session: str
    visit_index: int = Field(description="0 = the subject's first visit")
    days_since_first: int | None = Field(None, description="days since the subject's first visit; None when a visit had no date")
    order_source: Literal["study_date", "scans_tsv", "config", "label"]
    common_transform: str | None = Field(None, description="supplied ITK transform (JSON: type, parameters, fixed parameters) mapping "
                                                           "points of the subject's common space into this session's reference image")
    common_transform_sha256: str | None = None
    run_id: str


class Registration(BaseModel):
    """How a follow-up was brought onto its pair's grid: the transform (pair-grid points → the
    session's points, ITK convention) and how well the images agree after it."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["supplied", "rigid", "rigid+affine", "identity"]
    baseline_transform: str | None = Field(None, description="JSON ITK transform, pair grid → baseline image; None = identity")
    followup_transform: str | None = Field(None, description="JSON ITK transform, pair grid → follow-up image; None = identity")
    mattes_mi: float | None = Field(None, description="final Mattes mutual information of the registration (lower is better); "
                                                      "None for supplied transforms")
    ncc: float = Field(description="normalised cross-correlation of the two FLAIR images on the pair grid within the common brain mask")
    seconds: float = 0.0


class PairMeta(_Versioned):
    """A (baseline, follow-up) pair of one subject: ``pairs/<pair_id>`` attributes['lesionflow_pair'] (schema 1.5)."""

    pair_id: str
    subject: str
    baseline_case: str
    followup_case: str
    interval_days: int | None = Field(None, description="days between the two visits; None when unknown")
    geometry: Geometry = Field(description="the pair grid: the expert change mask's grid when one was ingested, else the baseline case's")
    grid: Literal["expert", "baseline"]
    expert_source: SourceFile | None = Field(None, description="the expert change mask's source (sealed path, digest)")
    registration: Registration | None = None
    created_at: datetime = Field(default_factory=utcnow)


class ChangePairRow(_Versioned):
    """One row per (pair, method, model) of the ``change_pairs`` table: counts and volumes per class,
    the registration and, where an expert change mask exists, the evaluation against it."""

    pair_id: str
    subject: str
    baseline_case: str
    followup_case: str
    interval_days: int | None = None
    method: Literal["model", "subtraction"]
    model_version: str = Field(description="the model whose masks were compared; 'subtraction' for the subtraction method")
    n_new: int
    n_enlarging: int
    n_shrinking: int
    n_disappeared: int
    n_stable: int
    n_new_or_enlarging: int
    new_ml: float
    enlarging_ml: float = Field(description="volume gained by enlarging lesions, mL")
    shrinking_ml: float = Field(description="volume lost by shrinking lesions, mL")
    disappeared_ml: float
    stable_ml: float
    connectivity: int
    min_size_mm3: float
    enlarge_fraction: float
    registration_method: str
    registration_ncc: float
    registration_mattes_mi: float | None = None
    has_expert: bool
    dice: float | None = None
    change_sensitivity: float | None = None
    fp_per_true_change: float | None = None
    expert_changes: int | None = None
    detected_changes: int | None = None
    change_fp: int | None = None
    computed_at: datetime = Field(default_factory=utcnow)


class ChangeLesionRow(_Versioned):
    """One tracked lesion of a pair (``change_lesions`` table): its class, volumes at both visits
    and its centroid (LPS mm, on the pair grid)."""

    pair_id: str
    method: str
    model_version: str
    track_id: int
    change: Literal["new", "enlarging", "shrinking", "disappeared", "stable"]
    baseline_lesions: int
    followup_lesions: int
    baseline_voxels: int
    followup_voxels: int
    baseline_mm3: float
    followup_mm3: float
    delta_mm3: float
    relative_change: float
    centroid_x_mm: float
    centroid_y_mm: float
    centroid_z_mm: float
