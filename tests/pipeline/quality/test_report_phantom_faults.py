"""Planted faults in a phantom cohort: each appears in the report, named, and nothing else is flagged."""

from __future__ import annotations

import pytest

from pipeline.core.config import PipelineConfig
from pipeline.ingest import run_ingest
from pipeline.phantom import make_cohort
from pipeline.quality.expectations import build_tables, flags_from_results, validate_tables
from pipeline.quality.report import build_report
from pipeline.store import list_cases, read_case_meta, read_catalog
from storage_schemas.expectations import build_suites
from tests.sealed import reveal

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPECTED = {"thick_slices": "thick slices", "missing_flair": "missing FLAIR", "label_offgrid": "label off-grid", "noisy": "noisy"}


def case_of_subject(store, cohort_info) -> dict[str, str]:
    """Subject label → case id, through lineage (the case's source files lie in the subject's session folder)."""
    out = {}
    cat = read_catalog(store)
    cat["source_relpath"] = [reveal(p, "faults-key") for p in cat["source_relpath"]]  # sealed in the store
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

    # the ingest's decisions are columns: every rejected/unused row has a reason code, the
    # off-grid mask row says so with numbers, every label row records label_on_grid
    cat = read_catalog(store)
    outcome = cat[cat["status"].isin(["rejected", "unused"])]
    assert len(outcome) and outcome["reason_code"].notna().all() and outcome["reason"].notna().all()
    masks = cat[cat["modality"] == "MASK"].set_index("case_id")
    assert masks["label_on_grid"].notna().all()
    off = masks.loc[offgrid]
    assert (off["status"], off["reason_code"], off["label_on_grid"]) == ("rejected", "label_off_grid", False)
    assert off[["shape_x", "shape_y", "shape_z", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm"]].notna().all()
    assert set(masks.drop(index=offgrid)["label_on_grid"]) == {True}
    converted = cat[cat["status"] == "converted"]
    assert converted[["shape_x", "shape_y", "shape_z", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm"]].notna().all().all()

    # found from the columns alone: the same flag with every reason's words blanked out
    blank = cat.assign(reason="(no words)")
    tables = build_tables(store, catalog=blank)
    flags = flags_from_results(validate_tables(tables, [s for s in build_suites(("FLAIR", "T1", "T2")) if s.name in ("case_completeness", "inputs")]), tables)
    assert (offgrid, "label off-grid") in {(f["case_id"], f["what"]) for f in flags}
    assert (offgrid, "rejected input") not in {(f["case_id"], f["what"]) for f in flags}
