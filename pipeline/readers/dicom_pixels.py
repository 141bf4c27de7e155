"""Low-level DICOM helpers: safe reads, value conversion, pixel decoding with specific errors.

Everything here raises :class:`~pipeline.readers.errors.ReaderError` naming the file and a
specific reason (truncated, no pixel data, missing decoder with the package to install, …).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.readers.errors import ReaderError

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# transfer syntax UID → pip command that installs a pydicom decoder for it
_DECODER_HINTS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "pip install pylibjpeg pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.51": "pip install pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pip install pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pip install pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pip install pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.81": "pip install pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",
    "1.2.840.10008.1.2.4.90": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pip install pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle",
}
_DEFAULT_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"


# --------------------------------------------------------------------------- values
def to_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        f = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return f if np.isfinite(f) else None


def to_int(value: Any) -> int | None:
    f = to_float(value)
    return None if f is None else int(round(f))


def to_floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(vals) != n or not all(np.isfinite(vals)):
        return None
    return vals


def to_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def dicom_time_seconds(value: Any) -> float | None:
    """``HHMMSS.ffffff`` (or ``HH:MM:SS``) → seconds since midnight."""
    text = to_str(value).replace(":", "")
    if not text:
        return None
    try:
        hh = int(text[0:2]) if len(text) >= 2 else 0
        mm = int(text[2:4]) if len(text) >= 4 else 0
        ss = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hh * 3600.0 + mm * 60.0 + ss


def jsonable_value(elem_value: Any) -> Any:
    """pydicom value → JSON-friendly python (DS → float, IS → int, MultiValue → list)."""
    from pydicom.valuerep import DSdecimal, DSfloat, IS

    if isinstance(elem_value, IS):
        return int(elem_value)
    if isinstance(elem_value, (DSfloat, DSdecimal)):
        f = float(elem_value)
        return int(f) if f.is_integer() and abs(f) < 1e15 else f
    if isinstance(elem_value, (list, tuple)) or type(elem_value).__name__ == "MultiValue":
        return [jsonable_value(v) for v in elem_value]
    if isinstance(elem_value, bytes):
        return None
    if isinstance(elem_value, (int, float)):
        return elem_value
    return str(elem_value).strip()


# --------------------------------------------------------------------------- reading
def header_truncated(path: Path) -> bool:
    """True when the file ends inside a data element (walks the raw elements, values deferred)."""
    from pydicom.filereader import data_element_generator, read_preamble

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fp:
            preamble = read_preamble(fp, True)
            if preamble is None:
                fp.seek(0)
            import pydicom

            ds_meta = pydicom.filereader._read_file_meta_info(fp) if preamble is not None else None
            ts = ds_meta.get("TransferSyntaxUID") if ds_meta is not None else None
            implicit = bool(ts == "1.2.840.10008.1.2") if ts is not None else False
            little = ts != "1.2.840.10008.1.2.2" if ts is not None else True
            end = fp.tell()
            for elem in data_element_generator(fp, implicit, little, defer_size=256):
                length = elem.length if elem.length != 0xFFFFFFFF else 0
                end = max(end, elem.value_tell + length)
            return end > size
    except Exception:
        return True


def read_dataset(path: Path, *, header_only: bool) -> Any:
    """``pydicom.dcmread`` with ReaderErrors for empty/unreadable files."""
    import pydicom

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ReaderError(path, f"cannot open: {exc.strerror}") from exc
    if size == 0:
        raise ReaderError(path, "empty file (0 bytes)")
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=header_only, force=True)
    except Exception as exc:  # InvalidDicomError, EOFError, struct.error, ValueError, ...
        if header_truncated(path):
            raise ReaderError(path, f"truncated DICOM file: ends inside the header ({size} bytes)") from exc
        raise ReaderError(path, f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc
    return ds


def _ensure_transfer_syntax(ds: Any) -> None:
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = pydicom.dataset.FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding if ds.original_encoding != (None, None) else (True, True)
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def decode_pixels(ds: Any, path: Path, *, n_frames: int = 1) -> np.ndarray:
    """Decoded stored values: ``[rows, cols]`` or ``[frames, rows, cols]`` (no rescale).

    Raises:
        ReaderError: no PixelData (or truncated header), truncated pixel data, colour
            images, compressed data without a decoder (naming the package to install).
    """
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        size = path.stat().st_size
        if header_truncated(path):
            raise ReaderError(path, f"truncated DICOM file: ends before the pixel data ({size} bytes)")
        raise ReaderError(path, "no pixel data: the (7FE0,0010) PixelData element is missing")
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise ReaderError(path, f"colour / multi-sample images are not supported (SamplesPerPixel={spp}, {ds.get('PhotometricInterpretation', '?')})")
    _ensure_transfer_syntax(ds)
    ts = ds.file_meta.TransferSyntaxUID
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise ReaderError(path, f"invalid image matrix Rows={rows} Columns={cols}")
    if "PixelData" in ds and not ts.is_compressed:
        bits = int(ds.get("BitsAllocated", 16) or 16)
        n_bits = rows * cols * n_frames * spp * bits
        expected = (n_bits + 7) // 8
        present = len(ds.PixelData)
        if present < expected:
            raise ReaderError(path, f"truncated pixel data: {present} of {expected} bytes present (file cut short?)")
    try:
        arr = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        msg = str(exc)
        if ts.is_compressed and ("missing" in msg or "handler" in msg or "plugin" in msg or "decoder" in msg.lower()):
            hint = _DECODER_HINTS.get(str(ts), _DEFAULT_HINT)
            raise ReaderError(path, f"compressed pixel data in transfer syntax '{ts.name}' ({ts}) cannot be decoded: no decoder installed; {hint}") from exc
        raise ReaderError(path, f"pixel data could not be decoded ({ts.name}): {msg.splitlines()[0] if msg else type(exc).__name__}") from exc
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "less than expected" in msg or "truncat" in msg.lower():
            raise ReaderError(path, f"truncated pixel data: {msg}") from exc
        raise ReaderError(path, f"pixel data could not be decoded ({ts.name}): {msg}") from exc
    arr = np.asarray(arr)
    if n_frames == 1 and arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    expected_shape = (rows, cols) if n_frames == 1 else (n_frames, rows, cols)
    if arr.shape != expected_shape:
        raise ReaderError(path, f"decoded pixel array has shape {arr.shape}, expected {expected_shape}")
    return arr
