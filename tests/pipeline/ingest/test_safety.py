"""Crash safety and concurrency of ingest: SIGKILL while a case is being written (then the rerun
must equal an uninterrupted run byte for byte), a crash between commit and catalog, two
conversions of one session forced to collide at the commit, two ingests of one cohort into one
store at the same time."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import PipelineConfig
from pipeline.ingest import IngestContext, run_ingest
from pipeline.ingest.discover import discover
from pipeline.ingest.incremental import repair_catalog
from pipeline.ingest.session import convert_session
from pipeline.store import list_cases, open_case, read_case_meta, read_catalog, reference_label
from pipeline.store.backend import local as local_backend
from tests.conftest import REPO
from tests.session_factory import write_session

pytestmark = pytest.mark.slow
N_SESSIONS = 10


@pytest.fixture()
def cohort(tmp_path: Path) -> Path:
    src = tmp_path / "cohort"
    for i in range(N_SESSIONS):
        write_session(src / f"site{i % 2}" / f"p{i:02d}", f"p{i:02d}_", seed=i)
    return src


def ingest_cmd(src: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "lesionflow.cli", "ingest", str(src), "--store", str(store), "--no-prefect", "--json", "--workers", "1"]


def env() -> dict[str, str]:
    return {**os.environ, "LESIONFLOW_PSEUDONYM_KEY": "safety-test-key"}


def assert_valid_store(store: Path, n_cases: int) -> None:
    cases = list_cases(store)
    assert len(cases) == n_cases == len(set(cases))
    cat = read_catalog(store)
    converted = cat[(cat["status"] == "converted") & (cat["modality"] == "FLAIR")]
    assert sorted(converted["case_id"]) == cases, "every case exactly once in the catalog"
    for case_id in cases:
        meta = read_case_meta(store, case_id)  # validates
        g = open_case(store, case_id)
        assert g["image"].shape == (len(meta.channels), *meta.geometry.shape_zyx)
        assert np.isfinite(g["image"][:]).all()
        assert g["labels/reference/0"].shape == tuple(meta.geometry.shape_zyx)
    leftovers = [p.name for p in (store / "cases").iterdir() if p.is_dir() and p.name not in cases]
    assert leftovers == []


# ------------------------------------------------------------------------------- killed mid-write
HOOKS = REPO / "tests" / "hooks"
VOLATILE_META = ("run_id", "created_at")
VOLATILE_ROW = ("run_id", "recorded_at")


def _case_files(store: Path, case_id: str) -> dict[str, bytes]:
    """Every file of a committed case by relative path, raw bytes; the group's metadata without
    what differs between runs (run id, times)."""
    folder = store / "cases" / case_id
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    group = json.loads(files.pop("zarr.json"))
    meta = group["attributes"]["lesionflow_case"]
    for key in VOLATILE_META:
        meta.pop(key, None)
    for row in meta["catalog_rows"]:
        for key in VOLATILE_ROW:
            row.pop(key, None)
    files["zarr.json"] = json.dumps(group, sort_keys=True).encode()
    return files


def _catalog(store: Path) -> list[dict]:
    cat = read_catalog(store).drop(columns=list(VOLATILE_ROW))
    cat = cat.astype(object).where(cat.notna(), None)  # NaN != NaN
    return sorted(cat.to_dict("records"), key=lambda r: (str(r["source_relpath"]), str(r["case_id"]), str(r["modality"])))


def assert_same_store(store: Path, reference: Path) -> None:
    """``store`` holds exactly the cases, array bytes (chunk by chunk: a missing chunk would read
    as the fill value) and current catalog rows of ``reference``."""
    cases = list_cases(reference)
    assert list_cases(store) == cases
    for case_id in cases:
        got, want = _case_files(store, case_id), _case_files(reference, case_id)
        assert sorted(got) == sorted(want), f"{case_id}: other files (chunks) than the uninterrupted run"
        for rel in want:
            assert got[rel] == want[rel], f"{case_id}/{rel} differs from the uninterrupted run"
    assert _catalog(store) == _catalog(reference)


def _in_flight(store: Path) -> list[str]:
    """Files of case writes in progress in staging (a walk that a commit's rename overtakes, moving
    the folder being walked into ``cases/``, sees nothing in flight this time round)."""
    staging = store / ".staging"
    try:
        return [p.name for p in staging.rglob("*") if p.is_file()] if staging.is_dir() else []
    except FileNotFoundError:
        return []


def test_sigkill_while_a_case_is_written_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """The ingest (driver and Dask worker) is killed while a case's arrays are being written (slowed
    by a test hook, so the kill lands mid-write); the rerun removes the dead writer's staging at
    once (its owner is dead, however young the debris), finishes, and the store then equals an
    uninterrupted ingest of the same cohort: every case, every chunk file byte for byte, the catalog."""
    src = tmp_path / "cohort"
    for i in range(4):
        write_session(src / f"p{i}", f"p{i}_", seed=i)
    reference, store = tmp_path / "reference.zarr", tmp_path / "store.zarr"
    run_ingest(src, reference, PipelineConfig(), env()["LESIONFLOW_PSEUDONYM_KEY"].encode())  # in this process, no Dask

    slow = {**env(), "PYTHONPATH": os.pathsep.join([str(HOOKS), str(REPO), os.environ.get("PYTHONPATH", "")]),
            "LESIONFLOW_TEST_SLOW_CHUNK_WRITES_S": "0.4"}
    proc = subprocess.Popen(ingest_cmd(src, store), env=slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    in_flight: list[str] = []
    try:
        while time.time() < deadline and proc.poll() is None:
            committed = len(list_cases(store)) if (store / "cases").exists() else 0
            in_flight = _in_flight(store)
            if committed >= 1 and len(in_flight) >= 2:  # a case committed, the next one half-written
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: driver and Dask worker
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert len(in_flight) >= 2, "the kill did not land while a case was being written"
    assert _in_flight(store), "the dead writer left no staging debris"
    assert len(list_cases(store)) < 4
    for case_id in list_cases(store):  # what is visible after the crash is whole
        read_case_meta(store, case_id)

    out = subprocess.run(ingest_cmd(src, store), env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["rejected"] == 0
    assert list((store / ".staging").iterdir()) == []  # the dead writer's debris went at once, not after hours
    assert_same_store(store, reference)
    assert_valid_store(store, 4)


def test_crash_between_commit_and_catalog_is_repaired(cohort, tmp_path):
    store = tmp_path / "store.zarr"
    run_ingest(cohort, store, PipelineConfig(), b"k")
    shutil.rmtree(store / "catalog")  # as if every run died right after committing its cases
    (store / "catalog").mkdir()
    assert repair_catalog(store) == N_SESSIONS
    assert repair_catalog(store) == 0
    assert_valid_store(store, N_SESSIONS)


def test_rerun_restores_catalog_rows_lost_in_a_crash(cohort, tmp_path):
    store = tmp_path / "store.zarr"
    run_ingest(cohort, store, PipelineConfig(), b"k")
    shutil.rmtree(store / "catalog")
    (store / "catalog").mkdir()
    summary = run_ingest(cohort, store, PipelineConfig(), b"k")
    assert summary.converted == 0  # nothing re-converted: the cases are complete
    assert_valid_store(store, N_SESSIONS)  # and the catalog lists each of them once again


def test_two_concurrent_ingests_leave_a_valid_store(cohort, tmp_path):
    store = tmp_path / "store.zarr"
    procs = [subprocess.Popen(ingest_cmd(cohort, store), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, e) in zip(procs, outs):
        assert p.returncode == 0, e[-2000:]
    summaries = [json.loads(o) for o, _ in outs]
    assert all(s["rejected"] == 0 for s in summaries)
    assert sum(s["converted"] for s in summaries) >= N_SESSIONS  # some sessions may be converted by both
    assert_valid_store(store, N_SESSIONS)


# ------------------------------------------------------------------------------- forced races
def _collide_at_commit(monkeypatch, n: int = 2) -> None:
    """Hold the first commit rename of each of ``n`` threads until all are there: every writer
    has built its case, none has committed (the race window made wide)."""
    barrier = threading.Barrier(n, timeout=60)
    held: set[int] = set()
    original = local_backend.LocalBackend._commit_point

    def commit_point(self, target):
        if threading.get_ident() not in held:
            held.add(threading.get_ident())
            barrier.wait()
        original(self, target)

    monkeypatch.setattr(local_backend.LocalBackend, "_commit_point", commit_point)


def _convert_at_once(monkeypatch, jobs) -> list:
    _collide_at_commit(monkeypatch, len(jobs))
    results: list = [None] * len(jobs)

    def run(i):
        results[i] = jobs[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    return results


@pytest.mark.parametrize("second_spacing", [None, (2.0, 2.0, 2.0)], ids=["same conversion", "other configuration"])
def test_two_conversions_of_one_session_colliding_at_the_commit_both_succeed(tmp_path, monkeypatch, second_spacing):
    """Two ingests convert one session at the same moment (the same configuration, or another one
    with other content); both are past the point where the case did not exist when they commit.
    Neither is reported rejected, both commit, and the case is whole: that of the later writer."""
    src = tmp_path / "c"
    write_session(src / "p0", "p0_", seed=0)
    store = tmp_path / "s.zarr"
    cfgs = [PipelineConfig(), PipelineConfig(target_spacing=second_spacing) if second_spacing else PipelineConfig()]
    (plan,) = discover(src, cfgs[0], b"k").sessions
    from pipeline.store import init_store

    init_store(store)
    ctxs = [IngestContext(str(store), cfg, f"run-{i}") for i, cfg in enumerate(cfgs)]
    results = _convert_at_once(monkeypatch, [functools.partial(convert_session, plan, ctx) for ctx in ctxs])
    assert [r.status for r in results] == ["converted", "converted"], [r.reason for r in results]
    meta = read_case_meta(store, plan.case_id)
    assert meta.run_id in ("run-0", "run-1")
    winner = cfgs[int(meta.run_id[-1])]
    assert meta.config_hash == winner.processing_hash()
    g = open_case(store, plan.case_id)
    assert g["image"].shape[1:] == tuple(meta.geometry.shape_zyx) == reference_label(g).shape
    assert np.isfinite(g["image"][:]).all()
    assert list((store / ".staging").iterdir()) == []
    cat = read_catalog(store)
    assert set(cat["status"]) == {"converted"} and set(cat["reason_code"].dropna()) == set()
