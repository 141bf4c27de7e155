"""DICOM series assembly: synthetic series with known array + geometry, bad inputs, dcm2niix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.io.readers import ReaderError, is_dicom_file
from pipeline.io.readers.dicom import DicomSeries, _read_scanned, find_dicom_files, read_series, scan_series, sidecar
from pipeline.io.writers import write_nifti
from tests import dicom_factory as fac

SHAPE = (7, 12, 10)  # z, y, x — all different, so any transposition shows
SPACING = (0.9, 1.1, 3.0)
ORIGIN = (-100.5, 20.25, 30.0)
OBLIQUE = fac.rotation("y", 10.0) @ fac.rotation("x", 20.0)


def _array(shape=SHAPE, dtype=np.int16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2000, size=shape).astype(dtype)


def _scan_one(folder: Path) -> DicomSeries:
    series, errors = scan_series(find_dicom_files(folder))
    assert errors == []
    assert len(series) == 1, series
    return series[0]


def _assert_geometry(vol, spacing, origin, direction, atol=1e-6):
    np.testing.assert_allclose(vol.spacing, spacing, atol=atol)
    np.testing.assert_allclose(vol.origin, origin, atol=atol)
    np.testing.assert_allclose(vol.direction, direction, atol=atol)


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    "direction",
    [fac.AXIAL, fac.SAGITTAL, fac.CORONAL, OBLIQUE],
    ids=["axial", "sagittal", "coronal", "oblique"],
)
def test_orientations_reproduce_array_and_geometry(tmp_path, direction):
    arr = _array()
    fac.write_series(tmp_path, arr, spacing=SPACING, origin=ORIGIN, direction=direction)
    s = _scan_one(tmp_path)
    assert s.n_volumes == 1 and not s.is_mosaic and not s.is_multiframe and s.warnings == []
    vol = read_series(s)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, arr)
    _assert_geometry(vol, SPACING, ORIGIN, direction)


@pytest.mark.parametrize(
    "options",
    [dict(descending=True), dict(shuffle=True), dict(extension=""), dict(descending=True, shuffle=True, extension="")],
    ids=["descending", "shuffled", "no-extension", "all"],
)
def test_file_order_and_names_do_not_matter(tmp_path, options):
    arr = _array()
    fac.write_series(tmp_path, arr, spacing=SPACING, origin=ORIGIN, direction=OBLIQUE, **options)
    vol = read_series(_scan_one(tmp_path))
    np.testing.assert_array_equal(vol.array, arr)
    _assert_geometry(vol, SPACING, ORIGIN, OBLIQUE)


def test_slices_stacked_against_the_normal_are_sorted_along_it(tmp_path):
    """Slices that step along −normal: the reader sorts along +normal (flipped z, same world)."""
    arr = _array()
    left = fac.AXIAL.copy()
    left[:, 2] *= -1
    fac.write_series(tmp_path, arr, spacing=SPACING, origin=ORIGIN, direction=left)
    vol = read_series(_scan_one(tmp_path))
    np.testing.assert_array_equal(vol.array, arr[::-1])
    last = np.asarray(ORIGIN) + left[:, 2] * SPACING[2] * (SHAPE[0] - 1)
    _assert_geometry(vol, SPACING, last, fac.AXIAL)
    # same world position for every voxel value
    world = fac.expected_world(SHAPE, SPACING, ORIGIN, left).reshape(*SHAPE, 3)
    ours = fac.expected_world(SHAPE, vol.spacing, vol.origin, vol.direction).reshape(*SHAPE, 3)
    np.testing.assert_allclose(ours, world[::-1], atol=1e-6)


def test_header_only_dcm_without_preamble_is_found_by_content(tmp_path):
    arr = _array()
    files = fac.write_series(tmp_path, arr, spacing=SPACING, origin=ORIGIN, preamble=False)
    assert open(files[0], "rb").read(132)[128:132] != b"DICM"
    assert all(is_dicom_file(f) for f in files)
    vol = read_series(_scan_one(tmp_path))
    np.testing.assert_array_equal(vol.array, arr)


def test_is_dicom_file_judges_content_not_name(tmp_path):
    arr = _array((2, 4, 4))
    (f,) = fac.write_series(tmp_path / "a", arr[:1], extension="")
    assert is_dicom_file(f)
    fake = tmp_path / "fake.dcm"
    fake.write_text("this is not DICOM at all, just text " * 10)
    assert not is_dicom_file(fake)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert not is_dicom_file(empty)
    renamed = tmp_path / "image.txt"
    shutil.copy(f, renamed)
    assert is_dicom_file(renamed)


# ----------------------------------------------------------------------------- values
def test_identity_rescale_keeps_stored_dtype(tmp_path):
    arr = _array(dtype=np.uint16)
    fac.write_series(tmp_path, arr, spacing=SPACING, write_rescale=True)
    vol = read_series(_scan_one(tmp_path))
    assert vol.array.dtype == np.uint16
    np.testing.assert_array_equal(vol.array, arr)


def test_uniform_fractional_rescale_gives_float32(tmp_path):
    arr = _array()
    fac.write_series(tmp_path, arr, spacing=SPACING, slope=0.25, intercept=-10.5)
    vol = read_series(_scan_one(tmp_path))
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, (arr.astype(np.float64) * 0.25 - 10.5).astype(np.float32))


def test_integral_rescale_stays_integer(tmp_path):
    arr = _array()
    fac.write_series(tmp_path, arr, spacing=SPACING, slope=1, intercept=-1024, extra={"Modality": "CT"})
    vol = read_series(_scan_one(tmp_path))
    assert np.issubdtype(vol.array.dtype, np.integer)
    np.testing.assert_array_equal(vol.array, arr.astype(np.int64) - 1024)


def test_per_slice_rescale_gives_float32(tmp_path):
    arr = _array()
    slopes = np.linspace(0.5, 2.0, SHAPE[0])
    fac.write_series(tmp_path, arr, spacing=SPACING, slope=slopes, intercept=3.0, shuffle=True)
    vol = read_series(_scan_one(tmp_path))
    assert vol.array.dtype == np.float32
    stored_slopes = np.array([float(fac.ds(s)) for s in slopes])
    expected = arr.astype(np.float64) * stored_slopes[:, None, None] + 3.0
    np.testing.assert_allclose(vol.array, expected.astype(np.float32), rtol=1e-6)


# ----------------------------------------------------------------------------- 4-D
@pytest.mark.parametrize("temporal", ["TemporalPositionIdentifier", "AcquisitionNumber", "AcquisitionTime", "InstanceNumber"])
def test_4d_series_volumes_in_temporal_order(tmp_path, temporal):
    arr = _array((3, 5, 6, 8))
    fac.write_series(tmp_path, arr, spacing=SPACING, origin=ORIGIN, direction=OBLIQUE, temporal=temporal, shuffle=True)
    s = _scan_one(tmp_path)
    assert s.n_volumes == 3
    vol = read_series(s)
    assert vol.is_4d and vol.array.shape == (3, 5, 6, 8)
    np.testing.assert_array_equal(vol.array, arr)
    _assert_geometry(vol, SPACING, ORIGIN, OBLIQUE)


# ----------------------------------------------------------------------------- enhanced multi-frame
def test_enhanced_multiframe_3d(tmp_path):
    arr = _array()
    order = list(np.random.default_rng(1).permutation(SHAPE[0]))
    fac.write_enhanced(tmp_path, arr, spacing=SPACING, origin=ORIGIN, direction=OBLIQUE, frame_order=order)
    s = _scan_one(tmp_path)
    assert s.is_multiframe and s.n_volumes == 1
    vol = read_series(s)
    np.testing.assert_array_equal(vol.array, arr)
    _assert_geometry(vol, SPACING, ORIGIN, OBLIQUE)
    side = sidecar(s, vol)
    assert side["EchoTime"] == pytest.approx(0.08) and side["RepetitionTime"] == pytest.approx(5.0)


def test_enhanced_multiframe_4d(tmp_path):
    arr = _array((2, 4, 6, 5))
    order = list(np.random.default_rng(2).permutation(8))
    fac.write_enhanced(tmp_path, arr, spacing=SPACING, origin=ORIGIN, direction=fac.CORONAL, frame_order=order)
    s = _scan_one(tmp_path)
    assert s.n_volumes == 2
    vol = read_series(s)
    np.testing.assert_array_equal(vol.array, arr)
    _assert_geometry(vol, SPACING, ORIGIN, fac.CORONAL)


# ----------------------------------------------------------------------------- scan fast path
def _implicit_vr(folder: Path) -> None:
    """Rewrite every file of ``folder`` as Implicit VR Little Endian."""
    for f in find_dicom_files(folder):
        d = pydicom.dcmread(f)
        d.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        d.save_as(f, enforce_file_format=True)


FAST_PATH_SERIES = {
    "axial_int16": lambda p: fac.write_series(p, _array(), spacing=SPACING, origin=ORIGIN),
    "implicit_vr": lambda p: (fac.write_series(p, _array(), spacing=SPACING, direction=OBLIQUE), _implicit_vr(p)),
    "rescaled_uint16": lambda p: fac.write_series(p, _array(dtype=np.uint16), spacing=SPACING, slope=np.linspace(0.5, 2.0, SHAPE[0]), intercept=3.0),
    "12_bits_stored": lambda p: fac.write_series(p, _array(dtype=np.uint16) | 0xF000, spacing=SPACING, extra={"BitsStored": 12, "HighBit": 11}),
    "4d": lambda p: fac.write_series(p, _array((3, 5, 6, 8)), spacing=SPACING, direction=OBLIQUE, shuffle=True),
    "enhanced_multiframe": lambda p: fac.write_enhanced(p, _array((2, 4, 6, 5)), spacing=SPACING, direction=fac.CORONAL, frame_order=[3, 0, 7, 1, 6, 2, 5, 4]),
}


@pytest.mark.parametrize("write", FAST_PATH_SERIES.values(), ids=FAST_PATH_SERIES.keys())
def test_direct_pixel_reads_equal_pydicom_decoding(tmp_path, write):
    """read_series on a scanned series reads pixel bytes at pydicom's offsets; a copy of the
    series (``replace`` drops the scan's headers) parses and decodes every file with pydicom."""
    write(tmp_path)
    s = _scan_one(tmp_path)
    assert _read_scanned(s) is not None  # the fast path is taken (no file falls back)
    fast, parsed = read_series(s), read_series(replace(s))
    assert fast.array.dtype == parsed.array.dtype
    np.testing.assert_array_equal(fast.array, parsed.array)
    assert (fast.spacing, fast.origin, fast.meta) == (parsed.spacing, parsed.origin, parsed.meta)
    np.testing.assert_array_equal(fast.direction, parsed.direction)


# ----------------------------------------------------------------------------- warnings and splits
def test_mixed_orientations_under_one_uid_are_split(tmp_path):
    uid = pydicom.uid.generate_uid()
    study = pydicom.uid.generate_uid()
    ax, sag = _array(seed=1), _array((5, 12, 10), seed=2)
    fac.write_series(tmp_path, ax, spacing=SPACING, direction=fac.AXIAL, series_uid=uid, study_uid=study, prefix="AX")
    fac.write_series(tmp_path, sag, spacing=SPACING, direction=fac.SAGITTAL, series_uid=uid, study_uid=study, prefix="SAG")
    series, errors = scan_series(find_dicom_files(tmp_path))
    assert errors == []
    assert len(series) == 2
    assert {s.key for s in series} == {f"{uid}_ax", f"{uid}_sag"}
    for s in series:
        assert any("mixed orientations" in w for w in s.warnings)
        vol = read_series(s)
        expected = ax if s.key.endswith("_ax") else sag
        np.testing.assert_array_equal(vol.array, expected)


def test_non_uniform_spacing_warns(tmp_path):
    arr = _array((5, 6, 6))
    files = fac.write_series(tmp_path, arr, spacing=(1, 1, 4.0))
    # move the last slice 1 mm further: steps 4, 4, 4, 5
    d = pydicom.dcmread(files[-1])
    d.ImagePositionPatient = [0, 0, 17.0]
    d.save_as(files[-1])
    s = _scan_one(tmp_path)
    assert any(w.startswith("non-uniform slice spacing (4") for w in s.warnings), s.warnings
    vol = read_series(s)
    assert vol.spacing[2] == pytest.approx(17.0 / 4)


def test_gantry_tilt_warns(tmp_path):
    arr = _array((6, 8, 8))
    files = fac.write_series(tmp_path, arr, spacing=(1, 1, 2.0))
    shift = np.tan(np.radians(12.0)) * 2.0
    for k, f in enumerate(files):
        d = pydicom.dcmread(f)
        d.ImagePositionPatient = [0, fac.ds(k * shift), fac.ds(2.0 * k)]
        d.save_as(f)
    s = _scan_one(tmp_path)
    assert any(w.startswith("gantry tilt 12.0°") for w in s.warnings), s.warnings
    vol = read_series(s)
    assert vol.spacing[2] == pytest.approx(2.0)
    assert "gantry tilt 12.0°" in " ".join(vol.meta["warnings"])


# ----------------------------------------------------------------------------- bad inputs
def _good(tmp_path, n=8, **kw):
    arr = _array((n, 6, 6))
    files = fac.write_series(tmp_path, arr, spacing=(1, 1, 2.0), **kw)
    return arr, files


def test_truncated_pixel_data(tmp_path):
    _, files = _good(tmp_path)
    s = _scan_one(tmp_path)
    data = files[3].read_bytes()
    files[3].write_bytes(data[:-20])
    with pytest.raises(ReaderError) as exc:
        read_series(s)
    assert exc.value.path == str(files[3])
    assert "truncated pixel data" in exc.value.reason and "52 of 72 bytes" in exc.value.reason


def test_truncated_header(tmp_path):
    _, files = _good(tmp_path)
    files[2].write_bytes(files[2].read_bytes()[:400])
    series, errors = scan_series(files)
    assert [Path(e.path) for e in errors] == [files[2]] or series == []
    reasons = " ".join(e.reason for e in errors)
    assert "truncated" in reasons


def test_missing_pixel_data(tmp_path):
    _, files = _good(tmp_path)
    d = pydicom.dcmread(files[5])
    del d.PixelData
    d.save_as(files[5])
    s = _scan_one(tmp_path)
    with pytest.raises(ReaderError) as exc:
        read_series(s)
    assert exc.value.path == str(files[5])
    assert "no pixel data" in exc.value.reason and "(7FE0,0010)" in exc.value.reason


def test_zero_byte_file(tmp_path):
    _, files = _good(tmp_path)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    series, errors = scan_series([*files, empty])
    assert len(series) == 1
    assert [(e.path, e.reason) for e in errors] == [(str(empty), "empty file (0 bytes)")]
    with pytest.raises(ReaderError, match="empty file"):
        read_series(replace(series[0], files=[*series[0].files, empty]))


def test_slice_missing_mid_series(tmp_path):
    _, files = _good(tmp_path)
    good = _scan_one(tmp_path)
    files[4].unlink()
    series, errors = scan_series(find_dicom_files(tmp_path))
    assert series == [] and len(errors) == 1
    err = errors[0]
    assert err.reason.startswith("slice missing between positions 6 mm and 10 mm")
    assert err.path == str(files[5])  # the file next to the gap
    with pytest.raises(ReaderError, match="slice missing between positions"):
        read_series(replace(good, files=[f for f in good.files if f.exists()]))


def test_duplicated_slice(tmp_path):
    _, files = _good(tmp_path)
    copy = tmp_path / "copy_of_IM00003.dcm"
    shutil.copy(files[2], copy)
    series, errors = scan_series(find_dicom_files(tmp_path))
    assert series == [] and len(errors) == 1
    assert "duplicate slice" in errors[0].reason
    assert files[2].name in errors[0].reason and copy.name in errors[0].reason


def test_duplicate_position_with_different_instance(tmp_path):
    _, files = _good(tmp_path)
    d = pydicom.dcmread(files[2])
    d.InstanceNumber = 99
    d.SOPInstanceUID = pydicom.uid.generate_uid()
    d.save_as(tmp_path / "extra.dcm")
    series, errors = scan_series(find_dicom_files(tmp_path))
    assert series == [] and len(errors) == 1
    assert "duplicate slice position 4 mm" in errors[0].reason
    assert files[2].name in errors[0].reason and "extra.dcm" in errors[0].reason


def test_incomplete_4d(tmp_path):
    arr = _array((3, 4, 6, 6))
    files = fac.write_series(tmp_path, arr, spacing=(1, 1, 2.0))
    files[5].unlink()  # volume 2, slice 2
    series, errors = scan_series(find_dicom_files(tmp_path))
    assert series == [] and "incomplete 4-D series" in errors[0].reason


def test_not_an_image_and_no_geometry(tmp_path):
    _, files = _good(tmp_path, n=3)
    d = pydicom.dcmread(files[0])
    del d.ImageOrientationPatient
    d.save_as(files[0])
    series, errors = scan_series(files)
    assert errors[0].path == str(files[0]) and "no ImageOrientationPatient" in errors[0].reason


def test_corrupt_compressed_pixel_data_names_the_file(tmp_path):
    _, files = _good(tmp_path, n=2)
    d = pydicom.dcmread(files[0])
    d.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    d.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 60])
    d.save_as(files[0], enforce_file_format=True)
    s = _scan_one(tmp_path)
    with pytest.raises(ReaderError) as exc:
        read_series(s)
    assert exc.value.path == str(files[0])
    assert "JPEG 2000" in exc.value.reason and "could not be decoded" in exc.value.reason  # the decoders are installed
    assert "pylibjpeg: Error decoding the J2K data" in exc.value.reason and exc.value.code == "decode_failed"


