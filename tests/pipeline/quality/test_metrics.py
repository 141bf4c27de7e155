"""Image-quality metrics, cohort outliers and the expectation suites."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.volume import Volume
from pipeline.quality import metrics as q
from pipeline.store import geometry_of, init_store, write_case
from storage_schemas.models import CaseMeta, ChannelInfo, SourceFile
from tests.conftest import REPO


# ----------------------------------------------------------------------------- helpers
def phantom(noise: float = 2.0, seed: int = 0, shape=(24, 40, 40), bias: float = 0.0):
    """Raw magnitude phantom: ellipsoid head with two tissues and a lesion; (image, fg, label)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(float)
    r = ((z - shape[0] / 2) / (shape[0] * 0.4)) ** 2 + ((y - shape[1] / 2) / (shape[1] * 0.42)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.4)) ** 2
    fg = r < 1
    label = (((z - shape[0] / 2) ** 2 + (y - shape[1] / 2 + 4) ** 2 + (x - shape[2] / 2) ** 2) <= 6).astype(np.uint8)
    img = np.where(r < 0.5, 120.0, 90.0) * fg + 60.0 * label
    img = img * (1.0 + bias * (x / shape[2] - 0.5))
    img = np.abs(img + rng.normal(0, noise, shape)).astype(np.float32)
    return img, fg, label


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_case(root: Path, case_id: str, *, spacing=(1.0, 1.0, 1.0), orientation="LPS", sha_key: str | None = None,
              label_value: int = 1, missing=(), stats_nan: bool = False, native_shape=(160, 240, 240)) -> None:
    img, fg, label = phantom(seed=int(_sha(case_id)[:6], 16), shape=(8, 16, 16))
    chans = ("FLAIR", "T1", "T2")
    infos = []
    for ch in chans:
        present = ch not in missing
        src = SourceFile(relpath=f"{case_id}/{ch}.nii", sha256=_sha(f"{sha_key or case_id}/{ch}"), size_bytes=10)
        infos.append(ChannelInfo(
            modality=ch, source_format="nifti", source_series=ch, native_spacing=spacing if ch == "FLAIR" else (1.0, 1.0, 1.0),
            native_shape_zyx=native_shape, native_orientation=orientation if ch == "FLAIR" else "LPS", sources=[src] if present else [],
            intensity_mean=float("nan") if stats_nan else 100.0, intensity_std=20.0, intensity_p01=10.0, intensity_p99=150.0, present=present,
        ))
    meta = CaseMeta(case_id=case_id, subject=case_id, session="ses-01", channels=list(chans), channel_info=infos, has_label=True,
                    geometry=geometry_of(Volume(img)), source_fingerprint="f", config_hash="c", pipeline_version="0.1.0")
    z = (img - img[fg].mean()) / img[fg].std()
    write_case(root, meta, np.stack([z, z, z]).astype(np.float32), fg.astype(np.uint8), label * label_value)


# ----------------------------------------------------------------------------- metrics
def test_volume_metrics_keys_and_noise_order():
    clean, fg, lab = phantom(noise=2.0)
    noisy, _, _ = phantom(noise=20.0)
    a, b = q.volume_metrics(clean, fg, (1, 1, 1), lab), q.volume_metrics(noisy, fg, (1, 1, 1), lab)
    assert list(a) == list(q.METRIC_NAMES)
    assert a["snr_noise"] > 3 * b["snr_noise"]
    assert a["cnr"] > b["cnr"] > 0
    assert a["efc"] < b["efc"]
    assert a["fber"] > b["fber"]
    assert 0 < a["foreground_fraction"] < 1 and a["p01"] < a["p50"] < a["p99"]
    assert a["n_nonfinite"] == 0


def test_noise_metrics_invariant_to_zscore():
    img, fg, lab = phantom(noise=4.0)
    z = (img - img[fg].mean()) / img[fg].std()
    raw, norm = q.volume_metrics(img, fg, label=lab), q.volume_metrics(z, fg, label=lab)
    for k in ("snr_noise", "cnr", "bias_index", "foreground_fraction"):
        assert raw[k] == pytest.approx(norm[k], rel=1e-3), k
    assert abs(norm["snr"]) < 1e-3  # why case_metrics takes snr from the ingest's raw stats


def test_noise_sigma_recovers_known_sigma():
    img, fg, _ = phantom(noise=0.0)
    noisy = img + np.random.default_rng(1).normal(0, 5.0, img.shape)
    assert q.noise_sigma(noisy, fg) == pytest.approx(5.0, rel=0.15)


def test_bias_index_detects_inhomogeneity():
    flat, fg, _ = phantom(noise=2.0, shape=(32, 64, 64))
    biased, _, _ = phantom(noise=2.0, shape=(32, 64, 64), bias=0.8)
    assert q.bias_index(biased, fg) > 1.5 * q.bias_index(flat, fg)


