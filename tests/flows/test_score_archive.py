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


def test_in_process_scoring_with_and_without_prefetch_writes_the_same_tables(tiny_model, tmp_path, request):
    """The one-device path of run_batches (n_workers=0), batches of 2, rows flushed every 3 cases: the
    prefetching reader (running across the batches) and the sequential path give the same counts,
    the same table parts and the same rows (times aside), and the same masks."""
    import numpy as np
    import torch

    from flows.common import batches
    from flows.score import run_batches
    from pipeline.lesions.archive import model_case_volumes
    from pipeline.store import read_table
    from tests.store_factory import make_store
    from training.checkpoint import resolve_model_version

    version = resolve_model_version(str(tiny_model))
    out, tables, masks = {}, {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the in-process path keeps torch's setting: 1 thread, as the other tests (tests/conftest.py)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    for prefetch in (False, True):
        root = tmp_path / f"p{prefetch}.zarr"
        ids = make_store(root, n_cases=5, shape_zyx=(24, 32, 32), seed=3)
        out[prefetch] = run_batches(str(root), str(tiny_model), batches(ids, 2), n_workers=0, flush_every=3, prefetch=prefetch)
        lesions = read_table(root, "lesions")
        lesions = lesions[[c for c in lesions.columns if not c.endswith("_at") and not c.startswith("_")]]
        tables[prefetch] = (model_case_volumes(root, version, ("case_id", "total_volume_ml", "lesion_count")).to_dict("records"),
                            lesions.sort_values(list(lesions.columns)).to_dict("records"))
        masks[prefetch] = [np.asarray(zarr_array(root, c, version)).tobytes() for c in ids]
    assert out[True] == out[False] and (out[True]["scored"], out[True]["parts"]) == (5, 2)
    assert tables[True] == tables[False] and len(tables[True][0]) == 5
    assert masks[True] == masks[False]


def zarr_array(root, case_id, version):
    import zarr

    from training.infer import mask_path

    return zarr.open_array(str(root / mask_path(case_id, version)), mode="r")[...]
