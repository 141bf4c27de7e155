"""NIfTI-1/2 reader (``.nii``, ``.nii.gz``) producing a :class:`~pipeline.core.volume.Volume`.

The voxel-to-world matrix is resolved the way nibabel does (``img.affine``: the sform when
its code is non-zero, else the qform), then converted from RAS to LPS by
:func:`pipeline.core.geometry.decompose_ras_affine`. A file whose sform and qform codes are both
0 has no defined orientation and is refused, as is a sheared affine.

Bounded: before nibabel allocates anything, :func:`check_nifti_header` parses the header
(for ``.nii.gz`` the first 544 decompressed bytes) and compares what it declares (shape x
sample size, data offset, extension sizes) with the reader limits
(:class:`~pipeline.io.readers.limits.ReadLimits`) and with what the file can hold: an
uncompressed file must be at least ``vox_offset + voxel bytes`` long, a gzip file must be
able to inflate to that (deflate never exceeds 1032:1). nibabel then reads exactly
``vox_offset + voxel bytes`` from the stream (it reads into a buffer of the declared
size and stops), so a ``.nii.gz`` whose stream inflates to gigabytes beyond its declared
volume is never decompressed past the declared size.

Example:
    >>> from pipeline.io.readers.nifti import read_nifti   # doctest: +SKIP
    >>> vol = read_nifti("FLAIR.nii.gz")                  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from pipeline.core.geometry import decompose_ras_affine
from pipeline.core.limits import ReadLimits
from pipeline.core.volume import Volume
from pipeline.io.readers.errors import ReaderError, ReasonCode
from pipeline.io.readers.limits import check_declared, gzip_can_hold, human_bytes, regular_file, resolve, too_large

GZIP_MAGIC = b"\x1f\x8b"


def _as_volume_dtype(data: np.ndarray) -> np.ndarray:
    """Keep integer (and bool → uint8) data as is; everything else becomes float32."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        return data
    return data.astype(np.float32, copy=False)


def check_finite(array: np.ndarray, path: str | Path) -> None:
    """Raise ``ReaderError(path, "N non-finite voxels", NON_FINITE_VOXELS)`` when the array holds NaN or Inf."""
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ReaderError(path, f"{bad} non-finite voxels", ReasonCode.NON_FINITE_VOXELS)


_HEADER_SIZES = {348: 352, 540: 544}  # sizeof_hdr → first byte after header + extension flag


def _parse_header(block: bytes):  # -> nibabel Nifti1Header | Nifti2Header | None
    import nibabel as nib

    for order in ("little", "big"):
        n = int.from_bytes(block[:4], order) if len(block) >= 4 else 0
        if n in _HEADER_SIZES and len(block) >= n:
            klass = nib.Nifti1Header if n == 348 else nib.Nifti2Header
            try:
                return klass(block[:n], check=False)
            except Exception:  # nibabel's own load reports a broken header
                return None
    return None


def check_nifti_header(path: str | Path, limits: ReadLimits | None = None, *, size: int | None = None) -> None:
    """Refuse a NIfTI file whose header declares more than the limits or than the file holds.

    Raises:
        ReaderError: ``too_large`` (voxels, bytes or data offset beyond ``limits``),
            ``truncated`` (an uncompressed file shorter than its declared data, a gzip file
            too small to inflate to it), ``unreadable`` (a header extension that runs past the
            voxel data offset). A header it cannot parse is left to nibabel's own errors.
    """
    path = Path(path)
    limits = resolve(limits)
    size = os.path.getsize(path) if size is None else size
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            block = fh.read(544)
            hdr = _parse_header(block)
            if hdr is None:
                return
            try:
                shape = tuple(int(d) for d in hdr.get_data_shape())
                dtype = np.dtype(hdr.get_data_dtype())
                offset = int(hdr.get_data_offset())
            except Exception:  # nibabel's own load reports it
                return
            if any(d < 0 for d in shape):
                return
            voxels = math.prod(shape)
            nbytes = voxels * dtype.itemsize
            what = f"{'x'.join(map(str, shape))} {dtype.name} voxels"
            check_declared(path, limits, voxels=voxels, nbytes=nbytes, what=what)
            header_end = _HEADER_SIZES[int(hdr["sizeof_hdr"])]
            if offset > limits.max_bytes:
                raise too_large(path, f"header declares a voxel data offset (vox_offset) of {human_bytes(offset)}", "max_bytes", offset, limits)
            end = max(offset, header_end) + nbytes
            if not gz and size < end:
                raise ReaderError(
                    path,
                    f"truncated: the header declares {what} ({human_bytes(nbytes)} from byte {max(offset, header_end):,}) "
                    f"but the file has only {size:,} bytes",
                    code="truncated",
                )
            if gz and not gzip_can_hold(size, end):
                raise ReaderError(
                    path,
                    f"truncated or forged: the header declares {what} ({human_bytes(nbytes)}) but a gzip file of {human_bytes(size)} "
                    f"cannot inflate to that much (deflate expands at most 1032:1)",
                    code="truncated",
                )
            if len(block) >= header_end and block[header_end - 4] != 0:
                _check_extensions(path, fh, hdr, header_end, offset)
    except (OSError, EOFError, zlib.error):
        return  # unreadable bytes: nibabel's load below reports them as before


