"""Identity never leaves the source: a tree named and filled with a fake patient's identity
(:mod:`tests.phi.cohort`) goes through ingest (the Prefect flow, then the CLI with ``--json``),
the quality report, prepare, a tiny training and scoring with the lesion tables; then every output
is searched for the name, MRN, birth date, accession number and every UID, in any case and with
any separators:

* the store: every file (Zarr metadata, arrays, catalog and table Parquet/CSV, the report's
  HTML/JSON, the model), with Parquet and JSON decoded;
* every JSON output (flow results, ``lesionflow ingest --json``);
* the logs: every ``lesionflow.*`` logger at DEBUG, Prefect's and Dask's loggers (every record
  that reaches the root logger), and whatever was written to the process's stdout/stderr file
  descriptors, which the Dask worker processes inherit;
* Prefect's database: flow runs (names, parameters), task runs, artefacts and run logs read back
  through the Prefect client, and the database file itself.

Positive controls keep the search honest: the source holds every needle; the store holds sealed
paths; a ``lesionflow.*`` INFO record reached Prefect's run logs (under Prefect the library's
loggers used to sit at WARNING, so none ever did); the flow's ``source`` parameter is the sealed
folder. Then ``lesionflow lineage`` with the key resolves a case back to its files, and without
the key or with another one it refuses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.phi.cohort import HEADER_PHI, find_phi, scan_tree, texts_of_file, write_phi_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Collect(logging.Handler):
    """Every record, formatted with its logger's name and any traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in self.records)


@contextlib.contextmanager
def fd_output(path: Path) -> Iterator[None]:
    """Everything written to file descriptors 1 and 2 (this process and the processes it starts) goes to ``path``."""
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(path, "wb") as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory):
    """The whole chain once on the PHI tree; everything it printed, logged and returned."""
    from flows.gate import GateFailed, gate
    from flows.ingest import ingest, seal_source
    from flows.prepare import prepare
    from flows.score import score
    from flows.train import train
    from lesionflow.cli import app

    base = tmp_path_factory.mktemp("phi")
    tree = write_phi_tree(base / "exports")
    store = base / "store.zarr"
    collect = Collect()
    lf = logging.getLogger("lesionflow")
    saved_level = lf.level
    lf.setLevel(logging.DEBUG)  # every lesionflow.* logger at DEBUG
    watched = [logging.getLogger(), logging.getLogger("prefect._internal")]  # every record propagates to one of them
    for lg in watched:
        lg.addHandler(collect)
    started = time.time()
    outputs: dict[str, object] = {}
    terminal = base / "terminal.txt"
    try:
        with fd_output(terminal):
            outputs["ingest"] = ingest(seal_source(tree.root), str(store), n_workers=1, report=True)  # emits the new-cases event
            try:  # the data-quality gate's verdict, artefact and error message
                outputs["gate"] = gate(str(store), ingest_run=outputs["ingest"]["run_id"])
            except GateFailed as exc:
                outputs["gate"] = {"failed": str(exc)}
            cli = CliRunner().invoke(app, ["ingest", str(tree.root), "--store", str(store), "--json", "--workers", "1"])
            assert cli.exit_code == 0, cli.output
            outputs["cli_ingest"] = json.loads(cli.stdout)
            outputs["cli_ingest_text"] = cli.output  # stdout and stderr of the command
            outputs["prepare"] = prepare(str(store), patch_size=16, n_lesion=8, n_background=8)
            outputs["train"] = train(str(store), config={"iterations": 2, "batch_size": 1, "val_fraction": 0.0, "log_every": 1,
                                                          "model": {"features": [4, 8], "strides": [2], "num_res_units": 0}}, patch_size=16)
            outputs["score"] = score(str(store), outputs["train"]["model_version"])
    finally:
        for lg in watched:
            lg.removeHandler(collect)
        lf.setLevel(saved_level)
    return {"tree": tree, "store": store, "outputs": outputs, "logs": collect, "started": started, "terminal": terminal.read_bytes()}


