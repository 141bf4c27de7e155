"""flows.score: the deployment `rescore-archive` passes only store and model, so the flow's own
defaults decide the lesion tables; they are the library's (26-connectivity, no minimum size)."""

from __future__ import annotations

import inspect

from flows.score import score
from pipeline.core.config import PipelineConfig


def test_score_defaults_are_the_configurations():
    params = inspect.signature(score.fn).parameters
    cfg = PipelineConfig()
    assert params["connectivity"].default == cfg.connectivity == 26
    assert params["min_lesion_mm3"].default == cfg.min_lesion_mm3 == 0.0
    assert params["overwrite"].default is False
