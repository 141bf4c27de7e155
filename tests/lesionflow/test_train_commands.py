"""`lesionflow train` (config, kinds, --resume), `lesionflow models` (registry, aliases) and `score`'s default model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lesionflow.cli import app

TINY = {"model": {"features": [4, 8, 16], "strides": [2, 2]}, "patch_zyx": [16, 16, 16], "batch_size": 2, "iterations": 6,
        "seed": 2, "device": "cpu", "threads": 1, "checkpoint_every": 2, "log_every": 1}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from tests.store_factory import make_store

    root = tmp_path_factory.mktemp("cli-train") / "store.zarr"
    make_store(root, n_cases=2, shape_zyx=(24, 32, 32), seed=5)
    return root


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80"})


def test_train_then_registry_then_alias_then_score_default(tiny_store, tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = _invoke("train", "--store", str(tiny_store), "--config", str(config), "--loss", "focal_tversky", "--no-prefect", "--json")
    assert out.exit_code == 0, out.output
    trained = json.loads(out.output[out.output.index("{"):])
    assert trained["train_config"]["loss"]["kind"] == "focal_tversky" and trained["train_config"]["model"]["features"] == [4, 8, 16]
    assert trained["run_id"] and "loss_history" not in trained["metrics"]
    version = trained["model_version"]

    listed = _invoke("models", "--store", str(tiny_store), "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)
    assert [r["model_version"] for r in rows] == [version] and rows[0]["loss"] == "focal_tversky" and rows[0]["aliases"] == []

    no_default = _invoke("score", "--store", str(tiny_store))
    assert no_default.exit_code == 2 and "no 'production' alias" in no_default.output and "--alias production VERSION" in no_default.output

    aliased = _invoke("models", "--store", str(tiny_store), "--alias", "production", "--model", version, "--note", "first model")
    assert aliased.exit_code == 0 and f"alias production: {version}" in aliased.output
    table = _invoke("models", "--store", str(tiny_store))
    assert table.exit_code == 0 and "production" in table.output
    assert _invoke("models", "--store", str(tiny_store), "--alias", "production").exit_code == 2  # neither --model nor --remove


def test_resume_from_the_command_line_finishes_a_crashed_run_with_the_same_weights(tiny_store, tmp_path):
    from training.checkpoint import load_model, state_dict_sha256
    from training.loop import list_runs, train

    whole = train(tiny_store, TINY, save=False)

    def crash(event):
        if event["event"] == "train" and event["iteration"] == 5:
            raise KeyboardInterrupt  # the user pressed Ctrl-C (or the power went) after the checkpoint at 4

    with pytest.raises(KeyboardInterrupt):
        train(tiny_store, TINY, progress=crash)
    assert [r["status"] for r in list_runs(tiny_store)].count("running") == 1
    out = _invoke("train", "--store", str(tiny_store), "--resume", "latest", "--no-prefect", "--json")
    assert out.exit_code == 0, out.output
    resumed = json.loads(out.output[out.output.index("{"):])
    assert resumed["metrics"]["resumed_from"] == 4
    _, info = load_model(resumed["checkpoint"], device="cpu")
    assert info["weights_sha256"] == state_dict_sha256(whole.model.state_dict())

    again = _invoke("train", "--store", str(tiny_store), "--resume", "latest", "--no-prefect")
    assert again.exit_code == 2 and "no unfinished run" in again.output
    mixed = _invoke("train", "--store", str(tiny_store), "--resume", "latest", "--iterations", "3")
    assert mixed.exit_code == 2 and "leave out --iterations" in mixed.output


def test_kind_options_are_validated_like_the_config(tiny_store):
    out = _invoke("train", "--store", str(tiny_store), "--network", "transformer", "--no-prefect")
    assert out.exit_code == 2 and "transformer" in out.output and "unet" in out.output
    out = _invoke("train", "--store", str(tiny_store), "--dims", "2", "--patch-size", "30", "--no-prefect")
    assert out.exit_code == 2 and "patch_zyx (1, 30, 30)" in out.output
