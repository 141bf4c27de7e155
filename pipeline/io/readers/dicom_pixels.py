"""Low-level DICOM helpers: safe reads, value conversion, pixel decoding with specific errors.

Everything here raises :class:`~pipeline.io.readers.errors.ReaderError` naming the file and a
specific reason (truncated, no pixel data, missing decoder with the package to install, …).

Fast path for large trees: :func:`read_header_dataset` has pydicom parse a header (only the
requested tags, pixel data skipped) and notes where pydicom found the pixel data value;
:class:`RawPixels` / :func:`read_raw_pixels` then read uncompressed little-endian pixels
straight from the file, bit for bit what pydicom's ``pixel_array`` gives, without parsing
the header a second time. Anything unusual (compressed, big-endian, colour, odd lengths,
a file changed since its header was read) returns ``None`` and callers use pydicom.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.io.readers.errors import ReaderError, ReasonCode

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


def dicom_value(elem_value: Any) -> Any:
    """Decode a pydicom value representation into plain python: IS → int, DS → int when integral
    (as dcm2niix writes it) else float, MultiValue → list, bytes → None, text stripped of padding.

    A DICOM decoder, not a JSON sanitiser: what is written as JSON goes through
    :func:`pipeline.core.jsonable.to_jsonable`.
    """
    from pydicom.valuerep import DSdecimal, DSfloat, IS

    if isinstance(elem_value, IS):
        return int(elem_value)
    if isinstance(elem_value, (DSfloat, DSdecimal)):
        f = float(elem_value)
        return int(f) if f.is_integer() and abs(f) < 1e15 else f
    if isinstance(elem_value, (list, tuple)) or type(elem_value).__name__ == "MultiValue":
        return [dicom_value(v) for v in elem_value]
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


def _stat(path: Path) -> os.stat_result:
    try:
        st = path.stat()
    except OSError as exc:
        raise ReaderError(path, f"cannot open: {exc.strerror}", ReasonCode.UNREADABLE) from exc
    if st.st_size == 0:
        raise ReaderError(path, "empty file (0 bytes)", ReasonCode.EMPTY_FILE)
    return st


def _read_error(path: Path, size: int, exc: Exception) -> ReaderError:
    if header_truncated(path):
        return ReaderError(path, f"truncated DICOM file: ends inside the header ({size} bytes)", ReasonCode.TRUNCATED)
    return ReaderError(path, f"unreadable DICOM header: {type(exc).__name__}: {exc}", ReasonCode.UNREADABLE)


def read_dataset(path: Path, *, header_only: bool) -> Any:
    """``pydicom.dcmread`` with ReaderErrors for empty/unreadable files."""
    import pydicom

    size = _stat(path).st_size
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=header_only, force=True)
    except Exception as exc:  # InvalidDicomError, EOFError, struct.error, ValueError, ...
        raise _read_error(path, size, exc) from exc
    return ds


# --------------------------------------------------------------------------- fast path
WHOLE_READ_BYTES = 256 * 1024
"""Files up to this size are read at once and parsed from memory (faster); larger ones from the file."""
DEFER_BYTES = 1024
"""pydicom's ``defer_size``: longer values (the pixel data) are skipped, not read, at scan time."""

_PIXEL_DATA = 0x7FE00010
_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # Implicit / Explicit VR Little Endian


