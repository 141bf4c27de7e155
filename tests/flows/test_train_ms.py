"""The multiple-sclerosis recipe (``make train-ms``, :func:`flows.train_ms.train_ms`) run for real
on the two open_ms MNI patients with 2 iterations: ingest, the case of each patient found through
its sealed source paths, training on patient07, scoring and evaluation of both, the model
exported. Checks the plumbing, not the figures. And :func:`flows.train_ms.case_of_patient` on a
store whose paths are sealed: it opens them with the key that sealed them, and with another key it
raises :class:`~pipeline.core.lineage.LineageKeyError` instead of matching nothing (or anything)."""

from __future__ import annotations

import json
import math

import pytest

from flows.train_ms import RECIPE_CONFIG, SOURCE, TEST_PATIENT, TRAIN_PATIENT, case_of_patient
from pipeline.core.lineage import LineageKeyError, is_sealed
from pipeline.store import list_cases, read_case_meta

PHANTOM_KEY = b"phantom-store-key"  # the key tests/conftest.py's phantom_store was ingested with


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.integration
def test_train_ms_on_the_two_ms_patients(shared_data, prefect_harness, tmp_path):  # shared_data first: no data, no server started
    from flows.train_ms import train_ms

    source = shared_data / SOURCE
    if not all((source / p).is_dir() for p in (TRAIN_PATIENT, TEST_PATIENT)):
        pytest.skip(f"open_ms MNI patients {TRAIN_PATIENT}, {TEST_PATIENT} not found under {source}")
    # the recipe's configuration with a larger patch: scoring two 182 x 218 x 182 volumes by 96³ windows
    # takes a third of the time it takes by the recipe's 48³ (10 s instead of 28 s on 2 cores)
    cfg = {**RECIPE_CONFIG, "patch_zyx": [96, 96, 96], "batch_size": 1}
    out = train_ms(workdir=str(tmp_path / "work"), config=cfg, iterations=2, data_dir=str(source))

    assert out["ingest"]["converted"] == 2 and out["ingest"]["rejected"] == 0
    store = out["store"]
    cases = {p: case_of_patient(store, p) for p in (TRAIN_PATIENT, TEST_PATIENT)}
    assert len(set(cases.values())) == 2 and set(list_cases(store)) == set(cases.values())

    rows = {r["patient"]: r for r in out["evaluation"]}
    assert set(rows) == {TRAIN_PATIENT, TEST_PATIENT} and out["evaluation"][0]["patient"] == TEST_PATIENT
    test, train = rows[TEST_PATIENT], rows[TRAIN_PATIENT]
    assert (test["split"], test["case_id"]) == ("test", cases[TEST_PATIENT])
    assert (train["split"], train["case_id"]) == ("train", cases[TRAIN_PATIENT])
    for r in (test, train):
        assert r["model_version"] == out["model_version"] and r["has_reference"]
        assert math.isfinite(r["dice"]) and 0.0 <= r["dice"] <= 1.0
        assert r["pred_volume_ml"] is not None and r["pred_lesions"] is not None
    # the truth table of the consensus masks reached the evaluation (patient19: 49.8 mL, 98 lesions)
    assert test["truth_volume_ml"] == pytest.approx(49.8, abs=0.05) and test["truth_lesions"] == 98
    assert test["volume_ref_ml"] == pytest.approx(test["truth_volume_ml"], abs=1e-3)
    assert train["truth_volume_ml"] == pytest.approx(1.3, abs=0.05)
    json.dumps(out["evaluation"], allow_nan=False)  # plain values: the rows are also the run's table artifact

    model = tmp_path / "work" / "model"
    assert out["model_dir"] == str(model) and (model / "model.pt").stat().st_size > 0
    info = json.loads((model / "model.json").read_text())
    assert info["model_version"] == out["model_version"] and info["spatial_dims"] == 3
    assert (info["patch_zyx"], info["iterations"]) == ([96, 96, 96], 2)
    assert info["train_case_ids"] == [cases[TRAIN_PATIENT]] and info["val_case_ids"] == []  # patient19 never seen
    assert out["within_limit"] is True and out["timings"]["total_s"] <= out["time_limit_s"]


def _folders(store, case_id: str) -> set[str]:
    """The top folders of ``case_id``'s source files, opened with the key that sealed them."""
    from pipeline.ingest.lineage import case_lineage

    return {f["path"].split("/")[0] for f in case_lineage(store, case_id, PHANTOM_KEY)["files"]}


def test_case_of_patient_opens_sealed_paths_with_the_key(phantom_store):
    """The phantom cohort has one subject per top folder (``bids/``, ``dicom/``, ``metaimage/``)."""
    metas = [read_case_meta(phantom_store, c) for c in list_cases(phantom_store)]
    assert all(is_sealed(s.relpath) for m in metas for ch in m.channel_info for s in ch.sources)  # no folder name in the store
    found = {folder: case_of_patient(str(phantom_store), folder, PHANTOM_KEY) for folder in ("bids", "dicom", "metaimage")}
    assert sorted(found.values()) == sorted(list_cases(phantom_store))  # three distinct cases
    for folder, case_id in found.items():
        assert _folders(phantom_store, case_id) == {folder}
    with pytest.raises(ValueError, match="expected one case from nowhere/ .* found 0"):
        case_of_patient(str(phantom_store), "nowhere", PHANTOM_KEY)


def test_case_of_patient_with_another_key_raises(phantom_store, monkeypatch):
    """Another key opens no path: a LineageKeyError that says so, never a case, whether the key is
    given or taken from the environment (the test session's key did not ingest this store)."""
    with pytest.raises(LineageKeyError, match="another pseudonymisation key"):
        case_of_patient(str(phantom_store), "dicom", b"not-the-ingest-key")
    monkeypatch.setenv("LESIONFLOW_PSEUDONYM_KEY", "not-the-ingest-key-either")
    with pytest.raises(LineageKeyError, match="LESIONFLOW_PSEUDONYM_KEY is not the key the store was ingested with"):
        case_of_patient(str(phantom_store), "dicom")
    monkeypatch.setenv("LESIONFLOW_PSEUDONYM_KEY", PHANTOM_KEY.decode())
    assert case_of_patient(str(phantom_store), "dicom") == case_of_patient(str(phantom_store), "dicom", PHANTOM_KEY)
