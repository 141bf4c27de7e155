"""Shared fixtures. Real scanner data lives in ../shared/data (beside the repository)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LESIONFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("LESIONFLOW_PSEUDONYM_KEY", "test-key-not-secret")
# 2 torch threads on 2 shared cores are up to 7x slower than 1 when anything else runs
os.environ.setdefault("LESIONFLOW_TORCH_THREADS", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# Prefect sets up its console log handler when it is first imported, on the sys.stderr of that
# moment. Imported here, that is pytest's stream for the whole session; imported first inside a
# CliRunner invocation (the commands import it lazily), it was the runner's temporary stream,
# closed when the invocation ended, and every later library log record printed "--- Logging
# error ---" tracebacks into the output of the tests that followed.
import prefect  # noqa: E402, F401


@pytest.fixture(autouse=True)
def _log_handlers_on_live_streams():
    """CliRunner swaps ``sys.stdout``/``sys.stderr`` while a command runs, and a library that
    creates its log handlers then (Prefect's console handler when an in-process server app is
    built, torch's on first import) binds them to the runner's stream, closed when the command
    returns: every later record then printed "--- Logging error ---" tracebacks into other tests'
    output, or recursed. After each test such handlers are pointed back at ``sys.stderr``."""
    yield
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                handler.stream = sys.stderr  # not setStream: it flushes the closed stream first
                console = getattr(handler, "console", None)  # Prefect's handler prints through rich
                if console is not None:
                    console.file = sys.stderr


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real scanner data not found at {SHARED_DATA} (set LESIONFLOW_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole test session (it takes 10-20 s to start)."""
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
