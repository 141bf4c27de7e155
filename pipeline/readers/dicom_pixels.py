"""Low-level DICOM helpers: safe reads, value conversion, pixel decoding with specific errors.

Everything here raises :class:`~pipeline.readers.errors.ReaderError` naming the file and a
specific reason (truncated, no pixel data, missing decoder with the package to install, …).

Fast path for large trees: :func:`read_header_dataset` parses a header from one in-memory
read of the file's head (only the requested tags) and notes where the pixel data starts;
:class:`RawPixels` / :func:`read_raw_pixels` then read uncompressed little-endian pixels
straight from the file, bit for bit what pydicom's ``pixel_array`` gives, without parsing
the header a second time. Anything unusual (compressed, big-endian, colour, odd lengths,
a file changed since its header was read) returns ``None`` and callers use pydicom.
"""

from __future__ import annotations

import io
import os
import struct
import sys
from dataclasses import dataclass
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


class LiteDS(float):
    """A DS value from the light header parser (a float that remembers it was a DS)."""

    __slots__ = ()


def jsonable_value(elem_value: Any) -> Any:
    """pydicom value → JSON-friendly python (DS → float, IS → int, MultiValue → list)."""
    if isinstance(elem_value, LiteDS):
        f = float(elem_value)
        return int(f) if f.is_integer() and abs(f) < 1e15 else f
    valuerep = sys.modules.get("pydicom.valuerep")  # pydicom types only exist once it is loaded
    if valuerep is not None:
        if isinstance(elem_value, valuerep.IS):
            return int(elem_value)
        if isinstance(elem_value, (valuerep.DSfloat, valuerep.DSdecimal)):
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


def _stat(path: Path) -> os.stat_result:
    try:
        st = path.stat()
    except OSError as exc:
        raise ReaderError(path, f"cannot open: {exc.strerror}") from exc
    if st.st_size == 0:
        raise ReaderError(path, "empty file (0 bytes)")
    return st


def _read_error(path: Path, size: int, exc: Exception) -> ReaderError:
    if header_truncated(path):
        return ReaderError(path, f"truncated DICOM file: ends inside the header ({size} bytes)")
    return ReaderError(path, f"unreadable DICOM header: {type(exc).__name__}: {exc}")


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
HEAD_BYTES = 256 * 1024
"""Bytes read at once for a header; a header that does not fit is re-read from the file."""

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


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


def read_header_dataset(path: Path, specific_tags: list[int] | None = None) -> tuple[Any, PixelLocation | None]:
    """Header dataset (``stop_before_pixels``) parsed from one read of the file's head.

    Same result and the same ReaderErrors as ``read_dataset(path, header_only=True)``
    restricted to ``specific_tags`` (file meta always complete), plus the location of the
    pixel data when the transfer syntax is uncompressed little endian.
    """
    import pydicom

    st = _stat(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as exc:
        raise ReaderError(path, f"cannot open: {exc.strerror}") from exc
    whole = len(head) >= st.st_size
    bio = io.BytesIO(head)
    try:
        ds = pydicom.dcmread(bio, stop_before_pixels=True, force=True, specific_tags=specific_tags)
    except Exception as exc:
        if not whole:  # maybe cut by our read: parse the file itself
            return _read_header_from_file(path, st, specific_tags), None
        raise _read_error(path, st.st_size, exc) from exc
    pos = bio.tell()
    if head[pos : pos + 4] != _PIXEL_TAG_LE:
        if not whole:
            return _read_header_from_file(path, st, specific_tags), None
        return ds, None  # no pixel data (or not where expected): pydicom decides later
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts == _EXPLICIT_LE and head[pos + 4 : pos + 6] in (b"OW", b"OB") and len(head) >= pos + 12:
        length, offset = int.from_bytes(head[pos + 8 : pos + 12], "little"), pos + 12
    elif ts == _IMPLICIT_LE and len(head) >= pos + 8:
        length, offset = int.from_bytes(head[pos + 4 : pos + 8], "little"), pos + 8
    else:
        return ds, None
    return ds, PixelLocation(offset, length, st.st_size, st.st_mtime_ns)


def _read_header_from_file(path: Path, st: os.stat_result, specific_tags: list[int] | None) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True, force=True, specific_tags=specific_tags)
    except Exception as exc:
        raise _read_error(path, st.st_size, exc) from exc


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


# --------------------------------------------------------------------------- light header parser
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_VALID_VRS = frozenset(
    v.encode() for v in (
        "AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OW OV PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
    )
)
_INT_VRS = {"US": "H", "SS": "h", "UL": "L", "SL": "l"}
_SPLIT_VRS = frozenset(("AE", "AS", "CS", "DA", "DT", "TM", "UI"))  # pydicom multi_string
_TEXT_VRS = frozenset(("LO", "SH", "UC"))  # pydicom convert_text: split, rstrip each
_PIXEL_DATA, _FLOAT_PIXELS = 0x7FE00010, (0x7FE00008, 0x7FE00009)
_EXPLICIT_HEAD = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_IMPLICIT_HEAD = struct.Struct("<HHL")  # group, element, 32-bit length
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


