"""training.checkpoint: model.json holds the TrainConfig as is; the network is rebuilt from it; old checkpoints load."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest
import torch

from pipeline import store as _store
from tests.training.conftest import PATCH
from training.checkpoint import (
    CheckpointError,
    list_models,
    load_model,
    make_model_version,
    resolve_model_version,
    save_checkpoint,
    state_dict_sha256,
    train_config_of,
    version_prefix,
)
from training.config import TrainConfig
from training.model import build_model, build_network, default_arch


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_checkpoint_written_with_model_json(trained, store):
    result, _ = trained
    assert re.fullmatch(r"unet3d-\d{8}T\d{6}-[0-9a-f]{8}", result.model_version)
    assert result.checkpoint_path == store["root"] / "models" / result.model_version
    assert (result.checkpoint_path / "model.pt").is_file()
    info = json.loads((result.checkpoint_path / "model.json").read_text())
    for key in ("model_version", "train_config", "train_config_hash", "channels", "patch_zyx", "normalization", "train_case_ids", "val_case_ids",
                "iterations", "final_loss", "val_dice", "val_dice_per_case", "device", "torch_version", "monai_version", "lesionflow_version",
                "created_at", "config_hash", "weights_sha256", "store"):
        assert key in info, key
    assert "arch" not in info  # the network is described once: by train_config
    assert info["train_config"] == result.config.model_dump(mode="json")  # the config as is
    cfg = TrainConfig.model_validate(info["train_config"])
    assert cfg.channels == ("FLAIR", "T1", "T2")  # resolved from the store (none was given)
    assert cfg.patch_zyx == PATCH and cfg.iterations == 40 and cfg.seed == 0 and cfg.optim.lr == 2e-3 and cfg.threads == 1
    assert info["train_config_hash"] == cfg.config_hash() == result.metrics["train_config_hash"]
    assert info["model_version"] == result.model_version
    assert info["channels"] == ["FLAIR", "T1", "T2"] and info["patch_zyx"] == list(PATCH)
    assert info["normalization"] == "zscore" and info["config_hash"] == "abc123"
    assert info["iterations"] == 40 and info["train_case_ids"] == store["labelled"][:2]
    assert info["val_dice"] == result.metrics["val_dice"] and info["final_loss"] == result.metrics["final_loss"]
    assert result.model_version.endswith(info["weights_sha256"][:8])
    assert info["weights_sha256"] == state_dict_sha256(result.model.state_dict())
    assert not list((store["root"] / "models").rglob("*.tmp")) and not list((store["root"] / ".staging").glob(".tmp-model-*"))
    assert [m["model_version"] for m in list_models(store["root"])] == [result.model_version]


def test_model_json_round_trip_rebuilds_the_same_network(trained, store, tmp_path):
    result, _ = trained
    info = json.loads((result.checkpoint_path / "model.json").read_text())
    rebuilt = build_network(TrainConfig.model_validate(info["train_config"]))
    assert _shapes(rebuilt) == _shapes(result.model)  # same keys, same shapes
    assert train_config_of(info) == result.config
    x = torch.randn(1, 3, *PATCH)
    with torch.inference_mode():
        expected = result.model.cpu()(x)
    outside = tmp_path / "archive_model"
    shutil.copytree(result.checkpoint_path, outside)
    for ref, root in ((result.model_version, store["root"]), ("latest", store["root"]), (result.checkpoint_path, None), (outside / "model.pt", None), (outside, None)):
        model, loaded = load_model(ref, store_root=root, device="cpu")
        assert loaded["model_version"] == result.model_version and not model.training
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


def test_old_style_checkpoint_with_arch_still_loads(tmp_path):
    """model.json as written before TrainConfig: a top-level ``arch`` dict, no ``train_config``."""
    torch.manual_seed(0)
    arch = {"name": "monai.UNet", "spatial_dims": 3, "in_channels": 2, "out_channels": 2, "channels": [8, 16, 32],
            "strides": [2, 2], "num_res_units": 1, "norm": "instance"}
    net = build_model(arch)
    state = net.state_dict()
    version = "unet3d-20250101T120000-" + state_dict_sha256(state)[:8]
    folder = tmp_path / "models" / version
    folder.mkdir(parents=True)
    torch.save(state, folder / "model.pt")
    (folder / "model.json").write_text(json.dumps({
        "arch": arch, "channels": ["FLAIR", "T1"], "patch_zyx": [16, 16, 16], "normalization": "zscore",
        "loss": {"name": "monai.DiceCELoss", "to_onehot_y": True, "softmax": True, "batch": True, "lambda_dice": 1.0, "lambda_ce": 1.0},
        "optimizer": {"name": "Adam", "lr": 0.002, "weight_decay": 1e-05, "schedule": "cosine to 0.05 x lr"},
        "batch_size": 2, "lesion_fraction": 0.5, "augmentation": {"flips": "each spatial axis, p=0.5"},
        "train_case_ids": ["sub-a_ses-01"], "val_case_ids": [], "iterations": 3, "seed": 0, "final_loss": 1.1, "val_dice": None,
        "val_dice_per_case": {}, "device": "cpu", "amp": None, "config_hash": None, "store": str(tmp_path),
        "model_version": version, "weights_sha256": state_dict_sha256(state), "created_at": "2025-01-01T12:00:00+00:00",
        "torch_version": "2.5.0", "monai_version": "1.4.0",
    }))
    model, info = load_model(folder, device="cpu")
    assert train_config_of(info) is None and info["model_version"] == version
    assert _shapes(model) == _shapes(net)
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), net.eval()(x))
    assert [m["model_version"] for m in list_models(tmp_path)] == [version]
    assert resolve_model_version("latest", tmp_path) == version


def test_checkpoint_files_go_through_the_stores_put_bytes(tmp_path, monkeypatch):
    """model.pt first, model.json (the marker) last, each through pipeline.store.put_bytes."""
    cfg = TrainConfig(channels=("FLAIR",), model={"features": (4, 8), "strides": (2,)}, patch_zyx=(8, 8, 8))
    calls = []
    real = _store.put_bytes
    monkeypatch.setattr(_store, "put_bytes", lambda root, rel, data, **kw: calls.append(rel) or real(root, rel, data, **kw))
    info = {"train_config": cfg.model_dump(mode="json"), "channels": ["FLAIR"], "patch_zyx": [8, 8, 8]}
    version, path = save_checkpoint(build_network(cfg), info, models_dir=tmp_path)
    assert calls == [f"{version}/model.pt", f"{version}/model.json"]
    assert path == tmp_path / version and sorted(p.name for p in path.iterdir()) == ["model.json", "model.pt"]
    state = torch.load(io.BytesIO((path / "model.pt").read_bytes()), weights_only=True)
    assert json.loads((path / "model.json").read_text())["weights_sha256"] == state_dict_sha256(state)
    again, _ = save_checkpoint(build_network(cfg), info, models_dir=tmp_path)  # other weights: another version
    assert again != version
    with pytest.raises(ValueError, match="train_config"):
        save_checkpoint(build_network(cfg), {"channels": ["FLAIR"]}, models_dir=tmp_path)
    with pytest.raises(ValueError, match="not a valid TrainConfig"):
        save_checkpoint(build_network(cfg), {"train_config": {"iterations": 0}}, models_dir=tmp_path)


def test_version_prefix_follows_the_network_kind():
    state = build_model(default_arch(1)).state_dict()
    assert version_prefix("unet") == "unet3d"
    assert make_model_version(state).startswith("unet3d-")
    assert re.fullmatch(r"segresnet3d-\d{8}T\d{6}-[0-9a-f]{8}", make_model_version(state, kind="segresnet"))


def test_state_dict_hash_tracks_weights():
    a = build_model(default_arch(3)).state_dict()
    b = {k: v.clone() for k, v in a.items()}
    assert state_dict_sha256(a) == state_dict_sha256(b)
    key = next(iter(b))
    b[key] = b[key] + 1e-3
    assert state_dict_sha256(a) != state_dict_sha256(b)


def test_default_arch_is_the_default_configs_network():
    assert default_arch(3) == TrainConfig(channels=("FLAIR", "T1", "T2")).arch()
