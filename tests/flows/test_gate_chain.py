"""The chain after an ingest stops at a failing data-quality gate (real Prefect runs, real store).

``deploy/prefect.yaml`` links the deployments by triggers on the server: ``quality-gate`` runs on
the ingest's ``lesionflow.ingest.new-cases`` event, ``prepare-new`` on a ``Completed`` flow run of
``quality-gate``, ``score-new`` on a ``Completed`` run of ``prepare-new``. This test runs, for real,
the ingest flow over a phantom cohort with a session lacking FLAIR, reads the event it emitted from
the Prefect server, and calls the gate flow with the parameters the ``gate-after-ingest`` trigger
renders from that event. It then checks what the chain depends on: the gate run fails with the
reason (its error and its ``quality-gate`` artefact), the server holds that run as Failed and its
events include none of the ones the ``prepare-after-gate`` trigger expects, so ``prepare-new``
(and, after it, ``score-new``) never starts; the same gate judging only the clean case completes
and emits the event that trigger expects (the check is not vacuous). The triggers themselves are
read from ``deploy/prefect.yaml``, not copied; ``tests/flows/test_deployments.py`` runs them on a
real server with a worker (the passing chain).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREFECT_YAML = Path(__file__).resolve().parents[2] / "deploy" / "prefect.yaml"


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]}


def _trigger_after(upstream: str) -> tuple[str, dict]:
    """The deployment whose trigger follows ``upstream``'s flow runs, and that trigger."""
    found = [(name, t) for name, d in _deployments().items() for t in d.get("triggers") or []
             if (t.get("match_related") or {}).get("prefect.resource.name") == upstream]
    assert len(found) == 1, found
    return found[0]


def _render(parameters: dict, context: dict) -> dict:
    """A trigger's parameters as the automation fills them in (``"{{ event.payload.store }}"``)."""
    def value(template):
        m = re.fullmatch(r"\{\{\s*([\w.]+)\s*\}\}", template) if isinstance(template, str) else None
        if m is None:
            return template
        out = context
        for part in m.group(1).split("."):
            out = out.get(part) if isinstance(out, dict) else None
        return out

    return {k: value(v) for k, v in parameters.items()}


def _events(client, prefix: str, resource_id: str | None = None, until: str | None = None, timeout: float = 20.0,
            since: datetime | None = None, match: Any = None) -> list[dict]:
    """Events recorded by the server (``/events/filter``, those since ``since``), waiting up to
    ``timeout`` s for one named ``until`` (and satisfying ``match``, when given) to be among them:
    events reach the server shortly after the state change, and a server shared by the whole test
    session holds other tests' events of the same name."""
    flt: dict = {"event": {"prefix": [prefix]}}
    if resource_id is not None:
        flt["resource"] = {"id": [resource_id]}
    if since is not None:
        flt["occurred"] = {"since": since.isoformat()}
    deadline = time.monotonic() + timeout
    while True:
        resp = client._client.post("/events/filter", json={"filter": flt, "limit": 50})
        resp.raise_for_status()
        events = resp.json()["events"]
        wanted = [e for e in events if e["event"] == until and (match is None or match(e))]
        if until is None or wanted or time.monotonic() > deadline:
            return events
        time.sleep(0.25)


def test_a_failing_gate_stops_the_chain(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.gate import GateFailed, gate
    from flows.ingest import NEW_CASES_EVENT, ingest
    from pipeline.phantom import make_cohort
    from pipeline.store import list_cases, read_case_meta

    started = datetime.now(UTC)
    cohort = make_cohort(tmp_path / "phantom", n_subjects=2, seed=5, spacing_mm=3.0, faults=["missing_flair"])
    root = str(tmp_path / "s.zarr")
    summary = ingest(str(cohort.cohort_dir), root, n_workers=1, report=False)
    assert summary["converted"] == 2

    gate_trigger = _deployments()["quality-gate"]["triggers"][0]
    assert gate_trigger["expect"] == [NEW_CASES_EVENT]
    next_name, next_trigger = _trigger_after("quality-gate")
    assert next_name == "prepare-new"
    assert _trigger_after("prepare-new")[0] == "score-new"  # score-new waits on prepare-new in turn

    with get_client(sync_client=True) as client:
        def ours(e: dict) -> bool:
            return e["payload"].get("run_id") == summary["run_id"]

        announced = [e for e in _events(client, NEW_CASES_EVENT, until=NEW_CASES_EVENT, since=started, match=ours) if ours(e)]
        assert len(announced) == 1
        params = _render(gate_trigger["parameters"], {"event": announced[0]})
        assert params == {"store": root, "ingest_run": summary["run_id"]}

        state = gate(**params, return_state=True)  # the gate as its deployment runs it
        assert state.is_failed()
        with pytest.raises(GateFailed) as failed:
            state.result()
        broken = [c for c in list_cases(root) if "FLAIR" not in read_case_meta(root, c).channels]
        assert len(broken) == 1
        assert f"{broken[0]}: missing FLAIR" in str(failed.value)

        run_id = state.state_details.flow_run_id
        assert client.read_flow_run(run_id).state.type.value == "FAILED"  # what the server holds
        verdict = [a for a in client.read_artifacts() if a.key == "quality-gate" and a.flow_run_id == run_id]
        assert len(verdict) == 1
        assert "missing FLAIR" in verdict[0].description and broken[0] in verdict[0].data
        assert "FAILED: the chain stops here" in verdict[0].data

        emitted = {e["event"] for e in _events(client, "prefect.flow-run.", f"prefect.flow-run.{run_id}", until="prefect.flow-run.Failed")}
        assert "prefect.flow-run.Failed" in emitted
        assert not emitted & set(next_trigger["expect"])  # prepare-after-gate cannot fire: prepare-new, score-new never start

        # the same gate over the clean case only completes and emits what the trigger waits for
        clean = [c for c in list_cases(root) if c not in broken]
        passed = gate(root, case_ids=clean, return_state=True)
        assert passed.is_completed() and passed.result()["passed"]
        ok_id = passed.state_details.flow_run_id
        expected = set(next_trigger["expect"])
        emitted_ok = {e["event"] for e in _events(client, "prefect.flow-run.", f"prefect.flow-run.{ok_id}", until=next(iter(expected)))}
        assert emitted_ok & expected

        # no prepare or score flow ran on this server during the test (the harness is shared: earlier runs are older)
        names = {f.id: f.name for f in client.read_flows()}
        assert {names[r.flow_id] for r in client.read_flow_runs(limit=200) if r.created >= started} == {"ingest", "gate"}
