import numpy as np
import pytest

from pipeline.normalize import foreground_mask, intensity_stats, zscore


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
