"""The store manifest: schema check, recorded channels (schema 1.2), channel resolution."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import store
from pipeline.core.config import DEFAULT_CHANNELS
from pipeline.core.volume import Volume
from storage_schemas.models import SCHEMA_VERSION, CaseMeta


def _write_case(root, case_id: str, channels) -> None:
    vol = Volume(np.zeros((4, 5, 6), np.float32))
    meta = CaseMeta(case_id=case_id, subject=case_id.split("_")[0], session=case_id.split("_")[1], channels=list(channels),
                    channel_info=[], has_label=False, geometry=store.geometry_of(vol), source_fingerprint="f", config_hash="c",
                    pipeline_version="0")
    store.write_case(root, meta, np.zeros((len(channels), 4, 5, 6), np.float32), np.ones((4, 5, 6), np.uint8))


def _old_store(root, schema_version: str = "1.1"):
    """A store as lesionflow wrote it before channels were recorded (schema 1.1 manifest)."""
    root = store.init_store(root)
    doc = json.loads((root / "zarr.json").read_text())
    doc["attributes"]["lesionflow"] = {"schema_version": schema_version, "kind": "lesionflow-store",
                                       "created_at": "2026-01-01T00:00:00Z", "pipeline_version": "0.1.0",
                                       "layout_doc": "storage_schemas/LAYOUT.md"}
    (root / "zarr.json").write_text(json.dumps(doc))
    return root


def test_channels_are_recorded_and_resolved(tmp_path):
    root = store.init_store(tmp_path / "s.zarr", channels=("FLAIR", "T1"))
    manifest = store.read_manifest(root)
    assert manifest.channels == ["FLAIR", "T1"] and manifest.schema_version == SCHEMA_VERSION
    assert store.store_channels(root) == ("FLAIR", "T1")
    assert store.resolve_channels(root, None) == ("FLAIR", "T1")
    assert store.resolve_channels(root, []) == ("FLAIR", "T1")
    assert store.resolve_channels(root, ["T1"]) == ("T1",)
    assert store.init_store(root, channels=["FLAIR", "T1"]) == root  # same channels: fine
    assert store.init_store(root) == root  # none asked: no check


def test_other_channels_for_an_existing_store_are_refused_naming_both(tmp_path):
    root = store.init_store(tmp_path / "s.zarr", channels=("FLAIR", "T1", "T2"))
    with pytest.raises(store.StoreError) as exc:
        store.init_store(root, channels=("FLAIR", "T1"))
    assert "['FLAIR', 'T1', 'T2']" in str(exc.value) and "['FLAIR', 'T1']" in str(exc.value)
    assert store.read_manifest(root).channels == ["FLAIR", "T1", "T2"]  # unchanged


def test_an_unknown_channel_is_refused_naming_both_lists(tmp_path):
    root = store.init_store(tmp_path / "s.zarr", channels=("FLAIR", "T1"))
    with pytest.raises(store.StoreError) as exc:
        store.resolve_channels(root, ["FLAIR", "PD"])
    message = str(exc.value)
    assert "['PD']" in message and "requested ['FLAIR', 'PD']" in message and "the store has ['FLAIR', 'T1']" in message


def test_an_old_manifest_is_read_and_its_channels_come_from_the_first_case(tmp_path):
    root = _old_store(tmp_path / "s.zarr")
    manifest = store.read_manifest(root)
    assert manifest.schema_version == "1.1" and manifest.channels is None
    assert store.store_channels(root) == DEFAULT_CHANNELS  # no case yet
    _write_case(root, "sub-b_ses-1", ["T1", "T2"])
    _write_case(root, "sub-a_ses-1", ["FLAIR", "T1"])
    assert store.store_channels(root) == ("FLAIR", "T1")  # the first committed case (sorted ids)
    assert store.resolve_channels(root, None) == ("FLAIR", "T1")
    assert store.init_store(root) == root and store.read_manifest(root).channels is None  # opening does not rewrite


def test_an_old_store_records_the_channels_of_its_next_ingest(tmp_path):
    root = _old_store(tmp_path / "s.zarr")
    _write_case(root, "sub-a_ses-1", ["FLAIR"])
    before = store.read_manifest(root)
    store.init_store(root, channels=("FLAIR", "T1", "T2"))
    after = store.read_manifest(root)
    assert after.channels == ["FLAIR", "T1", "T2"] and after.schema_version == SCHEMA_VERSION
    assert after.created_at == before.created_at and after.pipeline_version == before.pipeline_version
    assert store.list_cases(root) == ["sub-a_ses-1"]


def test_ingest_records_its_configured_channels(tmp_path):
    from tests.session_factory import write_session

    from pipeline.core.config import PipelineConfig
    from pipeline.ingest.session import run_ingest

    write_session(tmp_path / "c" / "p1", "p1_", seed=1)
    root = tmp_path / "s.zarr"
    run_ingest(tmp_path / "c", root, PipelineConfig(channels=("FLAIR", "T1")), b"k")
    assert store.read_manifest(root).channels == ["FLAIR", "T1"]
    with pytest.raises(store.StoreError, match=r"\['FLAIR', 'T1'\].*\['FLAIR', 'T1', 'T2'\]"):
        run_ingest(tmp_path / "c", root, PipelineConfig(), b"k")


def test_newer_minor_manifest_is_refused(tmp_path):
    root = _old_store(tmp_path / "s.zarr", schema_version="1.99")
    with pytest.raises(store.StoreError, match="upgrade lesionflow"):
        store.read_manifest(root)
