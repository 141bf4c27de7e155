"""Orchestration helpers shared by the flows (Prefect-side only); configuration loading is
:func:`pipeline.core.config.load_config`."""

from __future__ import annotations

from typing import Any, Callable

from prefect import get_run_logger


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
