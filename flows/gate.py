"""Flow ``gate``: the data-quality gate between an ingest and the work that uses its new cases.

Triggered (``deploy/prefect.yaml``, deployment ``quality-gate``) by the event an ingest run emits
when it converted sessions (:data:`flows.ingest.NEW_CASES_EVENT`), with that run's ``run_id``: the
cases it converted are read from the catalog, the expectations run over the store
(:func:`pipeline.quality.gate.run_gate`), and the verdict goes to the Markdown artefact
``quality-gate``. A blocking finding on a new case fails the flow run (:class:`GateFailed`, with
the reason), which stops the chain: ``prepare-new`` and ``score-new`` follow only a completed gate.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE


class GateFailed(RuntimeError):
    """New cases failed the data-quality gate; the message lists each blocking finding."""


@task(name="quality-gate", cache_policy=NO_CACHE)
def gate_task(store: str, case_ids: list[str], channels: list[str] | None) -> dict[str, Any]:
    from pipeline.quality.gate import run_gate

    outcome = run_gate(store, case_ids, channels)
    create_markdown_artifact(outcome.markdown(), key="quality-gate", description=f"data-quality gate: {outcome.reason}"[:500])
    return {"passed": outcome.passed, "reason": outcome.reason, "cases": outcome.cases, "blocking": outcome.blocking,
            "warnings": outcome.warnings}


@flow(name="gate", log_prints=True)
def gate(store: str, ingest_run: str | None = None, case_ids: list[str] | None = None, channels: list[str] | None = None) -> dict[str, Any]:
    """Judge the cases converted by the ingest run ``ingest_run`` (or ``case_ids``) of ``store``.

    Returns ``passed``, ``reason``, ``cases``, ``blocking`` and ``warnings`` (findings
    ``{case_id, what, detail}``) when the gate passes; raises :class:`GateFailed` otherwise.
    """
    from pipeline.store import cases_of_run

    if case_ids is None:
        if ingest_run is None:
            raise ValueError("gate: give ingest_run (the ingest summary's run_id) or case_ids")
        case_ids = cases_of_run(store, ingest_run)
    out = gate_task(store, list(case_ids), channels)
    print(f"gate: {len(out['cases'])} cases, {len(out['blocking'])} blocking findings, {len(out['warnings'])} warnings: {out['reason']}")
    if not out["passed"]:
        raise GateFailed(f"data-quality gate failed: {out['reason']}")
    return out
