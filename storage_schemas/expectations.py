"""The data-quality expectation suites, as code (Great Expectations 1.x).

Each suite validates one table that :mod:`pipeline.quality.expectations` derives from the catalog and
the case metadata of a store:

``modalities``  one row per (case, present channel): native spacing/shape/orientation,
                raw intensity statistics, and cohort ratios (spacing and coverage relative to
                the modality's median).
``cases``       one row per committed case: ``has_<channel>`` flags, whether the label is
                binary (``label_binary``) and was on an image grid (``label_grid_ok``).
``sources``     one row per (case, distinct source file content): sha256 digests.
``inputs``      one row per catalog entry (latest state): status, reason code and reason.

Every expectation carries ``meta`` with:

``id``           stable identifier, used to match results to expectations;
``flag``         the short name a failing row is flagged with in the report (``"thick slices"``);
``explanation``  what the check means in plain words.

Thresholds live here as module constants so that reviewers find them in one place.
``great_expectations`` is imported lazily (it is slow to import).

Example:
    >>> specs = build_suites(("FLAIR", "T1"))
    >>> [s.table for s in specs]
    ['modalities', 'modalities', 'cases', 'sources', 'inputs']
    >>> "RAS" in VALID_ORIENTATIONS and "LPI" in VALID_ORIENTATIONS and "RRS" not in VALID_ORIENTATIONS
    True
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# ------------------------------------------------------------------------------ thresholds
SPACING_RANGE_MM: dict[str, tuple[float, float]] = {
    "default": (0.2, 7.0),
}
"""Plausible voxel spacing (each axis, mm) per modality; ``default`` applies to any other."""

MATRIX_MIN_AXIS = (8, 2048)
"""Plausible number of voxels along the shortest axis (2-D acquisitions have few slices)."""

MATRIX_MAX_AXIS = (32, 2048)
"""Plausible number of voxels along the longest axis."""

FOV_MAX_EXTENT_MM = (80.0, 500.0)
"""Plausible field of view along the longest axis (mm) for a head scan."""

CONSISTENCY_RATIO = 1.5
ANISOTROPY_MAX = 3.0
"""Largest voxel edge over smallest edge above which a series is flagged as anisotropic."""
"""A series whose slice spacing / in-plane spacing exceeds this multiple of its modality's median is odd."""

COVERAGE_RATIO = (1 / 1.5, 1.5)
"""Accepted range of a series' field of view (per sorted axis) relative to its modality's median."""

CONSISTENCY_MIN_SERIES = 3
"""Cohort ratios are computed only when a modality has at least this many series."""

LABEL_VALUE_SETS = ["0", "1", "0,1"]

GATE_BLOCKING_FLAGS = frozenset({
    "spacing out of range", "implausible matrix", "implausible field of view", "invalid orientation",
    "non-finite intensity stats", "constant image", "label not binary",
})
"""Findings that stop the chain after an ingest (the data-quality gate, :mod:`pipeline.quality.gate`)
when a new case has one, besides a missing configured channel (``missing <channel>``): a case with
one of them cannot be scored or trained on as it is. Other findings (thick slices, coverage,
duplicates, rejected inputs) are reported and do not stop it."""


def is_blocking(flag: str) -> bool:
    """Whether a finding named ``flag`` stops the data-quality gate.

    Example:
        >>> is_blocking("missing FLAIR"), is_blocking("thick slices"), is_blocking("constant image")
        (True, False, True)
    """
    return flag in GATE_BLOCKING_FLAGS or flag.startswith("missing ")
"""Accepted sorted unique label values (written as comma-separated text)."""


def _orientation_codes() -> frozenset[str]:
    axes = [("R", "L"), ("A", "P"), ("S", "I")]
    codes = set()
    for perm in itertools.permutations(axes):
        for signs in itertools.product((0, 1), repeat=3):
            codes.add("".join(pair[s] for pair, s in zip(perm, signs)))
    return frozenset(codes)


VALID_ORIENTATIONS: frozenset[str] = _orientation_codes()
"""The 48 valid three-letter axis codes (one letter of each of R/L, A/P, S/I)."""


