"""flows.gate: the data-quality gate over the cases of one ingest run (real Prefect, real store).
A new case without FLAIR fails the gate with the reason in the flow's error and in its artefact;
the clean cases of the same run pass."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_case_missing_a_channel_stops_the_chain(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.gate import GateFailed, gate
    from pipeline.core.config import PipelineConfig
    from pipeline.ingest import run_ingest
    from pipeline.phantom import make_cohort
    from pipeline.store import cases_of_run, read_case_meta

    cohort = make_cohort(tmp_path / "phantom", n_subjects=2, seed=5, spacing_mm=3.0, faults=["missing_flair"])
    root = tmp_path / "s.zarr"
    summary = run_ingest(cohort.cohort_dir, root, PipelineConfig(n_workers=1), b"gate-key")
    cases = cases_of_run(root, summary.run_id)
    assert len(cases) == 2
    broken = [c for c in cases if "FLAIR" not in read_case_meta(root, c).channels]
    clean = [c for c in cases if c not in broken]
    assert len(broken) == 1

    with pytest.raises(GateFailed, match=f"{broken[0]}: missing FLAIR"):
        gate(str(root), ingest_run=summary.run_id)
    out = gate(str(root), case_ids=clean)
    assert out["passed"] and out["cases"] == clean and out["blocking"] == []

    with get_client(sync_client=True) as client:
        artefacts = client.read_artifacts()
    verdicts = [a.description for a in artefacts if a.key == "quality-gate"]
    assert any(d.startswith("data-quality gate: ") and "missing FLAIR" in d for d in verdicts)
    assert "data-quality gate: passed" in verdicts
