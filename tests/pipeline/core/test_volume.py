"""pipeline.core.volume: the one image type: validation, normalised geometry, grids, SimpleITK bridge."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.core.geometry import world_bounds
from pipeline.core.volume import Volume, affine_lps_of
from tests import dicom_factory as fac

OBLIQUE = fac.rotation("z", 25.0) @ fac.rotation("x", -35.0)


def test_geometry_is_normalised_to_float_tuples_and_a_3x3_array():
    v = Volume(np.zeros((2, 3, 4)), spacing=np.array([1, 2, 3]), origin=[4, 5, 6], direction=tuple(np.eye(3, dtype=int).ravel()))
    assert v.spacing == (1.0, 2.0, 3.0) and type(v.spacing) is tuple and all(type(s) is float for s in v.spacing)
    assert v.origin == (4.0, 5.0, 6.0) and type(v.origin) is tuple and all(type(o) is float for o in v.origin)
    assert isinstance(v.direction, np.ndarray) and v.direction.shape == (3, 3) and v.direction.dtype == np.float64
    # a row or column of three (as some readers give them) is three components too
    w = Volume(np.zeros((2, 3, 4)), spacing=np.array([[0.5, 0.5, 2.0]]), origin=np.array([[1.0], [2.0], [3.0]]))
    assert (w.spacing, w.origin) == ((0.5, 0.5, 2.0), (1.0, 2.0, 3.0))
    assert v.voxel_volume_mm3 == 6.0 and v.shape_zyx == (2, 3, 4) and v.shape_xyz == (4, 3, 2)


def test_4d_volumes_are_accepted_2d_and_5d_are_not():
    v = Volume(np.zeros((5, 2, 3, 4), np.float32))
    assert v.is_4d and v.shape_zyx == (2, 3, 4)
    assert not Volume(np.zeros((2, 3, 4))).is_4d
    for shape in ((3, 4), (1, 2, 3, 4, 5)):
        with pytest.raises(ValueError, match=r"Volume array must be 3-D or 4-D, got shape"):
            Volume(np.zeros(shape))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(spacing=(1.0, 1.0)), r"spacing must have 3 components, got \[1.0, 1.0\]"),
        (dict(origin=(1.0, 2.0, 3.0, 4.0)), r"origin must have 3 components"),
        (dict(spacing=(1.0, np.nan, 1.0)), r"spacing must be finite"),
        (dict(origin=(np.inf, 0.0, 0.0)), r"origin must be finite"),
        (dict(direction=np.full((3, 3), np.nan)), r"^direction cosines must be finite$"),
        (dict(spacing=(1.0, 0.0, 1.0)), r"spacing must be positive, got \(1.0, 0.0, 1.0\)"),
        (dict(spacing=(1.0, -2.0, 1.0)), r"spacing must be positive"),
    ],
)
def test_invalid_geometry_is_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Volume(np.zeros((2, 2, 2)), **kwargs)


def test_affine_and_index_to_world_agree_with_the_formula():
    v = Volume(np.zeros((3, 4, 5)), spacing=(0.5, 0.8, 2.5), origin=(10.0, -20.0, 30.0), direction=OBLIQUE)
    expected = np.eye(4)
    expected[:3, :3] = OBLIQUE @ np.diag([0.5, 0.8, 2.5])
    expected[:3, 3] = (10.0, -20.0, 30.0)
    np.testing.assert_allclose(v.affine_lps, expected, atol=1e-12)
    np.testing.assert_allclose(affine_lps_of([0.5, 0.8, 2.5], [10, -20, 30], OBLIQUE.ravel().tolist()), expected, atol=1e-12)
    ijk = np.array([[0, 0, 0], [4, 3, 2], [1, 2, 1]])
    np.testing.assert_allclose(v.index_to_world(ijk), (expected @ np.c_[ijk, np.ones(3)].T).T[:, :3], atol=1e-12)


def test_world_bounds_are_the_extreme_voxel_centres():
    v = Volume(np.zeros((3, 4, 5)), spacing=(0.5, 0.8, 2.5), origin=(10.0, -20.0, 30.0), direction=OBLIQUE)
    every = v.index_to_world(np.array(list(itertools.product(range(5), range(4), range(3)))))
    lo, hi = world_bounds(v)
    np.testing.assert_allclose(lo, every.min(axis=0), atol=1e-12)
    np.testing.assert_allclose(hi, every.max(axis=0), atol=1e-12)


def test_same_grid_compares_shape_spacing_origin_and_direction_within_tolerance():
    a = Volume(np.zeros((3, 4, 5)), spacing=(0.5, 0.8, 2.5), origin=(10.0, -20.0, 30.0), direction=OBLIQUE)
    assert a.same_grid(a.with_array(np.ones((3, 4, 5), np.uint8)))
    assert a.same_grid(Volume(np.zeros((3, 4, 5)), spacing=(0.50005, 0.8, 2.5), origin=(10.00005, -20.0, 30.0), direction=OBLIQUE))
    assert not a.same_grid(Volume(np.zeros((3, 4, 6)), spacing=a.spacing, origin=a.origin, direction=OBLIQUE))
    assert not a.same_grid(Volume(np.zeros((3, 4, 5)), spacing=(0.5, 0.8, 2.6), origin=a.origin, direction=OBLIQUE))
    assert not a.same_grid(Volume(np.zeros((3, 4, 5)), spacing=a.spacing, origin=(10.0, -20.0, 30.01), direction=OBLIQUE))
    assert not a.same_grid(Volume(np.zeros((3, 4, 5)), spacing=a.spacing, origin=a.origin, direction=np.eye(3)))
    assert a.same_grid(Volume(np.zeros((3, 4, 5)), spacing=(0.5, 0.8, 2.6), origin=a.origin, direction=OBLIQUE), atol=0.2)
    # the tolerance is absolute, in mm and in direction cosine, for every part of the grid
    at_zero = Volume(np.zeros((3, 4, 5)), origin=(0.0, 0.0, 0.0))
    nudged = Volume(np.zeros((3, 4, 5)), origin=(5e-5, 0.0, 0.0), direction=np.eye(3) + np.diag([0.0, 5e-5], 1))
    assert at_zero.same_grid(nudged) and nudged.same_grid(at_zero)
    assert not at_zero.same_grid(nudged, atol=1e-6)
    assert not at_zero.same_grid(Volume(np.zeros((3, 4, 5)), origin=(5e-5, 0.0, 0.0)), atol=1e-6)
    assert not at_zero.same_grid(Volume(np.zeros((3, 4, 5)), direction=nudged.direction), atol=1e-6)


def test_with_array_keeps_geometry_and_applies_changes():
    a = Volume(np.zeros((3, 4, 5)), spacing=(0.5, 0.8, 2.5), origin=(1.0, 2.0, 3.0), direction=OBLIQUE, meta={"k": 1})
    b = a.with_array(np.ones((3, 4, 5), np.uint8))
    assert b.array.dtype == np.uint8 and b.array.sum() == 60 and a.array.sum() == 0
    assert (b.spacing, b.origin, b.meta) == (a.spacing, a.origin, {"k": 1}) and np.array_equal(b.direction, a.direction)
    c = a.with_array(np.ones((3, 4, 5)), spacing=(1.0, 1.0, 1.0), meta={})
    assert c.spacing == (1.0, 1.0, 1.0) and c.meta == {} and c.origin == a.origin


def test_simpleitk_round_trip_keeps_voxels_and_oblique_geometry():
    arr = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    v = Volume(arr, spacing=(0.5, 0.8, 2.5), origin=(10.0, -20.0, 30.0), direction=OBLIQUE, meta={"m": 1})
    img = v.to_sitk()
    assert img.GetSize() == (5, 4, 3) and img.GetSpacing() == (0.5, 0.8, 2.5) and img.GetOrigin() == (10.0, -20.0, 30.0)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)), OBLIQUE, atol=1e-12)  # row-major, columns = axes
    np.testing.assert_allclose(img.TransformIndexToPhysicalPoint((4, 3, 2)), v.index_to_world((4, 3, 2)), atol=1e-9)
    back = Volume.from_sitk(img, meta={"source": "sitk"})
    assert back.same_grid(v, atol=1e-12) and back.meta == {"source": "sitk"}
    np.testing.assert_array_equal(back.array, arr)
    assert back.array.dtype == np.int16 and Volume.from_sitk(img).meta == {}
    with pytest.raises(ValueError, match=r"^to_sitk\(\) supports 3-D volumes only; iterate over array\[t\]$"):
        Volume(np.zeros((2, 3, 4, 5))).to_sitk()
    with pytest.raises(ValueError, match="expected a 3-D image, got 2-D"):
        Volume.from_sitk(sitk.Image(4, 5, sitk.sitkUInt8))