def test_the_source_carries_the_identity(run):
    """The search is not vacuous: every kind of needle is in the source tree."""
    tree = run["tree"]
    needles = tree.needles()
    assert find_phi(str(tree.root), needles)  # the ingest folder's own name
    found = set()
    for path in tree.root.rglob("*"):
        found |= set(find_phi(str(path.relative_to(tree.root)), needles))
        if path.is_file():
            for text in texts_of_file(path):
                found |= set(find_phi(text, needles))
    assert found == set(needles)


def test_the_chain_ran(run):
    out = run["outputs"]
    # the DICOM study, the NIfTI session and the TIFF slice stack (FLAIR and T1 planes: no T2, so neither trained on nor scored)
    assert out["ingest"]["converted"] == 3 and out["ingest"]["rejected_inputs"] and out["ingest"]["unused_inputs"]
    assert out["cli_ingest"]["skipped"] == 3 and out["cli_ingest"]["converted"] == 0  # incremental, matched by sealed path
    assert out["score"]["scored"] == 2 and out["train"]["model_version"]
    codes = {r["code"] for r in out["ingest"]["rejected_inputs"]}
    assert {"not_dicom", "empty_file", "unsupported_format", "missing_data_file"} <= codes
    assert {"localizer", "no_modality_rule"} <= {r["code"] for r in out["ingest"]["unused_inputs"]}
    assert all(r["path"].startswith("src:") for r in out["ingest"]["rejected_inputs"] + out["ingest"]["unused_inputs"])


def test_no_identity_in_the_store(run):
    store, needles = run["store"], run["tree"].needles()
    assert scan_tree(store, needles) == []
    assert (store / "quality" / "report.html").exists() and (store / "tables").is_dir()
    # what the store does keep: sealed paths and cleaned descriptions
    from pipeline.store import list_cases, read_case_meta

    metas = [read_case_meta(store, c) for c in list_cases(store)]
    sources = [s for m in metas for ch in m.channel_info for s in ch.sources]
    assert all(s.relpath.startswith("src:") and s.stat_tag and s.mtime_ns is None for s in sources)  # no file time either
    assert all(m.source_root.startswith("root:") for m in metas)
    descriptions = {ch.series_description for m in metas for ch in m.channel_info if ch.source_format == "dicom"}
    assert descriptions == {"AX FLAIR", "SAG T1 MPRAGE", "AX T2 TSE"}


def test_no_identity_in_json_outputs(run):
    needles = run["tree"].needles()
    for name, payload in run["outputs"].items():
        assert find_phi(json.dumps(payload, default=str), needles) == [], name


def test_no_identity_in_logs(run):
    needles = run["tree"].needles()
    logs = run["logs"]
    names = {r.name for r in logs.records}
    assert {"lesionflow.ingest", "lesionflow.ingest.discover"} <= names, names  # DEBUG and INFO of the library were captured
    assert any(r.name.startswith("lesionflow") and r.levelno == logging.DEBUG for r in logs.records)
    assert find_phi(logs.text(), needles) == []
    assert find_phi(run["terminal"].decode("latin-1"), needles) == []


def _prefect_records(since: float) -> dict[str, list]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(limit=200) if r.created and r.created.timestamp() >= since - 1]
        ids = [r.id for r in runs]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=200)
        artifacts = client.read_artifacts(limit=200)
        logs: list = []
        while True:
            page = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200, offset=len(logs), sort=LogSort.TIMESTAMP_ASC)
            logs += page
            if len(page) < 200:
                break
    return {"flow_runs": runs, "task_runs": tasks, "artifacts": artifacts, "logs": logs}


