"""NIfTI / MetaImage readers and the NIfTI writer: sform/qform rules, bad files, round trips."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.core.geometry import LPS_TO_RAS, affine_ras
from pipeline.core.volume import Volume
from pipeline.io.readers import ReaderError, is_volume_file, read_volume
from pipeline.io.writers import write_nifti, write_sidecar
from tests.dicom_factory import rotation

RAS_A = np.array([[-0.75, 0, 0, 90.5], [0, 1.25, 0, -120.25], [0, 0, 3.0, -60.0], [0, 0, 0, 1]])
RAS_B = np.array([[2.0, 0, 0, 10.0], [0, 2.0, 0, 20.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])


def _nifti(path, data, sform=None, qform=None, scode=1, qcode=1):
    img = nib.Nifti1Image(data, None)
    img.set_sform(sform if sform is not None else np.eye(4), code=scode if sform is not None else 0)
    img.set_qform(qform if qform is not None else np.eye(4), code=qcode if qform is not None else 0)
    nib.save(img, str(path))
    return path


def _data(shape=(6, 5, 4), dtype=np.int16):
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


def _check_geometry_from_ras(vol: Volume, ras: np.ndarray, atol=1e-6):
    np.testing.assert_allclose(affine_ras(vol), ras, atol=atol)


# ----------------------------------------------------------------------------- NIfTI sform / qform
def test_sform_only(tmp_path):
    data = _data()
    path = _nifti(tmp_path / "s.nii.gz", data, sform=RAS_A)
    vol = read_volume(path)
    _check_geometry_from_ras(vol, RAS_A)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, data.transpose(2, 1, 0))  # (x,y,z) → [z,y,x]
    np.testing.assert_allclose(vol.spacing, (0.75, 1.25, 3.0))
    np.testing.assert_allclose(vol.origin, (-90.5, 120.25, -60.0))  # RAS → LPS


def test_qform_only(tmp_path):
    path = _nifti(tmp_path / "q.nii", _data(), qform=RAS_B)
    _check_geometry_from_ras(read_volume(path), RAS_B)


def test_sform_wins_over_qform(tmp_path):
    path = _nifti(tmp_path / "sq.nii", _data(), sform=RAS_A, qform=RAS_B)
    _check_geometry_from_ras(read_volume(path), RAS_A)


def test_no_sform_no_qform_is_an_error(tmp_path):
    path = _nifti(tmp_path / "none.nii.gz", _data())
    with pytest.raises(ReaderError) as exc:
        read_volume(path)
    assert exc.value.path == str(path)
    assert "no sform or qform: orientation unknown" in exc.value.reason


def test_sheared_affine_is_an_error(tmp_path):
    sheared = RAS_B.copy()
    sheared[0, 1] = 0.7
    path = _nifti(tmp_path / "shear.nii", _data(), sform=sheared)
    with pytest.raises(ReaderError, match="sheared"):
        read_volume(path)


def test_gz_that_is_not_gzip(tmp_path):
    plain = _nifti(tmp_path / "plain.nii", _data(), sform=RAS_A)
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(plain.read_bytes())
    with pytest.raises(ReaderError) as exc:
        read_volume(fake)
    assert exc.value.path == str(fake) and "not gzip" in exc.value.reason


def test_truncated_gzip(tmp_path):
    path = _nifti(tmp_path / "t.nii.gz", np.random.default_rng(0).random((30, 30, 30)).astype(np.float32), sform=RAS_A)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ReaderError, match="truncated or corrupt|not a readable"):
        read_volume(path)


def test_nan_voxels_are_reported(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[0, 0, 0] = np.nan
    data[1, 2, 3] = np.inf
    data[3, 3, 3] = -np.inf
    path = _nifti(tmp_path / "nan.nii.gz", data, sform=RAS_A)
    with pytest.raises(ReaderError) as exc:
        read_volume(path)
    assert exc.value.reason == "3 non-finite voxels"


def test_float64_becomes_float32_and_masks_stay_integer(tmp_path):
    vol = read_volume(_nifti(tmp_path / "f.nii", np.random.default_rng(0).random((3, 4, 5)), sform=RAS_A))
    assert vol.array.dtype == np.float32
    vol = read_volume(_nifti(tmp_path / "m.nii.gz", (np.arange(60).reshape(3, 4, 5) % 2).astype(np.uint8), sform=RAS_A))
    assert vol.array.dtype == np.uint8


def test_scaled_integer_nifti_is_float(tmp_path):
    img = nib.Nifti1Image(_data(), RAS_A)
    img.header.set_slope_inter(0.5, 1.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    vol = read_volume(tmp_path / "scaled.nii")
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, _data().transpose(2, 1, 0) * 0.5 + 1.0)


# ----------------------------------------------------------------------------- write_nifti round trips
def test_write_nifti_sets_sform_and_qform(tmp_path):
    vol = Volume(_data((3, 4, 5)), spacing=(0.75, 1.25, 3.0), origin=(-100.5, 20.25, 30.0))
    write_nifti(vol, tmp_path / "o.nii.gz")
    img = nib.load(tmp_path / "o.nii.gz")
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_sform(), affine_ras(vol), atol=1e-6)
    np.testing.assert_allclose(img.get_qform(), affine_ras(vol), atol=1e-5)
    assert img.get_data_dtype() == np.int16
    assert img.shape == (5, 4, 3)


def test_round_trip_exact_for_representable_geometry(tmp_path):
    arr = _data((7, 6, 5))
    vol = Volume(arr, spacing=(0.75, 1.25, 3.0), origin=(-100.5, 20.25, 30.0), direction=np.diag([1.0, -1.0, 1.0]) @ np.eye(3)[:, [0, 1, 2]])
    write_nifti(vol, tmp_path / "x.nii")
    back = read_volume(tmp_path / "x.nii")
    assert back.array.dtype == arr.dtype
    np.testing.assert_array_equal(back.array, arr)
    assert back.spacing == vol.spacing and back.origin == vol.origin
    np.testing.assert_array_equal(back.direction, vol.direction)


def test_round_trip_oblique_within_float32(tmp_path):
    direction = rotation("z", 17.0) @ rotation("x", -25.0)
    vol = Volume(np.random.default_rng(1).random((6, 7, 8)), spacing=(0.9, 1.1, 2.7), origin=(-101.3, 22.7, 35.1), direction=direction)
    write_nifti(vol, tmp_path / "obl.nii.gz")
    back = read_volume(tmp_path / "obl.nii.gz")
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.array, vol.array.astype(np.float32))
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)


def test_4d_nifti_round_trip(tmp_path):
    arr = np.random.default_rng(2).integers(-500, 500, size=(4, 3, 5, 6)).astype(np.int16)  # t, z, y, x
    vol = Volume(arr, spacing=(2.0, 2.5, 4.0), origin=(10.0, -20.5, 7.25), direction=np.diag([-1.0, 1.0, -1.0]), meta={"RepetitionTime": 2.5})
    write_nifti(vol, tmp_path / "four.nii.gz")
    img = nib.load(tmp_path / "four.nii.gz")
    assert img.shape == (6, 5, 3, 4)  # x, y, z, t
    assert img.header.get_zooms()[3] == pytest.approx(2.5)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, :, 1], arr[1].transpose(2, 1, 0))
    back = read_volume(tmp_path / "four.nii.gz")
    assert back.is_4d and back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, arr)
    assert back.spacing == vol.spacing and back.origin == vol.origin
    np.testing.assert_array_equal(back.direction, vol.direction)
    assert back.meta["RepetitionTime"] == pytest.approx(2.5)


def test_bool_written_as_uint8(tmp_path):
    vol = Volume(np.zeros((2, 3, 4), bool), spacing=(1, 1, 1))
    write_nifti(vol, tmp_path / "b.nii.gz")
    assert nib.load(tmp_path / "b.nii.gz").get_data_dtype() == np.uint8


# ----------------------------------------------------------------------------- MetaImage
@pytest.mark.parametrize("ending", [".mha", ".mhd"])
def test_metaimage_round_trip(tmp_path, ending):
    direction = rotation("y", 30.0)
    vol = Volume(_data((5, 6, 7)), spacing=(0.5, 0.75, 2.0), origin=(-12.5, 40.0, 3.25), direction=direction)
    path = tmp_path / f"img{ending}"
    sitk.WriteImage(vol.to_sitk(), str(path))
    back = read_volume(path)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-9)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, direction, atol=1e-9)
    # MetaImage → NIfTI → back: same world geometry
    write_nifti(back, tmp_path / "via.nii.gz")
    again = read_volume(tmp_path / "via.nii.gz")
    assert again.same_grid(back, atol=1e-4)


def test_4d_metaimage(tmp_path):
    frames = [sitk.GetImageFromArray(np.full((3, 4, 5), t, np.float32)) for t in range(3)]
    for f in frames:
        f.SetSpacing((1.5, 2.0, 2.5))
        f.SetOrigin((1.0, 2.0, 3.0))
    img = sitk.JoinSeries(frames)
    sitk.WriteImage(img, str(tmp_path / "four.mha"))
    vol = read_volume(tmp_path / "four.mha")
    assert vol.is_4d and vol.array.shape == (3, 3, 4, 5)
    assert vol.spacing == (1.5, 2.0, 2.5) and vol.origin == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(vol.array[:, 0, 0, 0], [0, 1, 2])


def test_mhd_without_raw_names_the_raw(tmp_path):
    path = tmp_path / "t1.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.int16)), str(path))
    raw = tmp_path / "t1.raw"
    assert raw.exists()
    raw.unlink()
    with pytest.raises(ReaderError) as exc:
        read_volume(path)
    assert exc.value.path == str(path)
    assert "t1.raw" in exc.value.reason and "missing" in exc.value.reason


def test_metaimage_nan(tmp_path):
    arr = np.zeros((2, 3, 4), np.float32)
    arr[1, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "n.mha"))
    with pytest.raises(ReaderError, match="1 non-finite voxels"):
        read_volume(tmp_path / "n.mha")


# ----------------------------------------------------------------------------- dispatch, sidecar
def test_dispatch_and_suffixes(tmp_path):
    assert is_volume_file("a.nii") and is_volume_file("a.NII.GZ") and is_volume_file("a.mhd") and is_volume_file("a.mha")
    assert not is_volume_file("a.raw") and not is_volume_file("a.gz") and not is_volume_file(".nii")
    with pytest.raises(ReaderError, match="unsupported file type"):
        read_volume(tmp_path / "x.png")
    with pytest.raises(ReaderError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    with pytest.raises(ReaderError, match="empty file"):
        read_volume(empty)


def test_write_sidecar(tmp_path):
    write_sidecar({"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"), "d": (1, 2)}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": None, "d": [1, 2]}
    assert not list(tmp_path.glob(".*tmp*"))


def test_lps_ras_only_through_geometry():
    vol = Volume(np.zeros((2, 2, 2)), origin=(1.0, 2.0, 3.0))
    np.testing.assert_allclose(affine_ras(vol), LPS_TO_RAS @ vol.affine_lps)
