"""flows.change with method 'model': the pair's cases are scored by the model first, then compared; method 'auto'
(the chain's): subtraction until the model has scored both visits, then the model, nothing computed twice."""

from __future__ import annotations

import pytest

from pipeline.core.config import PipelineConfig, pseudonym_key


@pytest.mark.integration
@pytest.mark.slow
def test_model_change_scores_both_visits_then_compares_them(prefect_harness, tiny_model, tmp_path):
    from flows.change import change
    from pipeline.ingest import run_ingest
    from pipeline.io.writers import write_nifti
    from pipeline.store import change_mask_name, has_prediction, list_pairs, read_pair_mask
    from tests.session_factory import blob_image, lesion_mask_on, write_session

    folder = tmp_path / "src" / "p01"
    write_session(folder, "study1_", seed=1, label=False)
    write_session(folder, "study2_", seed=2, label=False)
    write_nifti(lesion_mask_on(blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0), seed=1)), folder / "gt.nii.gz")
    store = tmp_path / "s.zarr"
    run_ingest(tmp_path / "src", store, PipelineConfig(), pseudonym_key())
    # the chain's method: the model has scored neither visit yet, so the pair goes by subtraction, and nothing is scored
    auto = change(str(store), method="auto", model=str(tiny_model))
    (pid,) = auto["computed"]
    assert auto["methods"] == {pid: "subtraction"} and auto["pairs"][0]["method"] == "subtraction"
    assert not any(has_prediction(store, c, auto["model_version"]) for c in (auto["pairs"][0]["baseline_case"], auto["pairs"][0]["followup_case"]))
    out = change(str(store), method="model", model=str(tiny_model), export_dir=str(tmp_path / "out"))
    (row,) = out["pairs"]
    version = out["model_version"]
    assert row["method"] == "model" and row["model_version"] == version and row["registration_method"] == "rigid"
    assert all(has_prediction(store, c, version) for c in (row["baseline_case"], row["followup_case"]))
    (pid,) = list_pairs(store)
    assert read_pair_mask(store, pid, change_mask_name("model", version)) is not None and len(out["exported"]) == 1
    assert row["has_expert"] and row["expert_changes"] >= 1  # the figures of a 20-iteration model mean nothing; they exist
    # both visits scored now: auto takes the model, whose change of this pair is stored and up to date: nothing new
    again = change(str(store), method="auto", model=str(tiny_model))
    assert again["methods"] == {pid: "model"} and again["computed"] == [] and again["up_to_date"] == [pid]
