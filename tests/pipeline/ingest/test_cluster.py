"""Conversion on Dask: an existing scheduler address, SimpleITK limited to one thread per worker."""

from __future__ import annotations

import pytest

from pipeline.core.config import PipelineConfig
from pipeline.ingest import run_ingest
from pipeline.ingest.cluster import dask_client
from pipeline.store import list_cases
from tests.conftest import REPO
from tests.sealed import reveal
from tests.session_factory import write_session

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _sitk_threads() -> int:
    import SimpleITK as sitk

    return sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()


def test_ingest_on_an_existing_scheduler_address(tmp_path):
    from dask.distributed import LocalCluster

    src = tmp_path / "c"
    for i in range(4):
        write_session(src / f"p{i}", f"p{i}_", seed=i)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with dask_client(cluster.scheduler_address) as client:  # as `--dask-address tcp://…` does
            assert set(client.run(_sitk_threads).values()) == {1}
            summary = run_ingest(src, tmp_path / "s.zarr", PipelineConfig(), b"k", client=client)
    assert summary.converted == 4 and len(list_cases(tmp_path / "s.zarr")) == 4


def test_unreachable_scheduler_says_what_to_do():
    with pytest.raises(RuntimeError, match="cannot reach the Dask scheduler"):
        with dask_client("tcp://127.0.0.1:1", connect_timeout="2s"):
            pass


def test_parallel_header_scan_equals_serial(tmp_path, monkeypatch):
    import numpy as np

    import pipeline.io.readers.dicom as dicom_reader
    from pipeline.ingest.discover import discover
    from tests import dicom_factory as fac

    for k in range(3):
        fac.write_series(tmp_path / f"s{k}", np.zeros((12, 8, 8), np.int16), spacing=(1, 1, 2), series_number=k + 1,
                         description=f"AX FLAIR {k}", study_uid=f"1.2.3.{k}")
    serial = discover(tmp_path, PipelineConfig(), b"k")
    monkeypatch.setattr(dicom_reader, "PARALLEL_SCAN_MIN_FILES", 0)
    with dask_client(None, 2) as client:
        parallel = discover(tmp_path, PipelineConfig(), b"k", client=client)
    key = lambda disc: sorted((s.case_id, tuple(tuple(i.relpaths) for i in s.items)) for s in disc.sessions)
    assert key(parallel) == key(serial) and len(serial.sessions) == 3


def _worker_settings() -> dict:
    import os

    import dask
    import SimpleITK as sitk
    import zarr

    return {"sitk": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), "zarr": zarr.config.get("threading.max_workers"),
            "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"), "profiler": dask.config.get("distributed.worker.profile.enabled")}


def test_local_cluster_workers_use_one_core_and_glibc_default_malloc():
    with dask_client(None, 2) as client:
        settings = list(client.run(_worker_settings).values())
    assert settings == [{"sitk": 1, "zarr": 1, "malloc_trim": None, "profiler": False}] * 2


def test_deploy_dask_config_removes_malloc_trim_for_hand_started_workers():
    import dask.config
    import distributed  # noqa: F401 - loads the distributed defaults into dask.config

    (cfg,) = dask.config.collect_yaml([str(REPO / "deploy" / "dask.yaml")])
    merged = dask.config.merge(dask.config.config, cfg)
    assert "MALLOC_TRIM_THRESHOLD_" in dask.config.config["distributed"]["nanny"]["pre-spawn-environ"]  # Dask's default
    assert merged["distributed"]["nanny"]["pre-spawn-environ"]["MALLOC_TRIM_THRESHOLD_"] is None
    from pipeline.ingest.cluster import QUIET_CLUSTER, SESSION_SETTINGS

    for key, value in {**QUIET_CLUSTER, **SESSION_SETTINGS}.items():  # the LocalCluster's settings and the file agree
        assert dask.config.get(key, config=merged) == value, key


def test_largest_sessions_are_converted_first(tmp_path):
    """Longest-first order: no big session is left running alone while the other workers idle."""
    from pipeline.ingest import IngestContext
    from pipeline.ingest.cluster import map_sessions
    from pipeline.ingest.discover import discover
    from pipeline.io.writers import write_nifti
    from pipeline.store import read_catalog
    from tests.session_factory import blob_image

    src = tmp_path / "c"
    # names whose alphabetical (discovery) order is not the size order, so only the priorities can
    # make the largest run first
    for name, size in (("a_small", 16), ("b_large", 48), ("c_medium", 32)):
        write_nifti(blob_image((size, size, size), (1.0, 1.0, 1.0), seed=size), src / name / f"{name}_FLAIR.nii.gz")
    plans = discover(src, PipelineConfig(), b"k").sessions
    with dask_client(None, 1) as client:  # one worker: sessions run one after another, in priority order
        results = map_sessions(plans, IngestContext(str(tmp_path / "s.zarr"), PipelineConfig(), "r"), client=client)
    assert [r.case_id for r in results] == [p.case_id for p in plans]  # results come back in input order
    cat = read_catalog(tmp_path / "s.zarr").sort_values("recorded_at")
    ran = [p.root_relpath for case in cat["case_id"] for p in plans if p.case_id == case]
    assert [p.root_relpath for p in plans] == ["a_small", "b_large", "c_medium"]
    assert ran == ["b_large", "c_medium", "a_small"]


