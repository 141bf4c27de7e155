import json

import numpy as np
import pytest
import zarr

from pipeline import store
from pipeline.core.volume import Volume
from storage_schemas.models import CaseMeta, CatalogRow


def meta_for(case_id: str, vol: Volume, channels=("FLAIR",)) -> CaseMeta:
    return CaseMeta(case_id=case_id, subject=case_id.split("_")[0], session=case_id.split("_")[1], channels=list(channels),
                    channel_info=[], has_label=True, geometry=store.geometry_of(vol), source_fingerprint="f", config_hash="c",
                    pipeline_version="0.1.0")


def test_case_round_trip_with_geometry_and_ome(tmp_path):
    root = store.init_store(tmp_path / "s.zarr")
    d = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    vol = Volume(np.zeros((6, 7, 8), np.float32), spacing=(0.9, 1.1, 3.0), origin=(1, 2, 3), direction=d)
    img = np.random.default_rng(0).random((1, 6, 7, 8)).astype(np.float32)
    lab = (img[0] > 0.9).astype(np.uint8)
    store.write_case(root, meta_for("sub-a_ses-b", vol), img, np.ones_like(lab), lab, chunk_zyx=(4, 4, 4))
    assert store.list_cases(root) == ["sub-a_ses-b"]
    g = zarr.open_group(str(root / "cases" / "sub-a_ses-b"), mode="r")  # plain zarr reads it
    np.testing.assert_array_equal(g["image"][:], img)
    np.testing.assert_array_equal(g["labels/reference/0"][:], lab)
    meta = store.read_case_meta(root, "sub-a_ses-b")
    np.testing.assert_allclose(np.reshape(meta.geometry.affine_lps, (4, 4)), vol.affine_lps)
    ms = g.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 3.0, 1.1, 0.9]


def test_shape_mismatch_is_refused_and_nothing_is_visible(tmp_path):
    root = store.init_store(tmp_path / "s.zarr")
    vol = Volume(np.zeros((6, 7, 8), np.float32))
    with pytest.raises(store.StoreError, match="shape"):
        store.write_case(root, meta_for("sub-a_ses-b", vol), np.zeros((1, 6, 7, 9), np.float32), np.ones((6, 7, 8), np.uint8))
    assert store.list_cases(root) == []
    assert list((root / ".staging").iterdir()) == []


def test_newer_schema_major_is_refused_with_migration_note(tmp_path):
    root = store.init_store(tmp_path / "s.zarr")
    g = zarr.open_group(str(root), mode="a")
    manifest = dict(g.attrs["lesionflow"])
    manifest["schema_version"] = "2.0"
    g.attrs["lesionflow"] = manifest
    with pytest.raises(store.StoreError, match="migration"):
        store.init_store(root)


def test_catalog_latest_rows_and_tables(tmp_path):
    root = store.init_store(tmp_path / "s.zarr")
    row = dict(case_id="c", subject="s", session="t", modality="FLAIR", source_relpath="a/b", pipeline_version="0", config_hash="h", run_id="r")
    store.append_catalog(root, [CatalogRow(status="rejected", reason="broken", **row)])
    store.append_catalog(root, [CatalogRow(status="converted", **row)])
    df = store.read_catalog(root)
    assert len(df) == 1 and df.iloc[0]["status"] == "converted"
    assert len(store.read_catalog(root, latest_only=False)) == 2
    import pandas as pd

    paths = store.write_table(root, "t", pd.DataFrame({"a": [1]}))
    assert pd.read_csv(paths["csv"])["a"].tolist() == [1]
    store.write_json_atomic(root / "x.json", {"k": 1})
    assert json.loads((root / "x.json").read_text()) == {"k": 1}


def test_older_minor_is_read_newer_minor_asks_for_an_upgrade(tmp_path):
    from storage_schemas.models import SCHEMA_VERSION, StoreManifest

    major, minor = SCHEMA_VERSION.split(".")
    StoreManifest(pipeline_version="0", schema_version=f"{major}.0")
    with pytest.raises(ValueError, match="upgrade lesionflow"):
        StoreManifest(pipeline_version="0", schema_version=f"{major}.{int(minor) + 1}")


