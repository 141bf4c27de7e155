"""Registration and transform composition, checked against independent references: the known
motion of the phantom, and SimpleITK's own TransformPoint applied step by step."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.longitudinal.register import (
    affine_matrix,
    ncc,
    pair_transforms,
    register_rigid_affine,
    sitk_affine,
    transform_from_json,
    transform_to_json,
)
from tests import longitudinal_factory as lf


def _head_points(mask, volume, step=4):
    idx = np.argwhere(mask[::step, ::step, ::step] > 0) * step  # z, y, x
    return volume.index_to_world(idx[:, ::-1].astype(float))


@pytest.mark.slow
def test_registration_recovers_a_known_rigid_motion_within_half_a_millimetre():
    v = lf.visits()
    head = (lf.anatomy() > 0).astype(np.uint8)
    truth = lf.motion()
    result = register_rigid_affine(v["flair_b"], v["flair_f"], fixed_mask=head)
    pts = _head_points(head, v["flair_b"])
    err = np.array([np.linalg.norm(np.subtract(result.transform.TransformPoint(tuple(p)), truth.TransformPoint(tuple(p)))) for p in pts])
    # the motion moves head points by up to ~5 mm, so an identity transform would fail this
    moved = np.array([np.linalg.norm(np.subtract(truth.TransformPoint(tuple(p)), p)) for p in pts])
    assert moved.max() > 3.0
    assert err.max() < 0.5, f"largest error {err.max():.3f} mm over {len(pts)} head points"
    assert result.mattes_mi < 0


def test_supplied_transforms_compose_like_applying_them_in_turn():
    import SimpleITK as sitk

    cb = sitk.AffineTransform(3)
    cb.SetMatrix((1.01, 0.02, 0.0, -0.01, 0.99, 0.03, 0.0, 0.01, 1.0))
    cb.SetTranslation((3.0, -2.0, 5.0))
    cb.SetCenter((10.0, 4.0, -6.0))
    cf = sitk.Euler3DTransform()
    cf.SetCenter((-2.0, 1.0, 0.5))
    cf.SetRotation(0.02, -0.04, 0.1)
    cf.SetTranslation((-1.0, 0.5, 2.0))
    tb, tf = pair_transforms(cb, cf, "baseline")
    assert tb is None
    inv_b = cb.GetInverse()
    for p in [(0.0, 0.0, 0.0), (50.0, -20.0, 10.0), (-30.0, 40.0, -25.0)]:
        expected = cf.TransformPoint(inv_b.TransformPoint(p))  # baseline point → common space → follow-up
        assert np.allclose(tf.TransformPoint(p), expected, atol=1e-6)
    same_b, same_f = pair_transforms(cb, cf, "expert")
    assert same_b is cb and same_f is cf


def test_transform_json_round_trip_and_itk_file_parameters(tmp_path):
    import SimpleITK as sitk

    # the shared data's transform files: MatrixOffsetTransformBase, matrix then translation, centre fixed
    path = tmp_path / "t.txt"
    path.write_text("#Insight Transform File V1.0\n#Transform 0\nTransform: MatrixOffsetTransformBase_double_3_3\n"
                    "Parameters: 0.999772 0.0124779 -0.0230905 -0.0132453 0.997771 -0.0575935 0.0227571 0.0554092 0.996561 "
                    "-0.47633 -1.08648 4.15365\nFixedParameters: 0.431239 13.066 -14.9495\n")
    read = sitk.ReadTransform(str(path))
    m = affine_matrix(read)
    p = (12.0, -40.0, 7.0)
    assert np.allclose(m @ [*p, 1.0], [*read.TransformPoint(p), 1.0], atol=1e-9)
    again = transform_from_json(transform_to_json(read))
    assert np.allclose(again.TransformPoint(p), read.TransformPoint(p), atol=1e-9)
    assert np.allclose(affine_matrix(sitk_affine(m)), m)
    assert transform_to_json(None) is None and transform_from_json(None) is None


def test_ncc():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6, 6))
    mask = np.ones(a.shape, bool)
    assert ncc(a, 3 * a + 2, mask) == pytest.approx(1.0)
    assert ncc(a, -a, mask) == pytest.approx(-1.0)
    assert np.isnan(ncc(a, np.zeros_like(a), mask))
