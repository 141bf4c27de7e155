"""Versioned pydantic models for everything lesionflow writes.

Every model carries ``schema_version``; readers validate on read and refuse a
different major version with a message that says how to migrate (see ``LAYOUT.md``).
No model has a field for a name, birth date, patient ID or accession number:
identifiers are keyed-hash pseudonyms (``sub-…``/``ses-…``), source paths are sealed
(``src:…``/``root:…`` tokens, :mod:`pipeline.core.lineage`, schema 1.3) and free-text
descriptions are cleaned (:mod:`pipeline.core.descriptors`). ``storage_schemas/LAYOUT.md`` ("What
is stored about the sources") lists every field and why it is safe.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = "1.3"
"""Version of the store layout and of every model below (major.minor)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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


class SourceFile(BaseModel):
    """One input that contributed to a stored case: its sealed path, digest, size and time."""

    model_config = ConfigDict(extra="forbid")
    relpath: str = Field(description="the path relative to the ingest folder, sealed (a 'src:' token, schema 1.3; "
                                     "stores written before hold it in the clear); `lesionflow lineage` opens it with the key")
    sha256: str
    size_bytes: int
    mtime_ns: int | None = Field(None, description="modification time when hashed; unchanged size+mtime lets a rerun reuse sha256 (schema 1.1)")


class ChannelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modality: str
    source_format: Literal["dicom", "nifti", "metaimage"]
    source_series: str = Field(description="'series-<SeriesNumber>' for DICOM, 'file <cleaned name stem>' for image files")
    series_description: str | None = Field(None, description="SeriesDescription (else ProtocolName) after clean_descriptor (schema 1.3)")
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


ReasonCodeValue = Literal[tuple(code.value for code in ReasonCode)]  # type: ignore[valid-type]
"""The values of :class:`ReasonCode` as a ``Literal`` (string-typed in the catalog's Arrow
schema, which maps ``Literal`` annotations to ``string``)."""


class CatalogRow(_Versioned):
    """One row of the catalog: a case × modality, or a rejected/unused input with its reason.

    Machine-readable outcomes beside the human ones (schema 1.2): ``reason_code`` next to
    ``reason``; the native grid as numbers (``shape_*``, ``spacing_*_mm``, ITK x, y, z order) next
    to the display strings ``shape_zyx`` / ``spacing_mm``; ``label_on_grid`` for lesion-mask rows.
    Rows written by schema 1.1 read with these fields empty. Schema 1.3 seals the source paths
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
    source_relpath: str = Field(description="the input's path relative to the ingest folder, sealed (a 'src:' token, schema 1.3; "
                                            "a DICOM series' folder ends in '/'); stores written before hold it in the clear")
    source_root: str | None = Field(None, description="the ingest folder of the run, sealed (a 'root:' token, schema 1.3)")
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
    source_root: str | None = Field(None, description="the ingest folder it was converted from, sealed (a 'root:' token, schema 1.3)")
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
    volume_mm3: float
    centroid_x_mm: float = Field(description="LPS world x of the component centroid, mm")
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
    total_volume_ml: float
    lesion_count: int
    connectivity: int
    min_lesion_mm3: float
    voxel_volume_mm3: float
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
