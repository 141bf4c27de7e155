import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.core.volume import Volume
from pipeline.ingest.resample import grid_with_spacing, resample_to_grid
from pipeline.lesions.components import lesion_table


def ball(shape_zyx, centre_zyx, radius_vox):
    z, y, x = np.indices(shape_zyx)
    return ((z - centre_zyx[0]) ** 2 + (y - centre_zyx[1]) ** 2 + (x - centre_zyx[2]) ** 2 <= radius_vox**2).astype(np.uint8)


def test_grid_with_spacing_keeps_field_of_view():
    v = Volume(np.zeros((10, 20, 30), np.float32), spacing=(0.5, 0.5, 4.0), origin=(-10, 5, 20))
    g = grid_with_spacing(v, (1.0, 1.0, 1.0))
    assert g.shape_xyz == (15, 10, 40)
    # outer corner of the first voxel is unchanged
    corner_old = np.asarray(v.origin) - np.asarray(v.spacing) / 2
    corner_new = np.asarray(g.origin) - np.asarray(g.spacing) / 2
    np.testing.assert_allclose(corner_old, corner_new)


def test_identity_resample_is_exact_copy():
    a = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    v = Volume(a, spacing=(1, 2, 3), origin=(4, 5, 6))
    out = resample_to_grid(v, v, "linear")
    np.testing.assert_array_equal(out.array, a)


def test_linear_resample_matches_independent_sitk_call():
    rng = np.random.default_rng(1)
    a = rng.random((12, 14, 16)).astype(np.float32)
    src = Volume(a, spacing=(1.2, 1.1, 3.0), origin=(1, 2, 3))
    tgt = Volume(np.zeros((20, 18, 17), np.uint8), spacing=(1.0, 1.0, 1.5), origin=(2, 2.5, 4))
    out = resample_to_grid(src, tgt, "linear")
    ref = sitk.Resample(src.to_sitk(), tgt.to_sitk(), sitk.Transform(), sitk.sitkLinear, 0.0)
    np.testing.assert_allclose(out.array, sitk.GetArrayFromImage(ref), rtol=0, atol=1e-6)
    assert out.same_grid(tgt)


def test_label_resampling_keeps_volume_and_centroid():
    m = ball((24, 64, 64), (12, 30, 33), 9)
    src = Volume(m, spacing=(0.5, 0.5, 2.0), origin=(0, 0, 0))
    out = resample_to_grid(src, grid_with_spacing(src, (1.0, 1.0, 1.0)), "label")
    assert set(np.unique(out.array)) <= {0, 1}
    s0, r0 = lesion_table(src)
    s1, r1 = lesion_table(out)
    assert s1["total_volume_ml"] == pytest.approx(s0["total_volume_ml"], rel=0.05)
    for axis in "xyz":
        assert r1[0][f"centroid_{axis}_mm"] == pytest.approx(r0[0][f"centroid_{axis}_mm"], abs=0.5)


def test_multilabel_one_hot():
    m = np.zeros((10, 10, 10), np.uint8)
    m[2:5, 2:5, 2:5] = 1
    m[6:9, 6:9, 6:9] = 2
    out = resample_to_grid(Volume(m), Volume(np.zeros((10, 10, 10), np.uint8), origin=(0.2, 0, 0)), "label")
    assert set(np.unique(out.array)) == {0, 1, 2}


def test_transform_is_applied_in_reference_to_moving_direction():
    a = np.zeros((20, 20, 20), np.float32)
    a[10, 10, 12] = 1.0  # x = 12
    v = Volume(a)
    tx = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))  # reference point p samples moving at p + 2 mm in x
    out = resample_to_grid(v, v.with_array(np.zeros_like(a)), "linear", transform=tx)
    assert out.array[10, 10, 10] == pytest.approx(1.0)
