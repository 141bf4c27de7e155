"""deploy/prefect.yaml against a real Prefect server: the commands of deploy/README.md, run as written.

A module fixture starts ``prefect server start`` on a free local port with its own PREFECT_HOME
(database and profiles in a temporary folder), creates the ``process`` work pool, deploys
``deploy/prefect.yaml`` with ``prefect --no-prompt deploy --all`` and starts a worker; it stops
every process it started (process groups, so flow runs and Dask workers go too), also on failure.

* ``test_train_promote_rescore``: on a tiny phantom cohort already ingested, the train and promote
  deployments run with ``-p`` parameters; the promotion triggers rescore-archive, which scores every
  case with the production model.
* ``test_a_new_session_is_ingested_gated_prepared_and_scored``: a new subject's session and a
  second visit of a subject already in the store, dropped into the incoming folder, are ingested
  by the nightly-ingest deployment (the run its cron schedule makes; here started by hand), and
  the chain does the rest with no manual step: quality-gate, prepare-new, score-new, change-new
  (the subject's new visit pair, by the production model); change-new run again by hand finds
  nothing new and says so (9 flow runs in all: each is a fresh Python process, about 10 s here
  before the flow begins).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREFECT = str(Path(sys.executable).with_name("prefect"))
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen | None) -> None:
    """Stop a process this test started and every process below it (the worker's flow runs start
    their own sessions, and their Dask workers below them), by id: SIGTERM, then SIGKILL."""
    import psutil

    if proc is None:
        return
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(family, timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)


class Installation:
    """A running server + worker with lesionflow deployed; helpers that talk to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.incoming = root / "incoming"
        self.store = root / "store.zarr"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.incoming.mkdir()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_CLI_COLORS": "false",
            "LESIONFLOW_HOME": str(REPO),
            "LESIONFLOW_STORE": str(self.store),
            "LESIONFLOW_INCOMING": str(self.incoming),
            "LESIONFLOW_TORCH_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        }
        self.server: subprocess.Popen | None = None
        self.worker: subprocess.Popen | None = None

    def start(self, name: str, *args: str) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "wb")
        return subprocess.Popen([PREFECT, *args], cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def cli(self, *args: str, timeout: float = 120) -> str:
        res = subprocess.run([PREFECT, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"prefect {' '.join(args)} → {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}\n{self.tail()}"
        return res.stdout

    def tail(self, n: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-n:]}" for p in sorted(self.logs.glob("*.log")))

    def request(self, method: str, path: str, body: dict | None = None):
        import httpx

        r = httpx.request(method, f"{self.api}{path}", json=body, timeout=10)
        r.raise_for_status()
        return r.json() if r.content else None

    def wait_log(self, run: dict, text: str, timeout: float = 30) -> None:
        """Wait until a flow run's logs on the server hold ``text`` (a finished run's last logs may still be in flight)."""
        deadline = time.monotonic() + timeout
        while True:
            logs = self.request("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}, "sort": "TIMESTAMP_ASC"})
            messages = "\n".join(r["message"] for r in logs)
            if text in messages:
                return
            assert time.monotonic() < deadline, f"run {run['name']}: no {text!r} in its logs after {timeout} s\n{messages[-3000:]}"
            time.sleep(1)

    def wait_healthy(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.server is not None and self.server.poll() is None, f"prefect server exited\n{self.tail()}"
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"prefect server not healthy after {timeout} s\n{self.tail()}")

    def runs(self, flow: str, deployment: str) -> list[dict]:
        dep = self.request("GET", f"/deployments/name/{flow}/{deployment}")
        return self.request("POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "sort": "EXPECTED_START_TIME_ASC"})

    def wait_runs(self, flow: str, deployment: str, n: int, timeout: float = 150) -> list[dict]:
        """The first ``n`` runs of a deployment once all are finished (a failed one fails the test with the logs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs(flow, deployment)
            done = [r for r in runs if r["state_type"] in TERMINAL]
            for r in done:
                assert r["state_type"] == "COMPLETED", f"{flow}/{deployment} run {r['name']}: {r['state']}\n{self.tail()}"
            if len(done) >= n:
                return done[:n]
            time.sleep(1)
        raise AssertionError(f"{flow}/{deployment}: fewer than {n} finished runs after {timeout} s\n{self.tail()}")

    def run(self, name: str, *params: str, timeout: int = 240) -> None:
        args = [a for p in params for a in ("-p", p)]
        self.cli("deployment", "run", name, *args, "--watch", "--watch-timeout", str(timeout), timeout=timeout + 30)


@pytest.fixture(scope="module")
def installation(tmp_path_factory):
    inst = Installation(tmp_path_factory.mktemp("installation"))
    try:
        inst.server = inst.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(inst.port))
        inst.wait_healthy()
        inst.cli("work-pool", "create", "lesionflow", "--type", "process")
        inst.cli("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml", timeout=240)
        # a site setting made on the server, as an administrator would: small augmentation banks built in the
        # flow's process (K=64 on a LocalCluster took 60 s of this test on 2 shared cores)
        prep = inst.request("GET", "/deployments/name/prepare/prepare-new")
        inst.request("PATCH", f"/deployments/{prep['id']}",
                     {"parameters": {**prep["parameters"], "samples_per_case": 4, "n_workers": 0}})
        inst.worker = inst.start("worker", "worker", "start", "--pool", "lesionflow", "--type", "process")
        yield inst
    finally:
        _stop(inst.worker)
        _stop(inst.server)


def test_train_promote_rescore(installation, phantom_cohort):
    """The archive is there (ingested by the library, as `lesionflow ingest` would); the train and promote
    deployments run with -p parameters, and the promotion triggers rescore-archive, which scores every
    case with the production model."""
    from pipeline import store
    from pipeline.core.config import PipelineConfig, pseudonym_key
    from pipeline.ingest import run_ingest
    from pipeline.lesions.archive import model_case_volumes, unscored_cases
    from training.registry import aliases

    inst = installation
    names = {d["name"] for d in inst.request("POST", "/deployments/filter", {})}
    assert {"nightly-ingest", "train", "rescore-archive", "quality-gate", "prepare-new", "score-new", "promote", "change", "change-new"} <= names
    nightly = inst.request("GET", "/deployments/name/ingest/nightly-ingest")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["parameters"]["store"] == str(inst.store)  # "{{ $LESIONFLOW_STORE }}" filled in at deploy time
    assert nightly["parameters"]["source"] == str(inst.incoming)

    shutil.copytree(phantom_cohort.cohort_dir, inst.incoming, dirs_exist_ok=True)
    summary = run_ingest(inst.incoming, inst.store, PipelineConfig(n_workers=1), pseudonym_key())  # the worker's key
    assert summary.converted == len(phantom_cohort.truth)
    cases = store.list_cases(inst.store)

    inst.run("train/train", "iterations=3", "patch_size=32", "batch_size=2", "val_fraction=0")
    assert any(m.startswith("unet3d-") for m in store.list_dir(inst.store, "models"))
    inst.run("promote/promote", "model=latest")
    production = aliases(inst.store)["production"]
    rescored = inst.wait_runs("score", "rescore-archive", 1)[0]  # triggered by the promotion
    assert rescored["parameters"]["model"] == "production" and rescored["parameters"]["store"] == str(inst.store)
    assert unscored_cases(inst.store, production) == []
    assert sorted(model_case_volumes(inst.store, production)["case_id"]) == cases
    assert all(store.has_prediction(inst.store, c, production) for c in cases)


def test_a_new_session_is_ingested_gated_prepared_and_scored(installation, tmp_path):
    """Runs after the test above (same installation and store): a production model exists. The nightly-ingest
    deployment (the run its cron schedule makes; here started by hand) finds a new subject's session and a second
    visit of a BIDS subject (ses-02 beside its ses-01) among the unchanged sessions; the chain does the rest with no
    manual step, down to the change of the subject's new visit pair; change-new again: nothing new, and it says so."""
    import pandas as pd

    from pipeline import store
    from pipeline.lesions.archive import model_case_volumes
    from pipeline.longitudinal import visit_pairs
    from pipeline.phantom import make_cohort
    from training.registry import aliases

    inst = installation
    production = aliases(inst.store).get("production")
    if production is None:
        pytest.skip("needs the production model of test_train_promote_rescore")
    before = set(store.list_cases(inst.store))
    assert visit_pairs(str(inst.store))[0] == []  # one visit per subject so far
    bigger = make_cohort(tmp_path / "phantom4", n_subjects=4, seed=7, spacing_mm=3.0)
    new = pd.read_csv(bigger.truth_cases_csv).iloc[-1]
    shutil.copytree(bigger.cohort_dir / new["session_dir"], inst.incoming / new["session_dir"])
    first = next((inst.incoming / "bids").glob("sub-*/ses-01/anat"))  # the BIDS subject's visit, already in the store
    second = first.parent.parent / "ses-02" / "anat"
    second.mkdir(parents=True)
    for f in first.iterdir():  # a rescan: the same images under the next session label
        shutil.copyfile(f, second / f.name.replace("_ses-01_", "_ses-02_"))

    inst.run("ingest/nightly-ingest", "n_workers=1")
    added = sorted(set(store.list_cases(inst.store)) - before)
    assert len(added) == 2
    gate = inst.wait_runs("gate", "quality-gate", 1)[0]
    prepared = inst.wait_runs("prepare", "prepare-new", 1)[0]
    scored = inst.wait_runs("score", "score-new", 1)[0]
    changed = inst.wait_runs("change", "change-new", 1)[0]  # triggered by score-new
    assert store.cases_of_run(inst.store, gate["parameters"]["ingest_run"]) == added  # the event named the ingest run
    assert prepared["parameters"]["ingest_run"] == gate["parameters"]["ingest_run"]
    assert prepared["parameters"]["samples_per_case"] == 4  # the trigger's parameters over the deployment's
    assert scored["parameters"]["store"] == str(inst.store)
    for case in added:
        assert store.has_node(inst.store, f"cases/{case}/patch_index/lesion")
        assert store.has_prediction(inst.store, case, production)
    assert set(added) <= set(model_case_volumes(inst.store, production)["case_id"])
    artefacts = inst.request("POST", "/artifacts/filter", {"artifacts": {"key": {"any_": ["quality-gate"]}}})
    assert [a["description"] for a in artefacts] == ["data-quality gate: passed"]

    assert changed["parameters"]["store"] == str(inst.store) and changed["parameters"]["method"] == "auto"
    (plan,), _ = visit_pairs(str(inst.store))
    assert plan["followup"] in added and plan["baseline"] in before
    pairs = store.read_table(inst.store, "change_pairs")
    assert pairs[["pair_id", "method", "model_version"]].values.tolist() == [[plan["pair_id"], "model", production]]
    assert store.read_pair_mask(inst.store, plan["pair_id"], store.change_mask_name("model", production)) is not None
    inst.wait_log(changed, "change: 1 pairs computed")

    inst.run("change/change-new")  # as the next ingest's chain would: no new visit
    again = inst.wait_runs("change", "change-new", 2)[1]
    inst.wait_log(again, "change: nothing new (1 pairs up to date")
    assert len(store.read_table(inst.store, "change_pairs")) == 1
