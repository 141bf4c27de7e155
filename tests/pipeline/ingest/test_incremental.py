"""Incremental bookkeeping: what the store holds decides what is sent to the workers and what is hashed."""

from __future__ import annotations

import os

from pipeline.core.config import PipelineConfig
from pipeline.core.lineage import lineage
from pipeline.ingest import run_ingest
from pipeline.ingest.discover import discover
from pipeline.ingest.incremental import cached_digests, committed_metas, is_up_to_date, open_store_for_ingest


def test_driver_sends_only_changed_sessions_to_the_workers(cohort, tmp_path):
    store = tmp_path / "s.zarr"
    run_ingest(cohort, store, PipelineConfig(), b"k")
    state = open_store_for_ingest(store, PipelineConfig(), lineage=lineage(b"k"))  # the key opens the stored paths and (size, mtime) tags
    plans = discover(cohort, PipelineConfig(), b"k", known=state.known).sessions
    todo, unchanged = state.pending(plans, PipelineConfig())
    # only the session whose FLAIR was rejected (no committed case) is tried again
    assert [p.root_relpath for p in todo] == ["site/patient04"]
    assert sorted(unchanged) == sorted(state.metas)
    # a file whose mtime moved is sent to a worker, which hashes it and finds the same bytes
    flair = cohort / "site" / "patient02" / "patient02_FLAIR.nii.gz"
    os.utime(flair, ns=(flair.stat().st_atime_ns, flair.stat().st_mtime_ns + 10**9))
    todo, _ = state.pending(plans, PipelineConfig())
    assert [p.root_relpath for p in todo] == ["site/patient02", "site/patient04"]
    summary = run_ingest(cohort, store, PipelineConfig(), b"k")
    assert summary.converted == 0 and summary.skipped == len(state.metas)
    # another processing configuration: everything is pending, and force sends everything
    assert len(state.pending(plans, PipelineConfig(target_spacing=(2.0, 2.0, 2.0)))[0]) == len(plans)
    assert len(state.pending(plans, PipelineConfig(), force=True)[0]) == len(plans)


def test_cached_digests_reuse_only_unchanged_files(cohort, tmp_path):
    store = tmp_path / "s.zarr"
    run_ingest(cohort, store, PipelineConfig(), b"k")
    metas = {m.case_id: m for m in committed_metas(store)}
    plan = next(p for p in discover(cohort, PipelineConfig(), b"k").sessions if p.root_relpath == "site/patient02")
    existing = metas[plan.case_id]
    key = lineage(b"k").stat_key  # sizes and mtimes are stored as keyed tags
    assert all(s.stat_tag and s.mtime_ns is None for ch in existing.channel_info for s in ch.sources)
    digests, stats, to_hash = cached_digests(plan, existing, key)
    assert len(cached_digests(plan, existing)[2]) == len(stats)  # without the tag key nothing is reused
    assert to_hash == [] and set(digests) == set(stats) and is_up_to_date(plan, existing, PipelineConfig(), key)
    t2 = cohort / "site" / "patient02" / "patient02_T2w.nii.gz"
    os.utime(t2, ns=(t2.stat().st_atime_ns, t2.stat().st_mtime_ns + 10**9))
    _, _, to_hash = cached_digests(plan, existing, key)
    assert to_hash == [("site/patient02/patient02_T2w.nii.gz", t2)] and not is_up_to_date(plan, existing, PipelineConfig(), key)
    assert len(cached_digests(plan, None)[2]) == len(stats)  # nothing committed: everything is hashed
