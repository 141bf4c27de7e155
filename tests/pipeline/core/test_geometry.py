import nibabel as nib
import numpy as np
import pytest

from pipeline.core.geometry import affine_ras, decompose_affine, decompose_ras_affine, obliquity_deg, orientation_code
from pipeline.core.volume import Volume


def rotation(deg: float, axis: int) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def test_ras_affine_matches_nibabel_convention_for_lps_identity():
    v = Volume(np.zeros((3, 4, 5)), spacing=(0.5, 0.8, 3.0), origin=(10.0, -20.0, 30.0))
    aff = affine_ras(v)
    # LPS identity direction = x towards Left, y towards Posterior: in RAS that is "LPS"
    assert nib.aff2axcodes(aff) == ("L", "P", "S")
    assert orientation_code(v.direction, "RAS") == "LPS"
    np.testing.assert_allclose(aff[:3, 3], [-10.0, 20.0, 30.0])


def test_decompose_round_trip_oblique():
    d = rotation(12.0, 0) @ rotation(-7.0, 2)
    v = Volume(np.zeros((3, 4, 5)), spacing=(0.7, 0.9, 4.0), origin=(1.5, 2.5, -3.5), direction=d)
    sp, org, dd = decompose_ras_affine(affine_ras(v))
    np.testing.assert_allclose(sp, v.spacing, atol=1e-12)
    np.testing.assert_allclose(org, v.origin, atol=1e-12)
    np.testing.assert_allclose(dd, d, atol=1e-12)
    assert obliquity_deg(d) == pytest.approx(np.degrees(np.arccos(min(np.max(np.abs(d), axis=0)))), abs=1e-9)
    assert obliquity_deg(np.eye(3)) == 0.0


def test_world_position_of_voxel_matches_affine():
    d = rotation(30.0, 1)
    v = Volume(np.zeros((6, 5, 4)), spacing=(1.0, 2.0, 3.0), origin=(5.0, 6.0, 7.0), direction=d)
    ijk = np.array([3, 2, 1])
    world = v.index_to_world(ijk)
    np.testing.assert_allclose(world, (v.affine_lps @ np.r_[ijk, 1])[:3])
    # the same point through the SimpleITK image
    img = v.to_sitk()
    np.testing.assert_allclose(world, img.TransformIndexToPhysicalPoint([3, 2, 1]), atol=1e-9)


def test_sheared_affine_is_refused():
    aff = np.eye(4)
    aff[0, 1] = 0.5
    with pytest.raises(ValueError, match="sheared"):
        decompose_affine(aff)


# the acquisitions the DICOM tests build (tests/dicom_factory.py), as LPS direction matrices
ACQUISITIONS = {
    "axial": "AXIAL",
    "sagittal": "SAGITTAL",
    "coronal": "CORONAL",
    "oblique15": ("x", 15.0, "AXIAL"),
    "double_oblique": ("z", 14.0, "y", -11.0, "SAGITTAL"),
    "descending_coronal": ("x", -9.0, "CORONAL"),
}


def _acquisition(spec) -> np.ndarray:
    from tests import dicom_factory as fac

    if isinstance(spec, str):
        return getattr(fac, spec)
    *rotations, base = spec
    d = getattr(fac, base)
    for axis, deg in reversed(list(zip(rotations[::2], rotations[1::2]))):
        d = fac.rotation(axis, deg) @ d
    return d


@pytest.mark.parametrize("name", list(ACQUISITIONS))
def test_orientation_codes_match_nibabel_on_real_acquisitions(name):
    """Checked against nibabel's aff2axcodes on an affine built here, independently of
    pipeline.core.geometry: RAS = diag(-1, -1, 1) · LPS. A transposed direction matrix (sagittal
    'ILA' instead of 'PIR') or a sign slip fails here."""
    d = _acquisition(ACQUISITIONS[name])
    spacing = np.array([0.9, 1.1, 3.0])
    lps = np.eye(4)
    lps[:3, :3] = d * spacing[None, :]
    lps[:3, 3] = (12.0, -30.0, 45.0)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    assert orientation_code(d, "RAS") == "".join(nib.aff2axcodes(ras))
    assert orientation_code(d, "LPS") == "".join(nib.aff2axcodes(lps, labels=(("R", "L"), ("A", "P"), ("I", "S"))))
    # and the RAS affine the library writes is that same affine
    v = Volume(np.zeros((4, 5, 6)), spacing=tuple(spacing), origin=(12.0, -30.0, 45.0), direction=d)
    np.testing.assert_allclose(affine_ras(v), ras, atol=1e-12)


