"""Flow ``quality``: the data-quality report of one store (expectations + image metrics + HTML)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.ingest import report_task


@flow(name="quality", log_prints=True)
def quality(store: str, channels: list[str] | None = None) -> dict[str, Any] | None:
    """Run the expectation suites and metrics over ``store``; writes ``quality/report.html``.

    ``channels``: the modalities to check, None for the store's.
    """
    out = report_task(store, tuple(channels) if channels else None)
    if out:
        print(f"quality: report → {out['html']} ({len(out['flagged'])} findings)")
    return out
