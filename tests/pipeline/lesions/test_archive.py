"""pipeline/lesions/archive.py: the (case, model) pairs still to score, found by a query over the
catalog and the case_volumes table's parts; appending a run's rows reads no earlier part."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from pipeline import store
from pipeline.lesions.archive import model_case_volumes, unscored_cases
from pipeline.lesions.tables import append_lesion_rows, finish_lesion_tables
from storage_schemas.models import CaseVolumeRow, CatalogRow

CHANNELS = ["FLAIR", "T1", "T2"]


def _catalog(root, case_id, modalities, when):
    rows = [CatalogRow(case_id=case_id, modality=m, status="converted", source_relpath=f"src:{case_id}-{m}", pipeline_version="0",
                       config_hash="h", run_id="r", recorded_at=when) for m in modalities]
    store.append_catalog(root, rows)


def _volume_row(case_id, model, volume_ml=1.0):
    return CaseVolumeRow(case_id=case_id, subject=case_id.split("_")[0], session="ses-1", model_version=model, total_volume_ml=volume_ml,
                         lesion_count=1, connectivity=26, min_lesion_mm3=0.0, voxel_volume_mm3=1.0, source_fingerprint="f",
                         config_hash="h").model_dump()


@pytest.fixture()
def archive(tmp_path):
    root = store.init_store(tmp_path / "s.zarr")
    past = datetime.now(UTC) - timedelta(hours=1)
    _catalog(root, "sub-a_ses-1", CHANNELS, past)
    _catalog(root, "sub-b_ses-1", CHANNELS, past)
    _catalog(root, "sub-c_ses-1", ["FLAIR", "T1"], past)  # no T2: a FLAIR/T1/T2 model cannot score it
    store.append_catalog(root, [CatalogRow(status="rejected", source_relpath="src:x", pipeline_version="0", config_hash="h", run_id="r")])
    append_lesion_rows(root, [_volume_row("sub-a_ses-1", "m1")], [], finish=False)
    return root


def test_the_query_finds_the_cases_a_model_has_not_scored(archive):
    assert unscored_cases(archive, "m1", CHANNELS) == ["sub-b_ses-1"]
    assert unscored_cases(archive, "m2", CHANNELS) == ["sub-a_ses-1", "sub-b_ses-1"]
    assert unscored_cases(archive, "m2", ["FLAIR"]) == ["sub-a_ses-1", "sub-b_ses-1", "sub-c_ses-1"]
    assert unscored_cases(archive, "m1", CHANNELS, overwrite=True) == ["sub-a_ses-1", "sub-b_ses-1"]
    # the rows of the run that scored sub-b: nothing left; another model's rows change nothing for m1
    append_lesion_rows(archive, [_volume_row("sub-b_ses-1", "m1")], [], finish=False)
    append_lesion_rows(archive, [_volume_row("sub-b_ses-1", "m2")], [], finish=False)
    assert unscored_cases(archive, "m1", CHANNELS) == []
    assert unscored_cases(archive, "m2", CHANNELS) == ["sub-a_ses-1"]


def test_a_case_converted_again_after_its_scoring_is_scored_again(archive):
    _catalog(archive, "sub-a_ses-1", CHANNELS, datetime.now(UTC) + timedelta(seconds=5))  # re-ingested from changed sources
    assert unscored_cases(archive, "m1", CHANNELS) == ["sub-a_ses-1", "sub-b_ses-1"]


def test_without_a_catalog_the_committed_cases_are_the_archive(tmp_path):
    from tests.store_factory import make_store

    root = tmp_path / "s.zarr"
    ids = make_store(root, n_cases=2, shape_zyx=(16, 16, 16))
    append_lesion_rows(root, [_volume_row(ids[0], "m1")], [], finish=False)
    assert unscored_cases(root, "m1", CHANNELS) == [ids[1]]


def test_model_case_volumes_keeps_the_latest_row_of_each_case(archive):
    append_lesion_rows(archive, [_volume_row("sub-a_ses-1", "m1", 2.5), _volume_row("sub-b_ses-1", "m1", 0.5)], [], finish=False)
    append_lesion_rows(archive, [_volume_row("sub-a_ses-1", "m2", 9.0)], [], finish=False)
    got = model_case_volumes(archive, "m1")
    assert got.to_dict("records") == [{"case_id": "sub-a_ses-1", "total_volume_ml": 2.5, "lesion_count": 1},
                                      {"case_id": "sub-b_ses-1", "total_volume_ml": 0.5, "lesion_count": 1}]
    assert model_case_volumes(archive, "m3").empty


def test_adding_a_runs_rows_reads_no_earlier_part(archive):
    parts = sorted((archive / "tables" / "case_volumes").glob("part-*.parquet"))
    assert len(parts) == 1
    parts[0].write_bytes(b"not parquet: any read of this part fails")
    append_lesion_rows(archive, [_volume_row("sub-b_ses-1", "m1")], [], finish=False)  # reads nothing stored
    assert len(list((archive / "tables" / "case_volumes").glob("part-*.parquet"))) == 2
    with pytest.raises(Exception):  # noqa: B017 - the exports read every part, the broken one too
        finish_lesion_tables(archive)


def test_finishing_exports_the_current_rows(archive):
    append_lesion_rows(archive, [_volume_row("sub-a_ses-1", "m1", 3.0)], [], finish=False)
    out = finish_lesion_tables(archive)
    exported = pd.read_csv(out["case_volumes"]["csv"])
    assert exported[["case_id", "total_volume_ml"]].to_dict("records") == [{"case_id": "sub-a_ses-1", "total_volume_ml": 3.0}]
