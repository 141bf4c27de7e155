"""Shared fixtures. Real scanner data lives in ../shared/data (beside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LESIONFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("LESIONFLOW_PSEUDONYM_KEY", "test-key-not-secret")
# 2 torch threads on 2 shared cores are up to 7x slower than 1 when anything else runs
os.environ.setdefault("LESIONFLOW_TORCH_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real scanner data not found at {SHARED_DATA} (set LESIONFLOW_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole test session (it takes 10-20 s to start)."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory):
    """A tiny phantom cohort (3 subjects: DICOM, MetaImage, BIDS NIfTI) at 3 mm, shared by tests."""
    from pipeline.phantom import make_cohort

    out = tmp_path_factory.mktemp("phantom")
    return make_cohort(out, n_subjects=3, seed=7, spacing_mm=3.0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The folder of a 3-D U-Net trained for 20 iterations (1 thread) on two synthetic cases
    (FLAIR, T1, T2): a real model for the commands and flows that run one, not a good one."""
    import torch

    from tests.store_factory import make_store
    from training.loop import train

    root = tmp_path_factory.mktemp("tiny-model") / "store"
    ids = make_store(root, n_cases=2, shape_zyx=(40, 56, 48), seed=0)
    previous = torch.get_num_threads()
    try:
        result = train(root, case_ids=ids, val_case_ids=[], patch_zyx=(32, 32, 32), batch_size=2, iterations=20, lr=2e-3, seed=0,
                       num_threads=1)
    finally:
        torch.set_num_threads(previous)
    return result.checkpoint_path


@pytest.fixture(scope="session")
def phantom_store(phantom_cohort, tmp_path_factory):
    """The phantom cohort ingested into a store (about 2 s), shared by the tests that only read it."""
    from pipeline.core.config import PipelineConfig
    from pipeline.ingest import run_ingest

    root = tmp_path_factory.mktemp("phantom-store") / "s.zarr"
    summary = run_ingest(phantom_cohort.cohort_dir, root, PipelineConfig(), b"phantom-store-key")
    assert summary.converted == 3, summary
    return root