def test_no_identity_in_prefect(run):
    needles = run["tree"].needles()
    got = _prefect_records(run["started"])
    ingest_runs = [r for r in got["flow_runs"] if r.parameters.get("source")]
    assert ingest_runs and all(r.parameters["source"].startswith("root:") for r in ingest_runs)  # the folder, sealed
    assert any(lg.name.startswith("lesionflow") and lg.level == logging.INFO for lg in got["logs"]), "no lesionflow INFO record reached Prefect"
    assert any(a.key == "data-quality" for a in got["artifacts"])
    assert any(a.key == "quality-gate" for a in got["artifacts"])
    for kind, items in got.items():
        for item in items:
            text = item.model_dump_json()
            assert find_phi(text, needles) == [], (kind, text[:2000])
    # and the database itself, whatever the API shows (the harness's SQLite file and its write-ahead log)
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    assert url.startswith("sqlite"), url
    db = Path(url.split("///", 1)[1])
    raw = "".join(f.read_bytes().decode("latin-1") for f in (db, db.with_name(db.name + "-wal")) if f.exists())
    assert ingest_runs[0].parameters["source"] in raw  # the right database: it holds this test's runs
    assert find_phi(raw, needles) == []
    # results Prefect persisted, if any (none by default: the tasks' plans hold plain paths in memory)
    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    if storage.is_dir():
        fresh = [f for f in storage.rglob("*") if f.is_file() and f.stat().st_mtime >= run["started"]]
        assert not [f for f in fresh for t in texts_of_file(f) if find_phi(t, needles)]


def test_lineage_resolves_a_case_with_the_key_and_refuses_without(run):
    from lesionflow.cli import app
    from pipeline.store import list_cases

    store, tree = run["store"], run["tree"]
    runner = CliRunner()
    out = {}
    for case in list_cases(store):
        res = runner.invoke(app, ["lineage", case, "--store", str(store), "--json"])
        assert res.exit_code == 0, res.output
        (info,) = json.loads(res.stdout)["cases"]
        assert Path(info["source_root"]) == tree.root.resolve()
        for f in info["files"]:
            path = Path(f["absolute"])
            assert path.is_file() and path.stat().st_size == f["size_bytes"], f
        out[case] = info
    dicom = next(i for i in out.values() if any(f["path"].endswith(".dcm") for f in i["files"]))
    dicom_case = dicom["case_id"]
    assert {f["role"] for f in dicom["files"]} == {"FLAIR", "T1", "T2", "label"}
    assert any("lesion_mask" in f["path"] for f in dicom["files"])
    assert {i["code"] for i in dicom["inputs"]} >= {"localizer", "no_modality_rule"}
    # every rejected/unused input of the store, opened
    res = runner.invoke(app, ["lineage", "--store", str(store), "--inputs", "--json"])
    assert res.exit_code == 0, res.output
    paths = {i["path"] for i in json.loads(res.stdout)["inputs"]}
    assert f"{HEADER_PHI['AccessionNumber']}.dcm" in paths
    # a sealed path alone
    token = run["outputs"]["ingest"]["rejected_inputs"][0]["path"]
    res = runner.invoke(app, ["lineage", token])
    assert res.exit_code == 0 and (tree.root / res.stdout.splitlines()[1].strip()).exists(), res.output
    # another key: refused, nothing resolved
    res = runner.invoke(app, ["lineage", dicom_case, "--store", str(store)], env={"LESIONFLOW_PSEUDONYM_KEY": "another-key"})
    assert res.exit_code == 2 and "does not open" in res.output and not find_phi(res.output, tree.needles())
    # no key: refused
    res = runner.invoke(app, ["lineage", dicom_case, "--store", str(store)], env={"LESIONFLOW_PSEUDONYM_KEY": None})
    assert res.exit_code == 2 and "no pseudonymisation key" in res.output


def test_an_ingest_with_another_key_is_refused(run, tmp_path):
    from pipeline.core.config import PipelineConfig
    from pipeline.core.lineage import LineageKeyError
    from pipeline.ingest import run_ingest

    with pytest.raises(LineageKeyError):
        run_ingest(run["tree"].root, run["store"], PipelineConfig(), b"another-key")


def test_prediction_volumes_are_finite(run):
    """(The tiny model's output is not judged, only that scoring wrote its tables.)"""
    rows = run["outputs"]["score"]["case_volumes"]
    assert len(rows) == 2 and all(np.isfinite(r["total_volume_ml"]) for r in rows)