# ------------------------------------------------------------------------------ suite specs
@dataclass(frozen=True)
class SuiteSpec:
    """One suite and the derived table it validates.

    ``index_columns`` name the rows of the table in results (e.g. ``case_id`` and ``modality``).
    """

    name: str
    table: str
    index_columns: tuple[str, ...]
    suite: Any  # great_expectations.ExpectationSuite


def _gx() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def _column() -> Any:
    """GX's row-condition builder (``Column("x") == v``; string conditions are deprecated in 1.9+)."""
    _gx()
    from great_expectations.expectations.row_conditions import Column

    return Column


def _meta(id_: str, flag: str, explanation: str) -> dict[str, str]:
    return {"id": id_, "flag": flag, "explanation": explanation}


def modality_plausibility_suite(spacing_range_mm: dict[str, tuple[float, float]] | None = None) -> Any:
    """(a) Per (case, modality) row: spacing, matrix, field of view, orientation, intensity stats."""
    gx = _gx()
    E = gx.expectations
    ranges = dict(SPACING_RANGE_MM)
    ranges.update(spacing_range_mm or {})
    default = ranges["default"]
    exps: list[Any] = []
    specific = [m for m in ranges if m != "default"]
    # the default range applies to every modality without its own range
    Column = _column()
    cond = None
    for m in specific:
        c = Column("modality") != m
        cond = c if cond is None else cond & c
    for col, bound, label in (("spacing_min_mm", "min", "smallest"), ("spacing_max_mm", "max", "largest")):
        lo, hi = default
        kwargs: dict[str, Any] = {"column": col, "min_value": lo, "max_value": hi}
        if cond is not None:
            kwargs["row_condition"] = cond
        exps.append(
            E.ExpectColumnValuesToBeBetween(
                **kwargs,
                meta=_meta(
                    f"spacing_{bound}_in_range",
                    "spacing out of range",
                    f"The {label} native voxel spacing must lie in {lo}-{hi} mm; outside that range the "
                    "header is most likely wrong (units, a 2-D localiser, a derived map).",
                ),
            )
        )
    for m in specific:
        lo, hi = ranges[m]
        for col, bound in (("spacing_min_mm", "min"), ("spacing_max_mm", "max")):
            exps.append(
                E.ExpectColumnValuesToBeBetween(
                    column=col,
                    min_value=lo,
                    max_value=hi,
                    row_condition=Column("modality") == m,
                    meta=_meta(f"spacing_{bound}_in_range_{m}", "spacing out of range", f"{m} voxel spacing must lie in {lo}-{hi} mm."),
                )
            )
    exps += [
        E.ExpectColumnValuesToBeBetween(
            column="matrix_min",
            min_value=MATRIX_MIN_AXIS[0],
            max_value=MATRIX_MIN_AXIS[1],
            meta=_meta(
                "matrix_min_plausible",
                "implausible matrix",
                f"The shortest image axis should have {MATRIX_MIN_AXIS[0]}-{MATRIX_MIN_AXIS[1]} voxels; fewer means a "
                "truncated or single-slice series.",
            ),
        ),
        E.ExpectColumnValuesToBeBetween(
            column="matrix_max",
            min_value=MATRIX_MAX_AXIS[0],
            max_value=MATRIX_MAX_AXIS[1],
            meta=_meta(
                "matrix_max_plausible",
                "implausible matrix",
                f"The longest image axis should have {MATRIX_MAX_AXIS[0]}-{MATRIX_MAX_AXIS[1]} voxels.",
            ),
        ),
        E.ExpectColumnValuesToBeBetween(
            column="fov_max_mm",
            min_value=FOV_MAX_EXTENT_MM[0],
            max_value=FOV_MAX_EXTENT_MM[1],
            meta=_meta(
                "fov_plausible",
                "implausible field of view",
                f"The largest field-of-view extent (voxels x spacing) of a head scan should be "
                f"{FOV_MAX_EXTENT_MM[0]:g}-{FOV_MAX_EXTENT_MM[1]:g} mm.",
            ),
        ),
        E.ExpectColumnValuesToBeBetween(
            column="anisotropy",
            max_value=ANISOTROPY_MAX,
            meta=_meta(
                "voxels_not_anisotropic",
                "anisotropic voxels",
                f"The longest voxel edge should be at most {ANISOTROPY_MAX:g}x the shortest (e.g. 0.7x0.7x4 mm is 5.6x). "
                "Thick 2-D slices blur small lesions across slices and bias their volumes; such series are usable "
                "but lesion volumes from them are less precise than from 3-D acquisitions.",
            ),
        ),
        E.ExpectColumnValuesToBeInSet(
            column="orientation",
            value_set=sorted(VALID_ORIENTATIONS),
            meta=_meta(
                "orientation_valid",
                "invalid orientation",
                "The native orientation must be a three-letter axis code with one letter of each of "
                "R/L, A/P, S/I (e.g. 'LPS', 'RAS').",
            ),
        ),
        E.ExpectColumnValuesToNotBeNull(
            column="orientation",
            meta=_meta("orientation_present", "invalid orientation", "Every converted series must record its native orientation."),
        ),
        E.ExpectColumnValuesToBeInSet(
            column="intensity_stats_finite",
            value_set=[True],
            meta=_meta(
                "intensity_stats_finite",
                "non-finite intensity stats",
                "The raw intensity mean, std, p01 and p99 recorded at ingest must all be finite numbers; "
                "NaN/inf means the source voxels contain NaN/inf.",
            ),
        ),
        E.ExpectColumnValuesToBeBetween(
            column="intensity_std",
            min_value=0.0,
            strict_min=True,
            meta=_meta(
                "intensity_not_constant",
                "constant image",
                "The raw intensity standard deviation must be positive; zero means an empty or constant image.",
            ),
        ),
    ]
    return gx.ExpectationSuite(name="modality_plausibility", expectations=exps)


