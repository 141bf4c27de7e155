"""One typed configuration object, hashed into every artifact it shapes.

Only the fields that change stored voxels take part in :meth:`PipelineConfig.processing_hash`;
changing, say, the number of Dask workers does not re-convert a store.

Example:
    >>> cfg = PipelineConfig(target_spacing=(1.0, 1.0, 1.0))
    >>> len(cfg.processing_hash())
    16
    >>> cfg.processing_hash() == PipelineConfig(target_spacing=(1, 1, 1)).processing_hash()
    True
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.core.limits import ReadLimits

MODALITIES = ("FLAIR", "T1", "T1POST", "T2", "PD", "MASK")
DEFAULT_CHANNELS: tuple[str, ...] = ("FLAIR", "T1", "T2")
"""Channels of a new configuration, and of a store that records none and holds no case."""


class ModalityRule(BaseModel):
    """Map a series/file to a modality when ``pattern`` (a case-insensitive regex) matches.

    ``fields`` names the DICOM attributes searched (joined with spaces); for files on disk
    the file name is searched. Rules are tried in order; the first match wins.
    """

    model_config = ConfigDict(frozen=True)
    modality: str
    pattern: str
    fields: tuple[str, ...] = ("SeriesDescription", "ProtocolName", "SequenceName")


# Building blocks of the default rules. Series descriptions are free text: "T1 SPACE",
# "t1_mprage_sag_p2_iso_post", "Ax BRAVO +C", "T1W_3D_TFE_Gd", a surname. A keyword counts only
# as a token: not preceded by a letter or digit (``_`` and ``-`` separate tokens) and, where it
# could be the start of a longer word, not followed by one; so "ce" in "SPACE" or "Pearce", "post"
# in "POSTERIOR" and "gd" inside a word are not contrast markers.
_T1 = r"(?<![a-z0-9])s?t1(?![0-9])|mprage|spgr|bravo|tfl3d"
"""T1-weighted: a T1 token (Philips' "sT1W" too; not "T12") or a T1 sequence (MPRAGE, (F)SPGR, BRAVO)."""
_PRE = (r"(?<![a-z])pre(?![a-z])|(?<![a-z])pre[\s_-]?(?:gad|gd|contrast|c(?![a-z]))|(?<![a-z])w/?o(?![a-z])|without"
        r"|non[\s_-]?(?:contrast|gad|gd|enhanced)")
"""Explicitly before contrast: "PRE", "pre-gad", "w/o", "without", "non-contrast"."""
_POST = (r"(?<![a-z])post(?=gad|gd|con|c(?![a-z])|[^a-z]|$)|(?<![a-z])(?:gd|gad|gado[a-z]*|ce|km)(?![a-z])"
         r"|\+\s*(?:c|gd|gad|contrast)(?![a-z])|(?<![a-z])c\s*\+|t1w?ce?(?![a-z0-9])|(?<![a-z])contrast")
"""After contrast: "POST" (not "POSTERIOR"), Gd/GAD/gadolinium, "CE" (not "SPACE"), German "KM",
"+C", "C+", "T1C"/"T1CE" (BraTS), "contrast" (negations are caught by :data:`_PRE` first)."""
_T2_STAR = r"swi(?![a-z])|swan|t2\s*\*|t2[\s_-]*star|(?<![a-z0-9])(?:m?gre|ffe|hemo|medic)(?![a-z])|fl[23]d"
"""T2*-weighted / susceptibility (SWI, SWAN, GRE, FFE, FLASH "fl2d"): not T2."""

DEFAULT_MODALITY_RULES: tuple[ModalityRule, ...] = (
    ModalityRule(modality="MASK", pattern=r"(lesion|mask|seg(mentation)?\b|gold[_\s-]?standard|consensus|(^|[_\-\s])gt([_\-\s.]|$)|label)"),
    # FLAIR, but not GE's T1-weighted "T1 FLAIR"; "t2_fl2d" is a FLASH (T2*) sequence, not FLAIR
    ModalityRule(modality="FLAIR", pattern=r"^(?!.*(?<![a-z0-9])s?t1w?[\s_-]*flair)"
                                           r"(?=.*(?:flair|dark[_\s-]?fluid|(?<![a-z0-9])s?t2w?[_\s-]?fl(?:air)?(?![a-z0-9])))"),
    ModalityRule(modality="T1", pattern=rf"^(?=.*(?:{_T1}))(?=.*(?:{_PRE}))"),
    ModalityRule(modality="T1POST", pattern=rf"^(?=.*(?:{_T1}))(?=.*(?:{_POST}))"),
    ModalityRule(modality="T1", pattern=_T1),
    ModalityRule(modality="PD", pattern=r"(?<![a-z0-9])pd(?:w|fs)?(?![a-z0-9])|proton[_\s-]?density"),
    ModalityRule(modality="T2", pattern=rf"^(?!.*(?:{_T2_STAR}))"
                                        r"(?=.*(?:(?<![a-z0-9])s?t2(?![0-9])|(?<![a-z0-9])(?:tse|fse|frfse|ssfse|haste|propeller|blade)(?![a-z])))"),
)
"""Rules tried in order (first match wins). Changing them changes
:meth:`PipelineConfig.processing_hash`, so a store converted with other rules is re-converted."""


class SliceStackConfig(BaseModel):
    """How a folder of numbered 2-D slices (``<stem>_<n>.tif`` + ``<stem>_<n>_mask.tif``) becomes a case.

    ``planes`` names the modality of each colour plane (sample) of the image slices, in order
    (the LGG set: pre-contrast T1, FLAIR, post-contrast T1). A plane whose voxels equal those of
    the ``copies_of`` plane is the set's stand-in for a missing sequence and is marked absent
    (catalog row ``unused``, ``substituted_channel``). The TIFF files hold no geometry: the
    volume gets ``spacing_mm`` when given (x, y, z in mm; lesion volumes in mm³ then), else unit
    spacing with the geometry recorded as unknown (lesion tables in voxels).

    Example:
        >>> SliceStackConfig().planes
        ('T1', 'FLAIR', 'T1POST')
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    planes: tuple[str, ...] = Field(("T1", "FLAIR", "T1POST"), min_length=1, description="modality of each colour plane, in order")
    copies_of: str | None = Field("FLAIR", description="a plane equal to this one is a stand-in for a missing sequence; None: no check")
    mask_suffix: str = Field("_mask", min_length=1, description="file-name suffix (before .tif) of the mask slices")
    spacing_mm: tuple[float, float, float] | None = Field(None, description="voxel size (x, y, z) in mm when known; None: geometry unknown")

    @field_validator("spacing_mm")
    @classmethod
    def _positive(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and min(v) <= 0:
            raise ValueError(f"slice_stack.spacing_mm must be positive mm, got {v}")
        return v


DEFAULT_SLICE_STACK = SliceStackConfig()


class PipelineConfig(BaseModel):
    """Every decision that shapes stored data, plus runtime knobs.

    Units: spacings in mm, volumes in mm³.
    """

    model_config = ConfigDict(frozen=True)

    # --- processing (hashed) ---------------------------------------------------------
    channels: tuple[str, ...] = Field(DEFAULT_CHANNELS, description="modalities stacked into the image array, in order")
    reference_modality: str = Field("FLAIR", description="modality whose grid every other is resampled onto")
    target_spacing: tuple[float, float, float] | None = Field(None, description="mm (x, y, z); None keeps the reference grid")
    normalization: Literal["zscore", "none"] = "zscore"
    modality_rules: tuple[ModalityRule, ...] = DEFAULT_MODALITY_RULES
    chunk_zyx: tuple[int, int, int] = (64, 64, 64)
    slice_stack: SliceStackConfig = Field(default_factory=SliceStackConfig, description="numbered 2-D slice folders (TIFF): planes, mask, spacing")

    # --- lesion tables (hashed into tables, not into images) -------------------------
    connectivity: Literal[6, 18, 26] = 26
    min_lesion_mm3: float = 0.0

    # --- visit order (not hashed: it shapes no voxel; ingest's ``visits`` table) ---------
    visit_days: tuple[tuple[str, int], ...] | None = Field(
        None, description="day of each session label (BIDS ses- label or file-name prefix such as study1), for cohorts "
        "whose files carry no date: the visits table then stores days since each subject's first visit (order_source "
        "'config'); sessions with a date of their own (StudyDate, scans.tsv) keep it. Given as a mapping "
        "{label: day}; kept as sorted pairs (the configuration is frozen and hashable)")

    # --- runtime (not hashed) ---------------------------------------------------------
    dask_address: str | None = Field(None, description="tcp://host:8786 of an existing scheduler; None = LocalCluster")
    n_workers: int = 2
    read_limits: ReadLimits = Field(default_factory=ReadLimits, description="ceilings every reader checks before allocating (pipeline.core.limits)")
    worker_memory_limit: str | None = Field(
        None, description="memory per Dask worker of the LocalCluster, e.g. '4GiB'; a worker that exceeds it is restarted and "
        "its session retried once, then once more alone, then rejected (worker_died). None: Dask's default, the machine's memory shared among the workers")

    @field_validator("visit_days", mode="before")
    @classmethod
    def _visit_days_pairs(cls, v: object) -> object:
        return tuple(sorted((str(k), int(d)) for k, d in v.items())) if isinstance(v, dict) else v

    @field_validator("target_spacing")
    @classmethod
    def _positive_spacing(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and min(v) <= 0:
            raise ValueError(f"target_spacing must be positive mm, got {v}")
        return v

    def processing_hash(self) -> str:
        """16-hex digest of the fields that change stored voxels."""
        payload = self.model_dump(
            mode="json",
            include={"channels", "reference_modality", "target_spacing", "normalization", "modality_rules", "chunk_zyx"},
        )
        if self.slice_stack != DEFAULT_SLICE_STACK:  # hashed only when changed: stores of before slice stacks keep their hash
            payload["slice_stack"] = self.slice_stack.model_dump(mode="json")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: str | Path) -> PipelineConfig:
        """Load a JSON configuration file (keys as the field names)."""
        return cls.model_validate_json(Path(path).read_text())


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> PipelineConfig:
    """The pipeline configuration: the JSON file at ``path`` (defaults without one), then every
    override that is not ``None`` (so unset command-line options keep the file's values).

    Example:
        >>> load_config(None, target_spacing=(1.0, 1.0, 1.0), n_workers=None).target_spacing
        (1.0, 1.0, 1.0)
    """
    unknown = sorted(set(overrides) - set(PipelineConfig.model_fields))
    if unknown:
        raise TypeError(f"load_config: unknown configuration field(s) {unknown}")
    cfg = PipelineConfig.from_file(path) if path else PipelineConfig()
    updates = {k: v for k, v in overrides.items() if v is not None}
    return PipelineConfig.model_validate({**cfg.model_dump(), **updates}) if updates else cfg


PSEUDONYM_KEY_ENV = "LESIONFLOW_PSEUDONYM_KEY"


def pseudonym_key(explicit: str | None = None) -> bytes:
    """The HMAC key used to pseudonymise identifiers.

    Taken from ``explicit`` or the ``LESIONFLOW_PSEUDONYM_KEY`` environment variable.
    Raises ``RuntimeError`` with what to do when neither is set.
    """
    key = explicit or os.environ.get(PSEUDONYM_KEY_ENV)
    if not key:
        raise RuntimeError(
            f"No pseudonymisation key: set {PSEUDONYM_KEY_ENV} (e.g. `export {PSEUDONYM_KEY_ENV}=$(openssl rand -hex 32)`) "
            "and keep it secret; the same key gives the same pseudonyms on every run."
        )
    return key.encode()