@dataclass(frozen=True)
class PixelLocation:
    """Where the (top-level) PixelData value of a file starts, and the file's state then."""

    offset: int  # file offset of the first value byte
    length: int  # value length (0xFFFFFFFF: undefined = encapsulated)
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class RawPixels:
    """Uncompressed little-endian native pixel data that can be read without pydicom."""

    offset: int
    frames: int
    rows: int
    cols: int
    dtype: str  # numpy dtype string, e.g. "<u2"
    unused_bits: int  # BitsAllocated - BitsStored (pydicom shifts them out)
    size: int
    mtime_ns: int

    @property
    def nbytes(self) -> int:
        return self.frames * self.rows * self.cols * np.dtype(self.dtype).itemsize

    def unchanged(self, path: Path) -> bool:
        """True when the file still has the size and modification time seen at scan time."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns


def read_header_dataset(path: Path, specific_tags: Sequence[int]) -> tuple[Any, PixelLocation | None]:
    """Header dataset parsed by pydicom (only ``specific_tags``; file meta always complete),
    and where its pixel data lies when they are native little endian.

    The same ReaderErrors as ``read_dataset(path, header_only=True)``. The dataset also holds
    PixelData as a deferred raw element: pydicom records the position of its value in the file
    (``value_tell``) and its length and skips the bytes (``defer_size``).
    """
    import pydicom

    st = _stat(path)
    try:
        if st.st_size <= WHOLE_READ_BYTES:
            with open(path, "rb") as fh:
                source: Any = io.BytesIO(fh.read())
        else:
            source = str(path)
        ds = pydicom.dcmread(source, defer_size=DEFER_BYTES, force=True, specific_tags=[*specific_tags, _PIXEL_DATA])
        elem = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    except OSError as exc:
        raise ReaderError(path, f"cannot open: {exc.strerror}", ReasonCode.UNREADABLE) from exc
    except Exception as exc:  # InvalidDicomError, EOFError, struct.error, ValueError, ...
        raise _read_error(path, st.st_size, exc) from exc
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if elem is None or getattr(elem, "value_tell", None) is None or ts not in _NATIVE_LE:
        return ds, None
    if not elem.is_little_endian or elem.VR not in (None, "OB", "OW") or elem.value_tell + elem.length > st.st_size:
        return ds, None  # implicit VR: VR None; encapsulated (length 0xFFFFFFFF) or cut short: pydicom decides
    return ds, PixelLocation(elem.value_tell, elem.length, st.st_size, st.st_mtime_ns)


_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def raw_pixels(ds: Any, loc: PixelLocation | None) -> RawPixels | None:
    """A :class:`RawPixels` for ``ds`` when its pixels are plain native data, else ``None``."""
    if loc is None or loc.length == 0xFFFFFFFF or sys.byteorder != "little":
        return None
    try:
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        allocated = int(ds.get("BitsAllocated", 0) or 0)
        stored = int(ds.get("BitsStored", allocated) or allocated)
        representation = int(ds.get("PixelRepresentation", 0) or 0)
    except (TypeError, ValueError):
        return None
    if spp != 1 or photometric not in _MONOCHROME or rows <= 0 or cols <= 0 or frames <= 0:
        return None
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated or representation not in (0, 1):
        return None
    dtype = f"<{'ui'[representation]}{allocated // 8}"
    expected = rows * cols * frames * (allocated // 8)
    if loc.length not in (expected, expected + expected % 2):
        return None  # short or excess data: pydicom reports / handles it
    return RawPixels(loc.offset, frames, rows, cols, dtype, allocated - stored, loc.size, loc.mtime_ns)


def read_raw_pixels(path: Path, raw: RawPixels, out: np.ndarray | None = None) -> np.ndarray | None:
    """Stored values ``[frames, rows, cols]`` (as pydicom's ``pixel_array``), read directly.

    ``out`` (C-contiguous, ``raw.dtype``, ``raw.nbytes``) receives the data when given.
    ``None`` when the file changed since its header was read or is shorter than expected.
    """
    if out is None:
        out = np.empty((raw.frames, raw.rows, raw.cols), np.dtype(raw.dtype))
    buf = memoryview(out).cast("B")
    if buf.nbytes != raw.nbytes or not raw.unchanged(path):
        return None
    try:
        with open(path, "rb", buffering=0) as fh:
            fh.seek(raw.offset)
            got = 0
            while got < buf.nbytes:
                n = fh.readinto(buf[got:])
                if not n:
                    return None
                got += n
    except OSError:
        return None
    if raw.unused_bits:
        np.left_shift(out, raw.unused_bits, out=out)
        np.right_shift(out, raw.unused_bits, out=out)
    return out


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
            raise ReaderError(path, f"truncated DICOM file: ends before the pixel data ({size} bytes)", ReasonCode.TRUNCATED)
        raise ReaderError(path, "no pixel data: the (7FE0,0010) PixelData element is missing", ReasonCode.NO_PIXEL_DATA)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise ReaderError(path, f"colour / multi-sample images are not supported (SamplesPerPixel={spp}, {ds.get('PhotometricInterpretation', '?')})", ReasonCode.UNSUPPORTED_IMAGE)
    _ensure_transfer_syntax(ds)
    ts = ds.file_meta.TransferSyntaxUID
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise ReaderError(path, f"invalid image matrix Rows={rows} Columns={cols}", ReasonCode.NOT_AN_IMAGE)
    if "PixelData" in ds and not ts.is_compressed:
        bits = int(ds.get("BitsAllocated", 16) or 16)
        n_bits = rows * cols * n_frames * spp * bits
        expected = (n_bits + 7) // 8
        present = len(ds.PixelData)
        if present < expected:
            raise ReaderError(path, f"truncated pixel data: {present} of {expected} bytes present (file cut short?)", ReasonCode.TRUNCATED)
    try:
        arr = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:
        msg = str(exc)
        if ts.is_compressed and ("missing" in msg or "handler" in msg or "plugin" in msg or "decoder" in msg.lower()):
            hint = _DECODER_HINTS.get(str(ts), _DEFAULT_HINT)
            raise ReaderError(path, f"compressed pixel data in transfer syntax '{ts.name}' ({ts}) cannot be decoded: no decoder installed; {hint}", ReasonCode.NO_DECODER) from exc
        raise ReaderError(path, f"pixel data could not be decoded ({ts.name}): {msg.splitlines()[0] if msg else type(exc).__name__}", ReasonCode.DECODE_FAILED) from exc
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "less than expected" in msg or "truncat" in msg.lower():
            raise ReaderError(path, f"truncated pixel data: {msg}", ReasonCode.TRUNCATED) from exc
        raise ReaderError(path, f"pixel data could not be decoded ({ts.name}): {msg}", ReasonCode.DECODE_FAILED) from exc
    arr = np.asarray(arr)
    if n_frames == 1 and arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    expected_shape = (rows, cols) if n_frames == 1 else (n_frames, rows, cols)
    if arr.shape != expected_shape:
        raise ReaderError(path, f"decoded pixel array has shape {arr.shape}, expected {expected_shape}", ReasonCode.DECODE_FAILED)
    return arr
