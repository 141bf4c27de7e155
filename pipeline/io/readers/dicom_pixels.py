"""Low-level DICOM helpers: safe reads, value conversion, pixel decoding with specific errors.

Everything here raises :class:`~pipeline.io.readers.errors.ReaderError` naming the file and a
specific reason (truncated, no pixel data, missing decoder, declared size beyond the reader
limits, …) and a ``code`` (``truncated``, ``too_large``, ``no_decoder``, ``not_regular_file``,
``unreadable``).

Fast path for large trees: :func:`read_header_dataset` has pydicom parse a header (only the
requested tags, pixel data skipped) and notes where pydicom found the pixel data value;
:class:`RawPixels` / :func:`read_raw_pixels` then read uncompressed little-endian pixels
straight from the file, bit for bit what pydicom's ``pixel_array`` gives, without parsing
the header a second time. Anything unusual (compressed, big-endian, colour, odd lengths,
a file changed since its header was read) returns ``None`` and callers use pydicom.

Bounded decoding: :func:`decode_pixels` checks ``Rows x Columns x NumberOfFrames x
BitsAllocated`` against the reader limits (:class:`~pipeline.io.readers.limits.ReadLimits`)
and, for native data, against the bytes present, before pydicom allocates anything; for
JPEG / JPEG-LS / JPEG 2000 data it also reads each frame's codestream header (SOF / SIZ
marker) and refuses a frame that declares more pixels than ``Rows x Columns`` (the codec
would allocate what the codestream says).

Compressed transfer syntaxes are decoded by pydicom's pixel-data plugins; lesionflow ships
(``pyproject.toml``), chosen by licence and by decode speed measured on real slices
(``benchmarks/bench_decoders.py``, ``benchmarks/results/2026-11-29-bench_decoders.json``:
median of 40 decodes on 2 shared cores; a 320x320 uint16 FLAIR slice in its scanner grid,
``open_ms/longitudinal``, and a 218x182 MNI FLAIR slice quantised to 12 bits):

=====================  ==========================  ==============================================
transfer syntax        plugin used (licence)       ms per 320² slice (MNI slice): alternatives
=====================  ==========================  ==============================================
JPEG Lossless .57/.70  gdcm (python-gdcm:          1.62 (0.82); pylibjpeg-libjpeg 3.43 (1.55),
                       Apache-2.0, GDCM BSD)       GPLv3: not shipped
JPEG baseline .50,     gdcm                        (8-bit only; 12-bit .51 stays "no decoder":
extended .51 (8-bit)                               only pylibjpeg-libjpeg, GPLv3, decodes it)
JPEG-LS .80/.81        pyjpegls (MIT; CharLS BSD)  1.22 (0.53); gdcm 1.86 (0.95), libjpeg 4.83
JPEG 2000 .90/.91      pylibjpeg + pylibjpeg-      6.45 (3.42); gdcm 8.10 (4.91), pillow 6.58
                       openjpeg (MIT)              (3.56)
HTJ2K .201-.203        pylibjpeg-openjpeg          (the only plugin pydicom has for HTJ2K)
RLE Lossless .5        pylibjpeg-rle (MIT)         0.28 (0.18); pydicom's own 1.18 (0.73)
=====================  ==========================  ==============================================

Every plugin decoded every lossless slice bit-exactly. pylibjpeg-libjpeg would add nothing
that GDCM lacks except 12-bit JPEG Extended, at twice GDCM's time, under the GPLv3 (lesionflow
is Apache-2.0), so it is not a dependency; pillow only duplicates GDCM / openjpeg. The fastest
plugin of a syntax is asked first (:data:`PREFERRED_PLUGINS`), the others are the fallback.
Syntaxes no shipped plugin decodes (12-bit JPEG Extended, MPEG/HEVC video, JPEG XL, …) stay
``ReaderError(code="no_decoder")`` naming what would decode them.

Example:
    >>> to_int("12.0"), to_float("nan"), to_floats(["1", "2.5"], 2)
    (12, None, (1.0, 2.5))
    >>> codestream_shape(bytes.fromhex("ffd8ffc0000b0c01000200030111"))  # JPEG SOF0: 256 rows x 512 columns
    (256, 512)
"""

from __future__ import annotations

