"""flows.train: plain JSON parameters (config dict + a few overrides) become one validated TrainConfig."""

from __future__ import annotations

import inspect
import json

import pytest
from pydantic import ValidationError

from flows.train import train, train_config
from training.config import TrainConfig


def test_config_dict_and_overrides():
    assert train_config() == TrainConfig()
    cfg = train_config({"iterations": 2000, "optim": {"lr": 1e-3}}, iterations=50, patch_size=32, seed=4, channels=["T2", "FLAIR"], val_fraction=0.2)
    assert cfg == TrainConfig(iterations=50, optim={"lr": 1e-3}, patch_zyx=(32, 32, 32), seed=4, channels=("T2", "FLAIR"), val_fraction=0.2)
    assert train_config({"iterations": 7}, iterations=None).iterations == 7  # None = not given
    with pytest.raises(ValidationError, match="multiple of 8"):
        train_config(patch_size=30)
    with pytest.raises(ValidationError, match="itarations"):
        train_config({"itarations": 3})
    # in 2-D the patch size is the slice's in-plane edge
    assert train_config({"spatial_dims": 2}, patch_size=64).patch_zyx == (1, 64, 64)


def test_resume_takes_nothing_else():
    with pytest.raises(ValueError, match="leave out iterations"):
        train.fn("store", iterations=3, resume="latest")


def test_flow_parameters_are_plain_json_values():
    params = inspect.signature(train.fn).parameters
    assert list(params) == ["store", "config", "iterations", "patch_size", "batch_size", "seed", "channels", "val_fraction", "resume"]
    assert all(p.default is None for name, p in params.items() if name != "store")
    assert json.loads(json.dumps(train_config(patch_size=32).model_dump(mode="json")))["patch_zyx"] == [32, 32, 32]
