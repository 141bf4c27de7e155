"""training.loop: setup / train_step / validate / save_model, composed by train() from a TrainConfig or overrides."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from pipeline.lesions.components import dice
from pipeline.store import open_case, reference_label
from tests.training.conftest import PATCH, THREADS
from training.checkpoint import load_model, state_dict_sha256
from training.config import TrainConfig
from training.infer import predict_case
from training.loop import save_model, setup, split_validation, train, train_step, validate


def _weights(result) -> str:
    return state_dict_sha256(result.model.state_dict())


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
    assert events[0]["channels"] == ["FLAIR", "T1", "T2"]
    assert 0.0 <= result.metrics["val_dice"] <= 1.0 and result.metrics["val_history"] == []
    assert result.metrics["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert result.config.channels == ("FLAIR", "T1", "T2") and result.config.iterations == 40
    if result.metrics["device"] == "cpu":
        assert result.metrics["cpu_threads"] == THREADS


def test_config_and_overrides_train_identical_weights_and_seed_matters(store, tmp_path):
    """Same values as a TrainConfig or as keyword overrides: the same weights (CPU, 1 thread);
    two runs with one seed agree, another seed does not."""
    cases = store["labelled"][:2]
    cfg = TrainConfig(patch_zyx=PATCH, iterations=6, seed=2, optim={"lr": 3e-3}, log_every=3, threads=THREADS, device="cpu")
    from_config = train(store["root"], cfg, case_ids=cases, models_dir=tmp_path)
    from_overrides = train(store["root"], case_ids=cases, patch_zyx=PATCH, iterations=6, seed=2, lr=3e-3, log_every=3, num_threads=THREADS, device="cpu", save=False)
    from_dict = train(store["root"], cfg.model_dump(mode="json"), case_ids=cases, save=False)
    assert _weights(from_config) == _weights(from_overrides) == _weights(from_dict)
    assert from_config.metrics["loss_history"] == from_overrides.metrics["loss_history"]
    assert from_config.config == from_overrides.config
    assert from_config.metrics["train_config_hash"] == from_overrides.metrics["train_config_hash"]
    _, info = load_model(from_config.checkpoint_path, device="cpu")
    assert info["weights_sha256"] == _weights(from_config)
    other_seed = train(store["root"], cfg, case_ids=cases, seed=3, save=False)
    assert _weights(other_seed) != _weights(from_config)
    assert other_seed.metrics["train_config_hash"] != from_config.metrics["train_config_hash"]


def test_explicit_channels_reach_the_network_and_model_json(store, tmp_path):
    """Two channels: the FLAIR+T1 case becomes usable, the network takes 2 inputs, and the checkpoint says so."""
    result = train(store["root"], case_ids=[store["two_channel"], store["unlabelled"]], channels=("FLAIR", "T1"),
                   patch_zyx=PATCH, iterations=2, num_threads=THREADS, models_dir=tmp_path)
    assert result.metrics["train_case_ids"] == [store["two_channel"]]
    model, info = load_model(result.checkpoint_path, device="cpu")
    assert info["channels"] == ["FLAIR", "T1"] and info["train_config"]["channels"] == ["FLAIR", "T1"]
    assert next(model.parameters()).shape[1] == 2
    with torch.inference_mode():
        assert model(torch.zeros(1, 2, *PATCH)).shape == (1, 2, *PATCH)


def test_the_pieces_compose_like_train(store, tmp_path):
    cfg = TrainConfig(patch_zyx=PATCH, iterations=4, seed=5, device="cpu")
    whole = train(store["root"], cfg, case_ids=store["labelled"][:2], val_case_ids=store["labelled"][2:], save=False, num_threads=THREADS)
    events = []
    state = setup(store["root"], cfg, case_ids=store["labelled"][:2], val_case_ids=store["labelled"][2:], progress=events.append)
    assert state.cfg.channels == ("FLAIR", "T1", "T2") and state.train_case_ids == store["labelled"][:2]
    assert state.val_case_ids == store["labelled"][2:] and state.iteration == 0 and state.model.training
    for batch in state.loader:
        if state.iteration >= cfg.iterations:
            break
        assert np.isfinite(train_step(state, batch))
    assert state.iteration == 4 and len(state.losses) == 4
    assert state_dict_sha256(state.model.state_dict()) == _weights(whole)
    scores = validate(state)
    assert state.model.training  # validate restores the mode
    assert scores["val_dice"] == pytest.approx(whole.metrics["val_dice"]) and scores["iteration"] == 4
    assert [e["event"] for e in events] == ["val"] and events[0]["case_id"] == store["labelled"][2]
    assert validate(state, [store["unlabelled"], "sub-nope_ses-01"])["val_dice"] is None  # no label / no case: skipped
    version, path = save_model(state, scores, models_dir=tmp_path)
    model, info = load_model(path, device="cpu")
    assert info["model_version"] == version and info["iterations"] == 4 and info["val_dice"] == scores["val_dice"]
    assert info["train_config"] == state.cfg.model_dump(mode="json")


def test_validation_every_n_iterations_leaves_the_weights_alone(store):
    kwargs = dict(case_ids=store["labelled"][:2], val_case_ids=store["labelled"][2:], patch_zyx=PATCH, iterations=4, seed=1, save=False, num_threads=THREADS)
    events = []
    periodic = train(store["root"], val_every=2, select="last", progress=events.append, **kwargs)
    assert [h["iteration"] for h in periodic.metrics["val_history"]] == [2]  # the final validation is the metric
    assert [e.get("iteration") for e in events if e["event"] == "val"] == [2, 4]
    assert _weights(periodic) == _weights(train(store["root"], **kwargs))


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


def test_train_rejects_bad_inputs_before_any_work(store):
    with pytest.raises(ValueError, match="multiple of 8"):
        train(store["root"], case_ids=store["labelled"][:1], patch_zyx=(30, 32, 32), iterations=1)
    with pytest.raises(ValueError, match="unknown training setting 'iteration'"):
        train(store["root"], iteration=1)
    with pytest.raises(ValueError, match="no usable training cases"):
        train(store["root"], case_ids=[store["unlabelled"]], patch_zyx=PATCH, iterations=1, num_threads=2)
    assert torch.get_num_threads() == THREADS  # restored after a failed call
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            train(store["root"], device="cuda", iterations=1)


def test_tiny_model_overfits_one_case(store):
    """Fails when images and labels are misaligned, the loss is wrong or inference is broken."""
    case = store["labelled"][0]
    result = train(store["root"], case_ids=[case], val_case_ids=[case], patch_zyx=PATCH, iterations=100, lr=3e-3, seed=1, save=False,
                   num_threads=THREADS)
    assert result.metrics["val_dice"] > 0.7, result.metrics["val_dice"]
    label = zarr.open_group(str(store["root"] / "cases" / case), mode="r")["labels/reference/0"][...]
    mask = predict_case(result.model, {"channels": ["FLAIR", "T1", "T2"], "patch_zyx": list(PATCH)}, store["root"], case)
    assert dice(mask, label) == pytest.approx(result.metrics["val_dice"])  # validation uses the pipeline's one Dice


def test_training_package_does_not_import_prefect():
    code = "import sys, training.loop, training.infer, training.config; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize(("network", "dims", "patch"), [("unet", 2, (1, 32, 32)), ("dynunet", 3, (16, 16, 16)), ("segresnet", 2, (1, 32, 32))])
def test_other_networks_and_slices_train_validate_save_and_score(store, tmp_path, network, dims, patch):
    """2-D slices and a deep-supervised DynUNet go through the same loop, checkpoint and sliding-window inference."""
    small = {"unet": {"features": [4, 8, 16], "strides": [2, 2]}, "dynunet": {"base_filters": 4, "max_filters": 16},
             "segresnet": {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]}}[network]
    cfg = TrainConfig(model={"kind": network, **small}, spatial_dims=dims, patch_zyx=patch, batch_size=2, iterations=3,
                      loss={"kind": "focal_tversky"}, device="cpu", threads=THREADS, val_overlap=0.0)
    result = train(store["root"], cfg, case_ids=store["labelled"][:1], val_case_ids=store["labelled"][2:], models_dir=tmp_path)
    assert result.model_version.startswith(f"{network}{dims}d-") and 0.0 <= result.metrics["val_dice"] <= 1.0
    model, info = load_model(result.checkpoint_path, device="cpu")
    assert info["network"] == network and info["spatial_dims"] == dims and info["patch_zyx"] == list(patch)
    if network == "dynunet":
        assert info["train_config"]["model"]["strides"] is not None  # planned strides recorded, so the network rebuilds
    mask = predict_case(model, info, store["root"], store["labelled"][2], device="cpu", overlap=0.0)
    assert mask.shape == tuple(reference_label(open_case(store["root"], store["labelled"][2])).shape)


def test_patch_and_batch_are_planned_when_not_given(store, tmp_path):
    result = train(store["root"], case_ids=store["labelled"][:2], iterations=1, memory_budget_mb=64, device="cpu",
                   model={"features": [4, 8, 16], "strides": [2, 2]}, save=False, num_threads=THREADS)
    plan = result.metrics["plan"]
    assert plan["planned"] == ["patch_zyx", "batch_size"] and plan["budget_mb"] == 64.0
    assert tuple(result.config.patch_zyx) == tuple(plan["patch_zyx"]) and result.config.batch_size == plan["batch_size"] >= 2
    assert all(p % 4 == 0 for p in result.config.patch_zyx)


def test_flush_losses_reads_the_pending_losses_in_one_go_and_names_a_diverged_iteration():
    """On CUDA train_step leaves the loss on the device (no per-step wait); flush_losses reads them back."""
    from types import SimpleNamespace

    from training.loop import flush_losses

    state = SimpleNamespace(pending_losses=[(1, torch.tensor(0.5)), (2, torch.tensor(0.25, dtype=torch.bfloat16))], losses=[0.75])
    assert flush_losses(state) == [0.5, 0.25]
    assert state.losses == [0.75, 0.5, 0.25] and state.pending_losses == []
    assert flush_losses(state) == []
    state.pending_losses = [(3, torch.tensor(0.1)), (4, torch.tensor(float("nan"))), (5, torch.tensor(float("inf")))]
    with pytest.raises(FloatingPointError, match="iteration 4"):
        flush_losses(state)
