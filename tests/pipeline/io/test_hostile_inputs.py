"""Hostile and inconsistent inputs are refused before anything large is allocated.

Each case checks the ReaderError's ``code`` and that its reason names the file (and the
limit, where one is exceeded). The cases that would allocate gigabytes are read in a
subprocess whose address space is capped (``RLIMIT_AS`` 1.5 GiB; the interpreter with the
readers imported takes about 0.45 GiB): the reader must answer with a ReaderError, not a
MemoryError, a kill or a hang. The real data still reads with the default limits.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom import uid

from pipeline.core.config import PipelineConfig
from pipeline.io.readers import ReaderError, read_volume
from pipeline.io.readers.dicom import find_dicom_files, read_series, scan_series
from pipeline.io.readers.limits import DEFAULT_READ_LIMITS, ReadLimits
from tests import dicom_factory as fac
from tests.conftest import REPO

ADDRESS_SPACE = 1536 * 2**20
MNI_FLAIR = "open_ms/cross_sectional/MNI/patient07/FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
RAW_MASK = "open_ms/cross_sectional/raw/patient01/consensus_gt.nii.gz"

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from pipeline.io.readers import ReaderError, is_dicom_file, read_volume
    from pipeline.io.readers.dicom import find_dicom_files, read_series, scan_series
    from pipeline.io.readers.limits import ReadLimits
    kind, path, limits = sys.argv[1], sys.argv[2], ReadLimits.model_validate_json(sys.argv[3])
    try:
        if kind == "sniff":
            print(json.dumps({{"is_dicom": is_dicom_file(path)}}))
            sys.exit(0)
        if kind == "dicom":
            series, errors = scan_series(find_dicom_files(path))
            if errors:
                raise errors[0]
            shape = read_series(series[0], limits).array.shape
        else:
            shape = read_volume(path, limits).array.shape
        out = {{"read": list(shape)}}
    except ReaderError as err:
        out = {{"code": err.code, "path": err.path, "reason": err.reason}}
    except MemoryError:
        out = {{"error": "MemoryError"}}
    print(json.dumps(out))
    """
)