def cohort_consistency_suite() -> Any:
    """(c) Per (case, modality) row: spacing and coverage consistent with the modality's cohort."""
    gx = _gx()
    E = gx.expectations
    r = CONSISTENCY_RATIO
    lo, hi = COVERAGE_RATIO
    n = CONSISTENCY_MIN_SERIES
    return gx.ExpectationSuite(
        name="cohort_consistency",
        expectations=[
            E.ExpectColumnValuesToBeBetween(
                column="slice_spacing_ratio",
                max_value=r,
                meta=_meta(
                    "slice_spacing_consistent",
                    "thick slices",
                    f"The largest voxel spacing (slice thickness/gap) of a series must not exceed {r:g}x the median of "
                    f"its modality (e.g. a 5 mm FLAIR among 1 mm ones). Computed when a modality has >= {n} series.",
                ),
            ),
            E.ExpectColumnValuesToBeBetween(
                column="inplane_spacing_ratio",
                max_value=r,
                meta=_meta(
                    "inplane_spacing_consistent",
                    "coarse in-plane resolution",
                    f"The smallest voxel spacing of a series must not exceed {r:g}x the median of its modality.",
                ),
            ),
            E.ExpectColumnValuesToBeBetween(
                column="coverage_ratio_min",
                min_value=round(lo, 4),
                meta=_meta(
                    "coverage_not_truncated",
                    "coverage differs",
                    f"Each field-of-view extent (sorted axes) must be at least {lo:.2f}x the modality's median; less "
                    "means a partial-brain or truncated acquisition.",
                ),
            ),
            E.ExpectColumnValuesToBeBetween(
                column="coverage_ratio_max",
                max_value=hi,
                meta=_meta(
                    "coverage_not_oversized",
                    "coverage differs",
                    f"Each field-of-view extent must be at most {hi:g}x the modality's median (e.g. a whole-spine "
                    "or body FOV among head scans).",
                ),
            ),
        ],
    )


