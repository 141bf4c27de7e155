"""The data-quality gate after an ingest: do the new cases pass the expectations that matter?

The expectation suites (:mod:`storage_schemas.expectations`, run by
:func:`pipeline.quality.expectations.run_expectations` over the catalog and the case metadata,
no voxel read) are run over the store; the findings on the given cases are split into *blocking*
ones (:func:`storage_schemas.expectations.is_blocking`: a missing channel, implausible geometry,
a constant image, a non-binary label) and warnings. The gate passes when no given case has a
blocking finding. ``expectations.json`` is saved as by the report.

Example:
    >>> outcome = run_gate("/data/store.zarr", ["sub-…_ses-…"])  # doctest: +SKIP
    >>> outcome = GateOutcome(cases=["c1"], blocking=[{"case_id": "c1", "what": "missing FLAIR", "detail": "no FLAIR series"}])
    >>> outcome.passed, outcome.reason
    (False, 'c1: missing FLAIR (no FLAIR series)')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.quality.expectations import run_expectations
from storage_schemas.expectations import is_blocking


@dataclass
class GateOutcome:
    """The gate's verdict over ``cases``: blocking findings and warnings (``{case_id, what, detail}``)."""

    cases: list[str]
    blocking: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.blocking

    @property
    def reason(self) -> str:
        """One line per blocking finding, or ``"passed"``."""
        if self.passed:
            return "passed"
        return "; ".join(f"{f['case_id']}: {f['what']} ({f['detail']})" for f in self.blocking)

    def markdown(self) -> str:
        """The verdict as Markdown (a Prefect artefact): the cases, then each finding."""
        head = "passed" if self.passed else "FAILED: the chain stops here"
        lines = [f"# Data-quality gate: {head}", "", f"{len(self.cases)} new cases checked.", ""]
        for title, rows in (("Blocking findings", self.blocking), ("Warnings (do not stop the chain)", self.warnings)):
            if rows:
                lines += [f"## {title}", "", "| case | finding | detail |", "| --- | --- | --- |"]
                lines += [f"| {f['case_id']} | {f['what']} | {f['detail']} |" for f in rows]
                lines.append("")
        return "\n".join(lines)


def run_gate(store_root: str | Path, case_ids: Sequence[str], channels: Sequence[str] | None = None) -> GateOutcome:
    """Run the expectations over ``store_root`` and judge the cases ``case_ids`` (see the module docstring).

    ``channels``: the channels every case must have, None for the store's.
    """
    wanted = set(case_ids)
    outcome = run_expectations(store_root, channels)
    mine = [f for f in outcome.flagged if f.get("case_id") in wanted]
    return GateOutcome(cases=sorted(wanted), blocking=[f for f in mine if is_blocking(f["what"])],
                       warnings=[f for f in mine if not is_blocking(f["what"])])
