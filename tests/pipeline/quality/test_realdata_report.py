"""Data-quality report on an ingest of all of ../shared/data (DICOM set, MS set and LGG slice stacks together)."""

from __future__ import annotations

import pytest

from pipeline.core.config import PipelineConfig
from pipeline.ingest import run_ingest
from pipeline.quality.report import build_report, case_thumbnail
from pipeline.store import list_cases, read_case_meta
from tests.sealed import reveal

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_report_on_all_shared_data(shared_data, tmp_path):
    store = tmp_path / "store.zarr"
    summary = run_ingest(shared_data, store, PipelineConfig(), b"report-key")
    mni_patients = sorted(p.name for p in (shared_data / "open_ms" / "cross_sectional" / "MNI").iterdir() if p.is_dir())
    lgg = shared_data / "lgg" / "kaggle_3m"
    lgg_patients = sorted(p.name for p in lgg.iterdir() if p.is_dir()) if lgg.is_dir() else []
    # the MNI patients (07, 19) + the two longitudinal studies + one case per LGG patient folder (slice stacks, 16 today)
    assert summary.converted == len(mni_patients) + 2 + len(lgg_patients)
    result = build_report(store)
    stacks = {c for c in list_cases(store) if read_case_meta(store, c).geometry.source == "unknown"}
    assert len(stacks) == len(lgg_patients)
    # a slice stack has no geometry: each is said so, once, and none is flagged for a spacing that was assumed
    unknown = [f["case_id"] for f in result.flagged if f["what"] == "geometry unknown"]
    assert sorted(unknown) == sorted(stacks) and result.summary["n_geometry_unknown"] == len(lgg_patients)
    assert not {f["case_id"] for f in result.flagged if "spacing" in f["what"] or "slices" in f["what"] or "anisotrop" in f["what"]} & stacks
    html = result.html_path.read_text()

    # 4-D EPI and mosaic series: listed as not usable for lesion work, with that reason
    unused = {reveal(u["path"], "report-key"): u["reason"] for u in summary.unused_inputs}  # sealed paths
    for n in (4, 5, 6, 7):
        reason = unused[f"dcm_qa_nih/In/20180918GE/mr_000{n}/"]
        assert "4-D series (10 volumes" in reason and reason in html
    for n in (3, 4, 5, 6):
        reason = unused[f"dcm_qa_nih/In/20180918Si/mr_000{n}/"]
        assert "mosaic" in reason and reason in html

    # the anisotropic raw volumes (0.72 x 0.72 x 4 mm and the like) are flagged, the 1 mm MNI cases are not; with
    # enough FLAIRs to compare (CONSISTENCY_MIN_SERIES) the flag is "thick slices", which names the anisotropy too
    longitudinal = {c for c in list_cases(store)
                    if any("longitudinal" in reveal(s.relpath, "report-key") for ch in read_case_meta(store, c).channel_info for s in ch.sources)}
    flagged_aniso = {f["case_id"] for f in result.flagged if f["what"] in ("anisotropic voxels", "thick slices")}
    assert flagged_aniso == longitudinal and len(longitudinal) == 2

    # the real lesion overlays: each MNI case's thumbnail is drawn on its label's largest slice
    mni = [c for c in list_cases(store) if read_case_meta(store, c).has_label and c not in stacks]
    assert len(mni) == len(mni_patients)
    for case_id in mni:
        thumb = case_thumbnail(store, case_id)
        assert thumb["has_label"] and thumb["png_b64"] in html

    # every expectation result carries an explanation
    assert result.expectations and all(r.get("explanation") for r in result.expectations)
    for section in ("summary", "flagged", "expectations", "metrics", "thumbnails", "lineage"):
        assert f'id="{section}"' in html
