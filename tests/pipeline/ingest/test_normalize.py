import numpy as np
import pytest

from pipeline.ingest.normalize import foreground_mask, intensity_stats, zscore


def test_foreground_keeps_dark_holes_inside_the_head():
    a = np.zeros((30, 30, 30), np.float32)
    z, y, x = np.indices(a.shape)
    head = (z - 15) ** 2 + (y - 15) ** 2 + (x - 15) ** 2 <= 12**2
    a[head] = 100
    a[13:17, 13:17, 13:17] = 5  # dark ventricle inside
    a += np.random.default_rng(0).normal(0, 2, a.shape).astype(np.float32)
    fg = foreground_mask(a)
    assert fg[15, 15, 15] == 1
    assert abs(int(fg.sum()) - int(head.sum())) < 0.1 * head.sum()


def test_zscore_uses_foreground_statistics():
    a = np.full((10, 10, 10), 3.0, np.float32)
    a[2:8, 2:8, 2:8] = np.linspace(10, 20, 216).reshape(6, 6, 6)
    m = np.zeros_like(a, np.uint8)
    m[2:8, 2:8, 2:8] = 1
    z, stats = zscore(a, m)
    assert z[m > 0].mean() == pytest.approx(0.0, abs=1e-5)
    assert z[m > 0].std() == pytest.approx(1.0, abs=1e-4)
    assert stats["mean"] == pytest.approx(15.0)


def test_constant_image_and_nan_stats():
    assert foreground_mask(np.ones((4, 4, 4))).all()
    s = intensity_stats(np.array([np.nan, 1.0, 3.0]))
    assert s["mean"] == 2.0


def _scipy_fill_holes_3d_then_slices(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    filled = ndimage.binary_fill_holes(mask)
    for z in range(filled.shape[0]):
        filled[z] = ndimage.binary_fill_holes(filled[z])
    return filled


@pytest.mark.parametrize("seed", range(4))
def test_fill_holes_equals_scipy_reference(seed):
    from scipy import ndimage

    from pipeline.ingest.normalize import fill_holes

    rng = np.random.default_rng(seed)
    # a random blobby mask: many cavities, cavities open to one slice's border, tunnels through z
    mask = ndimage.gaussian_filter(rng.random((24, 40, 36)), 1.5) > 0.5
    mask[:, :, 0] = False
    mask[5] = mask[5] | (np.indices(mask.shape[1:])[0] % 7 == 0)
    assert mask.any() and (~mask).any()
    assert np.array_equal(fill_holes(mask), _scipy_fill_holes_3d_then_slices(mask))


def test_otsu_threshold_matches_simpleitk():
    import SimpleITK as sitk

    from pipeline.ingest.normalize import otsu_threshold

    rng = np.random.default_rng(0)
    a = np.concatenate([rng.normal(10, 3, 20000), rng.normal(60, 8, 8000)]).astype(np.float32).reshape(28, 25, 40)
    f = sitk.OtsuThresholdImageFilter()
    f.SetNumberOfHistogramBins(128)
    f.Execute(sitk.GetImageFromArray(a))
    bin_width = (a.max() - a.min()) / 128
    assert abs(otsu_threshold(a, bins=128) - f.GetThreshold()) <= bin_width