def case_completeness_suite(channels: Sequence[str]) -> Any:
    """(b) Per case: required modalities present, label binary and on the image grid."""
    gx = _gx()
    E = gx.expectations
    exps = [
        E.ExpectTableRowCountToBeBetween(
            min_value=1,
            meta=_meta("store_not_empty", "empty store", "The store must hold at least one converted case."),
        )
    ]
    for ch in channels:
        exps.append(
            E.ExpectColumnValuesToBeInSet(
                column=f"has_{ch}",
                value_set=[True],
                meta=_meta(
                    f"has_{ch}",
                    f"missing {ch}",
                    f"Every case must have a {ch} series (a configured channel); a missing channel is stored "
                    "as zeros and the model sees no signal there.",
                ),
            )
        )
    exps += [
        E.ExpectColumnValuesToBeInSet(
            column="label_binary",
            value_set=[True],
            meta=_meta(
                "label_binary",
                "label not binary",
                "A reference label must contain only the values 0 and 1 (a stored label's sorted unique values are "
                f"one of {LABEL_VALUE_SETS}; a label the ingest rejected with reason code label_not_binary counts "
                "too); other values mean a multi-class or probabilistic mask. No label is not a failure.",
            ),
        ),
        E.ExpectColumnValuesToBeInSet(
            column="label_grid_ok",
            value_set=[True],
            meta=_meta(
                "label_on_grid",
                "label off-grid",
                "The reference label must have been delivered on the grid of one of its session's images (same "
                "matrix, spacing, direction and origin), as the ingest records in the catalog (label_on_grid); "
                "otherwise the ingest rejects it, since its voxels would not line up. Unknown (no record, or a "
                "catalog older than schema 1.2) is not counted as a failure.",
            ),
        ),
    ]
    return gx.ExpectationSuite(name="case_completeness", expectations=exps)


def source_uniqueness_suite() -> Any:
    """(b) Across cases: no two cases built from the same file content."""
    gx = _gx()
    E = gx.expectations
    return gx.ExpectationSuite(
        name="source_uniqueness",
        expectations=[
            E.ExpectColumnValuesToBeUnique(
                column="sha256",
                meta=_meta(
                    "sources_unique",
                    "duplicate content",
                    "No source file content (sha256) may contribute to two different cases; a duplicate means the "
                    "same scan was filed twice (under two pseudonyms or sessions) and would leak between train/test.",
                ),
            )
        ],
    )


def inputs_suite() -> Any:
    """(c) Inputs: rejected inputs listed with their reason; every non-converted input explained."""
    gx = _gx()
    E = gx.expectations
    return gx.ExpectationSuite(
        name="inputs",
        expectations=[
            E.ExpectColumnValuesToBeInSet(
                column="status",
                value_set=["converted", "skipped", "unused"],
                meta=_meta(
                    "no_rejected_inputs",
                    "rejected input",
                    "Inputs the ingest could not use (corrupt, unreadable, inconsistent geometry...). Each is listed "
                    "with its reason; unused series (localisers, derived maps) are not failures.",
                ),
            ),
            E.ExpectColumnValuesToNotBeNull(
                column="reason",
                row_condition=_column()("status").is_in(["rejected", "unused"]),
                meta=_meta(
                    "reason_recorded",
                    "rejected without reason",
                    "Every rejected or unused input must carry a human-readable reason in the catalog.",
                ),
            ),
        ],
    )


def build_suites(channels: Sequence[str], spacing_range_mm: dict[str, tuple[float, float]] | None = None) -> list[SuiteSpec]:
    """All suites, each with the derived table it validates and that table's index columns."""
    return [
        SuiteSpec("modality_plausibility", "modalities", ("case_id", "modality"), modality_plausibility_suite(spacing_range_mm)),
        SuiteSpec("cohort_consistency", "modalities", ("case_id", "modality"), cohort_consistency_suite()),
        SuiteSpec("case_completeness", "cases", ("case_id",), case_completeness_suite(channels)),
        SuiteSpec("source_uniqueness", "sources", ("case_id", "modality", "relpath"), source_uniqueness_suite()),
        SuiteSpec("inputs", "inputs", ("case_id", "modality", "source_relpath", "reason_code", "reason"), inputs_suite()),
    ]
