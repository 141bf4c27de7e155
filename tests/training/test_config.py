"""training.config: TrainConfig validated at the door, overrides, hashing, JSON round trip (no training here)."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from training.config import AdamConfig, DiceCELossConfig, TrainConfig, UNetConfig, make_config


def _error(**fields) -> str:
    with pytest.raises(ValidationError) as info:
        TrainConfig.model_validate(fields)
    return str(info.value)


def test_defaults_are_todays_training_defaults():
    cfg = TrainConfig()
    assert cfg.channels is None and cfg.patch_zyx is None and cfg.batch_size is None and cfg.iterations == 300  # planned
    assert cfg.spatial_dims == 3 and cfg.select == "best" and cfg.early_stop_patience is None and cfg.checkpoint_every == 100
    assert cfg.optim == AdamConfig(lr=2e-3, weight_decay=1e-5, min_lr_factor=0.05)
    assert cfg.loss == DiceCELossConfig(lambda_dice=1.0, lambda_ce=1.0, batch=True)
    assert cfg.model == UNetConfig(features=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1, norm="instance")
    assert (cfg.lesion_fraction, cfg.flip_prob, cfg.seed, cfg.val_fraction, cfg.val_every) == (0.5, 0.5, 0, 0.0, None)
    assert (cfg.num_workers, cfg.threads, cfg.device, cfg.amp, cfg.log_every, cfg.val_overlap) == (0, None, None, True, 10, 0.25)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"patch_zyx": (30, 32, 32)}, r"patch_zyx \(30, 32, 32\): each side must be a multiple of 8 .*strides \[2, 2, 2\].*e\.g\. \(32, 32, 32\)"),
        ({"patch_zyx": (4, 8, 8)}, r"multiple of 8"),
        ({"patch_zyx": (32, 32)}, r"patch_zyx"),
        ({"model": {"strides": [2, 2]}}, r"strides needs one entry fewer than features \(3\), got \[2, 2\]"),
        ({"model": {"features": [16]}, "patch_zyx": (8, 8, 8)}, r"features needs at least 2 levels"),
        ({"model": {"strides": [2, 0, 2]}}, r"strides must be positive integers"),
        ({"model": {"kind": "transformer"}}, r"model\s+Input tag 'transformer' .*expected tags: 'unet', 'dynunet', 'vnet', 'segresnet'"),
        ({"loss": {"kind": "lovasz"}}, r"loss\s+Input tag 'lovasz' .*'dice_ce', 'dice', 'tversky', 'focal_tversky', 'focal', 'dice_focal'"),
        ({"model": {"kind": "vnet"}, "patch_zyx": (40, 32, 32)}, r"multiple of 16 \(the vnet network's downsampling\), e\.g\. \(48, 32, 32\)"),
        ({"model": {"kind": "segresnet", "init_filters": 12}}, r"init_filters must be a multiple of 8"),
        ({"model": {"kind": "dynunet", "kernels": [[3, 3, 3]]}}, r"give both kernels and strides"),
        ({"spatial_dims": 2, "patch_zyx": (8, 64, 64)}, r"2-D training takes axial slices, so z must be 1, e\.g\. \(1, 64, 64\)"),
        ({"spatial_dims": 4}, r"spatial_dims"),
        ({"loss": {"kind": "tversky", "fn_weight": 1.5}}, r"loss\.tversky\.fn_weight"),
        ({"loss": {"kind": "dice_focal", "lambda_dice": 0, "lambda_focal": 0}}, r"both 0"),
        ({"early_stop_patience": 0}, r"early_stop_patience"),
        ({"select": "middle"}, r"select"),
        ({"loss": {"lambda_dice": 0, "lambda_ce": 0}}, r"both 0"),
        ({"optim": {"lr": 0}}, r"optim\.lr\s+Input should be greater than 0"),
        ({"iterations": 0}, r"iterations\s+Input should be greater than or equal to 1"),
        ({"batch_size": 0}, r"batch_size"),
        ({"lesion_fraction": 1.5}, r"lesion_fraction\s+Input should be less than or equal to 1"),
        ({"val_fraction": 1.0}, r"val_fraction\s+Input should be less than 1"),
        ({"seed": -1}, r"seed"),
        ({"channels": []}, r"channels is empty"),
        ({"channels": ["FLAIR", "FLAIR"]}, r"channels repeats \['FLAIR'\]"),
        ({"device": "gpu"}, r"device\s+String should match pattern"),
        ({"threads": 0}, r"threads"),
        ({"itarations": 10}, r"itarations\s+Extra inputs are not permitted"),
        ({"optim": {"momentum": 0.9}}, r"optim\.momentum\s+Extra inputs are not permitted"),
    ],
)
def test_bad_values_are_refused_with_the_field_and_reason(fields, message):
    assert re.search(message, _error(**fields)), _error(**fields)


def test_patch_follows_the_networks_size_multiple():
    assert TrainConfig(model={"features": (8, 16, 32), "strides": (2, 2)}, patch_zyx=(36, 36, 4)).model.size_multiple == 4
    assert TrainConfig(model={"strides": (2, 2, 1)}, patch_zyx=(20, 20, 20)).model.size_multiple == 4


def test_overrides_fields_subfields_and_old_names():
    base = TrainConfig(optim={"lr": 1e-3, "weight_decay": 0.0}, iterations=50)
    cfg = base.with_overrides(lr=5e-4, num_threads=2, seed=3, patch_zyx=[32, 32, 32], channels=["T2", "FLAIR"])
    assert cfg.optim == AdamConfig(lr=5e-4, weight_decay=0.0) and cfg.threads == 2 and cfg.seed == 3 and cfg.iterations == 50
    assert cfg.patch_zyx == (32, 32, 32) and cfg.channels == ("T2", "FLAIR")
    assert base.with_overrides(optim={"min_lr_factor": 0.1}).optim == AdamConfig(lr=1e-3, weight_decay=0.0, min_lr_factor=0.1)
    assert base.with_overrides(model=UNetConfig(num_res_units=2)).model.num_res_units == 2
    assert base.iterations == 50 and base.optim.lr == 1e-3  # the original is untouched
    with pytest.raises(ValueError, match=r"unknown training setting 'iterationz'; known: .*iterations.*num_threads"):
        base.with_overrides(iterationz=10)
    with pytest.raises(ValidationError, match="multiple of 8"):
        base.with_overrides(patch_zyx=(33, 32, 32))
    assert make_config(None) == TrainConfig()
    assert make_config({"iterations": 7}, seed=2) == TrainConfig(iterations=7, seed=2)
    assert make_config(base) is base


def test_config_is_frozen():
    with pytest.raises(ValidationError):
        TrainConfig().iterations = 5  # type: ignore[misc]


def test_json_round_trip_and_file(tmp_path):
    cfg = TrainConfig(channels=("FLAIR", "T1"), patch_zyx=(32, 48, 64), optim={"lr": 1e-3}, loss={"lambda_ce": 0.5}, val_every=50, device="cuda:1")
    dumped = cfg.model_dump(mode="json")
    assert json.loads(json.dumps(dumped)) == dumped
    assert TrainConfig.model_validate(dumped) == cfg
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"iterations": 2000, "optim": {"lr": 1e-3}}))
    assert TrainConfig.from_file(path) == TrainConfig(iterations=2000, optim={"lr": 1e-3})


def test_config_hash_covers_what_shapes_the_weights():
    cfg = TrainConfig(channels=("FLAIR", "T1", "T2"))
    h = cfg.config_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert TrainConfig.model_validate(cfg.model_dump(mode="json")).config_hash() == h
    for same in ({"threads": 1}, {"device": "cpu"}, {"num_workers": 2}, {"log_every": 1}, {"amp": False}, {"val_every": 5}, {"val_overlap": 0.5},
                 {"checkpoint_every": 7}, {"compile": True}, {"channels_last": True}, {"memory_budget_mb": 100}, {"cache_cases": True}):
        assert cfg.with_overrides(**same).config_hash() == h, same
    for other in ({"seed": 1}, {"lr": 1e-3}, {"iterations": 301}, {"patch_zyx": (32, 32, 32)}, {"channels": ("FLAIR", "T1")},
                  {"model": {"num_res_units": 2}}, {"loss": {"lambda_ce": 0.5}}, {"batch_size": 4}, {"lesion_fraction": 0.6}, {"val_fraction": 0.2},
                  {"model": {"kind": "segresnet"}}, {"loss": {"kind": "focal_tversky"}}, {"spatial_dims": 2}, {"early_stop_patience": 3},
                  {"select": "last"}):
        assert cfg.with_overrides(**other).config_hash() != h, other


def test_in_channels_and_arch_need_resolved_channels():
    with pytest.raises(ValueError, match="resolve it first"):
        _ = TrainConfig().in_channels
    cfg = TrainConfig(channels=("FLAIR", "T2"), model={"features": (8, 16), "strides": (2,), "norm": "batch"}, patch_zyx=(16, 16, 16))
    assert cfg.arch() == {"name": "monai.UNet", "spatial_dims": 3, "in_channels": 2, "out_channels": 2, "channels": [8, 16],
                          "strides": [2], "num_res_units": 1, "norm": "batch"}


def test_describe_errors_is_one_line_per_problem():
    from training.config import describe_errors

    with pytest.raises(ValidationError) as info:
        TrainConfig.model_validate({"optim": {"lr": -1}, "itarations": 3})
    assert describe_errors(info.value) == "optim.lr: Input should be greater than 0 (got -1); itarations: Extra inputs are not permitted (got 3)"
    with pytest.raises(ValidationError) as info:
        TrainConfig(patch_zyx=(20, 20, 20))
    assert describe_errors(info.value).startswith("config: patch_zyx (20, 20, 20): each side must be a multiple of 8")


def test_networks_and_losses_are_chosen_by_kind_and_old_configs_without_kind_still_load():
    cfg = TrainConfig(model={"kind": "dynunet", "base_filters": 8}, loss={"kind": "focal_tversky"})
    assert type(cfg.model).__name__ == "DynUNetConfig" and type(cfg.loss).__name__ == "FocalTverskyLossConfig"
    assert (cfg.loss.fn_weight, cfg.loss.fp_weight, cfg.loss.gamma) == (0.7, 0.3, 0.75)
    assert TrainConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    # a config written before the unions: no kind anywhere
    old = TrainConfig.model_validate({"model": {"features": [8, 16], "strides": [2]}, "loss": {"lambda_ce": 0.5}, "patch_zyx": [16, 16, 16]})
    assert old.model.kind == "unet" and old.loss.kind == "dice_ce" and old.loss.lambda_ce == 0.5
    # switching kind by override replaces the sub-config instead of merging fields of another kind
    switched = old.with_overrides(model={"kind": "segresnet"}, loss={"kind": "tversky", "fn_weight": 0.8})
    assert switched.model.kind == "segresnet" and switched.loss.fn_weight == 0.8 and switched.loss.fp_weight == 0.3
    assert old.with_overrides(model={"num_res_units": 2}).model.features == (8, 16)  # same kind: merged


def test_two_d_patches_are_one_slice_thick_and_checked_in_plane():
    cfg = TrainConfig(spatial_dims=2, patch_zyx=(1, 160, 192), channels=("FLAIR",))
    assert cfg.arch()["spatial_dims"] == 2
    with pytest.raises(ValidationError, match=r"each side must be a multiple of 8.*e\.g\. \(1, 160, 200\)"):
        TrainConfig(spatial_dims=2, patch_zyx=(1, 160, 196))


def test_dynunet_is_planned_the_nnunet_way():
    from training.config import plan_dynunet

    kernels, strides, patch = plan_dynunet((128, 128, 128))
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 5 and len(kernels) == 6 and patch == (128, 128, 128)  # 128 -> 4: 5 poolings
    # thick slices (3 mm along z): z is neither pooled nor convolved with 3 until the in-plane spacing has caught up
    kernels, strides, _ = plan_dynunet((32, 192, 192), spacing=(3.0, 1.0, 1.0))
    assert strides[1] == [1, 2, 2] and kernels[0] == [1, 3, 3] and strides[2] == [2, 2, 2] and kernels[1] == [3, 3, 3]
    cfg = TrainConfig(model={"kind": "dynunet"}, patch_zyx=(64, 64, 64), channels=("FLAIR", "T1"))
    arch = cfg.arch()
    assert arch["filters"] == [32, 64, 128, 256, 320] and arch["deep_supervision"] and arch["deep_supr_num"] == 2
    capped = TrainConfig(model={"kind": "dynunet", "max_filters": 64}, patch_zyx=(64, 64, 64), channels=("a",))
    assert capped.arch()["filters"] == [32, 64, 64, 64, 64]
