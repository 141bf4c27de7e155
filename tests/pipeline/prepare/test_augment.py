"""pipeline.prepare.augment: drawn parameters, MONAI's transforms applied from them, label/image alignment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.prepare.augment import (
    BankConfig,
    SampleParams,
    SpatialAugmentConfig,
    augment_patch,
    crop,
    draw_params,
    int16_scale,
    quantize,
    source_block,
)


def _ellipsoid_case(shape=(50, 56, 60), centre=(24.3, 29.6, 27.2), radii=(4.0, 3.0, 5.0)):
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    label = ((((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2) <= 1).astype(np.uint8)
    noise = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    return np.stack([3.0 * label.astype(np.float32), noise]), label


@pytest.mark.parametrize("params", [
    SampleParams(rotation_rad=(0.3, -0.4, 0.5)),
    SampleParams(scale=(1.3, 1.3, 1.3)),
    SampleParams(rotation_rad=(-0.5, 0.2, 0.45), scale=(0.75, 0.75, 0.75)),
    SampleParams(),
], ids=["rotation", "scaling", "both", "crop"])
@pytest.mark.parametrize("patch", [(24, 24, 24), (23, 25, 24)], ids=["even", "mixed"])
def test_lesion_centroid_moves_exactly_as_the_recorded_matrix_says(params, patch):
    image, label = _ellipsoid_case()
    source = np.array(ndimage.center_of_mass(label))
    out, lab, matrix = augment_patch(image, label, (24, 30, 27), patch, params)
    assert out.shape == (2, *patch) and lab.shape == patch and lab.dtype == np.uint8
    assert set(np.unique(lab)) <= {0, 1}  # interpolated indicator thresholded at 0.5: labels stay labels
    for moved in (ndimage.center_of_mass(lab), ndimage.center_of_mass(out[0])):  # label, and the image's lesion channel
        back = (matrix @ np.r_[moved, 1.0])[:3]
        assert np.abs(back - source).max() < 0.3, (back, source)
    if not params.spatial:  # a plain crop is exactly the crop, and the matrix a translation
        np.testing.assert_array_equal(out, crop(image, (24, 30, 27), patch))
        np.testing.assert_array_equal(matrix[:3, :3], np.eye(3))


def test_scaling_changes_the_lesion_size_by_the_scale_cubed():
    image, label = _ellipsoid_case()
    _, lab, matrix = augment_patch(image, label, (24, 30, 27), (24, 24, 24), SampleParams(scale=(0.8, 0.8, 0.8)))
    assert abs(np.linalg.det(matrix[:3, :3]) - 0.8**3) < 1e-6  # MONAI builds it in float32
    assert abs(lab.sum() / label.sum() - 1 / 0.8**3) < 0.1


def test_cropping_the_source_block_first_gives_the_same_sample():
    """What a fresh sample does: read only source_block() around the centre, then augment around its middle."""
    image, label = _ellipsoid_case()
    params = SampleParams(rotation_rad=(0.2, 0.1, -0.3), scale=(1.2, 1.2, 1.2), lowres_zoom=(0.6, None))
    whole = augment_patch(image, label, (24, 30, 27), (20, 20, 20), params)
    block = source_block((20, 20, 20), params)
    part = augment_patch(crop(image, (24, 30, 27), block), crop(label, (24, 30, 27), block), tuple(b // 2 for b in block), (20, 20, 20), params)
    np.testing.assert_array_equal(whole[0], part[0])
    np.testing.assert_array_equal(whole[1], part[1])


def test_a_block_without_lesion_resamples_the_image_alone_to_the_same_bytes():
    """Far from the lesion the label channel is left out of the resampling: the image is the same bytes
    as when it is resampled with a lesion-bearing label, and the label is empty."""
    image, label = _ellipsoid_case()
    params = SampleParams(rotation_rad=(0.3, -0.2, 0.4), scale=(1.1, 1.1, 1.1))
    far = np.zeros_like(label)
    far[40:44, 48:52, 50:54] = 1  # outside the block read around (12, 14, 13) for a 12-voxel patch
    near = far.copy()
    near[10:14, 12:16, 11:15] = 1  # inside it
    out_far, lab_far, m_far = augment_patch(image, far, (12, 14, 13), (12, 12, 12), params)
    out_near, lab_near, m_near = augment_patch(image, near, (12, 14, 13), (12, 12, 12), params)
    out_none, lab_none, _ = augment_patch(image, None, (12, 14, 13), (12, 12, 12), params)
    assert out_far.tobytes() == out_near.tobytes() == out_none.tobytes() and np.array_equal(m_far, m_near)
    assert lab_far.dtype == np.uint8 and lab_far.shape == (12, 12, 12) and not lab_far.any() and lab_near.any() and lab_none is None


def test_low_resolution_touches_only_its_channels_and_keeps_the_range():
    image, label = _ellipsoid_case()
    out, _, _ = augment_patch(image, label, (24, 30, 27), (20, 20, 20), SampleParams(lowres_zoom=(None, 0.5)))
    plain = crop(image, (24, 30, 27), (20, 20, 20))
    np.testing.assert_array_equal(out[0], plain[0])
    assert not np.array_equal(out[1], plain[1])
    assert out[1].min() >= plain[1].min() - 1e-5 and out[1].max() <= plain[1].max() + 1e-5


def test_draws_follow_the_configured_probabilities_and_are_seeded():
    cfg = SpatialAugmentConfig()
    draws = [draw_params(np.random.default_rng([1, i]), cfg, n_channels=4) for i in range(4000)]
    rate = lambda f: np.mean([f(d) for d in draws])
    assert abs(rate(lambda d: d.rotation_rad is not None) - 0.2) < 0.025
    assert abs(rate(lambda d: d.scale is not None) - 0.2) < 0.025
    assert rate(lambda d: d.elastic is not None) == 0.0  # nnU-Net v2: off
    assert abs(rate(lambda d: d.lowres_zoom[0] is not None) - 0.25 * 0.5) < 0.02
    assert max(abs(a) for d in draws if d.rotation_rad for a in d.rotation_rad) <= np.radians(30)
    assert all(0.7 <= d.scale[0] <= 1.4 for d in draws if d.scale)
    assert draw_params(np.random.default_rng(5), cfg, 4) == draw_params(np.random.default_rng(5), cfg, 4)


def test_elastic_is_seeded():
    image, label = _ellipsoid_case()
    params = SampleParams(elastic={"sigma": 9.0, "magnitude": 400.0, "seed": 3})
    a = augment_patch(image, label, (24, 30, 27), (16, 16, 16), params)
    b = augment_patch(image, label, (24, 30, 27), (16, 16, 16), params)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], crop(image, (24, 30, 27), (16, 16, 16)))


def test_int16_scale_keeps_every_value_and_quantizes_within_half_a_step():
    x = np.random.default_rng(0).normal(scale=4, size=(2, 8, 8, 8)).astype(np.float32)
    s = int16_scale(float(np.abs(x).max()))
    q = quantize(x, "int16", s)
    assert q.dtype == np.int16 and np.abs(q).max() <= 32767 and np.abs(q).max() > 16383  # uses the upper half of the range
    assert np.abs(q.astype(np.float32) * s - x).max() <= s / 2 + 1e-7
    assert quantize(x, "float16", 1.0).dtype == np.float16


def test_config_is_validated_and_hashed():
    assert BankConfig().config_hash() == BankConfig().config_hash()
    assert BankConfig(seed=1).config_hash() != BankConfig().config_hash()
    assert BankConfig(spatial={"p_elastic": 0.1}).config_hash() != BankConfig().config_hash()
    with pytest.raises(ValueError, match="scaling"):
        SpatialAugmentConfig(scaling=(1.4, 0.7))
    with pytest.raises(ValueError, match="extra"):
        BankConfig(samples=3)
