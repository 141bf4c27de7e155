"""``load_config``: one way to build the configuration, for the flows and the command line."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pipeline.core.config import PipelineConfig, SliceStackConfig, load_config


def test_defaults_file_and_overrides(tmp_path):
    assert load_config() == PipelineConfig()
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"channels": ["FLAIR", "T1"], "n_workers": 4}))
    cfg = load_config(str(path), target_spacing=[1, 1, 2], n_workers=None, dask_address=None)
    assert cfg.channels == ("FLAIR", "T1") and cfg.n_workers == 4  # None overrides keep the file's values
    assert cfg.target_spacing == (1.0, 1.0, 2.0)  # validated like the file
    assert load_config(path, n_workers=8).n_workers == 8


def test_bad_overrides_are_refused():
    with pytest.raises(ValidationError):
        load_config(None, target_spacing=(0.0, 1.0, 1.0))
    with pytest.raises(TypeError, match="unknown configuration field"):
        load_config(None, target_spacng=(1.0, 1.0, 1.0))


def test_processing_hash_follows_the_fields_that_shape_stored_voxels_only():
    base = PipelineConfig()
    h = base.processing_hash()
    assert len(h) == 16 and int(h, 16) >= 0 and h == PipelineConfig().processing_hash()
    for change in (dict(channels=("FLAIR", "T1")), dict(reference_modality="T1"), dict(target_spacing=(1.0, 1.0, 1.0)),
                   dict(normalization="none"), dict(modality_rules=()), dict(chunk_zyx=(32, 32, 32)),
                   dict(slice_stack=SliceStackConfig(planes=("FLAIR", "T1", "T1POST"))), dict(slice_stack=SliceStackConfig(spacing_mm=(1, 1, 3)))):
        assert PipelineConfig(**change).processing_hash() != h, change
    for change in (dict(connectivity=6), dict(min_lesion_mm3=5.0), dict(dask_address="tcp://x:8786"), dict(n_workers=7)):
        assert PipelineConfig(**change).processing_hash() == h, change
    # the digest of the JSON of those fields, keys sorted (documented: a 16-hex SHA-256 prefix)
    import hashlib

    fields = {"channels", "reference_modality", "target_spacing", "normalization", "modality_rules", "chunk_zyx"}
    payload = json.dumps(base.model_dump(mode="json", include=fields), sort_keys=True).encode()
    assert h == hashlib.sha256(payload).hexdigest()[:16]
    # the slice-stack settings join the hash only when changed: stores of before them keep their hash
    assert PipelineConfig(slice_stack=SliceStackConfig()).processing_hash() == h


def test_slice_stack_settings_validated():
    with pytest.raises(ValidationError):
        SliceStackConfig(spacing_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ValidationError):
        SliceStackConfig(planes=())
    cfg = PipelineConfig.model_validate_json('{"slice_stack": {"planes": ["T1", "FLAIR", "T1POST"], "spacing_mm": [0.9, 0.9, 3.3]}}')
    assert cfg.slice_stack.spacing_mm == (0.9, 0.9, 3.3)


def test_pseudonym_key_explicit_environment_or_a_message_saying_what_to_do(monkeypatch):
    from pipeline.core.config import PSEUDONYM_KEY_ENV, pseudonym_key

    assert PSEUDONYM_KEY_ENV == "LESIONFLOW_PSEUDONYM_KEY"
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "from-env")
    assert pseudonym_key() == b"from-env"
    assert pseudonym_key("explicit") == b"explicit"
    monkeypatch.delenv(PSEUDONYM_KEY_ENV)
    assert pseudonym_key("explicit") == b"explicit"
    with pytest.raises(RuntimeError) as err:
        pseudonym_key()
    assert str(err.value) == (
        "No pseudonymisation key: set LESIONFLOW_PSEUDONYM_KEY (e.g. `export LESIONFLOW_PSEUDONYM_KEY=$(openssl rand -hex 32)`) "
        "and keep it secret; the same key gives the same pseudonyms on every run."
    )
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "")
    with pytest.raises(RuntimeError, match="No pseudonymisation key"):
        pseudonym_key(None)
