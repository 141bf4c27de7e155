"""Readers: DICOM series (:mod:`pipeline.io.readers.dicom`), NIfTI and MetaImage files.

Every reader returns a :class:`~pipeline.core.volume.Volume` (geometry in LPS) or raises
:class:`~pipeline.io.readers.errors.ReaderError` naming the file, a specific reason and a
machine-readable ``code``. Every reader takes ``limits=``
(:class:`~pipeline.io.readers.limits.ReadLimits`, default
:data:`~pipeline.core.limits.DEFAULT_READ_LIMITS`) and checks what a header declares against
them and against the file's size before it allocates anything.

Example:
    >>> is_volume_file("sub-01_FLAIR.nii.gz"), is_volume_file("scan.raw")
    (True, False)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pipeline.core.limits import ReadLimits
from pipeline.core.volume import Volume
from pipeline.io.readers.errors import ReaderError, ReasonCode

__all__ = ["ReaderError", "ReadLimits", "read_volume", "is_volume_file", "is_dicom_file", "VOLUME_SUFFIXES"]

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha")
"""File endings read by :func:`read_volume` (case-insensitive)."""

_DICOM_SUFFIXES = (".dcm",)


def _ending(path: str | Path) -> str | None:
    name = os.path.basename(os.fspath(path)).lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def is_volume_file(path: str | Path) -> bool:
    """True for ``.nii``, ``.nii.gz``, ``.mhd`` and ``.mha`` (by name; nothing is opened)."""
    return _ending(path) is not None


def read_volume(path: str | Path, limits: ReadLimits | None = None) -> Volume:
    """Read a NIfTI or MetaImage file, dispatching on its ending.

    ``limits`` bounds what the file may make the reader allocate (default: the module default
    :data:`~pipeline.core.limits.DEFAULT_READ_LIMITS`; a pipeline passes ``cfg.read_limits``).

    Raises:
        ReaderError: unsupported ending, or any reader failure (see the readers).
    """
    ending = _ending(path)
    if ending in (".nii", ".nii.gz"):
        from pipeline.io.readers.nifti import read_nifti

        return read_nifti(path, limits)
    if ending in (".mhd", ".mha"):
        from pipeline.io.readers.metaimage import read_metaimage

        return read_metaimage(path, limits)
    raise ReaderError(path, f"unsupported file type (supported endings: {', '.join(VOLUME_SUFFIXES)})", ReasonCode.UNSUPPORTED_FORMAT)


def is_dicom_file(path: str | Path) -> bool:
    """True when ``path`` holds DICOM, judged by content, never by the name alone.

    A DICOM Part 10 file has a 128-byte preamble followed by ``b"DICM"``. As a fallback, a
    ``.dcm`` file without preamble counts when pydicom parses it (``force=True``) into a
    dataset that carries image-identifying attributes.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # never open a FIFO (it would block) or a device
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if path.suffix.lower() not in _DICOM_SUFFIXES or len(head) < 8:
        return False
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), force=True, stop_before_pixels=True)
        return "SOPClassUID" in ds or "SeriesInstanceUID" in ds or ("Rows" in ds and "Columns" in ds)
    except Exception:
        return False


def walk_files(root: str | Path) -> list[Path]:
    """Every file under ``root``, recursively, in sorted order; hidden files and folders skipped."""
    import os

    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / name for name in sorted(filenames) if not name.startswith("."))
    return out
