"""Compressed DICOM reads out of the box (decoders shipped as dependencies).

A real slab of the MNI FLAIR (``open_ms``), quantised to uint16 (12 bits stored) and to
int16 (signed, 16 bits), is written as an uncompressed series (``tests/dicom_factory.py``),
then re-encoded in every transfer syntax that can be encoded here (pydicom's encoders: RLE,
JPEG-LS with pyjpegls, JPEG 2000 with pylibjpeg-openjpeg; GDCM for the JPEG processes) and
read with ``read_series``: voxel-exact for the lossless syntaxes, within the declared error
for the lossy ones, with identical geometry. HTJ2K (.201-.203) has no encoder here (pydicom
3.0 cannot encode it) and is covered by the availability test only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from pipeline.io.readers import ReaderError, read_volume
from pipeline.io.readers.dicom import find_dicom_files, read_series, scan_series
from pipeline.io.readers.dicom_pixels import PREFERRED_PLUGINS
from tests import dicom_factory as fac

MNI_FLAIR = "open_ms/cross_sectional/MNI/patient07/FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
Z0, NZ = 84, 6  # the slab: 6 axial slices through the lateral ventricles

# (syntax, encoder options, largest absolute error allowed: 0 = lossless)
SYNTAXES = [
    pytest.param(uid.RLELossless, {}, 0, id="rle"),
    pytest.param(uid.JPEGLSLossless, {}, 0, id="jpeg-ls"),
    pytest.param(uid.JPEGLSNearLossless, {"jls_error": 2}, 2, id="jpeg-ls-near-lossless"),
    pytest.param(uid.JPEG2000Lossless, {}, 0, id="jpeg2000-lossless"),
    pytest.param(uid.JPEG2000, {"j2k_psnr": [80]}, None, id="jpeg2000-lossy"),
    pytest.param(uid.JPEGLosslessSV1, {}, 0, id="jpeg-lossless-sv1"),
    pytest.param(uid.JPEGLossless, {}, 0, id="jpeg-lossless"),
]
SHIPPED = [
    uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K, uid.RLELossless,
]


@pytest.fixture(scope="module")
def flair(shared_data):
    return read_volume(shared_data / MNI_FLAIR)


def _slab(flair, kind: str) -> tuple[np.ndarray, dict, dict]:
    """(stored values [z, y, x], write_series geometry, extra header attributes)."""
    x = flair.array[Z0 : Z0 + NZ].astype(np.float64)
    top = float(flair.array.max())
    if kind == "uint16":
        arr, extra = np.round(np.clip(x, 0, None) / top * 4095).astype(np.uint16), {"BitsStored": 12, "HighBit": 11}
    elif kind == "int16":
        arr, extra = np.round(x / top * 32000).astype(np.int16), {}
    else:  # uint8, for the 8-bit JPEG processes
        arr, extra = np.round(np.clip(x, 0, None) / top * 255).astype(np.uint8), {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}
    # the MNI grid is left-handed (LPS direction diag(1, -1, 1)), which a DICOM slice stack
    # (normal = row x column cosine) cannot express: the slab is written axial, same spacing/origin
    origin = np.asarray(flair.origin) + np.array([0.0, 0.0, flair.spacing[2] * Z0])
    return arr, {"spacing": flair.spacing, "origin": origin, "direction": fac.AXIAL}, extra


def _one_series(folder: Path):
    series, errors = scan_series(find_dicom_files(folder))
    assert errors == [] and len(series) == 1, (series, errors)
    return series[0]


def _encoded_copy(raw: Path, dest: Path, syntax: str, **kwargs) -> Path:
    reason = fac.encoder_missing(syntax)
    if reason:
        pytest.skip(f"cannot encode here: {reason}")
    shutil.copytree(raw, dest)
    for f in sorted(dest.iterdir()):
        fac.recompress(f, syntax, **kwargs)
        assert pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    return dest


def _same_geometry(a, b) -> None:
    assert a.spacing == b.spacing
    np.testing.assert_array_equal(a.origin, b.origin)
    np.testing.assert_array_equal(a.direction, b.direction)


@pytest.mark.parametrize("syntax", SHIPPED, ids=lambda s: s.name)
def test_shipped_decoders_are_installed(syntax):
    from pydicom.pixels import get_decoder

    decoder = get_decoder(syntax)
    assert decoder.is_available, f"{syntax.name}: {decoder.missing_dependencies}"
    if str(syntax) in PREFERRED_PLUGINS:
        assert PREFERRED_PLUGINS[str(syntax)] in decoder.available_plugins


@pytest.mark.realdata
@pytest.mark.parametrize("kind", ["uint16", "int16"])
@pytest.mark.parametrize(("syntax", "options", "max_error"), SYNTAXES)
def test_real_slab_reencoded_reads_like_the_uncompressed_series(flair, tmp_path, kind, syntax, options, max_error):
    arr, geometry, extra = _slab(flair, kind)
    fac.write_series(tmp_path / "raw", arr, extra=extra, **geometry)
    plain = read_series(_one_series(tmp_path / "raw"))
    assert plain.array.dtype == arr.dtype
    np.testing.assert_array_equal(plain.array, arr)

    packed = read_series(_one_series(_encoded_copy(tmp_path / "raw", tmp_path / "packed", syntax, **options)))
    assert packed.array.dtype == plain.array.dtype and packed.array.shape == plain.array.shape
    if max_error == 0:
        np.testing.assert_array_equal(packed.array, plain.array)
    else:
        limit = max_error if max_error is not None else 0.002 * float(np.ptp(arr))
        error = np.abs(packed.array.astype(np.int64) - plain.array.astype(np.int64)).max()
        assert error <= limit, (error, limit)
    _same_geometry(packed, plain)


@pytest.mark.realdata
@pytest.mark.parametrize("syntax", [uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit], ids=["jpeg-baseline", "jpeg-extended-8bit"])
def test_real_slab_8bit_lossy_jpeg(flair, tmp_path, syntax):
    arr, geometry, extra = _slab(flair, "uint8")
    fac.write_series(tmp_path / "raw", arr, extra=extra, **geometry)
    plain = read_series(_one_series(tmp_path / "raw"))
    np.testing.assert_array_equal(plain.array, arr)
    packed = read_series(_one_series(_encoded_copy(tmp_path / "raw", tmp_path / "packed", syntax)))
    assert packed.array.shape == plain.array.shape
    diff = np.abs(packed.array.astype(np.int64) - plain.array.astype(np.int64))
    assert 0 < diff.max() <= 8 and diff.mean() < 0.5, (diff.mean(), diff.max())  # lossy (measured: max 2, mean 0.04)
    _same_geometry(packed, plain)


# --------------------------------------------------------------------------- still refused
def _small_series(folder: Path, **extra) -> list[Path]:
    arr = np.random.default_rng(0).integers(0, 4096, (3, 64, 80)).astype(np.uint16)
    return fac.write_series(folder, arr, extra={"BitsStored": 12, "HighBit": 11, **extra})


def test_12bit_jpeg_extended_is_no_decoder_naming_what_would(tmp_path):
    files = _small_series(tmp_path / "s")
    if fac.encoder_missing(uid.JPEGExtended12Bit):
        pytest.skip(fac.encoder_missing(uid.JPEGExtended12Bit))
    for f in files:
        fac.recompress(f, uid.JPEGExtended12Bit)
    with pytest.raises(ReaderError) as exc:
        read_series(_one_series(tmp_path / "s"))
    assert exc.value.code == "no_decoder"
    assert exc.value.path == str(files[0])
    assert "JPEG Extended" in exc.value.reason and "12-bit" in exc.value.reason and "pylibjpeg-libjpeg" in exc.value.reason


def test_syntax_without_any_decoder_is_no_decoder(tmp_path):
    files = _small_series(tmp_path / "s")
    for f in files:
        d = pydicom.dcmread(f)
        d.file_meta.TransferSyntaxUID = uid.MPEG2MPML
        d.PixelData = pydicom.encaps.encapsulate([b"\0\0\1\xb3" + b"\0" * 60])
        d.save_as(f, enforce_file_format=True)
    with pytest.raises(ReaderError) as exc:
        read_series(_one_series(tmp_path / "s"))
    assert exc.value.code == "no_decoder" and exc.value.path == str(files[0])
    assert "MPEG2" in exc.value.reason and "no decoder" in exc.value.reason


def test_codestream_larger_than_rows_columns_is_refused_before_decoding(tmp_path):
    files = _small_series(tmp_path / "s")
    if fac.encoder_missing(uid.JPEGLosslessSV1):
        pytest.skip(fac.encoder_missing(uid.JPEGLosslessSV1))
    for f in files:
        fac.recompress(f, uid.JPEGLosslessSV1)
        d = pydicom.dcmread(f)
        d.Rows, d.Columns = 16, 16  # the codestream still says 64x80
        d.save_as(f, enforce_file_format=True)
    with pytest.raises(ReaderError) as exc:
        read_series(_one_series(tmp_path / "s"))
    assert exc.value.path == str(files[0])
    assert "codestream declares 64x80" in exc.value.reason and "16x16" in exc.value.reason
