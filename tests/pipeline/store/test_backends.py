"""Both backends behind one API: the same calls on a folder and on an fsspec URL (memory://).

The S3 specifics (marker-last request order, moto) are in test_store_s3.py.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pytest

from pipeline import store
from pipeline.core.volume import Volume
from pipeline.store.backend import FsspecBackend, LocalBackend
from storage_schemas.models import CaseMeta, CatalogRow


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        yield store.init_store(tmp_path / "s.zarr")
        return
    url = f"memory://lf-{uuid.uuid4().hex[:12]}/s.zarr"
    yield store.init_store(url)
    store.open_store(url).backend.remove_prefix("")


def test_backend_is_chosen_once_per_root(root):
    st = store.open_store(root)
    assert st is store.open_store(str(root)) and st.root == root
    assert isinstance(st.backend, FsspecBackend if store.is_remote(root) else LocalBackend)
    assert store.open_store(st) is st


def test_single_files(root):
    assert store.put_bytes(root, "quality/a.json", b"1") == store.location(root, "quality/a.json")
    assert store.read_bytes(root, "quality/a.json") == b"1" and store.read_bytes(root, "quality/none") is None
    assert store.has_file(root, "quality/a.json") and not store.has_file(root, "quality")
    store.write_json_atomic(store.location(root, "quality/b.json"), {"k": 1})
    assert store.list_dir(root, "quality") == ["a.json", "b.json"] and store.list_dir(root, "nothing") == []
    assert store.read_bytes(store.location(root, "quality/b.json")) == b'{\n  "k": 1\n}'
    assert "cases" in store.list_dir(root)


def test_cases_catalog_and_tables(root):
    vol = Volume(np.zeros((4, 5, 6), np.float32), spacing=(1.0, 1.0, 2.0))
    meta = CaseMeta(case_id="sub-a_ses-b", subject="sub-a", session="ses-b", channels=["FLAIR"], channel_info=[], has_label=False,
                    geometry=store.geometry_of(vol), source_fingerprint="f", config_hash="c", pipeline_version="0")
    image = np.random.default_rng(0).random((1, 4, 5, 6)).astype(np.float32)
    assert store.write_case(root, meta, image, np.ones((4, 5, 6), np.uint8), chunk_zyx=(2, 2, 2)) == store.location(root, "cases/sub-a_ses-b")
    assert store.list_cases(root) == ["sub-a_ses-b"]
    np.testing.assert_array_equal(store.open_case(root, "sub-a_ses-b")["image"][:], image)
    assert store.read_case_meta(root, "sub-a_ses-b").geometry.spacing == (1.0, 1.0, 2.0)
    store.write_case_array(root, "sub-a_ses-b", "predictions/m/mask", np.ones((4, 5, 6), np.uint8), chunk_zyx=(2, 2, 2))
    assert store.has_node(root, "cases/sub-a_ses-b/predictions/m/mask") and not store.has_node(root, "cases/sub-a_ses-b/predictions/x/mask")
    assert int(store.prediction_mask(store.open_case(root, "sub-a_ses-b"), "m")[:].sum()) == 120
    with pytest.raises(store.StoreError, match="not in store"):
        store.read_case_meta(root, "sub-x_ses-y")

    row = dict(case_id="c", subject="s", session="t", modality="FLAIR", source_relpath="a/b", pipeline_version="0", config_hash="h", run_id="r")
    store.append_catalog(root, [CatalogRow(status="rejected", reason="broken", **row)])
    store.append_catalog(root, [CatalogRow(status="converted", **row)])
    assert store.compact_catalog(root, min_parts=2) == 2
    assert [n for n in store.list_dir(root, "catalog") if n.startswith("part-")] and len(store.list_dir(root, "catalog")) == 1
    assert store.read_catalog(root)["status"].tolist() == ["converted"]

    paths = store.write_table(root, "t", pd.DataFrame({"a": [1, 2]}))
    assert paths == {ext: str(store.location(root, f"tables/t.{ext}")) for ext in ("parquet", "csv")}
    assert store.read_table(root, "t")["a"].tolist() == [1, 2]


def test_functions_take_an_opened_store(root):
    st = store.open_store(root)
    assert store.list_cases(st) == [] and store.location(st, "tables") == store.location(root, "tables")
    assert store.read_manifest(st).kind == "lesionflow-store"


def test_explicit_options_become_the_roots_options(monkeypatch):
    url = f"memory://lf-{uuid.uuid4().hex[:12]}/x"
    monkeypatch.delenv("LESIONFLOW_STORAGE_OPTIONS", raising=False)
    env_store = store.open_store(url)
    assert env_store.backend.options == {}
    explicit = store.open_store(url, options={"skip_instance_cache": True})
    assert explicit is not env_store and store.open_store(url) is explicit
    assert explicit.backend.options == {"skip_instance_cache": True}


def test_a_changed_environment_reopens_the_store(monkeypatch):
    url = f"memory://lf-{uuid.uuid4().hex[:12]}/x"
    monkeypatch.delenv("LESIONFLOW_STORAGE_OPTIONS", raising=False)
    first = store.open_store(url)
    monkeypatch.setenv("LESIONFLOW_STORAGE_OPTIONS", '{"skip_instance_cache": true}')
    second = store.open_store(url)
    assert second is not first and second.backend.options == {"skip_instance_cache": True}