import io
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.limits import ReadLimits
from pipeline.io.readers.errors import ReaderError, ReasonCode
from pipeline.io.readers.limits import check_declared, regular_file

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# transfer syntax UID → what installs a pydicom decoder for it (lesionflow's dependencies do)
_GDCM = "pip install python-gdcm"
_OPENJPEG = "pip install pylibjpeg pylibjpeg-openjpeg"
_DECODER_HINTS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": _GDCM,
    "1.2.840.10008.1.2.4.51": _GDCM,
    "1.2.840.10008.1.2.4.57": _GDCM,
    "1.2.840.10008.1.2.4.70": _GDCM,
    "1.2.840.10008.1.2.4.80": "pip install pyjpegls (or python-gdcm)",
    "1.2.840.10008.1.2.4.81": "pip install pyjpegls (or python-gdcm)",
    "1.2.840.10008.1.2.4.90": f"{_OPENJPEG} (or python-gdcm)",
    "1.2.840.10008.1.2.4.91": f"{_OPENJPEG} (or python-gdcm)",
    "1.2.840.10008.1.2.4.201": _OPENJPEG,
    "1.2.840.10008.1.2.4.202": _OPENJPEG,
    "1.2.840.10008.1.2.4.203": _OPENJPEG,
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle",
}
_DEFAULT_HINT = "reinstall lesionflow's dependencies (python-gdcm, pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls)"
# what pydicom's plugins refuse although installed (e.g. "GDCM does not support 'JPEG Extended' for
# samples with 12-bit precision") → what would decode it
_UNSUPPORTED_HINTS: dict[str, str] = {
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg decodes 12-bit JPEG Extended but is GPLv3 and not shipped with lesionflow "
    "(pip install pylibjpeg pylibjpeg-libjpeg, if its licence suits you)",
}

PREFERRED_PLUGINS: dict[str, str] = {
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # 1.22 ms vs gdcm 1.86 ms per 320² slice
    "1.2.840.10008.1.2.4.81": "pyjpegls",
    "1.2.840.10008.1.2.4.90": "pylibjpeg",  # openjpeg 6.45 ms vs gdcm 8.10 ms
    "1.2.840.10008.1.2.4.91": "pylibjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg",  # pylibjpeg-rle 0.28 ms vs pydicom 1.18 ms (pydicom's default order already)
}
"""Transfer syntax → the pydicom plugin tried first (measured fastest); the others follow on failure."""

_JPEG_FAMILY = ("1.2.840.10008.1.2.4.5", "1.2.840.10008.1.2.4.7", "1.2.840.10008.1.2.4.8", "1.2.840.10008.1.2.4.9", "1.2.840.10008.1.2.4.20")


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
    from pydicom.valuerep import IS, DSdecimal, DSfloat

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
    if not stat.S_ISREG(st.st_mode):
        regular_file(path)  # raises not_regular_file naming the kind (device, FIFO, …)
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


_SOF_MARKERS = frozenset([*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7])  # SOFn, SOF55 (JPEG-LS)
_NO_LENGTH_MARKERS = frozenset([0x01, *range(0xD0, 0xDA)])  # TEM, RSTn, SOI, EOI (SOS ends the walk)


def codestream_shape(frame: bytes) -> tuple[int, int] | None:
    """``(rows, columns)`` that a JPEG / JPEG-LS / JPEG 2000 codestream declares, if found.

    Reads only the markers before the image data (JPEG: the SOFn / SOF55 segment; JPEG 2000:
    the SIZ segment right after SOC). ``None`` when ``frame`` is no such codestream.
    """
    if frame[:4] == b"\xff\x4f\xff\x51" and len(frame) >= 24:  # J2K: SOC, SIZ
        xsiz, ysiz, xo, yo = (int.from_bytes(frame[i : i + 4], "big") for i in (8, 12, 16, 20))
        return max(ysiz - yo, 0), max(xsiz - xo, 0)
    if frame[:2] != b"\xff\xd8":
        return None
    i, end = 2, min(len(frame), 1 << 16)
    while i + 4 <= end:
        if frame[i] != 0xFF:
            return None
        marker = frame[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _NO_LENGTH_MARKERS:
            i += 2
            continue
        if marker == 0xDA:  # SOS before any SOF: malformed
            return None
        if marker in _SOF_MARKERS and i + 9 <= len(frame):
            return int.from_bytes(frame[i + 5 : i + 7], "big"), int.from_bytes(frame[i + 7 : i + 9], "big")
        i += 2 + int.from_bytes(frame[i + 2 : i + 4], "big")
    return None


def declared_pixel_size(ds: Any) -> tuple[int, int, str]:
    """``(voxels, bytes, description)`` the image attributes of ``ds`` declare (what pydicom allocates).

    ``Rows x Columns x NumberOfFrames x SamplesPerPixel`` voxels of ``BitsAllocated`` bits.
    """
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = to_int(ds.get("NumberOfFrames")) or 1
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    voxels = max(rows, 0) * max(cols, 0) * max(frames, 1) * max(spp, 1)
    what = f"Rows x Columns x NumberOfFrames = {rows}x{cols}x{frames} at {bits} bits"
    return voxels, (voxels * bits + 7) // 8, what


def _check_codestreams(ds: Any, path: Path, rows: int, cols: int, frames: int) -> None:
    """Refuse a JPEG-family frame whose codestream declares more pixels than Rows x Columns."""
    from pydicom.encaps import generate_frames

    try:
        for i, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames)):
            shape = codestream_shape(bytes(frame[: 1 << 16]))
            if shape is not None and shape[0] * shape[1] > rows * cols:
                raise ReaderError(
                    path,
                    f"frame {i + 1}: the compressed codestream declares {shape[0]}x{shape[1]} pixels but the header "
                    f"says Rows x Columns = {rows}x{cols}: refused before decoding (the decoder would allocate the larger size)",
                )
    except ReaderError:
        raise
    except Exception:  # broken encapsulation: pydicom's decoder reports it
        return