def test_sagittal_orientation_is_pir():
    """The case the catalog gets wrong when the direction matrix is read transposed."""
    from tests import dicom_factory as fac

    assert orientation_code(fac.SAGITTAL, "RAS") == "PIR"


def test_degenerate_and_sheared_affines_are_refused_with_their_reason():
    zero = np.eye(4)
    zero[:3, 1] = 0.0
    with pytest.raises(ValueError, match=r"affine has a zero or invalid axis: column norms \[1.0, 0.0, 1.0\]"):
        decompose_affine(zero)
    nan = np.eye(4)
    nan[0, 2] = np.nan
    with pytest.raises(ValueError, match="zero or invalid axis"):
        decompose_affine(nan)
    sheared = np.eye(4)
    sheared[0, 1] = 1e-3  # 0.06° of shear: more than rounding, refused
    with pytest.raises(ValueError, match=r"^affine is sheared \(non-orthogonal axes\); cannot be stored as spacing\+direction$"):
        decompose_affine(sheared)


def test_affines_rounded_like_real_headers_still_decompose():
    """Direction cosines with 6 decimals (DICOM IOP) or a float32 sform (NIfTI) are orthogonal
    only to ~1e-6: that is rounding, not shear."""
    d = rotation(17.0, 0) @ rotation(-29.0, 1) @ rotation(41.0, 2)
    for direction in (np.round(d, 6), d.astype(np.float32).astype(float)):
        aff = np.eye(4)
        aff[:3, :3] = direction * np.array([0.9375, 0.9375, 3.3])[None, :]
        aff[:3, 3] = (-120.5, 80.25, 33.0)
        spacing, origin, out = decompose_affine(aff.astype(np.float32))
        np.testing.assert_allclose(spacing, (0.9375, 0.9375, 3.3), atol=1e-5)
        np.testing.assert_allclose(origin, (-120.5, 80.25, 33.0), atol=1e-4)
        np.testing.assert_allclose(out, d, atol=1e-5)


@pytest.mark.parametrize("deg,axis", [(37.0, 2), (53.0, 2), (37.0, 0), (53.0, 0), (37.0, 1)])
def test_orientation_code_of_axes_between_two_world_axes(deg, axis):
    """Nearest axis where two world components are close (37°/53°): still nibabel's answer;
    the default convention is RAS."""
    d = rotation(deg, axis)
    lps = np.eye(4)
    lps[:3, :3] = d
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    assert orientation_code(d) == orientation_code(d, "RAS") == "".join(nib.aff2axcodes(ras))
    assert orientation_code(d, "lps") == "".join(nib.aff2axcodes(lps, labels=(("R", "L"), ("A", "P"), ("I", "S"))))


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError, match=r"unknown convention 'XYZ'; use 'RAS' or 'LPS'"):
        orientation_code(np.eye(3), "XYZ")


def test_obliquity_is_the_largest_angle_of_a_voxel_axis_to_its_nearest_world_axis():
    d = rotation(30.0, 2) @ rotation(45.0, 0)
    # per voxel axis (a column of d): the angle to the nearest world axis
    angles = [np.degrees(np.arccos(np.max(np.abs(d[:, i])))) for i in range(3)]
    assert obliquity_deg(d) == pytest.approx(max(angles)) == pytest.approx(45.0)
    assert obliquity_deg(np.eye(3)) == 0.0
    assert obliquity_deg(np.eye(3) * (1 + 1e-12)) == 0.0  # cosines a rounding above 1: 0°, not NaN
    assert obliquity_deg(rotation(10.0, 1)) == pytest.approx(10.0)
