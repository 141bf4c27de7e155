"""The brain-tumour recipe end to end on 2 real LGG patients with a few iterations: ingest of the
slice stacks, cross-validation by patient (2 folds), the final model exported, and
`lesionflow segment` on one patient folder with it. Checks the plumbing, not the figures."""

from __future__ import annotations

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytestmark = [pytest.mark.realdata, pytest.mark.slow, pytest.mark.integration]

PATIENTS = ("TCGA_HT_7692_19960724", "TCGA_CS_4943_20000902")  # the two shortest stacks (20 slices each)


def test_train_lgg_on_two_patients(prefect_harness, shared_data, tmp_path):
    from typer.testing import CliRunner

    from flows.train_lgg import RECIPE_CONFIG, train_lgg
    from lesionflow.cli import app

    source = shared_data / "lgg" / "kaggle_3m"
    if not all((source / p).is_dir() for p in PATIENTS):
        pytest.skip(f"LGG patients {PATIENTS} not found under {source}")
    data = tmp_path / "lgg"
    for p in PATIENTS:
        shutil.copytree(source / p, data / p)
    cfg = {**RECIPE_CONFIG, "batch_size": 4, "patch_zyx": [1, 64, 64]}
    # the two folds and the final model on a Dask LocalCluster of 2 processes
    small_classifier = {"size": 32, "iterations": 4, "batch_size": 4, "widths": [8, 8, 16, 16]}
    out = train_lgg(str(tmp_path / "work"), config=cfg, iterations=4, data_dir=str(data), folds=2, fold_workers=2, classifier=small_classifier)
    assert out["fold_workers"] == 2 and out["timings"]["training_s"] > 0
    # the slice classifier beside the segmentation: its own presence figures, exported with the final model
    assert 0.0 <= out["summary"]["slice_classifier"]["auc"] <= 1.0 and "classifier_slice_auc" in out["folds"][0]
    assert json.loads((tmp_path / "work" / "model" / "classifier" / "classifier.json").read_text())["train_cases"] == 2
    assert not (tmp_path / "work" / "classifier.partial").exists()

    assert out["ingest"]["converted"] == 2 and out["ingest"]["rejected"] == 0
    # every patient held out exactly once, never in its own fold's training
    subjects = [c["subject"] for c in out["cases"]]
    assert len(subjects) == 2 == len(set(subjects)) and [f["train_patients"] for f in out["folds"]] == [1, 1]
    s = out["summary"]
    assert s["n_patients"] == 2 and s["n_slices"] == 40
    truth_slices = sum(int(np.asarray(Image.open(f)).any()) for p in PATIENTS for f in (data / p).glob("*_mask.tif"))
    assert s["n_lesion_slices"] == truth_slices == 6 + 8
    assert 0.0 <= s["slice"]["auc"] <= 1.0 and s["patients_correct"] <= 2
    assert out["timings"]["total_s"] > 0 and "within_limit" in out
    # the 2-D augmentation bank: prepared once for both patients before the folds, read by every training
    bank = out["bank"]
    assert bank["built"] == 2 and bank["config"]["spatial_dims"] == 2 and bank["config"]["patch_zyx"] == [1, 64, 64]
    assert out["timings"]["bank_s"] > 0 and bank["build_s_per_patient"] > 0
    assert [f["samples_from"] for f in out["folds"]] == ["bank", "bank"] and out["final_samples_from"] == "bank"
    from pipeline.prepare.augment import BankConfig
    from pipeline.prepare.bank import bank_status, read_bank
    from pipeline.store import list_cases

    store_root = tmp_path / "work" / "store.zarr"
    for case in list_cases(store_root):
        assert bank_status(store_root, case, BankConfig.model_validate(bank["config"])) == "up-to-date"
        assert read_bank(store_root, case).n_lesion == BankConfig.model_validate(bank["config"]).samples_per_case // 2

    work = tmp_path / "work"
    written = json.loads((work / "crossval.json").read_text())
    assert written["summary"]["n_lesion_slices"] == 14
    slices = pd.read_csv(work / "crossval_slices.csv")
    assert len(slices) == 40 and set(slices["fold"]) == {0, 1}
    for f in (work / "crossval.json", work / "crossval_slices.csv", work / "crossval_cases.csv"):  # no folder name, ID or date
        text = f.read_text()
        for p in PATIENTS:  # the ID and date parts as whole numbers: not the digits inside a float such as 0.0079741788[4943]991
            assert p not in text
            for part in p.split("_")[2:]:
                assert not re.search(rf"(?<![0-9.]){part}(?![0-9])", text), (f.name, part)

    # the same folds one after another in this process (the store is reused: nothing is ingested or
    # banked again): the same models, so the same figures, whatever runs them
    again = train_lgg(str(tmp_path / "work"), config=cfg, iterations=4, data_dir=str(data), folds=2, fold_workers=1, final=False,
                      classifier=small_classifier)
    assert again["fold_workers"] == 1 and again["ingest"]["converted"] == 0 and again["bank"]["built"] == 0
    for a, b in zip(out["folds"], again["folds"]):
        assert a["model_version"] != b["model_version"]
        for k in ("dice_slices", "tversky_slices", "slice_auc", "patients_correct"):
            assert a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])), (k, a, b)
    assert [c["score"] for c in again["cases"]] == [c["score"] for c in out["cases"]]
    assert [c["classifier_score"] for c in again["cases"]] == [c["classifier_score"] for c in out["cases"]]

    # the exported model segments one patient folder of the set
    model = work / "model"
    assert (model / "model.pt").is_file() and json.loads((model / "model.json").read_text())["spatial_dims"] == 2
    mask_out = tmp_path / "seg" / "patient.nii.gz"
    r = CliRunner().invoke(app, ["segment", str(source / PATIENTS[0]), "--model", str(model), "--out", str(mask_out), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["geometry_source"] == "unknown" and got["total_volume_ml"] is None
    # the exported slice classifier says, per slice of the stack, whether it holds tumour
    assert len(got["slice_lesion_probability"]) == 20 and isinstance(got["lesion_present"], bool)
    img = nib.load(mask_out)
    assert img.shape == (256, 256, 20)  # x, y, z: 20 slices of 256 x 256
    assert int(np.asarray(img.dataobj).sum()) == got["total_voxels"]

    # `evaluate` gives these cases (geometry unknown) no mm, mm³ or mL: voxels only
    r = CliRunner().invoke(app, ["evaluate", "--store", str(work / "store.zarr"), "--model", str(model), "--json"])
    assert r.exit_code == 0, r.output  # it raised TypeError on these cases before (float(None))
    rows = [row for row in json.loads(r.stdout)["case_rows"] if row["has_reference"]]
    assert len(rows) == 2
    for row in rows:
        assert row["geometry_source"] == "unknown" and row["voxels_ref"] > 0
        assert all(row[k] is None for k in ("volume_ref_ml", "volume_pred_ml", "hd95_mm", "voxel_volume_mm3"))
        assert row["case_score_kind"] == "predicted_voxels" and row["case_score"] == row["voxels_pred"]