def _decoder(ts: Any, path: Path) -> Any:
    """pydicom's decoder for ``ts``; ``no_decoder`` when none exists or none is installed."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise ReaderError(path, f"{_cannot(ts)}: pydicom has no decoder for it", code="no_decoder") from exc
    if not decoder.is_available:
        hint = _DECODER_HINTS.get(str(ts), _DEFAULT_HINT)
        raise ReaderError(path, f"{_cannot(ts)}: no decoder installed; {hint}", code="no_decoder")
    return decoder


def _cannot(ts: Any) -> str:
    return f"compressed pixel data in transfer syntax '{ts.name}' ({ts}) cannot be decoded"


def _plugin_messages(msg: str) -> str:
    """pydicom's "exceptions were raised by all available plugins:\n  name: why" → "name: why; …"."""
    lines = [line.strip() for line in msg.splitlines()[1:] if line.strip()]
    return "; ".join(lines) if lines else (msg.splitlines()[0] if msg else "")


def _pixel_array(ds: Any, ts: Any, path: Path) -> Any:
    """``ds.pixel_array``, the fastest plugin first (:data:`PREFERRED_PLUGINS`), then the others."""
    preferred = PREFERRED_PLUGINS.get(str(ts), "")
    if preferred and ts.is_compressed and preferred in _decoder(ts, path).available_plugins:
        try:
            ds.pixel_array_options(decoding_plugin=preferred)
            return ds.pixel_array
        except Exception:  # another installed plugin may still decode it; its error is the one reported
            pass
        ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


def decode_pixels(ds: Any, path: Path, *, n_frames: int = 1, limits: ReadLimits | None = None) -> np.ndarray:
    """Decoded stored values: ``[rows, cols]`` or ``[frames, rows, cols]`` (no rescale).

    ``limits`` (default :data:`~pipeline.core.limits.DEFAULT_READ_LIMITS`) bounds what the
    image attributes may declare; checked before anything is decoded or allocated.

    Raises:
        ReaderError: no PixelData (or truncated header), truncated pixel data, colour
            images, declared size beyond the limits (``too_large``), a codestream larger than
            Rows x Columns, compressed data without a decoder (``no_decoder``, naming the
            package to install).
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
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if bits not in (1, 8, 16, 32, 64):
        raise ReaderError(path, f"invalid BitsAllocated={bits} (expected 1, 8, 16, 32 or 64)", ReasonCode.NOT_AN_IMAGE)
    voxels, expected, what = declared_pixel_size(ds)
    check_declared(path, limits, voxels=voxels, nbytes=expected, what=what)
    frames = to_int(ds.get("NumberOfFrames")) or 1
    if "PixelData" in ds and not ts.is_compressed:
        present = len(ds.PixelData)
        if present < expected:
            raise ReaderError(path, f"truncated pixel data: {present} of {expected} bytes present ({what}; file cut short?)", code="truncated")
    if ts.is_compressed:
        _decoder(ts, path)
        if str(ts).startswith(_JPEG_FAMILY) and "PixelData" in ds:
            _check_codestreams(ds, path, rows, cols, frames)
    try:
        arr = _pixel_array(ds, ts, path)
    except (RuntimeError, NotImplementedError) as exc:
        msg = str(exc)
        detail = _plugin_messages(msg)
        if ts.is_compressed and "does not support" in msg:
            hint = _UNSUPPORTED_HINTS.get(str(ts), "no installed decoder supports this variant")
            raise ReaderError(path, f"{_cannot(ts)}: {detail}; {hint}", code="no_decoder") from exc
        if ts.is_compressed and ("missing" in msg or "handler" in msg or "decoder" in msg.lower()) and "plugins:" not in msg:
            hint = _DECODER_HINTS.get(str(ts), _DEFAULT_HINT)
            raise ReaderError(path, f"{_cannot(ts)}: no decoder installed; {hint}", code="no_decoder") from exc
        code = ReasonCode.TRUNCATED if "less than expected" in msg or "truncat" in msg.lower() else ReasonCode.DECODE_FAILED
        raise ReaderError(path, f"pixel data could not be decoded ({ts.name}): {detail or type(exc).__name__}", code=code) from exc
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "less than expected" in msg or "truncat" in msg.lower():
            raise ReaderError(path, f"truncated pixel data: {msg}", code="truncated") from exc
        raise ReaderError(path, f"pixel data could not be decoded ({ts.name}): {msg}", ReasonCode.DECODE_FAILED) from exc
    arr = np.asarray(arr)
    if n_frames == 1 and arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    expected_shape = (rows, cols) if n_frames == 1 else (n_frames, rows, cols)
    if arr.shape != expected_shape:
        raise ReaderError(path, f"decoded pixel array has shape {arr.shape}, expected {expected_shape}", ReasonCode.DECODE_FAILED)
    return arr
