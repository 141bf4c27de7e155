"""training.infer: sliding-window masks of stored cases, written back into the store."""

from __future__ import annotations

import numpy as np
import zarr

from tests.training.conftest import PATCH, SHAPE
from training.checkpoint import load_model
from training.infer import mask_path, predict_case, score_cases


def test_predict_case_mask(trained, store):
    result, _ = trained
    model, info = load_model(result.checkpoint_path, device="cpu")
    mask = predict_case(model, info, store["root"], store["labelled"][2])
    assert mask.shape == SHAPE and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    mask_unlabelled = predict_case(model, info, store["root"], store["unlabelled"], roi_zyx=(16, 16, 16), overlap=0.5)
    assert mask_unlabelled.shape == SHAPE


def test_score_cases_writes_and_skips(trained, store):
    result, _ = trained
    root, version = store["root"], result.model_version
    ids = [store["labelled"][2], store["unlabelled"], store["two_channel"]]
    events = []
    first = score_cases(root, version, case_ids=ids, progress=events.append)
    assert [r["status"] for r in first] == ["scored", "scored", "skipped"]
    assert "T2" in first[2]["reason"] and first[2]["mask_path"] is None
    assert [e["index"] for e in events] == [1, 2, 3]
    for row in first[:2]:
        assert row["mask_path"] == mask_path(row["case_id"], version)
        group = zarr.open_group(str(root / "cases" / row["case_id"] / "predictions" / version), mode="r")
        mask = group["mask"][...]
        assert mask.shape == SHAPE and mask.dtype == np.uint8
        attrs = group["mask"].attrs["lesionflow_prediction"]
        assert attrs["model_version"] == version and attrs["overlap"] == 0.25 and attrs["roi_zyx"] == list(PATCH)
        assert attrs["lesion_voxels"] == int(mask.sum()) == row["lesion_voxels"]
    second = score_cases(root, version, case_ids=ids[:2])
    assert [r["status"] for r in second] == ["exists", "exists"]
    assert [r["mask_path"] for r in second] == [r["mask_path"] for r in first[:2]]
    third = score_cases(root, result.checkpoint_path / "model.pt", case_ids=ids[:1], overwrite=True)
    assert third[0]["status"] == "scored"
    assert not list((root / ".staging").iterdir())