def test_otsu_foreground_and_nonfinite():
    img, fg, _ = phantom(noise=2.0)
    est = q.otsu_foreground(img)
    assert (est == fg).mean() > 0.97
    img = img.copy()
    img[0, 0, :5] = np.nan
    img[1, 1, 1] = np.inf
    m = q.volume_metrics(img)  # foreground from Otsu
    assert m["n_nonfinite"] == 6
    assert all(np.isfinite(m[k]) for k in ("snr", "snr_noise", "efc", "fber", "p50"))
    assert np.isnan(m["cnr"])  # no label


def test_png_roundtrip():
    import zlib

    from pipeline.quality.report import png_bytes

    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    data = png_bytes(rgb)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(5, 1 + 7 * 3)
    assert (raw[:, 0] == 0).all() and (raw[:, 1:].reshape(5, 7, 3) == rgb).all()


# ----------------------------------------------------------------------------- cohort
def _cohort(values, metric="snr_noise", modality="FLAIR"):
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(len(values))], "modality": modality, "present": True, metric: values})


def test_no_outliers_below_four_cases():
    out, methods = q.cohort_outliers(_cohort([10.0, 10.5, 3.0]))
    assert out == [] and methods["FLAIR/snr_noise"]["method"].startswith("none")


def test_absolute_noise_floor_applies_to_any_cohort():
    out, _ = q.cohort_outliers(_cohort([10.0, 10.5, 1.0]))
    assert [(o["case_id"], o["flag"], o["method"]) for o in out] == [("c2", "noisy", "absolute (< 2)")]


def test_tukey_small_cohort_and_direction():
    out, methods = q.cohort_outliers(_cohort([10.0, 10.4, 9.8, 10.1, 10.3, 2.0, 30.0]))
    assert methods["FLAIR/snr_noise"]["method"] == "tukey(k=3)"
    assert [(o["case_id"], o["flag"]) for o in out] == [("c5", "noisy")]  # high SNR is not a fault


def test_robust_z_large_cohort():
    vals = list(np.linspace(9.5, 10.5, 15)) + [4.0]
    out, methods = q.cohort_outliers(_cohort(vals))
    assert methods["FLAIR/snr_noise"]["method"].startswith("robust_z")
    assert [o["case_id"] for o in out] == ["c15"]


def test_near_identical_cohort_not_flagged():
    out, _ = q.cohort_outliers(_cohort([10.0, 10.0, 10.0, 10.0, 10.02], metric="foreground_fraction"))
    assert out == []


def test_implied_outliers_fold_into_noisy():
    df = pd.DataFrame({"case_id": [f"c{i}" for i in range(6)], "modality": "T2", "present": True,
                       "snr_noise": [10, 10.2, 9.9, 10.1, 10.0, 2.0], "efc": [0.5, 0.51, 0.49, 0.5, 0.5, 0.9],
                       "n_nonfinite": [0, 0, 0, 3, 0, 0]})
    flags = q.flags_from_outliers(q.cohort_outliers(df)[0])
    assert {(f["case_id"], f["what"]) for f in flags} == {("c5", "noisy"), ("c3", "non-finite voxels")}
    assert "efc" in next(f["detail"] for f in flags if f["what"] == "noisy")


# ----------------------------------------------------------------------------- store
@pytest.fixture(scope="module")
def odd_store(tmp_path_factory):
    root = init_store(tmp_path_factory.mktemp("q") / "store")
    make_case(root, "sub-a")
    make_case(root, "sub-b", sha_key="sub-a")  # same file content as sub-a
    make_case(root, "sub-c", orientation="XYZ", label_value=2)
    make_case(root, "sub-d", spacing=(0.1, 0.1, 9.0), stats_nan=True, missing=("T2",))
    return root


def test_case_metrics(odd_store):
    rows = q.case_metrics(odd_store, "sub-d")
    assert [r["modality"] for r in rows] == ["FLAIR", "T1", "T2"]
    assert [r["present"] for r in rows] == [True, True, False]
    assert rows[0]["snr_source"] == "array"  # raw stats are NaN -> computed on the array
    assert q.case_metrics(odd_store, "sub-a")[1]["snr"] == pytest.approx(5.0)  # 100 / 20 from ingest stats
    assert all(np.isnan(rows[2][k]) for k in q.METRIC_NAMES)