def test_worker_with_dask_malloc_setting_is_warned_about(monkeypatch, caplog):
    """A hand-started worker without deploy/dask.yaml: the plugin says what to do."""
    import logging

    import SimpleITK as sitk
    import zarr

    from pipeline.ingest.cluster import OneCorePerWorker

    threads, zarr_workers = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), zarr.config.get("threading.max_workers")
    try:
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
        with caplog.at_level(logging.WARNING, logger="lesionflow.parallel"):
            OneCorePerWorker().setup()
        assert "DASK_CONFIG=deploy/dask.yaml" in caplog.text
        monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
        caplog.clear()
        OneCorePerWorker().setup()
        assert caplog.text == ""
    finally:  # the plugin's settings are meant for worker processes, not this one
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
        zarr.config.set({"threading.max_workers": zarr_workers})


# ------------------------------------------------------------------------------- poisoned sessions
@pytest.mark.timeout(400)
def test_ingest_flow_completes_when_sessions_kill_their_workers(prefect_harness, tmp_path, monkeypatch):
    """Two poisoned sessions among three good ones: one allocates past the configured worker
    memory limit, one exits its worker as a crash in a C library would. Each is retried once on
    another worker and once more alone, then rejected (worker_died); the good ones are converted (none charged with a
    neighbour's death, also when several batches convert at once), the summary lists the two, and
    the flow run ends Completed."""
    import functools
    import json

    from flows.ingest import ingest
    from pipeline.ingest import cluster
    from pipeline.store import read_catalog
    from tests.session_factory import convert_or_poison

    src = tmp_path / "c"
    for name in ("p0", "p1", "p2", "oom", "crash"):
        write_session(src / name, f"{name}_", seed=len(name), label=False)
    victims = {"oom": "oom", "crash": "crash"}
    monkeypatch.setattr(cluster, "convert_session", functools.partial(convert_or_poison, victims=victims))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"worker_memory_limit": "800MiB"}))
    store = tmp_path / "s.zarr"
    # batches of 2: three convert tasks at once share the cluster's two worker slots
    state = ingest(str(src), str(store), config_path=str(config), n_workers=2, batch_size=2, report=False, return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert (summary["converted"], summary["rejected"], summary["skipped"]) == (3, 2, 0)
    # named by sealed path (a poisoned session's folder may be a patient's name): opened with the key
    died = {reveal(r["path"]).rstrip("/"): r["reason"] for r in summary["rejected_inputs"] if r["code"] == "worker_died"}
    assert all(r["path"].startswith("src:") for r in summary["rejected_inputs"])
    assert set(died) == set(victims)
    assert all(r.startswith("worker died while converting: 2 workers") and "800MiB" in r for r in died.values())
    assert len(list_cases(store)) == 3
    cat = read_catalog(store)
    rows = cat[cat["reason_code"] == "worker_died"]
    assert sorted(reveal(p) for p in rows["source_relpath"]) == ["crash/", "oom/"] and set(rows["status"]) == {"rejected"}


@pytest.mark.timeout(300)
def test_a_good_session_sharing_a_worker_with_a_poisoned_one_is_converted(tmp_path, monkeypatch):
    """Dask charges a worker's death to every session the worker held. On one worker with two
    threads a good session runs beside one that crashes its worker at once: the scheduler gives
    up on both after the second death (``allowed-failures: 1``), then ingest converts each again
    alone, so the good session is converted and only the poisoned one is rejected (the CI run of
    the hostile cohort once rejected a good session this way)."""
    import functools

    import dask
    from dask.distributed import LocalCluster

    from pipeline.ingest import cluster
    from pipeline.store import read_catalog
    from tests.session_factory import convert_or_poison

    src = tmp_path / "c"
    for name in ("good", "crash"):
        write_session(src / name, f"{name}_", seed=len(name), label=False)
    victims = {"good": "slow", "crash": "crash"}
    monkeypatch.setattr(cluster, "convert_session", functools.partial(convert_or_poison, victims=victims))
    with dask.config.set({**cluster.QUIET_CLUSTER, **cluster.SESSION_SETTINGS}):
        local = LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                             scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    with local, dask_client(local.scheduler_address) as client:
        summary = run_ingest(src, tmp_path / "s.zarr", PipelineConfig(), b"k", client=client)
    assert (summary.converted, summary.rejected_sessions) == (1, 1), summary
    died = [r for r in summary.rejected_inputs if r["code"] == "worker_died"]
    assert [reveal(r["path"], "k") for r in died] == ["crash/"]
    assert died[0]["reason"].startswith("worker died while converting: 2 workers running this session alone died")
    cat = read_catalog(tmp_path / "s.zarr")
    assert sorted(reveal(p, "k") for p in cat.loc[cat["status"] == "rejected", "source_relpath"]) == ["crash/"]


def test_local_cluster_keeps_dask_info_records_out_of_the_log():
    """Under a flow, Dask's INFO records (scheduler start, workers registering, client
    connections) reached Prefect's console through the root logger: 20 lines per ingest."""
    import logging

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler, root = Keep(level=logging.DEBUG), logging.getLogger()
    distributed = logging.getLogger("distributed")
    before = distributed.level
    distributed.setLevel(logging.INFO)  # Dask's own default for its logger
    root.addHandler(handler)
    try:
        with dask_client(n_workers=1) as client:
            assert client.submit(sum, [1, 2]).result() == 3
        dask_info = [r for r in seen if r.name.startswith("distributed") and r.levelno < logging.WARNING]
        assert not dask_info, [r.getMessage() for r in dask_info[:3]]
        assert distributed.level == logging.INFO  # restored afterwards
    finally:
        root.removeHandler(handler)
        distributed.setLevel(before)
