"""training.registry: one row per model, aliases (set, move, remove, history), the production default, fingerprints."""

from __future__ import annotations

import re

import pytest

from training.checkpoint import CheckpointError, load_model, resolve_model_dir
from training.registry import aliases, code_version, data_fingerprint, default_model, registry, remove_alias, set_alias


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """A store of its own with two tiny models: one trained on a case (and validated on another), one on two."""
    from tests.store_factory import make_store
    from training.loop import train

    root = tmp_path_factory.mktemp("registry") / "store"
    ids = make_store(root, n_cases=3, shape_zyx=(24, 32, 32), seed=3)
    cfg = {"model": {"features": [4, 8], "strides": [2]}, "patch_zyx": [16, 16, 16], "batch_size": 2, "iterations": 2, "device": "cpu"}
    first = train(root, cfg, case_ids=ids[:1], val_case_ids=ids[2:], seed=1)
    second = train(root, cfg, case_ids=ids[:2], seed=2)
    return root, first, second


def test_registry_rows_and_the_production_alias(two_models):
    root, first, second = two_models
    rows = {r["model_version"]: r for r in registry(root)}
    row = rows[first.model_version]
    assert row["network"] == "unet" and row["spatial_dims"] == 3 and row["loss"] == "dice_ce"
    assert row["train_case_ids"] == first.metrics["train_case_ids"] and row["val_dice"] == first.metrics["val_dice"]
    assert re.fullmatch(r"[0-9a-f]{64}", row["data_fingerprint"]) and row["train_config_hash"] == first.metrics["train_config_hash"]
    assert row["code_version"] == code_version() and row["run_id"] == first.run_id
    assert rows[second.model_version]["data_fingerprint"] != row["data_fingerprint"]  # other cases

    before = {a: v for a, v in aliases(root).items()}
    entry = set_alias(root, "production", first.model_version, note="validated by the radiology team")
    assert entry["previous"] == before.get("production") and default_model(root) == first.model_version
    moved = set_alias(root, "production", second.model_version)
    assert moved["previous"] == first.model_version
    assert [r["model_version"] for r in registry(root) if "production" in r["aliases"]] == [second.model_version]
    # an alias is accepted wherever a model version is
    assert resolve_model_dir("production", root) == resolve_model_dir(second.model_version, root)
    _, info = load_model("production", store_root=root, device="cpu")
    assert info["model_version"] == second.model_version
    remove_alias(root, "production")
    with pytest.raises(CheckpointError, match=r"no 'production' alias .*--alias production VERSION"):
        default_model(root)
    with pytest.raises(CheckpointError, match="not found .*no aliases are set|not found .*aliases:"):
        resolve_model_dir("production", root)


def test_alias_names_and_targets_are_checked(two_models):
    root, first, _ = two_models
    with pytest.raises(CheckpointError, match="not in"):
        set_alias(root, "staging", "unet3d-20990101T000000-deadbeef")
    for bad in ("latest", "9lives", "has space", first.model_version):
        with pytest.raises(ValueError):
            set_alias(root, bad, first.model_version)
    with pytest.raises(ValueError, match="no alias 'nope'"):
        remove_alias(root, "nope")


def test_data_fingerprint_follows_cases_not_order(store):
    a = data_fingerprint(store["root"], store["labelled"])
    assert a == data_fingerprint(store["root"], list(reversed(store["labelled"])))
    assert a["cases"] == 3 and a != data_fingerprint(store["root"], store["labelled"][:2])