def _check_extensions(path: Path, fh, hdr, header_end: int, offset: int) -> None:
    """Header extensions must lie between the header and the voxel data (nibabel trusts their sizes)."""
    if offset < header_end:
        raise ReaderError(path, f"header extension flag is set but vox_offset {offset} leaves no room for extensions: corrupt header")
    order = "<" if hdr.endianness == "<" else ">"
    pos = header_end
    while offset - pos >= 16:
        fh.seek(pos)
        raw = fh.read(8)
        if len(raw) < 8:
            return
        esize = int(np.frombuffer(raw[:4], f"{order}i4")[0])
        if esize < 16 or pos + esize > offset:
            raise ReaderError(
                path,
                f"header extension at byte {pos:,} declares {esize:,} bytes, running outside the header "
                f"(voxel data starts at byte {offset:,}): corrupt header",
            )
        pos += esize


def read_nifti(path: str | Path, limits: ReadLimits | None = None) -> Volume:
    """Read a NIfTI file into a Volume (3-D or 4-D, geometry in LPS).

    ``limits`` (default :data:`~pipeline.core.limits.DEFAULT_READ_LIMITS`) bounds what the
    header may declare; it is checked before anything is allocated (:func:`check_nifti_header`).

    Raises:
        ReaderError: not a regular file, not gzip although named ``.gz``, declared size beyond
            the limits or the file, unreadable header, no sform/qform, sheared affine, more
            than 4 non-singleton dimensions, non-finite voxels.
    """
    import nibabel as nib

    path = Path(path)
    st = regular_file(path)
    if st.st_size == 0:
        raise ReaderError(path, "empty file (0 bytes)", ReasonCode.EMPTY_FILE)
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic != GZIP_MAGIC:
            raise ReaderError(path, f"named .gz but not gzip-compressed (starts with {magic!r}, expected {GZIP_MAGIC!r})", ReasonCode.CORRUPT)
    check_nifti_header(path, limits, size=st.st_size)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for broken headers
        raise ReaderError(path, f"not a readable NIfTI file: {type(exc).__name__}: {exc}", ReasonCode.UNREADABLE) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ReaderError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})", ReasonCode.NOT_AN_IMAGE)
    hdr = img.header
    sform_code = int(hdr["sform_code"])
    qform_code = int(hdr["qform_code"])
    if sform_code == 0 and qform_code == 0:
        raise ReaderError(path, "no sform or qform: orientation unknown (both codes are 0)", ReasonCode.GEOMETRY_UNKNOWN)
    affine = img.affine  # nibabel's choice: sform if its code != 0, else qform
    try:
        spacing, origin, direction = decompose_ras_affine(affine)
    except ValueError as exc:
        raise ReaderError(path, f"unusable voxel-to-world affine: {exc}", ReasonCode.GEOMETRY_UNKNOWN) from exc

    shape = img.shape
    if len(shape) > 4:
        extra = shape[4:]
        if any(s != 1 for s in extra):
            raise ReaderError(path, f"{len(shape)}-D image {shape} is not supported (at most x, y, z, t)", ReasonCode.UNSUPPORTED_IMAGE)
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise ReaderError(path, f"truncated or corrupt voxel data: {type(exc).__name__}: {exc}", ReasonCode.TRUNCATED) from exc
    data = data.reshape(shape[:4] if len(shape) > 4 else shape)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    data = _as_volume_dtype(np.asarray(data))
    check_finite(data, path)
    # NIfTI is (x, y, z[, t]) in Fortran-ish axis order; Volume is [z, y, x] / [t, z, y, x].
    array = np.ascontiguousarray(data.transpose(tuple(range(data.ndim))[::-1]))
    meta = {"source_format": "nifti"}
    if array.ndim == 4:
        zooms = hdr.get_zooms()
        if len(zooms) > 3 and zooms[3] > 0:
            meta["RepetitionTime"] = float(zooms[3]) * (1e-3 if hdr.get_xyzt_units()[1] == "msec" else 1.0)
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction, meta=meta)
