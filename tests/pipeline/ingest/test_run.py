"""The run: summary with reason codes, the rows of inputs rejected at discovery, and the module
structure of pipeline.ingest (imports point one way, no cycle hidden in a function)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.core.config import PipelineConfig
from pipeline.ingest import IngestContext, IngestSummary, SessionResult, convert_session, run_ingest
from pipeline.ingest.discover import Discovery, Rejected
from pipeline.ingest.run import record_rejected, summarize
from pipeline.store import init_store, read_catalog
from storage_schemas.models import ReasonCode
from tests.conftest import REPO
from tests.sealed import reveal

INGEST = REPO / "pipeline" / "ingest"


def test_summary_lists_every_rejected_and_unused_input_with_its_code(cohort, tmp_path):
    summary = run_ingest(cohort, tmp_path / "s.zarr", PipelineConfig(), b"k")
    assert isinstance(summary, IngestSummary) and (summary.converted, summary.rejected_sessions) == (4, 1)
    listed = {reveal(r["path"], "k"): r["code"] for r in summary.rejected_inputs + summary.unused_inputs}  # sealed paths
    assert listed == {
        "site/patient04/IM0001": "empty_file",  # discovery
        "site/patient04/patient04_FLAIR.nii.gz": "corrupt",  # the reader, in the session
        "site/patient04/": "no_readable_image",  # the session itself (its folder)
    }
    assert all(r["path"].startswith("src:") for r in summary.rejected_inputs + summary.unused_inputs)
    assert all(r["code"] in {c.value for c in ReasonCode} and r["reason"] for r in summary.rejected_inputs + summary.unused_inputs)
    assert summary.as_dict()["rejected_inputs"] == summary.rejected_inputs


def test_record_rejected_and_summarize(tmp_path):
    store = init_store(tmp_path / "s.zarr")
    ctx = IngestContext(str(store), PipelineConfig(), "run-1")
    disc = Discovery(root=tmp_path, sessions=[], rejected=[Rejected("a/x.nrrd", "unsupported image format '.nrrd'", ReasonCode.UNSUPPORTED_FORMAT,
                                                                    sealed="src:x-nrrd")])
    listed = record_rejected(disc, ctx)
    assert listed == [{"path": "src:x-nrrd", "reason": "unsupported image format '.nrrd'", "code": "unsupported_format"}]  # the sealed path
    cat = read_catalog(store)
    assert (cat["run_id"][0], cat["reason_code"][0], cat["config_hash"][0]) == ("run-1", "unsupported_format", ctx.config_hash)
    rows = [ctx.row(None, "unused", "b/loc/", reason="localizer/scout series", reason_code=ReasonCode.LOCALIZER)]
    results = [SessionResult("sub-1_ses-1", "converted", bytes_read=5), SessionResult("sub-2_ses-1", "unused", rows=rows)]
    s = summarize(results, listed, ctx, 1.0, unchanged=["sub-0_ses-1"])
    assert (s.converted, s.skipped, s.unused_sessions, s.cases, s.bytes_read) == (1, 1, 1, ["sub-0_ses-1", "sub-1_ses-1"], 5)
    assert s.unused_inputs == [{"path": "b/loc/", "reason": "localizer/scout series", "code": "localizer"}]


def test_a_rejected_or_unused_row_needs_a_reason_code():
    ctx = IngestContext("s.zarr", PipelineConfig(), "r")
    with pytest.raises(ValueError, match="reason_code"):
        ctx.row(None, "rejected", "a", reason="words only")
    assert ctx.row(None, "converted", "a").reason_code is None


def test_context_is_frozen_and_travels():
    import pickle

    ctx = IngestContext(Path("s.zarr"), PipelineConfig(), "r", force=True)  # type: ignore[arg-type]
    assert ctx.store_root == "s.zarr"
    with pytest.raises(AttributeError):
        ctx.run_id = "other"  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(ctx)) == ctx and convert_session.__module__ == "pipeline.ingest.session"


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(module-level, function-level) ``pipeline.ingest.*`` modules imported by ``module``."""
    tree = ast.parse((INGEST / f"{module}.py").read_text())

    def ingest_imports(root: ast.AST) -> set[str]:
        return {n.module.rsplit(".", 1)[-1] for n in ast.walk(root)
                if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("pipeline.ingest")}

    nested = set().union(*(ingest_imports(f) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))))
    return ingest_imports(tree) - nested, nested


def test_imports_point_one_way_without_hidden_cycles():
    deps = {m: _imports(m) for m in ("context", "incremental", "session", "cluster", "run")}
    assert all(not nested for _, nested in deps.values()), {m: n for m, (_, n) in deps.items() if n}
    top = {m: t for m, (t, _) in deps.items()}
    assert top["session"].isdisjoint({"run", "cluster"}) and top["incremental"].isdisjoint({"session", "run", "cluster"})
    assert "session" in top["cluster"] and top["cluster"].isdisjoint({"run"})
    assert {"cluster", "session", "incremental"} <= top["run"]
    assert top["context"].isdisjoint({"session", "incremental", "cluster", "run"})