# ----------------------------------------------------------------------------- metadata
def test_sidecar_has_no_phi_and_dcm2niix_units(tmp_path):
    arr = _array()
    fac.write_series(tmp_path, arr, spacing=SPACING, origin=ORIGIN, series_number=7, description="AX FLAIR")
    s = _scan_one(tmp_path)
    vol = read_series(s)
    side = sidecar(s, vol)
    assert side["SeriesNumber"] == 7 and side["SeriesDescription"] == "AX FLAIR"
    assert side["EchoTime"] == pytest.approx(0.09) and side["RepetitionTime"] == pytest.approx(9.0)
    assert side["Manufacturer"] == "Siemens" and side["ConversionSoftware"] == "lesionflow"
    assert side["FlipAngle"] == 150 and side["Modality"] == "MR"
    assert len(side["ImageOrientationPatientDICOM"]) == 6
    text = json.dumps(side)
    for phi in ("SYNTH001", "Test^Synthetic", "19700101", "20240101", s.study_uid, s.series_uid):
        assert phi not in text
    assert s.patient_id == "SYNTH001"  # kept in memory only
    assert "SYNTH001" not in repr(s) and s.study_uid not in repr(s)
    assert s.header_text(("SeriesDescription", "ProtocolName", "SequenceName")) == "AX FLAIR AX FLAIR"
    assert s.header_text(("Modality", "SeriesNumber", "MagneticFieldStrength")) == "MR 7 3"


