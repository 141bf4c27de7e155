"""Orchestration helpers shared by the flows (Prefect-side only); configuration loading is
:func:`pipeline.core.config.load_config`.

The library logs on ``lesionflow.*`` loggers. Under Prefect the root logger sits at WARNING, so
without :func:`route_library_logs` (run when :mod:`flows` is imported) no INFO record of the
library would reach a flow run's logs: it sets ``lesionflow`` to INFO (unless the user set a
level) and gives it Prefect's API log handler, which sends a record to the run's logs when it is
emitted inside a flow or task run and drops it silently otherwise (library use outside a flow).
Only what runs in this process is routed: Dask workers log to their own stderr.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.logging.handlers import APILogHandler

LIBRARY_LOGGER = "lesionflow"


class RunLogHandler(APILogHandler):
    """Prefect's API log handler that sends only records emitted inside a flow or task run."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        super().emit(record)


def route_library_logs(level: int = logging.INFO) -> logging.Logger:
    """Send the library's log records (``lesionflow.*``, ``level`` and above unless the user set
    a level) to the logs of the Prefect run they are emitted in. Idempotent."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(level)
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        logger.addHandler(RunLogHandler())
    return logger


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
