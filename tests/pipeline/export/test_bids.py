"""BIDS-derivatives export, checked against the SOURCE files (read with nibabel, not through the store)
and against the BIDS schema's own file-name rules (bidsschematools, the schema the BIDS validator is built on)."""

from __future__ import annotations

import json
import re
import shutil
from itertools import chain
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline import store
from pipeline.export.bids import export_bids
from pipeline.lesions.tables import write_lesion_tables
from tests.sealed import reveal

MODEL = "unet3d-20260101T120000-0badc0de"
AFFINE_TOL_MM = 1e-4


def bids_derivative_problems(root: Path) -> list[str]:
    """File names under a derivative dataset that the BIDS schema (raw + derivative rules) does not
    allow, plus ``dataset_description.json`` problems. The Node BIDS validator is not installed: the
    Python ``bids-validator`` package checks raw names only (``is_bids``, used for the top level), so
    the derivative names are matched against the same schema's ``rules.files.deriv`` regexes."""
    import bidsschematools.rules as bsr
    import bidsschematools.schema as bss
    from bids_validator import BIDSValidator

    schema = bss.load_schema()
    groups = (schema.rules.files.common, schema.rules.files.raw, schema.rules.files.deriv)
    rules = [re.compile(r["regex"]) for r in chain.from_iterable(bsr.regexify_filename_rules(g, schema, level=2) for g in groups)]
    problems = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if "/" not in rel and not BIDSValidator().is_bids(f"/{rel}") and rel != "descriptions.tsv":
            problems.append(f"top-level file not BIDS: {rel}")
        elif not any(r.fullmatch(rel) for r in rules):
            problems.append(f"not a BIDS(-derivatives) name: {rel}")
        if "/" in rel and not rel.startswith("phenotype/"):
            sub = rel.split("/")[0]
            if not rel.split("/")[-1].startswith(sub + "_"):
                problems.append(f"file outside its subject: {rel}")
    desc = json.loads((root / "dataset_description.json").read_text())
    for key in ("Name", "BIDSVersion", "DatasetType", "GeneratedBy"):
        if key not in desc:
            problems.append(f"dataset_description.json lacks {key}")
    if desc.get("DatasetType") != "derivative" or not desc.get("GeneratedBy", [{}])[0].get("Name"):
        problems.append("dataset_description.json: not a derivative with GeneratedBy[].Name")
    return problems


def _scored_copy(src: Path, dst: Path) -> dict[str, np.ndarray]:
    """A copy of a store with a 'prediction' per case (the reference shifted one voxel), a model.json and lesion tables."""
    shutil.copytree(src, dst)
    preds = {}
    for case_id in store.list_cases(dst):
        ref = np.asarray(store.reference_label(store.open_case(dst, case_id))[...])
        preds[case_id] = np.roll(ref, 1, axis=2)
        store.write_case_array(dst, case_id, f"predictions/{MODEL}/mask", preds[case_id],  # the path scoring used to write
                               attrs={"lesionflow_prediction": {"model_version": MODEL, "channels": ["FLAIR", "T1", "T2"]}})
    store.put_bytes(dst, f"models/{MODEL}/model.json", json.dumps({"model_version": MODEL, "created_at": "2026-01-01T12:00:00+00:00",
                                                                   "channels": ["FLAIR", "T1", "T2"], "train_case_ids": ["x"]}).encode())
    write_lesion_tables(dst, MODEL)
    return preds


def _source_of(meta, phantom_cohort, modality: str) -> Path:
    """The source file of a stored channel (the test may read the store's lineage; the export never writes it)."""
    (ci,) = [c for c in meta.channel_info if c.modality == modality]
    return phantom_cohort.cohort_dir / reveal(ci.sources[0].relpath, "phantom-store-key")  # stored sealed


