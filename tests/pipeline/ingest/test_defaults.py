"""Ingest with the default configuration: channels FLAIR, T1, T2 (in that order) on the FLAIR grid,
recorded in the store's manifest; a PD series is not ingested."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pipeline.core.config import DEFAULT_CHANNELS, PipelineConfig, load_config
from pipeline.ingest import run_ingest
from pipeline.io.writers import write_nifti
from pipeline.store import list_cases, open_case, read_case_meta, read_manifest, resolve_channels
from tests.sealed import reveal
from tests.session_factory import blob_image, write_session


def test_default_configuration_channels_reference_and_manifest(tmp_path):
    cfg = load_config()
    assert cfg == PipelineConfig()
    assert cfg.channels == DEFAULT_CHANNELS == ("FLAIR", "T1", "T2")
    assert (cfg.reference_modality, cfg.normalization, cfg.target_spacing) == ("FLAIR", "zscore", None)
    assert (cfg.connectivity, cfg.min_lesion_mm3) == (26, 0.0)

    src = tmp_path / "src" / "patient01"
    write_session(src, "p01_", seed=5)
    write_nifti(blob_image((10, 20, 20), (1.0, 1.0, 1.0), seed=9), src / "p01_PD.nii.gz")
    store = tmp_path / "store.zarr"
    summary = run_ingest(tmp_path / "src", store, cfg, b"defaults-key")
    assert summary.converted == 1
    assert read_manifest(store).channels == ["FLAIR", "T1", "T2"]
    assert resolve_channels(store, None) == ("FLAIR", "T1", "T2")
    (case_id,) = list_cases(store)
    meta = read_case_meta(store, case_id)
    assert meta.channels == ["FLAIR", "T1", "T2"]
    assert [c.modality for c in meta.channel_info] == ["FLAIR", "T1", "T2"]
    # reference FLAIR, no target spacing: the stored grid is the FLAIR's
    flair = sitk.ReadImage(str(src / "p01_FLAIR.nii.gz"))
    np.testing.assert_allclose(meta.geometry.spacing, flair.GetSpacing(), atol=1e-5)
    assert tuple(meta.geometry.shape_zyx) == sitk.GetArrayViewFromImage(flair).shape
    assert open_case(store, case_id)["image"].shape == (3, *meta.geometry.shape_zyx)
    unused = {reveal(u["path"], "defaults-key").rsplit("/", 1)[-1]: u["code"] for u in summary.unused_inputs}  # sealed paths
    assert unused.get("p01_PD.nii.gz") == "modality_not_configured", summary.unused_inputs