# ----------------------------------------------------------------------------- dcm2niix
def _dcm2niix() -> str | None:
    exe = shutil.which("dcm2niix")
    if exe:
        return exe
    local = Path(sys.executable).parent / "dcm2niix"
    return str(local) if local.exists() else None


@pytest.mark.parametrize("direction", [OBLIQUE, fac.SAGITTAL], ids=["oblique", "sagittal"])
def test_matches_dcm2niix(tmp_path, direction):
    exe = _dcm2niix()
    if exe is None:
        pytest.skip("dcm2niix not installed (pip install dcm2niix)")
    nib = pytest.importorskip("nibabel")
    arr = _array()
    src = tmp_path / "dicom"
    fac.write_series(src, arr, spacing=SPACING, origin=ORIGIN, direction=direction, shuffle=True)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    proc = subprocess.run([exe, "-z", "n", "-f", "ref", "-o", str(ref_dir), str(src)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ours_path = tmp_path / "ours.nii.gz"
    write_nifti(read_series(_scan_one(src)), ours_path)
    ref = nib.as_closest_canonical(nib.load(ref_dir / "ref.nii"))
    ours = nib.as_closest_canonical(nib.load(ours_path))
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours.get_fdata(), ref.get_fdata())
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-3)


def test_parallel_scan_equals_serial_on_an_executor(tmp_path, monkeypatch):
    """One parallel header scan for convert (executor) and discovery (Dask client, see
    tests/pipeline/ingest/test_cluster.py): same series and errors as the serial scan."""
    from concurrent.futures import ThreadPoolExecutor

    import pipeline.io.readers.dicom as dicom_reader

    for k in range(3):
        fac.write_series(tmp_path / f"s{k}", _array(seed=k), spacing=SPACING, series_number=k + 1, description=f"AX {k}")
    (tmp_path / "s0" / "junk.dcm").write_bytes(b"DICM but not really")
    files = find_dicom_files(tmp_path) + [tmp_path / "s0" / "junk.dcm"]
    serial = dicom_reader.scan_series_parallel(files, None)
    calls: list[int] = []

    class Pool(ThreadPoolExecutor):
        def map(self, fn, chunks):  # type: ignore[override]
            chunks = list(chunks)
            calls.append(len(chunks))
            return super().map(fn, chunks)

    monkeypatch.setattr(dicom_reader, "PARALLEL_SCAN_MIN_FILES", 0)
    with Pool(max_workers=2) as pool:
        parallel = dicom_reader.scan_series_parallel(files, pool)
    assert calls == [2 * dicom_reader.SCAN_CHUNKS_PER_WORKER]
    assert [(s.key, s.files) for s in parallel[0]] == [(s.key, s.files) for s in serial[0]] and len(serial[0]) == 3
    assert [(e.path, e.reason) for e in parallel[1]] == [(e.path, e.reason) for e in serial[1]] and len(serial[1]) == 1