def test_export_is_bids_on_the_source_grid(phantom_store, phantom_cohort, tmp_path):
    root = tmp_path / "s.zarr"
    preds = _scored_copy(phantom_store, root)
    summary = export_bids(root, tmp_path / "out")
    deriv = tmp_path / "out" / "derivatives" / "lesionflow"
    assert summary.root == deriv and summary.as_dict()["models"] == [MODEL] and not summary.skipped
    assert bids_derivative_problems(deriv) == []
    desc = json.loads((deriv / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Name"] == "lesionflow" and desc["DatasetType"] == "derivative"

    checked = 0
    for case_id in store.list_cases(root):
        meta = store.read_case_meta(root, case_id)
        anat = deriv / meta.subject / meta.session / "anat"
        pred_file = anat / f"{meta.subject}_{meta.session}_label-lesion_desc-{MODEL.replace('-', '')}_mask.nii.gz"
        img = nib.load(pred_file)
        np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), preds[case_id])  # same voxels as stored
        assert img.get_data_dtype() == np.uint8 and int(img.header["sform_code"]) == 1
        sidecar = json.loads(pred_file.with_name(pred_file.name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["ModelVersion"] == MODEL and sidecar["Type"] == "Lesion"
        model = {"model_version": MODEL, "created_at": "2026-01-01T12:00:00+00:00", "channels": ["FLAIR", "T1", "T2"]}
        assert sidecar["lesionflow"]["model"] == model  # the whitelisted fields only (no training case list)
        assert sidecar["lesionflow"]["source_fingerprint"] == meta.source_fingerprint
        assert all(s.startswith(f"bids::{meta.subject}/{meta.session}/anat/") for s in sidecar["Sources"])
        # the affine against the SOURCE: the FLAIR (reference grid) as a NIfTI file, or the DICOM subject's mask on that grid
        flair = _source_of(meta, phantom_cohort, "FLAIR")
        label_source = phantom_cohort.cohort_dir / reveal(meta.label_source.relpath, "phantom-store-key")
        source = flair if flair.name.endswith(".nii.gz") else label_source
        if source.name.endswith(".nii.gz"):
            src = nib.load(source)
            assert np.abs(img.affine - src.affine).max() < AFFINE_TOL_MM
            ref = nib.load(anat / f"{meta.subject}_{meta.session}_label-lesion_desc-reference_mask.nii.gz")
            assert np.abs(ref.affine - src.affine).max() < AFFINE_TOL_MM and ref.shape == src.shape
            if source == label_source:  # the source mask itself: same voxels
                np.testing.assert_array_equal(np.asarray(ref.dataobj) > 0, np.asarray(src.dataobj) > 0)
            checked += 1
        for name in ("FLAIR", "T1w", "T2w"):
            chan = nib.load(anat / f"{meta.subject}_{meta.session}_desc-preproc_{name}.nii.gz")
            assert np.array_equal(chan.affine, img.affine) and chan.shape == img.shape
    assert checked == 2  # the BIDS subject (FLAIR file) and the DICOM subject (its mask NIfTI on the FLAIR grid)

    volumes = pd.read_csv(deriv / "phenotype" / "lesionflow_volumes.tsv", sep="\t")
    stored = store.read_table(root, "case_volumes")
    assert sorted(volumes["total_volume_ml"].round(6)) == sorted(stored["total_volume_ml"].round(6))
    assert set(volumes["participant_id"]) == {store.read_case_meta(root, c).subject for c in store.list_cases(root)}
    assert len(pd.read_csv(deriv / "phenotype" / "lesionflow_lesions.tsv", sep="\t")) == len(store.read_table(root, "lesions"))

    # only pseudonyms and digests: no source subject label, folder or file name anywhere in the tree
    for path in deriv.rglob("*"):
        text = path.name if path.name.endswith(".gz") or path.is_dir() else path.name + path.read_text()
        for needle in ("PH00", "bids/", "dicom/", "metaimage/", "lesion_mask", "train_case_ids"):
            assert needle not in text, f"{needle} in {path}"

    # a second export of one case merges the tables (no duplicate rows)
    one = store.list_cases(root)[0]
    again = export_bids(root, tmp_path / "out", case_ids=[one], models=["latest"], channels=False)
    assert again.as_dict()["models"] == [MODEL]
    assert len(pd.read_csv(deriv / "phenotype" / "lesionflow_volumes.tsv", sep="\t")) == 3
    with pytest.raises(store.StoreError):
        export_bids(root, tmp_path / "out", case_ids=["sub-nobody_ses-x"])


@pytest.mark.realdata
@pytest.mark.slow
def test_real_mni_case_validates_and_exports_on_the_source_grid(shared_data, tmp_path):
    """The real MNI patient: its case group is OME-Zarr 0.5 with labels; the exported masks carry the
    affine of the source FLAIR file and the voxels of the source lesion mask."""
    from ome_zarr_models.v05.image import Image

    from pipeline.core.config import PipelineConfig
    from pipeline.ingest import run_ingest

    src_dir = shared_data / "open_ms" / "cross_sectional" / "MNI" / "patient07"
    if not src_dir.is_dir():
        pytest.skip(f"{src_dir} not found")
    cohort = tmp_path / "cohort" / "patient07"
    cohort.mkdir(parents=True)
    for f in src_dir.iterdir():
        (cohort / f.name).symlink_to(f)
    root = tmp_path / "s.zarr"
    assert run_ingest(cohort.parent, root, PipelineConfig(), b"mni-export-key").converted == 1
    (case_id,) = store.list_cases(root)
    group = store.open_case(root, case_id)
    image = Image.from_zarr(group)
    assert set(image.labels.label_paths) == {"reference", "foreground"}
    ref = np.asarray(store.reference_label(group)[...])
    store.write_case_array(root, case_id, f"predictions/{MODEL}/mask", ref)

    export_bids(root, tmp_path / "out", channels=False)
    meta = store.read_case_meta(root, case_id)
    anat = tmp_path / "out" / "derivatives" / "lesionflow" / meta.subject / meta.session / "anat"
    flair = nib.load(next(src_dir.glob("FLAIR_*.nii.gz")))
    gold = nib.load(next(src_dir.glob("GOLD_STANDARD_*.nii.gz")))
    for desc in ("reference", MODEL.replace("-", "")):
        out = nib.load(anat / f"{meta.subject}_{meta.session}_label-lesion_desc-{desc}_mask.nii.gz")
        assert out.shape == flair.shape and np.abs(out.affine - flair.affine).max() < AFFINE_TOL_MM
        np.testing.assert_array_equal(np.asarray(out.dataobj) > 0, np.asarray(gold.dataobj) > 0)
    assert bids_derivative_problems(tmp_path / "out" / "derivatives" / "lesionflow") == []