_MISSING = object()


class _Incomplete(Exception):
    """The header goes on past the bytes read."""


class _Unsupported(Exception):
    """Anything the light parser does not reproduce exactly: use pydicom instead."""


def _number_re() -> tuple[Any, Any]:
    import re

    return re.compile(r" *[+-]?\d+ *"), re.compile(r" *[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)? *")


_IS_RE, _DS_RE = _number_re()


class LiteDataset:
    """Top-level header values as the header scan consumes them (``get``, ``in``, ``file_meta``).

    Values are converted on first access (an unusual value raises then: callers fall back
    to pydicom) and follow pydicom's conversions where consumers could tell them apart: strings
    stripped and split on ``\\`` like pydicom (lists for several values), IS → int,
    DS → float, US/SS/UL/SL → int; an empty numeric value reads ``None`` (pydicom: ``''``;
    both are "absent" for :func:`to_float`/:func:`to_str`). Only ASCII text is accepted.
    """

    __slots__ = ("values", "file_meta", "location", "path")

    def __init__(self, values: dict[str, Any], file_meta: dict[str, str], location: PixelLocation, path: Path):
        self.values, self.file_meta, self.location, self.path = values, file_meta, location, path

    def get(self, keyword: str, default: Any = None) -> Any:
        value = self.values.get(keyword, _MISSING)
        if value is _MISSING:
            return default
        if type(value) is tuple:  # (VR, raw bytes): converted on first use
            value = self.values[keyword] = _convert(*value)
        return value

    def __contains__(self, keyword: object) -> bool:
        return keyword in self.values

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self.values:
            raise AttributeError(name)
        return self.get(name)


def _text(raw: bytes) -> str:
    if not raw.isascii() or b"\x1b" in raw:
        raise _Unsupported("non-ASCII text")
    return raw.decode("ascii")


def _convert(vr: str, raw: bytes) -> Any:
    if vr in _INT_VRS:
        size = 2 if vr in ("US", "SS") else 4
        if len(raw) % size:
            raise _Unsupported("odd binary length")
        n = len(raw) // size
        if n == 0:
            return None
        vals = struct.unpack(f"<{n}{_INT_VRS[vr]}", raw)
        return vals[0] if n == 1 else list(vals)
    text = _text(raw)
    if vr in ("IS", "DS"):
        text = text.strip() if vr == "DS" else text
        items = text.rstrip(" \x00").split("\\")
        if len(items) == 1 and items[0].strip() == "":
            return None
        pattern, cast = (_IS_RE, int) if vr == "IS" else (_DS_RE, LiteDS)
        out = []
        for item in items:
            if not pattern.fullmatch(item):
                raise _Unsupported(f"unusual {vr} value")
            out.append(cast(item))
        return out[0] if len(out) == 1 else out
    if vr in _SPLIT_VRS:
        items = text.rstrip(" \x00").split("\\")
        return items[0] if len(items) == 1 else items
    if vr in _TEXT_VRS:
        items = [v.rstrip("\x00 ") for v in text.split("\\")]
        return items[0] if len(items) == 1 else items
    raise _Unsupported(f"VR {vr}")


