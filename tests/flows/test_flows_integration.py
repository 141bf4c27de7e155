"""End to end on a tiny phantom: real Prefect flow runs, a real Dask LocalCluster, a real Zarr store,
real torch training, scoring and lesion tables."""

from __future__ import annotations

import pandas as pd
import pytest
import zarr

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ingest_prepare_train_score_flows(prefect_harness, phantom_cohort, tmp_path):
    from flows.ingest import ingest
    from flows.prepare import prepare
    from flows.score import score
    from flows.train import train
    from pipeline.lesions.evaluation import evaluate
    from pipeline.store import list_cases, read_case_meta, read_catalog

    store = str(tmp_path / "store.zarr")
    truth = pd.read_csv(phantom_cohort.truth_cases_csv)

    # ingest: Dask LocalCluster with 2 worker processes inside a Prefect flow run
    summary = ingest(str(phantom_cohort.cohort_dir), store, n_workers=2, report=False)
    assert summary["converted"] == len(truth) and summary["rejected"] == 0
    assert any("localizer" in u["reason"] for u in summary["unused_inputs"])  # catalogued, not dropped
    cases = list_cases(store)
    assert len(cases) == len(truth)
    for case_id in cases:
        meta = read_case_meta(store, case_id)
        assert meta.channels == ["FLAIR", "T1", "T2"] and meta.has_label
        g = zarr.open_group(f"{store}/cases/{case_id}", mode="r")  # plain zarr reads it
        assert g["image"].shape[0] == 3 and g["labels/reference/0"].shape == g["image"].shape[1:]
    cat = read_catalog(store)
    assert set(cat.loc[cat["status"] == "converted", "modality"]) == {"FLAIR", "T1", "T2", "MASK"}

    # second run: nothing to convert
    again = ingest(str(phantom_cohort.cohort_dir), store, n_workers=2, report=False)
    assert (again["converted"], again["skipped"]) == (0, len(truth))

    rows = prepare(store, patch_size=32, n_lesion=64, n_background=64, samples_per_case=8)  # banks: one Dask task per case
    assert len(rows) == len(truth)
    assert [r["bank"] for r in rows] == ["built"] * len(truth) and all(r["bank_mb"] > 0 for r in rows)
    again = prepare(store, patch_size=32, n_lesion=64, n_background=64, samples_per_case=8, n_workers=0)
    assert [r["bank"] for r in again] == ["up-to-date"] * len(truth)  # incremental: nothing rebuilt

    trained = train(store, config={"optim": {"lr": 3e-3}, "iterations": 300}, iterations=30, patch_size=32, batch_size=2)
    assert trained["model_version"].startswith("unet3d-")
    used = trained["train_config"]  # the config as used: overrides over config, channels from the store
    assert (used["iterations"], used["patch_zyx"], used["optim"]["lr"], used["channels"]) == (30, [32, 32, 32], 3e-3, ["FLAIR", "T1", "T2"])
    assert used["augmentation"]["bank"] == "auto"

    scored = score(store, trained["model_version"])
    assert scored["scored"] == len(truth)
    volumes = pd.read_csv(scored["tables"]["case_volumes"]["csv"])
    assert set(volumes["case_id"]) == set(cases)
    assert {"total_volume_ml", "lesion_count", "source_fingerprint", "model_version"} <= set(volumes.columns)

    # scoring again with the same model skips the cases; the tables stay one row per (case, model)
    scored2 = score(store, trained["model_version"])
    assert len(pd.read_parquet(scored2["tables"]["case_volumes"]["parquet"])) == len(truth)

    ev = evaluate(store, trained["model_version"], phantom_cohort.truth_cases_csv)
    assert len(ev) == len(truth) and ev["truth_volume_ml"].notna().all() and ev["dice"].notna().all()

    # export: the scored store as BIDS derivatives, through the flow; every case group is OME-Zarr 0.5 with its prediction as a label
    from ome_zarr_models.v05.image import Image

    from flows.export import export
    from tests.pipeline.export.test_bids import bids_derivative_problems

    version = trained["model_version"]
    exported = export(store, str(tmp_path / "bids"), models=["latest"])
    assert (exported["cases"], exported["models"], exported["skipped"]) == (len(truth), [version], [])
    assert bids_derivative_problems(tmp_path / "bids" / "derivatives" / "lesionflow") == []
    for case_id in cases:
        labels = Image.from_zarr(zarr.open_group(f"{store}/cases/{case_id}", mode="r")).labels
        assert set(labels.label_paths) == {"reference", "foreground", f"prediction-{version}"}
