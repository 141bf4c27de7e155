"""flows.score as archive re-scoring: the work found by the query, spread over Dask worker
processes, rows added as table parts, and an interrupted run resumed (real Prefect, Dask, Zarr, torch)."""

from __future__ import annotations

import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_rescoring_on_dask_resumes_where_an_interrupted_run_stopped(prefect_harness, tiny_model, tmp_path):
    from flows.score import score
    from pipeline import store
    from tests.store_factory import make_store
    from training.infer import score_cases

    root = tmp_path / "s.zarr"
    ids = make_store(root, n_cases=4, shape_zyx=(24, 32, 32), seed=3)
    model = str(tiny_model)
    # an interrupted run: the first case was scored and its rows written, the second has its mask but no rows yet
    first = score(str(root), model, case_ids=ids[:1], n_workers=0)
    assert (first["scored"], first["parts"]) == (1, 1)
    score_cases(root, model, case_ids=ids[1:2], device="cpu")
    parts_before = sorted(p.name for p in (root / "tables" / "case_volumes").glob("part-*.parquet"))

    out = score(str(root), model, batch_size=1, n_workers=2, flush_every=2)  # 3 batches on a LocalCluster of 2 workers
    assert (out["scored"], out["measured"], out["skipped"]) == (2, 3, 0)  # the mask found is measured, not predicted again
    assert out["parts"] == 2  # rows flushed every 2 cases: 2 + 1
    parts_after = sorted(p.name for p in (root / "tables" / "case_volumes").glob("part-*.parquet"))
    assert set(parts_before) < set(parts_after)  # earlier parts kept as they were
    exported = pd.read_csv(out["tables"]["case_volumes"]["csv"])
    assert sorted(exported["case_id"]) == ids and (exported["model_version"] == out["model_version"]).all()
    assert [r["case_id"] for r in out["case_volumes"]] == ids
    assert all(store.has_prediction(root, c, out["model_version"]) for c in ids)

    again = score(str(root), model, n_workers=2)  # nothing left: no cluster, no part, no export rewritten
    assert (again["scored"], again["measured"], again["parts"]) == (0, 0, 0)
    assert len(again["case_volumes"]) == len(ids)
