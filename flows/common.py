"""Small helpers shared by the flows (Prefect-side only)."""

from __future__ import annotations

from typing import Any, Callable

from prefect import get_run_logger

from pipeline.core.config import PipelineConfig


def load_config(config_path: str | None = None, **overrides: Any) -> PipelineConfig:
    """The pipeline configuration: a JSON file if given, then non-None overrides."""
    cfg = PipelineConfig.from_file(config_path) if config_path else PipelineConfig()
    updates = {k: v for k, v in overrides.items() if v is not None}
    return cfg.model_copy(update=updates) if updates else cfg


def progress_logger(every_percent: int = 10) -> Callable[[str, int, int], None]:
    """A ``progress(stage, done, total)`` callback that logs to the Prefect run logger."""
    logger = get_run_logger()
    last: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        pct = 100 if total == 0 else int(100 * done / total)
        if done == total or pct - last.get(stage, -every_percent) >= every_percent:
            last[stage] = pct
            logger.info("%s: %d/%d (%d%%)", stage, done, total, pct)

    return report


def batches(items: list[Any], size: int) -> list[list[Any]]:
    """Split ``items`` into lists of at most ``size`` (Prefect tasks cost ~10 ms each: map over batches)."""
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]
