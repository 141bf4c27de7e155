"""Map series and files to modalities (FLAIR, T1, T1POST, T2, PD, MASK) with ordered regex rules.

Rules come from :class:`pipeline.core.config.PipelineConfig` (``modality_rules``); the first rule
whose pattern matches wins. The default rules
(:data:`~pipeline.core.config.DEFAULT_MODALITY_RULES`) match keywords as tokens, so "T1 SPACE"
is T1 and "T1 POSTERIOR FOSSA" is not post-contrast; ``tests/pipeline/ingest/test_modality.py``
holds the table of real-world Siemens, GE and Philips series descriptions they are checked against.
For DICOM the rule's ``fields`` are searched; for files the
file name (without extension) is searched, with BIDS suffixes understood (``_T1w``, ``_T2w``,
``_FLAIR``, ``_mask``, ``_dseg``).

Example:
    >>> from pipeline.core.config import DEFAULT_MODALITY_RULES as R
    >>> [modality_of_filename(n, R) for n in ("sub-1_ses-1_FLAIR.nii.gz", "PH1_T1.mha", "consensus_gt.nii.gz", "notes")]
    ['FLAIR', 'T1', 'MASK', None]
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from pipeline.core.config import ModalityRule
from storage_schemas.models import ReasonCode

_EXTENSIONS = (".nii.gz", ".nii", ".mhd", ".mha")


def strip_extension(name: str) -> str:
    """File name without its image extension (``.nii.gz`` counts as one)."""
    lower = name.lower()
    for ext in _EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _match(text: str, rules: Iterable[ModalityRule]) -> str | None:
    for rule in rules:
        if re.search(rule.pattern, text, flags=re.IGNORECASE):
            return rule.modality
    return None


def modality_of_filename(name: str, rules: Iterable[ModalityRule]) -> str | None:
    """Modality of an image file from its name, or ``None`` when no rule matches.

    A T1 image with a BIDS contrast entity (``ce-<agent>``, e.g. ``sub-01_ce-gadolinium_T1w``)
    is ``T1POST``.

    >>> from pipeline.core.config import DEFAULT_MODALITY_RULES as R
    >>> modality_of_filename("sub-01_ce-gadolinium_T1w.nii.gz", R), modality_of_filename("sub-01_acq-space_T1w.nii", R)
    ('T1POST', 'T1')
    """
    stem = strip_extension(Path(name).name)
    # BIDS entities such as sub-01_ses-02 must not trigger rules: match on the suffix part
    tokens = re.split(r"_", stem)
    parts = [p for p in tokens if not _BIDS_ENTITY.match(p)]
    text = " ".join(parts) if parts else stem
    modality = _match(text, rules)
    if modality == "T1" and any(_BIDS_CONTRAST.match(p) for p in tokens):
        return "T1POST"
    return modality


_BIDS_ENTITY = re.compile(r"^(sub|ses|run|acq|rec|ce|echo)-", re.IGNORECASE)
_BIDS_CONTRAST = re.compile(r"^ce-(?!none$)[a-z0-9]+$", re.IGNORECASE)


def modality_of_series(header_text_by_fields: dict[tuple[str, ...], str], rules: Iterable[ModalityRule]) -> str | None:
    """Modality of a DICOM series.

    ``header_text_by_fields`` maps each rule's ``fields`` tuple to the text of those
    attributes (see :meth:`pipeline.io.readers.dicom.DicomSeries.header_text`).
    """
    for rule in rules:
        text = header_text_by_fields.get(tuple(rule.fields), "")
        if text and re.search(rule.pattern, text, flags=re.IGNORECASE):
            return rule.modality
    return None


class Unusable(NamedTuple):
    """Why an input is left unused: the catalog's ``reason_code`` and ``reason``."""

    code: ReasonCode
    reason: str


def unusable_series(image_type: tuple[str, ...], n_volumes: int, description: str, is_mosaic: bool = False) -> Unusable | None:
    """Why a DICOM series cannot be used for lesion work, or ``None`` when it can.

    >>> unusable_series(("ORIGINAL", "PRIMARY", "LOCALIZER"), 1, "3-Plane Loc")
    Unusable(code=<ReasonCode.LOCALIZER: 'localizer'>, reason='localizer/scout series')
    """
    itype = {t.upper() for t in image_type}
    if is_mosaic or "MOSAIC" in itype:
        return Unusable(ReasonCode.MOSAIC, f"Siemens mosaic (EPI) series ({n_volumes} volume{'s' if n_volumes != 1 else ''}: fMRI/diffusion/field map), not a structural scan")
    if "LOCALIZER" in itype or re.search(r"locali[sz]er|scout|survey|3-?plane\s*loc", description, re.IGNORECASE):
        return Unusable(ReasonCode.LOCALIZER, "localizer/scout series")
    if n_volumes > 1:
        return Unusable(ReasonCode.NOT_3D, f"4-D series ({n_volumes} volumes: fMRI/diffusion/perfusion), not a structural scan")
    if "DERIVED" in itype or "SECONDARY" in itype:
        return Unusable(ReasonCode.DERIVED, "derived/secondary image (e.g. reformat, map, screenshot)")
    return None
