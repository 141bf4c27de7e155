"""One ingest of a cohort that mixes every hostile input class of issue 10 with good sessions,
through the command line, with its memory measured: the good sessions are converted, each bad
input is rejected with its own reason code naming the file, the poisoned sessions are rejected
as ``worker_died``, the command exits 0 within its timeout, nothing identifying reaches its
output, and the peak resident memory of its whole process tree stays under the ceiling the
README states (``benchmarks/bench_hostile.py`` measures the same run, with and without Prefect).
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from pipeline.store import list_cases, read_case_meta
from tests.hostile_factory import IDENTITY, poison_env, run_measured, write_hostile_cohort
from tests.sealed import reveal, reveal_text, revealed_catalog

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "hostile-cohort-test"
WORKERS = 2
WORKER_MEMORY_LIMIT_MIB = 700
COMMAND_CEILING_MIB = 512
"""The command's own process (client, scheduler and nannies of the LocalCluster): the README's
0.5 GiB (measured 235 MiB without Prefect, 488 MiB with, ``benchmarks/results/*bench_hostile.json``)."""
WORKER_CEILING_MIB = 1.5 * WORKER_MEMORY_LIMIT_MIB
"""A worker: the README's 1.5 x ``worker_memory_limit`` (its nanny restarts it past 95 % of the
limit, checking every 500 ms; the poisoned session, allocating 800 MiB/s, reached 803 MiB at 700)."""
TREE_CEILING_MIB = COMMAND_CEILING_MIB + WORKERS * WORKER_CEILING_MIB
"""The whole tree, as the README states it (0.75 GiB + workers x 1.5 x limit) less the 0.25 GiB it
allows for Prefect's server, which ``--no-prefect`` does not start."""


def test_a_cohort_of_every_hostile_input_is_ingested_within_bounded_memory(tmp_path):
    cohort = write_hostile_cohort(tmp_path / "cohort")
    store = tmp_path / "store.zarr"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"worker_memory_limit": f"{WORKER_MEMORY_LIMIT_MIB}MiB"}))
    env = poison_env({**os.environ, "LESIONFLOW_PSEUDONYM_KEY": KEY, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    cmd = [sys.executable, "-m", "lesionflow.cli", "ingest", str(cohort.src), "--store", str(store), "--config", str(config),
           "--no-prefect", "--json", "--workers", str(WORKERS)]
    run = run_measured(cmd, env, timeout_s=400)  # bounded: a reader that blocked (FIFO, device) would hit this

    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    summary = json.loads(run.stdout)

    # every bad input: listed with its own code, the reason naming the file (by sealed path)
    rejected = {reveal(r["path"], KEY): r for r in summary["rejected_inputs"]}
    for relpath, (fragment, code) in cohort.rejected.items():
        assert relpath in rejected, f"{relpath} not reported; rejected: {sorted(rejected)}"
        row = rejected[relpath]
        assert row["code"] == code, (relpath, row)
        reason = reveal_text(row["reason"], KEY)
        assert fragment.lower() in reason.lower(), (relpath, reason)
        assert row["path"].startswith("src:"), row  # the file, named by its sealed path

    # the poisoned sessions: retried once, then once more alone, then rejected as worker_died, named by sealed path
    for relpath in cohort.poisoned:
        row = rejected[relpath + "/"]
        assert row["code"] == "worker_died" and row["path"].startswith("src:"), row
        assert reason_of(row).startswith("worker died while converting: 2 workers") and f"{WORKER_MEMORY_LIMIT_MIB}MiB" in row["reason"]

    # the good sessions (compressed DICOM, identifying folders, T1 SPACE, gzip tail, MetaImage): converted
    assert summary["converted"] == len(cohort.good) == len(list_cases(store)), summary["converted"]
    cat = revealed_catalog(store, KEY)
    converted = cat[cat["status"] == "converted"]
    for folder in cohort.good:
        assert converted["source_relpath"].str.startswith(folder + "/").any(), f"{folder} not converted"
    t1space = converted[converted["source_relpath"].str.startswith("t1space/")]["case_id"].iloc[0]
    assert read_case_meta(store, t1space).channels[:2] == ["FLAIR", "T1"]  # "T1 SPACE" is T1, not post-contrast
    compressed = converted[converted["source_relpath"].str.startswith("compressed/")]["case_id"].iloc[0]
    assert "FLAIR" in read_case_meta(store, compressed).channels

    # nothing identifying in what the command printed (sealed paths only)
    for text in (run.stdout, run.stderr):
        flat = re.sub(r"[^a-z0-9]", "", text.lower())
        for word in IDENTITY:
            assert re.sub(r"[^a-z0-9]", "", word.lower()) not in flat, word

    # memory: the whole tree (sampled) and each process (the kernel's peak) under the stated ceilings
    assert run.processes >= 1 + WORKERS and run.peak_by_role_mb["dask worker"] > 0, run
    assert run.peak_tree_rss_mb < TREE_CEILING_MIB, run
    assert run.peak_by_role_mb["cli"] < COMMAND_CEILING_MIB, run
    assert run.peak_by_role_mb["dask worker"] < WORKER_CEILING_MIB, run
    assert run.peak_process_rss_mb < WORKER_CEILING_MIB, run  # the kernel's peak of any one process (killed workers too)


def reason_of(row: dict[str, str]) -> str:
    return reveal_text(row["reason"], KEY)
