"""Conversion on Dask: an existing scheduler address, SimpleITK limited to one thread per worker."""

from __future__ import annotations

import pytest

from test_ingest import write_session

from pipeline.config import PipelineConfig
from pipeline.ingest import run_ingest
from pipeline.parallel import dask_client
from pipeline.store import list_cases

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