def read_capped(kind: str, path: Path, limits: ReadLimits = DEFAULT_READ_LIMITS) -> dict:
    """Read ``path`` in a subprocess with a 1.5 GiB address space; its outcome as a dict."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    code = _CHILD.format(limit=ADDRESS_SPACE)
    proc = subprocess.run([sys.executable, "-c", code, kind, str(path), limits.model_dump_json()],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"reader died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _nifti_header(shape: tuple[int, ...], dtype=np.float32) -> nib.Nifti1Header:
    hdr = nib.Nifti1Image(np.zeros((2, 2, 2), dtype), np.eye(4)).header.copy()
    hdr.set_data_shape(shape)
    hdr.set_data_offset(352)
    return hdr


def _header_bytes(hdr: nib.Nifti1Header, extension_flag: bytes = b"\0\0\0\0") -> bytes:
    bio = io.BytesIO()
    hdr.write_to(bio)
    return bio.getvalue()[:348] + extension_flag


# ----------------------------------------------------------------------------- the error type
def test_reader_error_code_default_pickling_and_unknown_codes():
    assert ReaderError("/a.dcm", "x").code == "unreadable"
    err = pickle.loads(pickle.dumps(ReaderError("/a.nii", "too big", code="too_large")))
    assert (err.path, err.reason, err.code, str(err)) == ("/a.nii", "too big", "too_large", "/a.nii: too big")
    with pytest.raises(ValueError, match="is not a valid ReasonCode"):
        ReaderError("/a", "b", code="oops")


def test_limits_come_from_the_pipeline_configuration_and_are_not_hashed(tmp_path):
    cfg = PipelineConfig.model_validate_json('{"read_limits": {"max_voxels": 1000, "max_files": 3}}')
    assert cfg.read_limits == ReadLimits(max_voxels=1000, max_files=3)
    assert cfg.processing_hash() == PipelineConfig().processing_hash()
    assert PipelineConfig().read_limits == DEFAULT_READ_LIMITS
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 11), np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    assert read_volume(tmp_path / "a.nii.gz").array.shape == (11, 10, 10)
    with pytest.raises(ReaderError) as exc:
        read_volume(tmp_path / "a.nii.gz", limits=cfg.read_limits)
    assert exc.value.code == "too_large" and exc.value.path == str(tmp_path / "a.nii.gz")
    assert "read_limits.max_voxels = 1,000" in exc.value.reason and '{"read_limits": {"max_voxels": 1100}}' in exc.value.reason


# ----------------------------------------------------------------------------- NIfTI
def test_nifti_declaring_a_huge_matrix_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.nii"
    path.write_bytes(_header_bytes(_nifti_header((2000, 2000, 2000))) + b"\0" * 256)
    out = read_capped("file", path)
    assert out.get("code") == "too_large", out
    assert out["path"] == str(path)
    assert "2000x2000x2000 float32" in out["reason"] and "max_voxels" in out["reason"]


def test_nifti_declaring_more_than_the_file_holds_is_truncated(tmp_path):
    path = tmp_path / "short.nii"
    path.write_bytes(_header_bytes(_nifti_header((200, 200, 200))) + b"\0" * 1000)
    with pytest.raises(ReaderError) as exc:
        read_volume(path)
    assert exc.value.code == "truncated" and exc.value.path == str(path)
    assert "200x200x200 float32" in exc.value.reason and "1,352 bytes" in exc.value.reason


def test_gzip_bomb_declaring_a_large_volume_is_refused_before_inflating(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    raw = _header_bytes(_nifti_header((1000, 1000, 1000), np.uint8)) + b"\0" * (50 * 2**20)
    path.write_bytes(gzip.compress(raw, 9))
    assert path.stat().st_size < 100_000  # 50 MiB of zeros in ~50 KiB
    out = read_capped("file", path)
    assert out.get("code") == "too_large", out
    assert out["path"] == str(path) and "1000x1000x1000 uint8" in out["reason"] and "max_voxels" in out["reason"]


def test_small_gzip_declaring_more_than_it_can_inflate_to_is_refused_before_allocating(tmp_path):
    # within (raised) limits, but 2 GB cannot come out of ~50 KiB: refused before nibabel's 2 GB buffer
    path = tmp_path / "forged.nii.gz"
    path.write_bytes(gzip.compress(_header_bytes(_nifti_header((1260, 1260, 1260), np.uint8)) + b"\0" * (50 * 2**20), 9))
    big = ReadLimits(max_voxels=2**31, max_bytes=8 * 2**30)
    out = read_capped("file", path, big)
    assert out.get("code") == "truncated", out
    assert out["path"] == str(path) and "cannot inflate" in out["reason"]


def test_gzip_stream_inflating_far_beyond_the_declared_volume_is_not_inflated(tmp_path):
    # a valid 64x64x64 image followed by 4 GiB of zeros (256 more gzip members of 16 MiB each):
    # the reader inflates only the declared bytes (the whole stream would not fit in 1.5 GiB)
    data = np.arange(64**3, dtype=np.uint32).astype(np.uint8)
    hdr = _nifti_header((64, 64, 64), np.uint8)
    zeros = gzip.compress(b"\0" * (16 * 2**20), 9)
    path = tmp_path / "tail.nii.gz"
    with open(path, "wb") as fh:
        fh.write(gzip.compress(_header_bytes(hdr) + data.tobytes(), 6))
        for _ in range(256):
            fh.write(zeros)
    assert path.stat().st_size < 8 * 2**20
    out = read_capped("file", path)
    assert out == {"read": [64, 64, 64]}, out
    np.testing.assert_array_equal(read_volume(path).array.transpose(2, 1, 0).ravel(order="F"), data)


def test_nifti_extension_larger_than_the_header_is_refused(tmp_path):
    hdr = _nifti_header((4, 4, 4), np.uint8)
    hdr.set_data_offset(368)  # room for one 16-byte extension
    ext = struct.pack("<ii", 0x7FFFFFF0, 4) + b"\0" * 8  # ... that declares 2 GiB
    path = tmp_path / "ext.nii.gz"
    path.write_bytes(gzip.compress(_header_bytes(hdr, b"\1\0\0\0") + ext + b"\0" * 64 + b"\0" * (32 * 2**20)))
    out = read_capped("file", path)
    assert out.get("reason", "").find("header extension at byte 352 declares 2,147,483,632 bytes") >= 0, out
    assert out["path"] == str(path)


def test_fifo_named_like_a_volume_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe_FLAIR.nii.gz"
    os.mkfifo(fifo)
    assert read_capped("sniff", fifo) == {"is_dicom": False}
    out = read_capped("file", fifo)  # opening it would block until the 120 s timeout
    assert out.get("code") == "not_regular_file", out
    assert out["path"] == str(fifo) and "FIFO" in out["reason"]


# ----------------------------------------------------------------------------- MetaImage
def _mhd(folder: Path, data_file: str, dims: str = "4 4 4", element: str = "MET_SHORT", name: str = "t1.mhd", extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = {element}\n{extra}ElementDataFile = {data_file}\n")
    return path


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_metaimage_data_file_that_is_a_device_is_refused(tmp_path, device):
    path = _mhd(tmp_path / "case", device, dims="4096 4096 4096")
    out = read_capped("file", path)
    assert out.get("code") == "not_regular_file", out
    assert out["path"] == str(path) and device in out["reason"] and "character device" in out["reason"]


def test_metaimage_data_file_symlinked_to_a_device_is_refused(tmp_path):
    (tmp_path / "case").mkdir()
    os.symlink("/dev/urandom", tmp_path / "case" / "t1.raw")
    path = _mhd(tmp_path / "case", "t1.raw")
    with pytest.raises(ReaderError) as exc:
        read_volume(path)
    assert exc.value.code == "not_regular_file" and exc.value.path == str(path)
    assert "t1.raw" in exc.value.reason and "/dev/urandom" in exc.value.reason


def test_single_file_mha_naming_a_device_is_refused(tmp_path):
    path = _mhd(tmp_path, "/dev/zero", name="x.mha", dims="100000 100000 100")
    out = read_capped("file", path)
    assert out.get("code") == "not_regular_file" and out["path"] == str(path) and "/dev/zero" in out["reason"], out


def test_metaimage_data_file_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    (tmp_path / "case").mkdir()
    os.mkfifo(tmp_path / "case" / "t1.raw")
    path = _mhd(tmp_path / "case", "t1.raw")
    out = read_capped("file", path)
    assert out.get("code") == "not_regular_file", out
    assert out["path"] == str(path) and "t1.raw" in out["reason"] and "FIFO" in out["reason"]


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_metaimage_data_file_outside_the_header_folder_is_refused(tmp_path, how):
    other = tmp_path / "other_patient" / "t1.raw"
    other.parent.mkdir()
    other.write_bytes(b"\0" * 128)
    name = {"dotdot": "../other_patient/t1.raw", "absolute": str(other), "symlink": "t1.raw"}[how]
    (tmp_path / "case").mkdir()
    if how == "symlink":
        os.symlink(other, tmp_path / "case" / "t1.raw")
    path = _mhd(tmp_path / "case", name)
    with pytest.raises(ReaderError) as exc:
        read_volume(path)
    assert exc.value.code == "outside_source" and exc.value.path == str(path)
    assert str(other) in exc.value.reason and "outside the header's folder" in exc.value.reason


def test_metaimage_data_file_symlinked_inside_the_folder_reads(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4)), str(tmp_path / "t1.mhd"))
    os.rename(tmp_path / "t1.raw", tmp_path / "data.bin")
    os.symlink("data.bin", tmp_path / "t1.raw")
    assert read_volume(tmp_path / "t1.mhd").array.shape == (2, 3, 4)


def test_metaimage_data_file_too_small_for_dimsize_is_truncated(tmp_path):
    path = tmp_path / "t1.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(path))
    raw = tmp_path / "t1.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(ReaderError) as exc:
        read_volume(path)
    assert exc.value.code == "truncated" and exc.value.path == str(path)
    assert "t1.raw" in exc.value.reason and "240 bytes" in exc.value.reason and "only 100" in exc.value.reason


def test_metaimage_declaring_a_huge_matrix_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 3000 3000 3000\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n" + b"\0" * 64)
    out = read_capped("file", path)
    assert out.get("code") == "too_large", out
    assert out["path"] == str(path) and "3000x3000x3000 MET_FLOAT" in out["reason"] and "max_voxels" in out["reason"]


def test_compressed_metaimage_declaring_more_compressed_bytes_than_present_is_truncated(tmp_path):
    path = tmp_path / "c.mha"
    path.write_bytes(b"NDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\nCompressedData = True\nCompressedDataSize = 999999999\n"
                     b"ElementDataFile = LOCAL\n" + b"x" * 20)
    with pytest.raises(ReaderError) as exc:
        read_volume(path)
    assert exc.value.code == "truncated" and "CompressedDataSize = 999999999" in exc.value.reason


# ----------------------------------------------------------------------------- DICOM
def _series(folder: Path, n: int = 2, rows: int = 8, cols: int = 8, **extra) -> list[Path]:
    return fac.write_series(folder, np.ones((n, rows, cols), np.int16), extra=extra or None)


def _edit(files: list[Path], **attrs) -> None:
    for f in files:
        d = pydicom.dcmread(f)
        for k, v in attrs.items():
            setattr(d, k, v)
        d.save_as(f, enforce_file_format=True)


def test_dicom_absurd_rows_columns_is_refused_before_reading_pixels(tmp_path):
    files = _series(tmp_path / "s")
    _edit(files, Rows=65535, Columns=65535)
    out = read_capped("dicom", tmp_path / "s")
    assert out.get("code") == "too_large", out
    assert out["path"] == str(files[0]) and "65535x65535" in out["reason"] and "max_voxels" in out["reason"]


def test_dicom_absurd_rows_columns_on_a_series_built_by_hand_is_refused_per_file(tmp_path):
    from dataclasses import replace

    files = _series(tmp_path / "s")
    _edit(files, Rows=65535, Columns=65535)
    series, _ = scan_series(find_dicom_files(tmp_path / "s"))
    with pytest.raises(ReaderError) as exc:
        read_series(replace(series[0]))  # no scan headers: the per-file check before decoding
    assert exc.value.code == "too_large" and exc.value.path == str(files[0])
    assert "Rows x Columns x NumberOfFrames = 65535x65535x1 at 16 bits" in exc.value.reason


def test_dicom_matrix_beyond_the_file_size_is_truncated_before_decoding(tmp_path):
    files = _series(tmp_path / "s")
    _edit(files, Rows=4096, Columns=4096)
    with pytest.raises(ReaderError) as exc:
        read_series(scan_series(find_dicom_files(tmp_path / "s"))[0][0])
    assert exc.value.code == "truncated" and exc.value.path == str(files[0])
    assert "128 of 33554432 bytes present" in exc.value.reason


def test_dicom_absurd_bits_allocated_is_refused(tmp_path):
    files = _series(tmp_path / "s")
    _edit(files, BitsAllocated=48, BitsStored=48, HighBit=47)
    with pytest.raises(ReaderError) as exc:
        read_series(scan_series(find_dicom_files(tmp_path / "s"))[0][0])
    assert exc.value.path == str(files[0]) and "invalid BitsAllocated=48" in exc.value.reason


def test_dicom_number_of_frames_disagreeing_with_the_frames_is_refused_at_scan(tmp_path):
    path = fac.write_enhanced(tmp_path / "e", np.ones((4, 8, 8), np.int16))
    _edit([path], NumberOfFrames=10_000_000)
    series, errors = scan_series(find_dicom_files(tmp_path / "e"))
    assert series == [] and errors[0].path == str(path) and "NumberOfFrames is 10000000" in errors[0].reason


def test_compressed_dicom_with_absurd_matrix_is_bounded_by_the_ceiling(tmp_path):
    files = _series(tmp_path / "s", rows=64, cols=64)
    for f in files:
        fac.recompress(f, uid.RLELossless)
    _edit(files, Rows=40000, Columns=40000)
    out = read_capped("dicom", tmp_path / "s")
    assert out.get("code") == "too_large", out
    assert out["path"] == str(files[0]) and "40000x40000" in out["reason"]


def test_dicom_series_with_too_many_files_or_voxels(tmp_path):
    files = _series(tmp_path / "s", n=6)
    series = scan_series(find_dicom_files(tmp_path / "s"))[0][0]
    with pytest.raises(ReaderError) as exc:
        read_series(series, ReadLimits(max_files=5))
    assert exc.value.code == "too_large" and exc.value.path == str(files[0])
    assert "DICOM series of 6 files" in exc.value.reason and '{"read_limits": {"max_files": 6}}' in exc.value.reason
    with pytest.raises(ReaderError) as exc:
        read_series(series, ReadLimits(max_voxels=300))  # 6 x 8 x 8 = 384 voxels
    assert exc.value.code == "too_large" and "384 voxels" in exc.value.reason
    assert read_series(series).array.shape == (6, 8, 8)


def test_dicom_fifo_is_not_sniffed_nor_read(tmp_path):
    os.mkfifo(tmp_path / "IM0001.dcm")
    assert read_capped("sniff", tmp_path / "IM0001.dcm") == {"is_dicom": False}  # opening it would block


# ----------------------------------------------------------------------------- real data still reads
@pytest.mark.realdata
def test_real_volumes_read_with_the_default_limits(shared_data):
    assert read_volume(shared_data / MNI_FLAIR).array.shape == (182, 218, 182)
    out = read_capped("file", shared_data / RAW_MASK)  # the largest real volume, 192x512x512, within 1.5 GiB
    assert out == {"read": [512, 512, 192]}, out


@pytest.mark.realdata
def test_real_dicom_series_read_with_the_default_limits(shared_data):
    series, errors = scan_series(find_dicom_files(shared_data / "dcm_qa_nih" / "In"))
    assert errors == [] and len(series) == 8
    shapes = sorted(read_series(s).array.shape for s in series)
    assert shapes.count((10, 15, 64, 64)) == 4  # the GE 4-D series: 150 files each
    assert all(len(shape) == 4 for shape in shapes)
