"""The data-quality report on a small synthetic store with planted faults.

Planted: sub-05 has a 5 mm FLAIR among 1 mm ones, sub-06 has no FLAIR, sub-07 is noisy,
sub-08's label came on another grid, one input was rejected. The report must flag exactly
those, and render in headless Chromium (when installed) without errors.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.volume import Volume
from pipeline.store import append_catalog, geometry_of, init_store, write_case
from storage_schemas.models import CaseMeta, CatalogRow, ChannelInfo, ReasonCode, SourceFile
from tests.conftest import REPO

CHANNELS = ("FLAIR", "T1", "T2")
GRID = (24, 40, 40)  # stored (Z, Y, X), 4 mm voxels
NATIVE_SHAPE = (160, 240, 240)
CONTRAST = {"FLAIR": (90.0, 110.0, 70.0), "T1": (120.0, 80.0, -40.0), "T2": (70.0, 95.0, 50.0)}  # WM, GM, lesion delta


# ----------------------------------------------------------------------------- builder
def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def synth_case(seed: int, noise: float = 2.0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Raw channels of a synthetic head (ellipsoid, two tissues, two lesions), foreground, label."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: GRID[0], : GRID[1], : GRID[2]].astype(np.float64)
    rz, ry, rx = (np.array([10.0, 17.0, 16.0]) * rng.uniform(0.95, 1.05, 3))
    r = ((z - 12) / rz) ** 2 + ((y - 20) / ry) ** 2 + ((x - 20) / rx) ** 2
    fg = r < 1.0
    label = np.zeros(GRID, np.uint8)
    for cz, cy, cx in ((12, 16, 23), (11, 25, 16)):
        label[((z - cz) ** 2 + (y - cy + rng.integers(-1, 2)) ** 2 + (x - cx) ** 2) <= 4] = 1
    bias = 1.0 + 0.04 * (x / GRID[2] - 0.5)
    raw = {}
    for ch, (wm, gm, les) in CONTRAST.items():
        img = np.where(r < 0.55, wm, gm) * rng.uniform(0.97, 1.03)
        img = np.where(fg, img, 0.0) + les * label
        img = img * bias + rng.normal(0.0, noise, GRID)
        raw[ch] = np.abs(img).astype(np.float32)  # magnitude images
    return raw, fg.astype(np.uint8), label


def zscore(a: np.ndarray, fg: np.ndarray) -> np.ndarray:
    v = a[fg > 0]
    return ((a - v.mean()) / v.std()).astype(np.float32)


def add_case(root: Path, case_id: str, seed: int, *, noise: float = 2.0, flair_spacing=(1.0, 1.0, 1.0), missing: tuple[str, ...] = (),
             mask_shape: tuple[int, int, int] | None = None, label_rejected: str | None = None) -> list[CatalogRow]:
    """Write one case; ``label_rejected`` mimics the ingest refusing the label (stored without one)."""
    raw, fg, label = synth_case(seed, noise)
    vol = Volume(np.zeros(GRID, np.float32), spacing=(4.0, 4.0, 4.0), origin=(-80.0, -80.0, -48.0))
    infos, images, rows = [], [], []
    sub, ses = case_id, "ses-01"
    for ch in CHANNELS:
        spacing = flair_spacing if ch == "FLAIR" else (1.0, 1.0, 1.0)
        shape = tuple(int(round(n * 1.0 / s)) for n, s in zip(NATIVE_SHAPE, spacing[::-1]))
        present = ch not in missing
        a = raw[ch]
        v = a[fg > 0]
        src = SourceFile(relpath=f"raw/{case_id}/{ch.lower()}.nii.gz", sha256=_sha(f"{case_id}/{ch}"), size_bytes=1000)
        infos.append(ChannelInfo(
            modality=ch, source_format="nifti", source_series=ch.lower(), native_spacing=spacing, native_shape_zyx=shape,
            native_orientation="LPS", sources=[src] if present else [],
            intensity_mean=float(v.mean()), intensity_std=float(v.std()),
            intensity_p01=float(np.percentile(v, 1)), intensity_p99=float(np.percentile(v, 99)), present=present,
        ))
        images.append(zscore(a, fg) if present else np.zeros(GRID, np.float32))
        if present:
            rows.append(_row(case_id, ch, "converted", src.relpath, src.sha256, shape, spacing))
    lab_src = SourceFile(relpath=f"raw/{case_id}/lesion_mask.nii.gz", sha256=_sha(f"{case_id}/mask"), size_bytes=100)
    flair = infos[0]  # the label is delivered on the FLAIR (reference) grid unless mask_shape says otherwise
    if label_rejected:
        rows.append(_row(case_id, "MASK", "rejected", lab_src.relpath, mask_shape, flair.native_spacing, reason=label_rejected,
                         reason_code=ReasonCode.LABEL_OFF_GRID, label_on_grid=False))
        label = None
    else:
        rows.append(_row(case_id, "MASK", "converted", lab_src.relpath, lab_src.sha256, mask_shape or flair.native_shape_zyx, flair.native_spacing,
                         label_on_grid=True))
    meta = CaseMeta(
        case_id=case_id, subject=sub, session=ses, channels=list(CHANNELS), channel_info=infos, has_label=label is not None,
        label_source=None if label is None else lab_src,
        geometry=geometry_of(vol), source_fingerprint=_sha(case_id), config_hash="cfg0123456789abc", pipeline_version="0.1.0",
    )
    write_case(root, meta, np.stack(images), fg, label)
    return rows


def _row(case_id, modality, status, relpath, sha=None, shape=None, spacing=None, reason=None, **fields) -> CatalogRow:
    """A catalog row as the ingest writes it (``shape`` z, y, x; ``spacing`` x, y, z)."""
    grid = {}
    if shape:
        grid.update(shape_z=shape[0], shape_y=shape[1], shape_x=shape[2], shape_zyx="x".join(map(str, shape)), orientation="LPS")
    if spacing:
        grid.update(spacing_x_mm=spacing[0], spacing_y_mm=spacing[1], spacing_z_mm=spacing[2], spacing_mm="x".join(map(str, spacing)))
    return CatalogRow(
        case_id=case_id, subject=case_id, session="ses-01" if case_id else None, modality=modality, status=status, reason=reason,
        source_format="nifti", source_relpath=relpath, source_sha256=sha, **grid, **fields,
        pipeline_version="0.1.0", config_hash="cfg0123456789abc", run_id="run-test",
    )


def build_store(root: Path) -> Path:
    init_store(root)
    rows: list[CatalogRow] = []
    for i in range(1, 5):
        rows += add_case(root, f"sub-0{i}", seed=i)
    rows += add_case(root, "sub-05", seed=5, flair_spacing=(1.0, 1.0, 5.0))  # thick slices
    rows += add_case(root, "sub-06", seed=6, missing=("FLAIR",))  # missing FLAIR
    rows += add_case(root, "sub-07", seed=7, noise=25.0)  # noisy
    rows += add_case(root, "sub-08", seed=8, label_rejected="label grid does not match any image of the session: label shape "
                     "(256, 256, 160), spacing (1.0, 1.0, 1.0); FLAIR shape (240, 240, 160), spacing (1.0, 1.0, 1.0)")  # label off-grid
    rows.append(_row(None, None, "rejected", "raw/sub-09/broken.dcm", reason="unreadable DICOM: truncated pixel data",
                     reason_code=ReasonCode.TRUNCATED))
    rows.append(_row("sub-01", None, "unused", "raw/sub-01/localizer", reason="localizer (3 slices)", reason_code=ReasonCode.LOCALIZER))
    append_catalog(root, rows)
    return root


EXPECTED = {
    ("sub-05", "thick slices"),
    ("sub-06", "missing FLAIR"),
    ("sub-07", "noisy"),
    ("sub-08", "label off-grid"),
    (None, "rejected input"),
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from pipeline.quality.report import build_report

    root = build_store(tmp_path_factory.mktemp("store") / "store")
    return build_report(root)


# ----------------------------------------------------------------------------- tests
def test_planted_faults_flagged_and_nothing_else(report):
    got = {(f["case_id"], f["what"]) for f in report.flagged}
    assert got == EXPECTED, report.flagged
    by = {(f["case_id"], f["what"]): f["detail"] for f in report.flagged}
    assert "5 mm" in by[("sub-05", "thick slices")] and "FLAIR" in by[("sub-05", "thick slices")]
    assert "snr_noise" in by[("sub-07", "noisy")]
    assert "unreadable DICOM" in by[(None, "rejected input")]


def test_outputs_written(report):
    import pandas as pd

    q = report.html_path.parent
    assert report.html_path == q / "report.html" and report.html_path.exists()
    for name in ("metrics.parquet", "summary.json", "expectations.json"):
        assert (q / name).exists(), name
    m = pd.read_parquet(q / "metrics.parquet")
    assert len(m) == 8 * 3
    assert not m[(m.case_id == "sub-06") & (m.modality == "FLAIR")]["present"].any()
    assert {"snr", "snr_noise", "cnr", "efc", "fber", "bias_index", "foreground_fraction", "p01", "p50", "p99", "n_nonfinite"} <= set(m.columns)


def test_summary_counts(report):
    s = report.summary
    assert s["n_cases"] == 8
    assert s["n_rejected"] == 2 and s["rejected_by_reason"]["unreadable DICOM: truncated pixel data"] == 1
    assert s["rejected_by_code"] == {"label_off_grid": 1, "truncated": 1} and s["unused_by_code"] == {"localizer": 1}
    assert s["n_unused"] == 1 and s["unused"][0]["reason"] == "localizer (3 slices)"
    assert s["expectations"]["failed"] >= 4
    assert s["outlier_method"]["FLAIR"].startswith("tukey")


def test_markdown(report):
    from pipeline.quality.report import report_markdown

    md = report_markdown(report.summary)
    assert "| cases ingested | 8 |" in md and "thick slices" in md and "noisy" in md
    assert "## Rejected inputs by reason code" in md and "| truncated | 1 |" in md


def test_html_self_contained(report):
    html = report.html_path.read_text()
    for sid in ("summary", "expectations", "metrics", "thumbnails", "lineage"):
        assert f'id="{sid}"' in html
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I), "external URL in report"
    assert "<script" not in html
    assert html.count("data:image/png;base64,") == 8
    assert "label grid does not match" in html  # the rejected label is listed with its reason
    assert "sub-07" in html and "cfg0123456789abc" in html and _sha("sub-01/FLAIR")[:12] in html
    # lineage: each channel's file count and digest; the (sealed) paths are for `lesionflow lineage`, not listed per file
    assert "FLAIR: 1 file(s)" in html and "lesionflow lineage" in html
    assert "raw/sub-01/flair.nii.gz" not in html.split('id="lineage"')[1]


def _browser() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name) or (name if os.path.isabs(name) and os.access(name, os.X_OK) else None)
        if path:
            return path
    return None


def test_renders_in_headless_chromium(report, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no headless browser (chromium) installed; `apt-get install -y chromium` to run this test")
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]
    url = report.html_path.resolve().as_uri()
    dom = subprocess.run([*base, "--enable-logging=stderr", "--v=0", "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for sid in ("summary", "expectations", "metrics", "thumbnails", "lineage"):
        assert f'id="{sid}"' in dom.stdout
    errors = [line for line in dom.stderr.splitlines() if "Uncaught" in line or ("CONSOLE" in line and "error" in line.lower())]
    assert not errors, errors
    out = REPO / "test-artifacts" / "report.png"
    out.parent.mkdir(exist_ok=True)
    out.unlink(missing_ok=True)
    shot = subprocess.run([*base, "--hide-scrollbars", f"--screenshot={out}", "--window-size=1280,2000", url],
                          capture_output=True, text=True, timeout=60)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert out.exists() and out.stat().st_size > 10_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
