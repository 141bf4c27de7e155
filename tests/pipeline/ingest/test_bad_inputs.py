"""A cohort full of broken inputs: each gets a specific reason naming the file, the rest is
ingested, and the command exits with a summary rather than a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.store import list_cases, read_catalog
from storage_schemas.models import ReasonCode
from tests.hostile_factory import write_broken_inputs
from tests.sealed import reveal, reveal_text


@pytest.fixture()
def broken_cohort(tmp_path: Path) -> tuple[Path, dict[str, tuple[str, ReasonCode]]]:
    cohort = write_broken_inputs(tmp_path / "cohort")
    return cohort.src, cohort.rejected


def test_every_bad_input_is_named_with_its_reason_and_the_rest_is_ingested(broken_cohort, tmp_path):
    src, expected = broken_cohort
    store = tmp_path / "store.zarr"
    env = {**os.environ, "LESIONFLOW_PSEUDONYM_KEY": "bad-input-test"}
    out = subprocess.run([sys.executable, "-m", "lesionflow.cli", "ingest", str(src), "--store", str(store), "--no-prefect", "--json", "--workers", "1"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    summary = json.loads(out.stdout)
    rejected = {reveal(r["path"], "bad-input-test"): r for r in summary["rejected_inputs"]}  # sealed paths
    for relpath, (fragment, code) in expected.items():
        assert relpath in rejected, f"{relpath} not reported; rejected: {sorted(rejected)}"
        assert fragment.lower() in reveal_text(rejected[relpath]["reason"], "bad-input-test").lower(), (relpath, rejected[relpath])
        assert rejected[relpath]["code"] == code, (relpath, rejected[relpath])
    # the good sessions (and the off-grid one, without its label) are in the store
    assert summary["converted"] == 3 and len(list_cases(store)) == 3
    # the catalog keeps every rejection with its reason
    cat = read_catalog(store)
    rej = cat[cat["status"] == "rejected"]
    assert set(expected) <= {reveal(p, "bad-input-test") for p in rej["source_relpath"]}
    assert rej["reason"].str.len().min() > 5
    # ... and its machine-readable code: every rejected or unused row has one
    outcome = cat[cat["status"].isin(["rejected", "unused"])]
    assert outcome["reason_code"].notna().all(), outcome[outcome["reason_code"].isna()][["source_relpath", "reason"]]
    codes = dict(zip((reveal(p, "bad-input-test") for p in rej["source_relpath"]), rej["reason_code"]))
    assert {p: codes[p] for p in expected} == {p: code.value for p, (_, code) in expected.items()}
    assert all(r["code"] for r in summary["rejected_inputs"] + summary["unused_inputs"])