def test_expectations_on_odd_store(odd_store):
    from pipeline.quality.expectations import run_expectations

    out = run_expectations(odd_store)
    flags = {(f["case_id"], f["what"]) for f in out.flagged}
    assert flags == {
        ("sub-a", "duplicate content"), ("sub-b", "duplicate content"),
        ("sub-c", "invalid orientation"), ("sub-c", "label not binary"),
        ("sub-d", "spacing out of range"), ("sub-d", "non-finite intensity stats"), ("sub-d", "missing T2"),
        ("sub-d", "thick slices"), ("sub-d", "coverage differs"), ("sub-d", "implausible field of view"),
    }, out.flagged
    by_id = {r["id"]: r for r in out.results}
    assert by_id["label_binary"]["unexpected"][0]["value"] is False
    assert "label values {0,2}" in next(f["detail"] for f in out.flagged if f["what"] == "label not binary")
    assert by_id["orientation_valid"]["unexpected_cases"] == ["sub-c"]
    assert by_id["store_not_empty"]["success"] and by_id["reason_recorded"]["success"]
    assert all(r["error"] is None for r in out.results)
    # saved with the dataset, strict JSON (no NaN)
    saved = json.loads(out.path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert out.path == odd_store / "quality" / "expectations.json"
    assert len(saved["results"]) == len(out.results) and saved["statistics"]["unsuccessful"] >= 5


def test_label_grid_from_catalog_column(odd_store):
    from pipeline.quality.expectations import build_tables, flags_from_results, validate_tables
    from storage_schemas.expectations import build_suites

    cat = pd.DataFrame({"case_id": ["sub-a", "sub-b", "sub-b"], "modality": ["MASK", "MASK", "FLAIR"], "status": "converted",
                        "reason": None, "reason_code": None, "source_relpath": ["x", "y", "z"], "label_on_grid": [True, False, None]})
    tables = build_tables(odd_store, catalog=cat)
    cases = tables["cases"].set_index("case_id")
    assert cases.loc["sub-a", "label_grid_ok"] is True and cases.loc["sub-b", "label_grid_ok"] is False
    assert cases.loc["sub-c", "label_grid_ok"] is None  # unknown: not a failure
    specs = [s for s in build_suites(("FLAIR", "T1", "T2")) if s.name == "case_completeness"]
    flags = flags_from_results(validate_tables(tables, specs), tables)
    assert ("sub-b", "label off-grid") in {(f["case_id"], f["what"]) for f in flags}


def test_label_checks_from_catalog_columns_not_prose(odd_store):
    """The ingest's decisions come from reason_code and label_on_grid; the words of a reason do not matter."""
    from pipeline.quality.expectations import build_tables, flags_from_results, validate_tables
    from storage_schemas.expectations import build_suites

    row = dict(modality="MASK", reason="(words nobody parses)", reason_code=None, label_on_grid=None)
    cat = pd.DataFrame([
        {**row, "case_id": "sub-a", "status": "converted", "source_relpath": "a/m", "label_on_grid": True, "reason": None},
        # labels the ingest rejected (stored without them): named by the label checks, not as plain rejections
        {**row, "case_id": "sub-c", "status": "rejected", "source_relpath": "c/m", "reason_code": "label_not_binary", "label_on_grid": True},
        {**row, "case_id": "sub-d", "status": "rejected", "source_relpath": "d/m", "reason_code": "label_off_grid", "label_on_grid": False},
        # a rejection the reason's words call a grid problem, whose code says otherwise: a plain rejected input
        {**row, "case_id": "sub-b", "status": "rejected", "source_relpath": "b/m", "reason": "label grid does not match", "reason_code": "truncated"},
    ])
    tables = build_tables(odd_store, catalog=cat)
    cases = tables["cases"].set_index("case_id")
    assert cases.loc["sub-a", "label_grid_ok"] is True and cases.loc["sub-b", "label_grid_ok"] is None
    assert cases.loc["sub-d", "label_grid_ok"] is False and cases.loc["sub-d", "label_grid_source"] == "rejected"
    assert cases.loc["sub-c", "label_values"] == "0,2"  # the stored label wins over the catalog
    specs = [s for s in build_suites(("FLAIR", "T1", "T2")) if s.name in ("case_completeness", "inputs")]
    flags = {(f["case_id"], f["what"]) for f in flags_from_results(validate_tables(tables, specs), tables)}
    assert {("sub-d", "label off-grid"), ("sub-c", "label not binary"), ("sub-b", "rejected input")} <= flags
    assert ("sub-d", "rejected input") not in flags and ("sub-c", "rejected input") not in flags
    assert ("sub-b", "label off-grid") not in flags


def test_expectations_check_the_stores_channels_by_default(odd_store):
    from pipeline.quality.expectations import build_tables, run_expectations
    from pipeline.store import StoreError

    tables = build_tables(odd_store)  # odd_store records no channels: those of its first case
    assert {"has_FLAIR", "has_T1", "has_T2"} <= set(tables["cases"].columns)
    assert set(build_tables(odd_store, ["FLAIR"])["cases"].columns) & {"has_T1", "has_T2"} == set()
    with pytest.raises(StoreError, match=r"requested \['PD'\], the store has \['FLAIR', 'T1', 'T2'\]"):
        run_expectations(odd_store, ["PD"], save=False)


def test_empty_store(tmp_path):
    from pipeline.quality.expectations import run_expectations

    out = run_expectations(init_store(tmp_path / "empty"))
    assert [f["what"] for f in out.flagged] == ["empty store"]
    assert all(r["error"] is None for r in out.results)


def test_pipeline_does_not_import_prefect():
    code = "import sys, pipeline.quality.metrics, pipeline.quality.expectations, pipeline.quality.report; assert 'prefect' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_per_modality_spacing_range(odd_store):
    from pipeline.quality.expectations import run_expectations

    out = run_expectations(odd_store, spacing_range_mm={"FLAIR": (0.05, 10.0)}, save=False)
    whats = {(f["case_id"], f["what"]) for f in out.flagged}
    assert ("sub-d", "spacing out of range") not in whats and ("sub-d", "thick slices") in whats
    assert out.path is None
