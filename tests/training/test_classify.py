"""The slice classifier ("is there a lesion on this slice?"): trained on a synthetic store it separates
lesion slices from the others, is reproducible from its seed, round-trips through its folder, and
refuses what it cannot learn from; cross-validation rows carry its score and summarise reports it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import store as st
from tests.store_factory import make_store
from training.classify import (
    SliceClassifierConfig,
    classify_slices,
    load_classifier,
    save_classifier,
    slice_arrays,
    train_slice_classifier,
)
from training.crossval import summarise

CFG = SliceClassifierConfig(size=32, iterations=60, batch_size=8, widths=(8, 16, 16, 32), lr=5e-3)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls") / "s.zarr"
    ids = make_store(root, n_cases=3, shape_zyx=(24, 48, 48), seed=3, n_lesions=3, noise=0.05)
    return root, ids


def _has_lesion(root, case_id):
    ref = np.asarray(st.reference_label(st.open_case(root, case_id))[...]) != 0
    return ref.reshape(ref.shape[0], -1).any(axis=1)


def test_slice_arrays_are_the_stored_slices_shrunk_with_their_answer(cases):
    root, ids = cases
    x, y, channels = slice_arrays(root, ids[0], 24)
    image = np.asarray(st.open_case(root, ids[0])["image"][...])
    assert x.shape == (24, image.shape[0], 24, 24) and channels == list(st.open_case(root, ids[0])["image"].attrs["channels"])
    np.testing.assert_allclose(x[5, 0].numpy(), image[0, 5].reshape(24, 2, 24, 2).mean(axis=(1, 3)), atol=1e-5)  # area averaging
    np.testing.assert_array_equal(y.numpy().astype(bool), _has_lesion(root, ids[0]))
    with pytest.raises(ValueError, match="missing channel"):
        slice_arrays(root, ids[0], 24, channels=["PD"])


def test_trained_classifier_ranks_lesion_slices_first_and_is_reproducible(cases, tmp_path):
    root, ids = cases
    net, info = train_slice_classifier(root, ids[:2], CFG)
    again, _ = train_slice_classifier(root, ids[:2], CFG)
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)  # seeded: the same weights
    assert info["train_cases"] == 2 and info["train_lesion_slices"] > 0 and info["config"]["seed"] == 0
    p = classify_slices(net, info, root, ids[2])  # a case it never saw
    truth = _has_lesion(root, ids[2])
    assert p.shape == truth.shape and np.all((p >= 0) & (p <= 1))
    assert p[truth].mean() > p[~truth].mean()
    folder = save_classifier(net, info, tmp_path / "classifier")
    loaded, loaded_info = load_classifier(folder)
    np.testing.assert_array_equal(classify_slices(loaded, loaded_info, root, ids[2]), p)
    with pytest.raises(FileNotFoundError, match="no slice classifier"):
        load_classifier(tmp_path)


def test_refuses_cases_without_both_kinds_of_slice(tmp_path):
    root = tmp_path / "s.zarr"
    ids = make_store(root, n_cases=1, shape_zyx=(8, 32, 32), seed=1, n_lesions=0)
    with pytest.raises(ValueError, match="with and without"):
        train_slice_classifier(root, ids, CFG)
    with pytest.raises(ValueError, match="at least one"):
        train_slice_classifier(root, [], CFG)


def test_summarise_reports_the_classifier_beside_the_segmentation():
    slices = [{"case_id": "a", "z": z, "has_lesion": z >= 2, "score": 0.9, "pred_voxels": 1, "dice": 0.5, "tversky": 0.5,
               "classifier_score": 0.2 + 0.2 * z} for z in range(4)]
    cases = [{"case_id": "a", "has_lesion": True, "score": 0.9, "predicted_present": True, "dice_lesion_slices": 0.5,
              "tversky_lesion_slices": 0.5, "classifier_score": 0.8}]
    s = summarise(slices, cases)
    assert s["slice"]["auc"] == 0.5 and s["slice_classifier"]["auc"] == 1.0 and s["patients_correct_classifier"] == 1
    assert "slice_classifier" not in summarise([{k: v for k, v in r.items() if k != "classifier_score"} for r in slices], cases)