def _skip_items(head: bytes, pos: int, implicit: bool) -> int:
    """Position after an undefined-length sequence (or encapsulated value) starting at ``pos``."""
    n = len(head)
    while pos + 8 <= n:
        group, elem, length = struct.unpack_from("<HHL", head, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unsupported("malformed sequence")
        pos = _skip_dataset(head, pos, implicit) if length == 0xFFFFFFFF else pos + length
    raise _Incomplete


def _skip_dataset(head: bytes, pos: int, implicit: bool) -> int:
    """Position after an undefined-length item (its elements, then the item delimiter)."""
    n = len(head)
    while pos + 8 <= n:
        group, elem = struct.unpack_from("<HH", head, pos)
        if (group << 16 | elem) == _ITEM_END:
            return pos + 8
        pos, length, vr = _element_header(head, pos, implicit)
        if length == 0xFFFFFFFF:
            pos = _skip_items(head, pos, implicit or vr == b"UN")
        else:
            pos += length
    raise _Incomplete


def _element_header(head: bytes, pos: int, implicit: bool) -> tuple[int, int, bytes | None]:
    """(value position, length, VR bytes or None) of the element at ``pos``."""
    if implicit:
        return pos + 8, struct.unpack_from("<L", head, pos + 4)[0], None
    vr = head[pos + 4 : pos + 6]
    if vr not in _VALID_VRS:
        raise _Unsupported("VR switch / unknown VR")
    if vr in _LONG_VRS:
        if pos + 12 > len(head):
            raise _Incomplete
        return pos + 12, struct.unpack_from("<L", head, pos + 8)[0], vr
    return pos + 8, struct.unpack_from("<H", head, pos + 6)[0], vr


INCOMPLETE: Any = object()
"""parse_lite: the header goes on past ``head`` (read more of the file)."""
LITE_READS = (64 * 1024, 1024 * 1024)
"""Bytes read for a light parse: a first read, then one larger read for long headers."""


def parse_lite(path: Path, head: bytes, st: os.stat_result, wanted: dict[int, tuple[str, str]], bail: frozenset[int]) -> Any:
    """Light parse of a Part-10 header held in ``head`` (the file's first bytes).

    ``wanted``: tag → (keyword, dictionary VR) of the top-level elements to keep; ``bail``:
    tags whose presence needs pydicom (sequences that are read). ``None`` whenever the file
    is not plain: no preamble, file meta not Explicit VR LE, a transfer syntax other than
    uncompressed little endian, a VR that differs from the dictionary, non-ASCII text,
    unusual numbers, no PixelData, ... — the caller then parses with pydicom, which
    reproduces every documented error. :data:`INCOMPLETE` when ``head`` ends inside the
    header but the file goes on.
    """
    n = len(head)
    if n < 140 or head[128:132] != b"DICM":
        return None
    try:
        pos, meta = 132, {}
        while pos + 8 <= n:
            group, elem = struct.unpack_from("<HH", head, pos)
            if group != 2:
                break
            vpos, length, _ = _element_header(head, pos, False)
            if length == 0xFFFFFFFF:
                return None
            if vpos + length > n:
                raise _Incomplete
            if elem in (0x0002, 0x0010):
                meta["MediaStorageSOPClassUID" if elem == 2 else "TransferSyntaxUID"] = _text(head[vpos : vpos + length]).rstrip("\x00 ")
            pos = vpos + length
        ts = meta.get("TransferSyntaxUID")
        if ts not in (_IMPLICIT_LE, _EXPLICIT_LE):
            return None
        implicit = ts == _IMPLICIT_LE
        if implicit and pos + 6 <= n and head[pos + 4 : pos + 6] in _VALID_VRS:
            return None  # looks explicit after all: pydicom guesses
        values: dict[str, Any] = {}
        location = None
        unpack = _IMPLICIT_HEAD.unpack_from if implicit else _EXPLICIT_HEAD.unpack_from
        long_vrs, valid_vrs = _LONG_VRS, _VALID_VRS
        while pos + 8 <= n:
            if implicit:
                group, elem, length = unpack(head, pos)
                vr, vpos = None, pos + 8
            else:  # inlined _element_header (hot loop: hundreds of elements per file)
                group, elem, vr, length = unpack(head, pos)
                if vr in long_vrs:
                    if pos + 12 > n:
                        raise _Incomplete
                    length, vpos = struct.unpack_from("<L", head, pos + 8)[0], pos + 12
                elif vr in valid_vrs:
                    vpos = pos + 8
                else:
                    return None
            tag = group << 16 | elem
            if tag == _PIXEL_DATA:
                location = PixelLocation(vpos, length, st.st_size, st.st_mtime_ns)
                break
            if tag in _FLOAT_PIXELS or tag in bail:
                return None
            if length == 0xFFFFFFFF:
                pos = _skip_items(head, vpos, implicit or vr == b"UN")
                continue
            end = vpos + length
            if end > n:
                raise _Incomplete
            hit = wanted.get(tag)
            if hit is not None:
                keyword, dict_vr = hit
                if vr is not None and vr.decode() != dict_vr:
                    return None
                values[keyword] = (dict_vr, head[vpos:end])
            pos = end
        if location is None:
            raise _Incomplete
    except _Incomplete:
        return INCOMPLETE if n < st.st_size else None
    except (_Unsupported, struct.error, UnicodeDecodeError):
        return None
    return LiteDataset(values, meta, location, path)


def read_lite_header(path: Path, wanted: dict[int, tuple[str, str]], bail: frozenset[int]) -> LiteDataset | None:
    """:func:`parse_lite` on the file's head (:data:`LITE_READS`); ``None`` for anything unusual."""
    try:
        st = path.stat()
        if st.st_size == 0:
            return None
        with open(path, "rb") as fh:
            for size in LITE_READS:
                fh.seek(0)
                result = parse_lite(path, fh.read(size), st, wanted, bail)
                if result is not INCOMPLETE:
                    return result
    except OSError:
        return None
    return None