def test_catalog_parts_share_one_schema_and_older_parts_are_read(tmp_path):
    """Every part has the CatalogRow column types even when a column is all empty, so any Parquet
    reader (pyarrow datasets, DuckDB, Spark) reads the parts as one table; parts written by
    earlier versions (types inferred by pandas, all-null columns typed null) are read too."""
    import pandas as pd
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    root = store.init_store(tmp_path / "s.zarr")
    base = dict(case_id="c", subject="s", session="t", source_relpath="a/b", pipeline_version="0", config_hash="h", run_id="r")
    store.append_catalog(root, [CatalogRow(status="rejected", reason="broken", **base)])  # no modality, no statistics
    store.append_catalog(root, [CatalogRow(status="converted", modality="FLAIR", intensity_mean=1.5, **base)])
    parts = sorted((root / "catalog").glob("part-*.parquet"))
    assert all(pq.read_schema(p).remove_metadata() == store.catalog_arrow_schema() for p in parts)
    assert pads.dataset([str(p) for p in parts]).to_table().num_rows == 2  # no type conflict between parts
    # a part as lesionflow <= 2026-11-20 wrote it: pandas-inferred types, an all-null column typed null
    old = pd.DataFrame([CatalogRow(status="unused", reason="old", modality="T2", **base).model_dump()])
    old["intensity_mean"] = None
    old.to_parquet(root / "catalog" / "part-00000000T000000-old.parquet", index=False)
    df = store.read_catalog(root, latest_only=False)
    assert len(df) == 3 and sorted(df["status"]) == ["converted", "rejected", "unused"]
    assert df["intensity_mean"].dtype == "float64"
    assert store.read_catalog(root, latest_only=False, columns=["case_id", "run_id"]).columns.tolist() == ["case_id", "run_id"]
    assert store.query_catalog(root, "SELECT count(*) AS n FROM catalog_history")["n"].iloc[0] == 3


def test_catalog_compaction_merges_parts_and_duplicates_from_a_crash_are_dropped(tmp_path):
    import shutil

    root = store.init_store(tmp_path / "s.zarr")
    base = dict(subject="s", session="t", modality="FLAIR", pipeline_version="0", config_hash="h")
    for i in range(5):
        store.append_catalog(root, [CatalogRow(status="converted", case_id=f"c{i}", source_relpath=f"p{i}/a.nii.gz", run_id=f"r{i}", **base),
                                    CatalogRow(status="unused", reason="localizer", case_id=f"c{i}", source_relpath=f"p{i}/loc", run_id=f"r{i}", **base)])
    before = store.read_catalog(root, latest_only=False)
    assert store.compact_catalog(root, min_parts=10) == 0  # few parts: left alone
    assert store.compact_catalog(root, min_parts=5) == 5
    parts = sorted((root / "catalog").glob("part-*.parquet"))
    assert len(parts) == 1 and "-compact-" in parts[0].name
    after = store.read_catalog(root, latest_only=False)
    pd_cols = list(before.columns)
    assert after[pd_cols].sort_values(["case_id", "status"]).reset_index(drop=True).equals(
        before.sort_values(["case_id", "status"]).reset_index(drop=True))
    # a crash after writing the merged part but before deleting the old ones: rows are there twice
    shutil.copy(parts[0], parts[0].with_name("part-00000000T000000-0000.parquet"))
    assert len(store.read_catalog(root, latest_only=False)) == 10
    assert store.query_catalog(root, "SELECT count(*) AS n FROM catalog_history")["n"].iloc[0] == 10


def test_ingest_compacts_a_catalog_of_many_parts(tmp_path, monkeypatch):
    from pipeline.core.config import PipelineConfig
    from pipeline.ingest import run_ingest
    from tests.session_factory import write_session

    src = tmp_path / "c"
    for i in range(3):
        write_session(src / f"p{i}", f"p{i}_", seed=i)
    root = tmp_path / "s.zarr"
    run_ingest(src, root, PipelineConfig(), b"k")
    rows = store.read_catalog(root, latest_only=False)
    assert len(list((root / "catalog").glob("part-*.parquet"))) == 3
    monkeypatch.setattr(store.catalog, "COMPACT_MIN_PARTS", 3)
    assert run_ingest(src, root, PipelineConfig(), b"k").converted == 0
    assert len(list((root / "catalog").glob("part-*.parquet"))) == 1
    assert len(store.read_catalog(root, latest_only=False)) == len(rows)
