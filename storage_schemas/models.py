"""Versioned pydantic models for everything lesionflow writes.

Every model carries ``schema_version``; readers validate on read and refuse a
different major version with a message that says how to migrate (see ``LAYOUT.md``).
No model has a field for a name, birth date, patient ID or accession number:
identifiers are keyed-hash pseudonyms (``sub-…``/``ses-…``).
"""

from __future__ import annotations

from datetime import datetime, timezone
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
    """One input that contributed to a stored case (path relative to the ingest root)."""

    model_config = ConfigDict(extra="forbid")
    relpath: str
    sha256: str
    size_bytes: int
    mtime_ns: int | None = Field(None, description="modification time when hashed; unchanged size+mtime lets a rerun reuse sha256 (schema 1.1)")


class ChannelInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modality: str
    source_format: Literal["dicom", "nifti", "metaimage"]
    source_series: str = Field(description="pseudonymised series key or file name stem")
    series_description: str | None = None
    native_spacing: tuple[float, float, float]
    native_shape_zyx: tuple[int, int, int]
    native_orientation: str
    sources: list[SourceFile]
    intensity_mean: float
    intensity_std: float
    intensity_p01: float
    intensity_p99: float
    present: bool = True


class CatalogRow(_Versioned):
    """One row of the catalog: a case × modality, or a rejected/unused input with its reason."""

    case_id: str | None = None
    subject: str | None = None
    session: str | None = None
    modality: str | None = None
    status: Literal["converted", "skipped", "rejected", "unused"]
    reason: str | None = None
    source_format: str | None = None
    source_relpath: str
    source_sha256: str | None = None
    shape_zyx: str | None = None
    spacing_mm: str | None = None
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
    source_fingerprint: str = Field(description="sha256 over the sorted source digests")
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


class BankSample(BaseModel):
    """One stored sample of an augmentation bank: its seed and every parameter drawn from it (schema 1.3)."""

    model_config = ConfigDict(extra="forbid")
    index: int = Field(description="position along the bank's first axis")
    seed: int = Field(description="63-bit seed the parameters were drawn from (pipeline.prepare.augment.sample_seed)")
    kind: Literal["lesion", "background"]
    centre_zyx: tuple[int, int, int] = Field(description="source voxel (z, y, x) the sample is centred on")
    rotation_rad: tuple[float, float, float] | None = Field(None, description="angles about array axes 0, 1, 2 (MONAI rotate_params); None: no rotation")
    scale: tuple[float, float, float] | None = Field(None, description="per-axis scale (> 1: anatomy smaller); None: no scaling")
    elastic: dict[str, float | int] | None = Field(None, description="MONAI Rand3DElasticd sigma, magnitude and seed; None: no elastic deformation")
    lowres_zoom: list[float | None] = Field(default_factory=list, description="per stored channel: zoom of the simulated low resolution, or None")
    matrix_zyx: tuple[float, ...] = Field(description="row-major 4x4: sample voxel (z, y, x, 1) -> source voxel (elastic displacement on top)")
    lesion_voxels: int = Field(description="label voxels in the sample")


class AugmentBank(_Versioned):
    """An augmentation bank: ``cases/<case_id>/augment`` group attributes['lesionflow_bank'] (schema 1.3).

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
