"""The command line: lazy imports, `lesions` against the phantom truth, `--json` outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lesionflow.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_and_convert_do_not_import_torch_or_prefect():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lesionflow.cli import app\n"
        "r = CliRunner()\n"
        "for args in (['--help'], ['convert', '--help'], ['lesions', '--help'], ['phantom', '--help']):\n"
        "    assert r.invoke(app, args).exit_code == 0, args\n"
        "bad = [m for m in ('torch', 'prefect', 'monai') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_lesions_reproduces_phantom_truth_exactly(phantom_cohort):
    truth = pd.read_csv(phantom_cohort.truth_cases_csv)
    for _, row in truth.iterrows():
        mask = phantom_cohort.cohort_dir / row["mask_relpath"]
        out = run_cli("lesions", str(mask), "--json")
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["lesion_count"] == row["lesion_count"]
        assert got["total_volume_ml"] == pytest.approx(row["total_volume_ml"], rel=0, abs=1e-9)


def test_lesions_writes_per_lesion_csv_and_rejects_bad_input(phantom_cohort, tmp_path):
    truth = pd.read_csv(phantom_cohort.truth_cases_csv).iloc[0]
    csv = tmp_path / "lesions.csv"
    out = run_cli("lesions", str(phantom_cohort.cohort_dir / truth["mask_relpath"]), "--out", str(csv), "--connectivity", "6")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(csv)
    assert {"lesion_id", "voxels", "volume_mm3", "centroid_x_mm", "bbox_min_zyx"} <= set(df.columns)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not gzip at all")
    out = run_cli("lesions", str(broken))
    assert out.returncode == 2 and "broken.nii.gz" in out.stderr


def test_store_commands_say_how_to_create_a_missing_store(tmp_path):
    from typer.testing import CliRunner

    from lesionflow.cli import app

    missing = tmp_path / ("a-long-folder-name-that-would-wrap-in-a-narrow-terminal-" * 2) / "nope.zarr"
    for columns in ("40", "80", "200"):
        for cmd in (["report"], ["prepare"], ["score", "--model", "latest"]):
            out = CliRunner().invoke(app, [*cmd, "--store", str(missing)], env={"COLUMNS": columns})
            assert out.exit_code == 2
            # one line names the whole path and the command that creates it, at any terminal width
            line = next(ln for ln in out.output.splitlines() if "does not exist" in ln)
            assert str(missing) in line and f"lesionflow ingest SOURCE --store {missing}" in line


def test_train_config_errors_name_the_field_before_training(tmp_path):
    """`train --config`: a bad file or a bad override is one error naming the setting; nothing trains."""
    from typer.testing import CliRunner

    from lesionflow.cli import app

    store = tmp_path / "store.zarr"
    store.mkdir()
    cases = {
        "typo.json": ('{"itarations": 10}', ["itarations", "Extra inputs are not permitted"], []),
        "patch.json": ('{"patch_zyx": [30, 32, 32]}', ["patch_zyx (30, 32, 32)", "multiple of 8"], []),
        "list.json": ("[1, 2]", ["valid dictionary"], []),
        "broken.json": ("{not json", ["broken.json"], []),
        "override.json": ('{"iterations": 10}', ["patch_zyx (36, 36, 36)", "multiple of 8"], ["--patch-size", "36"]),
    }
    for name, (text, expected, extra) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        out = CliRunner().invoke(app, ["train", "--store", str(store), "--config", str(path), *extra])
        assert out.exit_code == 2, (name, out.output)
        for part in expected:
            assert part in out.output, (name, part, out.output)
    assert not (store / "models").exists()


def test_report_and_prepare_refuse_a_channel_the_store_lacks(tmp_path):
    from typer.testing import CliRunner

    from lesionflow.cli import app
    from pipeline.store import init_store

    root = init_store(tmp_path / "s.zarr", channels=("FLAIR", "T1"))
    for cmd in ("report", "prepare"):
        out = CliRunner().invoke(app, [cmd, "--store", str(root), "--channels", "FLAIR,T2"])
        assert out.exit_code == 2, out.output
        assert "requested ['FLAIR', 'T2'], the store has ['FLAIR', 'T1']" in out.output


def _corner_touching_mask(path) -> None:
    """Two corner-touching voxels (one lesion at 26-connectivity, two at 6/18) and a lone one, 0.1 mm voxels."""
    import nibabel as nib
    import numpy as np

    m = np.zeros((8, 8, 8), np.uint8)
    m[2, 2, 2] = m[3, 3, 3] = m[6, 6, 6] = 1
    nib.save(nib.Nifti1Image(m, np.diag([0.1, 0.1, 0.1, 1.0])), str(path))


def test_lesions_defaults_26_connectivity_and_no_minimum_size(tmp_path):
    """`lesionflow lesions MASK` without options: 26-connectivity, nothing dropped for its size."""
    from typer.testing import CliRunner

    from lesionflow.cli import app

    mask = tmp_path / "mask.nii.gz"
    _corner_touching_mask(mask)
    out = CliRunner().invoke(app, ["lesions", str(mask), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == {"lesion_count": 2, "total_volume_ml": pytest.approx(3e-6, rel=1e-6)}
    text = CliRunner().invoke(app, ["lesions", str(mask)])
    assert "2 lesions" in text.stdout and "(connectivity 26, min 0.0 mm³)" in text.stdout
    six = CliRunner().invoke(app, ["lesions", str(mask), "--json", "--connectivity", "6"])
    assert json.loads(six.stdout)["lesion_count"] == 3


def test_score_passes_26_connectivity_and_no_minimum_size_by_default(tmp_path, monkeypatch):
    """`lesionflow score` without options hands the flow the library defaults (the flow itself is
    replaced: this checks the command's options only)."""
    import sys
    import types

    from typer.testing import CliRunner

    from lesionflow.cli import app
    from pipeline.core.config import PipelineConfig
    from pipeline.store import init_store

    calls = []

    def fake_score(store, model, **kwargs):
        calls.append(kwargs)
        return {"model_version": model, "case_volumes": [], "tables": {}}

    monkeypatch.setitem(sys.modules, "flows.score", types.SimpleNamespace(score=fake_score))
    root = init_store(tmp_path / "s.zarr", channels=("FLAIR",))
    out = CliRunner().invoke(app, ["score", "--store", str(root), "--model", "m1", "--json"])
    assert out.exit_code == 0, out.output
    cfg = PipelineConfig()
    assert calls == [{"connectivity": cfg.connectivity, "min_lesion_mm3": cfg.min_lesion_mm3, "overwrite": False, "n_workers": 2,
                      "dask_address": None}]
    assert (cfg.connectivity, cfg.min_lesion_mm3) == (26, 0.0)


def test_upgrade_then_export_a_legacy_store(tmp_path):
    from typer.testing import CliRunner

    from lesionflow.cli import app
    from tests.pipeline.store.test_ngff import _legacy_store

    def run_cli(*args: str):  # in process: four commands, no interpreter start-up each
        return CliRunner().invoke(app, list(args))

    root = tmp_path / "s.zarr"
    case_id, _ = _legacy_store(root)
    dry = run_cli("upgrade", "--store", str(root), "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["cases_changed"] == 1 and (root / "cases" / case_id / "label").is_dir()
    done = run_cli("upgrade", "--store", str(root))
    assert done.exit_code == 0, done.output
    assert f"{case_id}: moved label -> labels/reference/0" in done.stdout.splitlines()[0]
    assert done.stdout.splitlines()[-1].startswith("1 of 1 cases changed; schema 1.2 → ")

    out = run_cli("export", str(tmp_path / "out"), "--store", str(root), "--case", case_id, "--model", "m1", "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    assert summary["models"] == ["m1"] and summary["cases"] == 1
    anat = tmp_path / "out" / "derivatives" / "lesionflow" / "sub-a" / "ses-1" / "anat"
    assert {p.name for p in anat.glob("*.nii.gz")} == {
        "sub-a_ses-1_desc-preproc_FLAIR.nii.gz", "sub-a_ses-1_desc-preproc_T1w.nii.gz",
        "sub-a_ses-1_label-lesion_desc-reference_mask.nii.gz", "sub-a_ses-1_label-lesion_desc-m1_mask.nii.gz"}
    missing = run_cli("export", str(tmp_path / "out"), "--store", str(root), "--case", "sub-x_ses-y")
    assert missing.exit_code == 2 and "not in store" in missing.output
