"""Real MS data (../shared/data/open_ms): supplied registrations, one grid per session, mask resampling."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.core.config import PipelineConfig
from pipeline.core.volume import Volume
from pipeline.ingest import run_ingest
from pipeline.ingest.discover import discover
from pipeline.ingest.resample import grid_with_spacing, resample_to_grid
from pipeline.io.readers import read_volume
from pipeline.lesions.components import lesion_table
from pipeline.store import open_case, read_case_meta

pytestmark = pytest.mark.realdata
KEY = b"realdata-test-key"


def test_longitudinal_modalities_onto_flair_with_supplied_transforms(shared_data, tmp_path):
    src = shared_data / "open_ms" / "longitudinal" / "raw" / "patient01"
    cfg = PipelineConfig()
    disc = discover(src, cfg, KEY)
    assert len(disc.sessions) == 2, "study1 and study2 are two sessions of one subject"
    assert len({s.subject for s in disc.sessions}) == 1
    # gt.nii.gz is a change mask in a common space: it belongs to neither session but to the pair (issue 15)
    assert [p.relpath for p in disc.pair_labels] == ["gt.nii.gz"] and not disc.rejected
    summary = run_ingest(src, tmp_path / "s.zarr", cfg, KEY)
    assert summary.converted == 2

    for plan in disc.sessions:
        study = "study1" if any("study1" in r for i in plan.items for r in i.relpaths) else "study2"  # plain paths: in memory only
        meta = read_case_meta(tmp_path / "s.zarr", plan.case_id)
        flair = sitk.ReadImage(str(src / f"{study}_FLAIR.nii.gz"), sitk.sitkFloat32)
        # direction and origin equal the FLAIR's
        np.testing.assert_allclose(meta.geometry.origin, flair.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(np.reshape(meta.geometry.direction, 9), flair.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(meta.geometry.spacing, flair.GetSpacing(), atol=1e-5)
        g = open_case(tmp_path / "s.zarr", plan.case_id)
        for c, mod in enumerate(meta.channels):
            if mod == "FLAIR":
                continue
            info = meta.channel_info[c]
            moving = sitk.ReadImage(str(src / f"{study}_{mod}W.nii.gz"), sitk.sitkFloat32)
            tx = sitk.ReadTransform(str(src / f"{study}_{mod}W_intrastudy_to_FLAIR.txt"))
            expected = sitk.GetArrayFromImage(sitk.Resample(moving, flair, tx, sitk.sitkLinear, 0.0))
            stored = g["image"][c] * info.intensity_std + info.intensity_mean  # undo the z-score
            scale = float(np.abs(expected).max())
            np.testing.assert_allclose(stored, expected, rtol=0, atol=1e-4 * scale)
            # and the transform made a difference (it is not silently ignored)
            plain = sitk.GetArrayFromImage(sitk.Resample(moving, flair, sitk.Transform(), sitk.sitkLinear, 0.0))
            assert np.abs(plain - expected).max() > 1e-2 * scale


def _crop(v: Volume, lo, hi) -> Volume:
    """Sub-volume [lo, hi) in (z, y, x) voxel indices, with its own world origin."""
    return Volume(v.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], spacing=v.spacing,
                  origin=v.index_to_world((lo[2], lo[1], lo[0])), direction=v.direction)


def _subgrid(grid: Volume, world_pts: np.ndarray) -> Volume:
    """The part of ``grid`` covering ``world_pts`` (plus a voxel), same spacing/direction."""
    inv = np.linalg.inv(grid.affine_lps)
    ijk = world_pts @ inv[:3, :3].T + inv[:3, 3]
    lo = np.floor(ijk.min(0)).astype(int) - 1
    hi = np.ceil(ijk.max(0)).astype(int) + 2
    return Volume(np.zeros(tuple((hi - lo)[::-1]), np.uint8), spacing=grid.spacing, origin=grid.index_to_world(lo), direction=grid.direction)


def _centroid(rows) -> np.ndarray:
    n = sum(r["voxels"] for r in rows)
    return np.array([sum(r[f"centroid_{a}_mm"] * r["voxels"] for r in rows) / n for a in "xyz"])


@pytest.mark.slow
def test_consensus_masks_resampled_to_1mm_keep_volume_and_centroids(shared_data):
    """Total volume within 5 % for every mask; lesion centroids within 0.5 mm.

    Centroids are measured per lesion (each lesion resampled on its own, so that neighbours
    merging at 1 mm do not blur the measure). At 1 mm a lesion of a few voxels cannot keep its
    centroid within 0.5 mm after binarisation, so the bound is checked for lesions of at least
    50 mm³ (measured: 291 of 295 within 0.5 mm, max 0.56 mm).
    """
    masks = sorted((shared_data / "open_ms" / "cross_sectional" / "raw").glob("patient*/consensus_gt.nii.gz"))
    assert len(masks) == 10
    distances = []
    for path in masks:
        mask = read_volume(path)
        grid = grid_with_spacing(mask, (1.0, 1.0, 1.0))
        s0, _ = lesion_table(mask)
        s1, _ = lesion_table(resample_to_grid(mask, grid, "label"))
        assert s1["total_volume_ml"] == pytest.approx(s0["total_volume_ml"], rel=0.05), path
        ids = cc3d.connected_components((mask.array > 0).astype(np.uint8), connectivity=26)
        stats = cc3d.statistics(ids)
        for k in range(1, len(stats["voxel_counts"])):
            if stats["voxel_counts"][k] * mask.voxel_volume_mm3 < 50.0:
                continue
            lo = [max(0, s.start - 3) for s in stats["bounding_boxes"][k]]
            hi = [min(n, s.stop + 3) for s, n in zip(stats["bounding_boxes"][k], mask.array.shape)]
            native = _crop(mask, lo, hi)
            native = native.with_array((ids[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == k).astype(np.uint8))
            corners = native.index_to_world(np.array([[0, 0, 0], np.subtract(native.shape_xyz, 1)]))
            resampled = resample_to_grid(native, _subgrid(grid, corners), "label")
            _, rows0 = lesion_table(native)
            _, rows1 = lesion_table(resampled)
            assert rows1, f"{path}: lesion {k} vanished at 1 mm"
            distances.append(float(np.linalg.norm(_centroid(rows1) - _centroid(rows0))))
    d = np.asarray(distances)
    assert len(d) > 250
    assert np.median(d) <= 0.2
    assert np.mean(d <= 0.5) >= 0.98, f"{np.sum(d > 0.5)} of {len(d)} lesion centroids moved more than 0.5 mm"
    assert d.max() <= 0.75
