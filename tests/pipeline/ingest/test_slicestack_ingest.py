"""Ingest of numbered TIFF slice stacks: discovery, channel mapping, copied planes marked absent,
geometry unknown recorded in the store, the catalog, the report and the lesion tables, no folder
name (a date and a patient ID) anywhere in what is written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.config import PipelineConfig, SliceStackConfig
from pipeline.ingest import run_ingest
from pipeline.store import list_cases, open_case, read_case_meta, read_catalog, reference_label
from tests.slicestack_factory import write_stack

KEY = b"slicestack-test-key"
LGG = PipelineConfig(channels=("FLAIR", "T1", "T1POST"))
FOLDER = "TCGA_ZZ_9876_19990321"  # a date and a patient ID, like the real set's folder names


@pytest.fixture()
def stacks(tmp_path):
    src = tmp_path / "lgg"
    counts = write_stack(src / FOLDER, FOLDER, 11, size=24, tumour_slices=(3, 4, 10), copy_flair_into=2)  # T1POST is a FLAIR copy
    write_stack(src / "TCGA_ZZ_5555_20040101", "TCGA_ZZ_5555_20040101", 4, size=24, tumour_slices=(2,), seed=1)
    (src / FOLDER / "notes.tif").write_bytes(b"II*\x00")
    return src, counts


def test_slice_stack_cohort(stacks, tmp_path):
    src, counts = stacks
    store = tmp_path / "store.zarr"
    summary = run_ingest(src, store, LGG, KEY)
    assert summary.converted == 2
    cat = read_catalog(store)
    metas = [read_case_meta(store, c) for c in list_cases(store)]
    by_slices = {m.geometry.shape_zyx[0]: m for m in metas}
    copied, full = by_slices[11], by_slices[4]

    # channels by configuration; the copied plane is marked absent, with its reason code
    assert full.channels == ["FLAIR", "T1", "T1POST"]
    assert copied.channels == ["FLAIR", "T1"]
    sub = cat[(cat.case_id == copied.case_id) & (cat.modality == "T1POST")]
    assert list(sub.status) == ["unused"] and list(sub.reason_code) == ["substituted_channel"]
    assert "copy of the FLAIR plane" in sub.reason.iloc[0]

    # geometry unknown: unit spacing, recorded on the case and on every row of its inputs
    for m in metas:
        assert m.geometry.source == "unknown" and m.geometry.spacing == (1.0, 1.0, 1.0)
        assert {ci.source_format for ci in m.channel_info} == {"slicestack"}
    rows = cat[cat.case_id.isin([m.case_id for m in metas]) & cat.status.isin(["converted", "unused"])]
    assert set(rows.geometry_source) == {"unknown"}

    # the label: every mask voxel, slice 10 at z = 9; the FLAIR plane in slice order
    label = np.asarray(reference_label(open_case(store, copied.case_id))[...])
    assert [int(label[z].sum()) for z in range(11)] == [counts[k] for k in range(1, 12)]
    image = np.asarray(open_case(store, copied.case_id)["image"][...])
    assert image.shape == (2, 11, 24, 24)

    # the stray TIFF is rejected by name (sealed) and code; the cohort went on
    rej = cat[cat.status == "rejected"]
    assert list(rej.reason_code) == ["unsupported_format"]

    # no folder name, patient ID or date anywhere in the store
    for path in store.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for needle in (FOLDER, "9876", "19990321", "TCGA_ZZ"):
                assert needle.encode() not in blob, f"{needle} in {path}"


def test_default_channels_and_configured_spacing(stacks, tmp_path):
    src, _ = stacks
    store = tmp_path / "default.zarr"
    run_ingest(src, store, PipelineConfig(), KEY)  # FLAIR, T1, T2: the T1POST plane is not configured
    cat = read_catalog(store)
    assert set(cat[cat.modality == "T1POST"].reason_code) == {"modality_not_configured"}
    assert all(read_case_meta(store, c).channels == ["FLAIR", "T1"] for c in list_cases(store))

    store2 = tmp_path / "spaced.zarr"
    cfg = PipelineConfig(channels=LGG.channels, slice_stack=SliceStackConfig(spacing_mm=(0.5, 0.5, 3.0)))
    assert cfg.processing_hash() != LGG.processing_hash()
    run_ingest(src, store2, cfg, KEY)
    for c in list_cases(store2):
        geo = read_case_meta(store2, c).geometry
        assert geo.source == "configured_spacing" and geo.spacing == (0.5, 0.5, 3.0)


def test_rerun_skips_and_lesion_tables_in_voxels(stacks, tmp_path):
    from pipeline.lesions.tables import write_lesion_tables
    from pipeline.store import prediction_label, write_label

    src, counts = stacks
    store = tmp_path / "store.zarr"
    run_ingest(src, store, LGG, KEY)
    again = run_ingest(src, store, LGG, KEY)
    assert again.converted == 0 and again.skipped == 2
    case = next(c for c in list_cases(store) if read_case_meta(store, c).geometry.shape_zyx[0] == 11)
    label = np.asarray(reference_label(open_case(store, case))[...])
    write_label(store, case, prediction_label("m-1"), label)
    out = write_lesion_tables(store, "m-1", case_ids=[case])
    row = out["case_volumes"].iloc[0]
    assert row.total_voxels == sum(counts.values()) and row.geometry_source == "unknown"
    assert row.total_volume_ml is None or np.isnan(row.total_volume_ml)
    assert out["lesions"].volume_mm3.isna().all() and out["lesions"].voxels.sum() == sum(counts.values())


def test_report_says_geometry_unknown(stacks, tmp_path):
    from pipeline.quality.report import build_report

    src, _ = stacks
    store = tmp_path / "store.zarr"
    run_ingest(src, store, LGG, KEY)
    result = build_report(store)
    unknown = [f for f in result.flagged if f["what"] == "geometry unknown"]
    assert len(unknown) == 2 and result.summary["n_geometry_unknown"] == 2
    html = result.html_path.read_text()
    assert "geometry unknown" in html and "cases with geometry unknown" in html
    # no spacing finding for a spacing that was assumed, not measured
    assert not [f for f in result.flagged if "spacing" in f["what"] or "slices" in f["what"]]
    # an empty mask slice is the same file content in every stack: a stack counts as one source, not as its slices
    assert not [f for f in result.flagged if f["what"] == "duplicate content"]
    metas = [read_case_meta(store, c) for c in list_cases(store)]
    assert all(m.label_source is not None and m.label_source.size_bytes > 0 for m in metas)  # a real file: lineage opens it
    json.dumps(result.summary, default=str)
