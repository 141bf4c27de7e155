"""training/: patch dataset, U-Net training loop, checkpoints, sliding-window scoring (CPU, tiny shapes)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from pipeline.prepare.patches import write_patch_index
from training.checkpoint import CheckpointError, list_models, load_model, resolve_model_version, state_dict_sha256
from training.data import PatchDataset, usable_cases
from training.infer import mask_path, predict_case, score_cases
from training.loop import dice_score, split_validation, train
from training.model import build_model, default_arch

from tests.store_factory import make_store

SHAPE = (40, 56, 48)
PATCH = (32, 32, 32)
THREADS = 1  # on a shared 2-core CPU one busy neighbour makes 2 torch threads ~7x slower; 1 is ~1.2x slower at worst


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """3 labelled cases, 1 unlabelled, 1 lacking T2; a patch index stored for the first case only."""
    root = tmp_path_factory.mktemp("train") / "store"
    labelled = make_store(root, n_cases=3, shape_zyx=SHAPE, seed=0)
    unlabelled = make_store(root, n_cases=1, shape_zyx=SHAPE, seed=1, with_label=False, start=10)
    two_channel = make_store(root, n_cases=1, shape_zyx=SHAPE, seed=2, channels=("FLAIR", "T1"), start=20)
    write_patch_index(root, labelled[0], PATCH, seed=0)
    return {"root": root, "labelled": labelled, "unlabelled": unlabelled[0], "two_channel": two_channel[0]}


@pytest.fixture(scope="module")
def trained(store):
    events = []
    result = train(
        store["root"],
        case_ids=store["labelled"][:2] + [store["unlabelled"], store["two_channel"]],
        val_case_ids=store["labelled"][2:],
        patch_zyx=PATCH,
        batch_size=2,
        iterations=40,
        lr=2e-3,
        seed=0,
        progress=events.append,
        log_every=10,
        config_hash="abc123",
        num_threads=THREADS,
    )
    return result, events


# ----------------------------------------------------------------------------- data
def test_dataset_skips_unusable_cases_with_reasons(store):
    ds = PatchDataset(store["root"], store["labelled"] + [store["unlabelled"], store["two_channel"], "sub-nope_ses-01"], patch_zyx=PATCH)
    assert ds.case_ids == store["labelled"]
    reasons = {s["case_id"]: s["reason"] for s in ds.skipped}
    assert "label" in reasons[store["unlabelled"]]
    assert "T2" in reasons[store["two_channel"]]
    assert "sub-nope_ses-01" in reasons
    sources = {c.case_id: c.index_source for c in ds.cases}
    assert sources[store["labelled"][0]] == "store" and sources[store["labelled"][1]] == "built-in-memory"
    ok, skipped = usable_cases(store["root"], None, ("FLAIR", "T1", "T2"))
    assert ok == store["labelled"] and len(skipped) == 2


def test_dataset_items_shapes_determinism_and_alignment(store):
    ds = PatchDataset(store["root"], store["labelled"], patch_zyx=PATCH, lesion_fraction=1.0, seed=5, samples_per_epoch=24)
    image, label = ds[3]
    assert image.shape == (3, *PATCH) and image.dtype == torch.float32
    assert label.shape == (1, *PATCH) and label.dtype == torch.int64
    image2, label2 = PatchDataset(store["root"], store["labelled"], patch_zyx=PATCH, lesion_fraction=1.0, seed=5)[3]
    assert torch.equal(image, image2) and torch.equal(label, label2)
    flipped = 0
    for i in range(len(ds)):
        image, label = ds[i]
        spec = ds.sample_spec(i)
        flipped += bool(spec["flips"])
        lesion = label[0].bool()
        assert lesion.any(), "lesion_fraction=1 must centre every patch on a lesion"
        # flips hit image and label alike: lesions are bright on FLAIR (channel 0), dark on T1
        assert image[0][lesion].mean() > image[0][~lesion].mean() + 1.0
        assert image[1][lesion].mean() < image[1][~lesion].mean()
    assert flipped > 0


def test_dataset_reads_requested_channels_in_order(store):
    ds = PatchDataset(store["root"], store["labelled"], channels=("T2", "FLAIR"), patch_zyx=PATCH, flip_prob=0.0, seed=1)
    image, label = ds[0]
    spec = ds.sample_spec(0)
    g = zarr.open_group(str(store["root"] / "cases" / spec["case_id"]), mode="r")
    z, y, x = (c - p // 2 for c, p in zip(spec["centre"], PATCH))
    window = (slice(z, z + PATCH[0]), slice(y, y + PATCH[1]), slice(x, x + PATCH[2]))
    np.testing.assert_array_equal(image.numpy(), g["image"][(slice(None), *window)][[2, 0]])
    np.testing.assert_array_equal(label[0].numpy(), g["label"][window])


def test_dataset_pads_when_volume_smaller_than_patch(store):
    ds = PatchDataset(store["root"], store["labelled"][:1], patch_zyx=(48, 64, 64), seed=0)
    image, label = ds[0]
    assert image.shape == (3, 48, 64, 64) and label.shape == (1, 48, 64, 64)


# ----------------------------------------------------------------------------- loop
def test_training_loss_decreases_and_reports_progress(trained, store):
    result, events = trained
    losses = result.metrics["loss_history"]
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert result.metrics["train_case_ids"] == store["labelled"][:2]
    assert {s["case_id"] for s in result.metrics["skipped"]} == {store["unlabelled"], store["two_channel"]}
    train_events = [e for e in events if e["event"] == "train"]
    assert [e["iteration"] for e in train_events] == [10, 20, 30, 40]
    assert all({"loss", "lr", "it_per_s"} <= set(e) for e in train_events)
    assert [e["event"] for e in events if e["event"] != "train"] == ["start", "val", "done"]
    assert 0.0 <= result.metrics["val_dice"] <= 1.0
    assert result.metrics["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    if result.metrics["device"] == "cpu":
        assert result.metrics["cpu_threads"] == THREADS


def test_checkpoint_written_with_model_json(trained, store):
    result, _ = trained
    assert re.fullmatch(r"unet3d-\d{8}T\d{6}-[0-9a-f]{8}", result.model_version)
    assert result.checkpoint_path == store["root"] / "models" / result.model_version
    assert (result.checkpoint_path / "model.pt").is_file()
    info = json.loads((result.checkpoint_path / "model.json").read_text())
    for key in ("model_version", "arch", "channels", "patch_zyx", "normalization", "train_case_ids", "iterations", "seed", "final_loss", "val_dice", "torch_version", "monai_version", "created_at", "config_hash", "weights_sha256"):
        assert key in info, key
    assert info["model_version"] == result.model_version
    assert info["channels"] == ["FLAIR", "T1", "T2"] and info["patch_zyx"] == list(PATCH)
    assert info["normalization"] == "zscore" and info["config_hash"] == "abc123"
    assert info["iterations"] == 40 and info["seed"] == 0
    assert info["train_case_ids"] == store["labelled"][:2]
    assert result.model_version.endswith(info["weights_sha256"][:8])
    assert not list((store["root"] / "models").glob(".tmp-*")) and not list((store["root"] / ".staging").glob(".tmp-model-*"))
    assert [m["model_version"] for m in list_models(store["root"])] == [result.model_version]


def test_load_model_round_trips(trained, store, tmp_path):
    result, _ = trained
    x = torch.randn(1, 3, *PATCH)
    with torch.inference_mode():
        expected = result.model.cpu()(x)
    outside = tmp_path / "archive_model"
    shutil.copytree(result.checkpoint_path, outside)
    for ref, root in ((result.model_version, store["root"]), ("latest", store["root"]), (result.checkpoint_path, None), (outside / "model.pt", None), (outside, None)):
        model, info = load_model(ref, store_root=root, device="cpu")
        assert info["model_version"] == result.model_version and not model.training
        with torch.inference_mode():
            torch.testing.assert_close(model(x), expected)
    for ref, root in ((result.model_version, store["root"]), ("latest", store["root"]), (outside, None), (outside / "model.pt", None)):
        assert resolve_model_version(ref, root) == result.model_version
    with pytest.raises(CheckpointError):
        load_model("unet3d-19700101T000000-deadbeef", store_root=store["root"])
    # a tampered checkpoint is refused
    state = torch.load(outside / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1
    torch.save(state, outside / "model.pt")
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model(outside)


def test_state_dict_hash_tracks_weights():
    a = build_model(default_arch(3)).state_dict()
    b = {k: v.clone() for k, v in a.items()}
    assert state_dict_sha256(a) == state_dict_sha256(b)
    key = next(iter(b))
    b[key] = b[key] + 1e-3
    assert state_dict_sha256(a) != state_dict_sha256(b)


def test_validation_split(store):
    everything = store["labelled"] + [store["unlabelled"], store["two_channel"]]
    val = split_validation(store["root"], everything, ("FLAIR", "T1", "T2"), 0.34, seed=0)
    assert len(val) == 1 and val[0] in store["labelled"]
    assert val == split_validation(store["root"], None, ("FLAIR", "T1", "T2"), 0.34, seed=0)
    assert len(split_validation(store["root"], None, ("FLAIR", "T1", "T2"), 0.9, seed=0)) == 2  # never all
    assert split_validation(store["root"], store["labelled"][:1], ("FLAIR", "T1", "T2"), 0.5, seed=0) == []
    result = train(store["root"], val_fraction=0.34, patch_zyx=PATCH, iterations=2, save=False, num_threads=THREADS)
    assert result.metrics["val_case_ids"] == val
    assert set(result.metrics["train_case_ids"]) == set(store["labelled"]) - set(val)
    assert result.metrics["val_dice"] is not None


def test_train_rejects_bad_inputs(store):
    with pytest.raises(ValueError, match="multiple of 8"):
        train(store["root"], case_ids=store["labelled"][:1], patch_zyx=(30, 32, 32), iterations=1)
    with pytest.raises(ValueError, match="no usable training cases"):
        train(store["root"], case_ids=[store["unlabelled"]], patch_zyx=PATCH, iterations=1, num_threads=2)
    assert torch.get_num_threads() == THREADS  # restored after a failed call


# ----------------------------------------------------------------------------- inference
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


# ----------------------------------------------------------------------------- learning
def test_tiny_model_overfits_one_case(store):
    """Fails when images and labels are misaligned, the loss is wrong or inference is broken."""
    case = store["labelled"][0]
    result = train(store["root"], case_ids=[case], val_case_ids=[case], patch_zyx=PATCH, iterations=100, lr=3e-3, seed=1, save=False, num_threads=THREADS)
    assert result.metrics["val_dice"] > 0.7, result.metrics["val_dice"]
    label = zarr.open_group(str(store["root"] / "cases" / case), mode="r")["label"][...]
    mask = predict_case(result.model, {"channels": ["FLAIR", "T1", "T2"], "patch_zyx": list(PATCH)}, store["root"], case)
    assert dice_score(mask, label) == pytest.approx(result.metrics["val_dice"])


def test_dice_score():
    a = np.zeros((4, 4, 4), np.uint8)
    assert dice_score(a, a) == 1.0
    b = a.copy()
    b[0, 0, :2] = 1
    c = a.copy()
    c[0, 0, 1:3] = 1
    assert dice_score(b, c) == pytest.approx(0.5)


def test_training_package_does_not_import_prefect():
    code = "import sys, training.loop, training.infer; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "False"
