"""Visits ordered without dates in the store; a longitudinal folder's change mask as the pair's expert mask."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from pipeline.core.config import PipelineConfig, pseudonym_key
from pipeline.ingest.discover import SessionPlan, discover
from pipeline.ingest.visits import VISITS_TABLE, natural_key, order_visits
from pipeline.store import EXPERT, list_pairs, read_catalog, read_pair_mask, read_pair_meta, read_table
from tests import dicom_factory as fac
from tests import longitudinal_factory as lf
from tests.phi.cohort import scan_tree, squash


def _plan(session: str, label: str | None = None, date: dt.date | None = None, subject: str = "sub-x") -> SessionPlan:
    p = SessionPlan(subject, session, "")
    p.visit_label, p.visit_date = label, date
    p.visit_date_source = "study_date" if date else None
    return p


def test_labels_in_natural_order_without_days():
    plans = [_plan("ses-a", "study10"), _plan("ses-b", "study2"), _plan("ses-c", "study1")]
    assert order_visits(plans) == {"sub-x_ses-a": (2, None, "label"), "sub-x_ses-b": (1, None, "label"), "sub-x_ses-c": (0, None, "label")}
    assert natural_key("ses-2") < natural_key("ses-10") and natural_key(None) > natural_key("zzz")


def test_dates_give_days_since_first_and_one_missing_date_falls_back_to_labels():
    plans = [_plan("ses-a", "ses-2", dt.date(2021, 3, 1)), _plan("ses-b", "ses-1", dt.date(2020, 2, 28)),
             _plan("ses-c", None, dt.date(2020, 1, 1), subject="sub-y")]
    assert order_visits(plans) == {"sub-x_ses-a": (1, 367, "study_date"), "sub-x_ses-b": (0, 0, "study_date"),
                                   "sub-y_ses-c": (0, 0, "study_date")}
    plans[0].visit_date = None
    assert order_visits(plans)["sub-x_ses-a"] == (1, None, "label")


def test_configured_days_order_undated_sessions():
    plans = [_plan("ses-a", "study1"), _plan("ses-b", "study2"), _plan("ses-c", "study3", dt.date(2020, 1, 1), subject="sub-y")]
    assert order_visits(plans, {"study1": 200, "study2": 20}) == {
        "sub-x_ses-a": (1, 180, "config"), "sub-x_ses-b": (0, 0, "config"), "sub-y_ses-c": (0, 0, "study_date")}


def test_a_longitudinal_folder_is_two_sessions_and_a_pair_label(tmp_path):
    lf.write_source(tmp_path / "src", transforms=True)
    disc = discover(tmp_path / "src", PipelineConfig(), pseudonym_key())
    assert disc.rejected == []
    assert sorted(p.visit_label for p in disc.sessions) == ["study1", "study2"]
    assert all(p.common_transform is not None and p.common_transform.name.endswith("_to_common_space.txt") for p in disc.sessions)
    assert len(disc.pair_labels) == 1 and disc.pair_labels[0].path.name == "gt.nii.gz"
    assert {s for _, s in disc.pair_labels[0].sessions} == {p.session for p in disc.sessions}


def test_a_mask_beside_three_sessions_stays_unassignable(tmp_path):
    from pipeline.io.writers import write_nifti
    from storage_schemas.models import ReasonCode
    from tests.session_factory import blob_image, lesion_mask_on, write_session

    folder = tmp_path / "src" / "p"
    for n in (1, 2, 3):
        write_session(folder, f"study{n}_", seed=n, label=False)
    write_nifti(lesion_mask_on(blob_image((12, 40, 40), (1.0, 1.0, 3.0))), folder / "gt.nii.gz")
    disc = discover(tmp_path / "src", PipelineConfig(), pseudonym_key())
    (rej,) = disc.rejected
    assert rej.code is ReasonCode.UNASSIGNABLE and "exactly two sessions" in rej.reason and disc.pair_labels == []


def test_ingest_stores_the_visit_order_transforms_and_expert_mask(tmp_path):
    from pipeline.ingest import run_ingest

    v = lf.write_source(tmp_path / "src", transforms=True)
    store = tmp_path / "s.zarr"
    summary = run_ingest(tmp_path / "src", store, PipelineConfig(), pseudonym_key())
    cfg = PipelineConfig(visit_days={"study2": 30, "study1": 0})
    assert cfg.visit_days == (("study1", 0), ("study2", 30)) and hash(cfg)  # frozen, hashable
    assert cfg.processing_hash() == PipelineConfig().processing_hash()  # shapes no voxel
    assert summary.converted == 2 and summary.rejected_inputs == []
    visits = read_table(store, VISITS_TABLE).sort_values("visit_index")
    assert visits["visit_index"].tolist() == [0, 1] and visits["days_since_first"].isna().all()
    assert set(visits["order_source"]) == {"label"} and visits["common_transform"].notna().all()
    (pid,) = list_pairs(store)
    meta = read_pair_meta(store, pid)
    assert (meta.baseline_case, meta.followup_case) == tuple(visits["case_id"])
    assert meta.grid == "expert" and meta.expert_source.relpath.startswith("src:")
    assert np.array_equal(read_pair_mask(store, pid, EXPERT), v["expert"].array)
    rows = read_catalog(store)
    gt = rows[(rows["modality"] == "MASK") & (rows["status"] == "converted")]
    assert len(gt) == 1 and gt["case_id"].isna().all()
    # a second ingest changes nothing about the pair
    again = run_ingest(tmp_path / "src", store, PipelineConfig(), pseudonym_key())
    assert again.skipped == 2 and list_pairs(store) == [pid]


@pytest.mark.slow
def test_dicom_study_dates_order_visits_and_no_date_reaches_the_store(tmp_path):
    from pipeline.ingest import run_ingest

    src = tmp_path / "src"
    arr = (np.arange(8 * 16 * 16).reshape(8, 16, 16) % 97).astype(np.int16)
    dates = {"later": "20240315", "first": "20240101"}
    for n, (name, date) in enumerate(dates.items(), start=1):
        fac.write_series(src / name / "flair", arr, series_number=1, description="AX FLAIR", study_uid=f"1.2.3.{n}",
                         series_uid=f"1.2.3.{n}.1", extra={"StudyDate": date, "SeriesDate": date, "AcquisitionDate": date})
    store = tmp_path / "s.zarr"
    summary = run_ingest(src, store, PipelineConfig(), pseudonym_key())
    assert summary.converted == 2
    visits = read_table(store, VISITS_TABLE).sort_values("visit_index")
    assert visits["days_since_first"].tolist() == [0, 74] and set(visits["order_source"]) == {"study_date"}
    needles = [squash(n) for n in ("20240101", "20240315", "01012024", "15032024", "03152024")]
    assert scan_tree(store, needles) == []
