"""NIfTI and JSON-sidecar writers.

:func:`write_nifti` stores the Volume's geometry as both sform and qform (code 1, "scanner
anatomical") computed by :func:`pipeline.core.geometry.affine_ras` — the only LPS→RAS path.
A 4-D Volume ``[t, z, y, x]`` is written 4-D (NIfTI axes x, y, z, t). Integer data keeps its
dtype; anything else is written as float32. Both writers replace the target atomically
(:func:`pipeline.core.atomic.atomic_path`: unique temporary name, then one rename).

``.nii.gz`` is written with zlib's run-length strategy (:data:`GZIP_STRATEGY`, level
:data:`GZIP_LEVEL`): on MR volumes it is ~1.3x faster than nibabel's default (gzip level 1)
and the files are about as small (smaller for masks and skull-stripped images). When the
optional package ``isal`` (Intel ISA-L) is installed, its deflate (level 1) is used instead:
~3x faster again at the same size. Any gzip reader opens the files either way, and the
NIfTI bytes inside are exactly what ``nibabel.save`` writes.

Note that NIfTI stores the sform in float32: geometry round-trips to ~1e-5 mm for
typical coordinates (exactly for values representable in float32).

Example:
    >>> import numpy as np, tempfile, os
    >>> from pipeline.core.volume import Volume
    >>> d = tempfile.mkdtemp()
    >>> write_nifti(Volume(np.zeros((2, 3, 4), np.int16), spacing=(1, 1, 2)), os.path.join(d, "a.nii.gz"))
    >>> write_sidecar({"SeriesNumber": 3}, os.path.join(d, "a.json"))
"""

from __future__ import annotations

import io
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import atomic_path
from pipeline.core.geometry import affine_ras
from pipeline.core.jsonable import to_jsonable
from pipeline.core.volume import Volume

GZIP_LEVEL = 1
GZIP_STRATEGY = zlib.Z_RLE
"""zlib strategy for .nii.gz: Z_RLE (runs only, no string matching) suits image data."""


_DEFLATER: list[Any] = []


def _deflater() -> tuple[Any, int, int]:
    """(zlib-compatible module, level, strategy): ISA-L's when ``isal`` is installed, else zlib."""
    if not _DEFLATER:
        try:
            from isal import isal_zlib
        except ImportError:
            _DEFLATER.append(None)
        else:
            _DEFLATER.append(isal_zlib)
    if _DEFLATER[0] is None:
        return zlib, GZIP_LEVEL, GZIP_STRATEGY
    return _DEFLATER[0], 1, _DEFLATER[0].Z_DEFAULT_STRATEGY


GZIP_CHUNK = 4 * 1024 * 1024
"""Bytes per independently compressed piece when several threads compress one file."""


def _deflate_piece(zmod: Any, data: bytes, level: int, strategy: int, last: bool) -> bytes:
    """Raw deflate of one piece, ending byte-aligned (sync flush) unless it is the last one."""
    zip_ = zmod.compressobj(level, zmod.DEFLATED, -15, 9, strategy)
    return zip_.compress(data) + zip_.flush(zmod.Z_FINISH if last else zmod.Z_SYNC_FLUSH)


class _GzipWriter(io.RawIOBase):
    """Minimal write-only gzip file object (what nibabel needs: write, tell, seek-to-here).

    With ``threads`` > 1 the data is cut into :data:`GZIP_CHUNK` pieces deflated in parallel
    (zlib releases the GIL) and concatenated pigz-style into one ordinary gzip member.
    """

    def __init__(self, raw: Any, zmod: Any, level: int, strategy: int, threads: int = 1) -> None:
        super().__init__()
        self._raw = raw
        self._pos = 0
        self._zmod, self._level, self._strategy = zmod, level, strategy
        self._pool = None
        if threads > 1:
            from collections import deque
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=threads)
            self._threads = threads
            self._pending: Any = deque()
            self._parts: list[bytes] = []
            self._buffered = 0
            self._crc = 0
            raw.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\x03")  # gzip header: no name, mtime 0, unix
        else:
            self._zip = zmod.compressobj(level, zmod.DEFLATED, 31, 9, strategy)  # 31: gzip wrapper

    def write(self, data: Any) -> int:
        view = memoryview(data)
        n = view.nbytes
        if not n:
            return 0
        self._pos += n
        if self._pool is None:
            self._raw.write(self._zip.compress(view))
            return n
        self._parts.append(bytes(view) if not isinstance(data, bytes) else data)
        self._buffered += n
        if self._buffered >= GZIP_CHUNK:
            self._submit(last=False)
        return n

    def _submit(self, last: bool) -> None:
        piece = b"".join(self._parts)
        self._parts, self._buffered = [], 0
        self._crc = zlib.crc32(piece, self._crc)
        self._pending.append(self._pool.submit(_deflate_piece, self._zmod, piece, self._level, self._strategy, last))  # type: ignore[union-attr]
        while len(self._pending) > (0 if last else 2 * self._threads):
            self._raw.write(self._pending.popleft().result())

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or offset != self._pos:
            raise OSError("gzip stream: forward-only")
        return self._pos

    def finish(self) -> None:
        if self._pool is None:
            self._raw.write(self._zip.flush())
            return
        try:
            self._submit(last=True)
            self._raw.write(self._crc.to_bytes(4, "little") + (self._pos & 0xFFFFFFFF).to_bytes(4, "little"))
        finally:
            self._pool.shutdown()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        super().close()


def _nifti_dtype(array: np.ndarray) -> np.dtype:
    if array.dtype == bool:
        return np.dtype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array.dtype
    return np.dtype(np.float32)


def write_nifti(volume: Volume, path: str | os.PathLike[str], *, threads: int = 1) -> None:
    """Write ``volume`` to ``path`` (``.nii`` or ``.nii.gz``) with sform and qform set.

    ``threads`` > 1 compresses a ``.nii.gz`` with that many threads (same NIfTI bytes).

    ``volume.meta["RepetitionTime"]`` (seconds), when present, becomes the 4th zoom of a
    4-D image.
    """
    import nibabel as nib

    path = Path(path)
    dtype = _nifti_dtype(volume.array)
    arr = np.asarray(volume.array)
    data = arr.transpose(tuple(range(arr.ndim))[::-1]).astype(dtype, copy=False)  # [z,y,x] → (x,y,z)
    affine = affine_ras(volume)
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_data_dtype(dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    if data.ndim == 4:
        tr = volume.meta.get("RepetitionTime") if isinstance(volume.meta, dict) else None
        zooms = list(hdr.get_zooms()[:3]) + [float(tr) if tr and float(tr) > 0 else 1.0]
        hdr.set_zooms(zooms)
    # unscaled data: scl_slope 1, scl_inter 0 (no float→int rescaling by nibabel)
    hdr["scl_slope"] = 1.0
    hdr["scl_inter"] = 0.0
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    with atomic_path(path, suffix) as tmp:
        if suffix == ".nii.gz":
            with open(tmp, "wb") as raw:
                stream = _GzipWriter(raw, *_deflater(), threads=threads)
                try:
                    img.to_file_map({"image": nib.fileholders.FileHolder(fileobj=stream)})
                    stream.finish()
                finally:
                    stream.close()
        else:
            nib.save(img, str(tmp))


def write_sidecar(payload: dict, path: str | os.PathLike[str]) -> None:
    """Write ``payload`` as indented strict JSON (through :func:`pipeline.core.jsonable.to_jsonable`), atomically."""
    with atomic_path(path, ".json") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(to_jsonable(payload), fh, indent=2, allow_nan=False)
        fh.write("\n")
