"""NIfTI-1/2 reader (``.nii``, ``.nii.gz``) producing a :class:`~pipeline.core.volume.Volume`.

The voxel-to-world matrix is resolved the way nibabel does (``img.affine``: the sform when
its code is non-zero, else the qform), then converted from RAS to LPS by
:func:`pipeline.core.geometry.decompose_ras_affine`. A file whose sform and qform codes are both
0 has no defined orientation and is refused, as is a sheared affine.

Example:
    >>> from pipeline.io.readers.nifti import read_nifti   # doctest: +SKIP
    >>> vol = read_nifti("FLAIR.nii.gz")                  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from pipeline.core.geometry import decompose_ras_affine
from pipeline.io.readers.errors import ReaderError, ReasonCode
from pipeline.core.volume import Volume

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


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI file into a Volume (3-D or 4-D, geometry in LPS).

    Raises:
        ReaderError: not gzip although named ``.gz``, unreadable header, no sform/qform,
            sheared affine, more than 4 non-singleton dimensions, non-finite voxels.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise ReaderError(path, "file not found", ReasonCode.UNREADABLE)
    if path.stat().st_size == 0:
        raise ReaderError(path, "empty file (0 bytes)", ReasonCode.EMPTY_FILE)
    if path.name.lower().endswith(".gz"):
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic != GZIP_MAGIC:
            raise ReaderError(path, f"named .gz but not gzip-compressed (starts with {magic!r}, expected {GZIP_MAGIC!r})", ReasonCode.CORRUPT)
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
