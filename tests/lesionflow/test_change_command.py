"""``lesionflow change``: the flow behind it on a phantom pair, JSON per pair, NIfTI export, bad options."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import flows.change  # noqa: F401  # Prefect sets up its console log handler on import: here, not on CliRunner's temporary stream
from lesionflow.cli import app
from pipeline.core.config import PipelineConfig, pseudonym_key
from tests import longitudinal_factory as lf


@pytest.mark.integration
@pytest.mark.slow
def test_change_subtraction_json_and_export(prefect_harness, tmp_path):
    from pipeline.ingest import run_ingest

    lf.write_source(tmp_path / "src", transforms=True)
    store = tmp_path / "s.zarr"
    run_ingest(tmp_path / "src", store, PipelineConfig(), pseudonym_key())
    res = CliRunner().invoke(app, ["change", "--store", str(store), "--method", "subtraction", "--json", "--export", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    (pair,) = json.loads(res.stdout)
    assert pair["method"] == "subtraction" and pair["pair_id"].startswith("sub-") and pair["has_expert"] is True
    assert {"n_new", "n_enlarging", "n_shrinking", "n_disappeared", "n_stable", "new_ml", "enlarging_ml", "dice",
            "change_sensitivity", "fp_per_true_change"} <= set(pair)
    assert 0.0 <= pair["change_sensitivity"] <= 1.0 and pair["registration_method"] == "supplied"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{pair['pair_id']}_change-subtraction.nii.gz"]
    # auto without any model in the store: subtraction for every pair, nothing scored
    res = CliRunner().invoke(app, ["change", "--store", str(store), "--method", "auto", "--json"])
    assert res.exit_code == 0, res.output
    assert [p["method"] for p in json.loads(res.stdout)] == ["subtraction"]


def test_bad_options_fail_with_a_message(tmp_path):
    from pipeline.store import init_store

    store = init_store(tmp_path / "s.zarr")
    res = CliRunner().invoke(app, ["change", "--store", str(store), "--method", "difference"])
    assert res.exit_code == 2 and "--method must be 'model', 'subtraction' or 'auto'" in res.output
    res = CliRunner().invoke(app, ["change", "--store", str(store), "--method", "subtraction", "--model", "latest"])
    assert res.exit_code == 2 and "--model goes with --method model" in res.output
