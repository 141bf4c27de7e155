"""Planted faults in a phantom cohort: each appears in the report, named, and nothing else is flagged."""

from __future__ import annotations

import pytest

from pipeline.core.config import PipelineConfig
from pipeline.ingest import run_ingest
from pipeline.phantom import make_cohort
from pipeline.quality.report import build_report
from pipeline.store import list_cases, read_case_meta, read_catalog

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPECTED = {"thick_slices": "thick slices", "missing_flair": "missing FLAIR", "label_offgrid": "label off-grid", "noisy": "noisy"}


def case_of_subject(store, cohort_info) -> dict[str, str]:
    """Subject label → case id, through lineage (the case's source files lie in the subject's session folder)."""
    out = {}
    cat = read_catalog(store)
    for _, row in cohort_info.truth.iterrows():
        prefix = row["session_dir"].rstrip("/") + "/"
        hits = set(cat.loc[cat["source_relpath"].str.startswith(prefix) & cat["case_id"].notna(), "case_id"])
        assert len(hits) == 1, (row["subject_label"], hits)
        out[row["subject_label"]] = hits.pop()
    return out


def test_every_planted_fault_is_named_and_nothing_else(tmp_path):
    info = make_cohort(tmp_path / "phantom", n_subjects=8, seed=11, spacing_mm=1.5, faults=list(EXPECTED))
    store = tmp_path / "store.zarr"
    summary = run_ingest(info.cohort_dir, store, PipelineConfig(), b"faults-key")
    assert summary.converted == 8
    cases = case_of_subject(store, info)
    assert sorted(cases.values()) == list_cases(store)

    result = build_report(store)
    found = {(f["case_id"], f["what"]) for f in result.flagged}
    expected = {(cases[info.faults[fault]], what) for fault, what in EXPECTED.items()}
    assert found == expected, {"missing": expected - found, "unexpected": found - expected}

    # the off-grid label was rejected with its reason, and the case is there without a label
    offgrid = cases[info.faults["label_offgrid"]]
    assert not read_case_meta(store, offgrid).has_label
    html = result.html_path.read_text()
    for what in EXPECTED.values():
        assert what in html
