"""``load_config``: one way to build the configuration, for the flows and the command line."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pipeline.core.config import PipelineConfig, load_config


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
