"""MetaImage reader (``.mhd`` + data file, or single-file ``.mha``) via SimpleITK.

ITK already uses LPS, so spacing/origin/direction are copied as they are. 4-D images
become 4-D Volumes (``[t, z, y, x]``; the 4th axis' spacing/origin/direction are dropped
after checking that it does not mix with the spatial axes).

Before SimpleITK opens anything, :func:`check_metaimage` parses the header itself (the first
:data:`HEADER_MAX_BYTES`) and refuses, naming the header and the data file:

* a data file (``ElementDataFile``: one name, a ``LIST`` or a ``%d`` pattern) that resolves,
  symlinks followed, outside the header's folder (``outside_source``: ``../other/x.raw``,
  ``/etc/...``, a symlink to ``/dev/zero``), that is missing, or that is not a regular file
  (``not_regular_file``: a device, a FIFO — SimpleITK would read ``/dev/zero`` for ever or
  block on a pipe);
* a ``DimSize`` beyond the reader limits (``too_large``,
  :class:`~pipeline.io.readers.limits.ReadLimits`): ITK allocates the image from ``DimSize``;
* uncompressed binary data shorter than ``DimSize`` x element size, or a ``CompressedDataSize``
  beyond the end of the file (``truncated``).

Example:
    >>> from pipeline.io.readers.metaimage import read_metaimage   # doctest: +SKIP
    >>> vol = read_metaimage("T1.mhd")                            # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.limits import ReadLimits
from pipeline.core.volume import Volume
from pipeline.io.readers.errors import ReaderError, ReasonCode
from pipeline.io.readers.limits import check_declared, human_bytes, inside_folder, regular_file
from pipeline.io.readers.nifti import _as_volume_dtype, check_finite

HEADER_MAX_BYTES = 1 << 20
"""A MetaImage header (up to and including its ElementDataFile line, or the file list after
``ElementDataFile = LIST``) must fit in this many bytes."""

# MetaIO element types → bytes per element (MetaIO's MET_ValueTypeSize)
MET_SIZES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_ASCII_CHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2,
    "MET_INT": 4, "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


@dataclass
class MetaHeader:
    """The fields of a MetaImage header that decide what is read and allocated."""

    fields: dict[str, str]
    data_offset: int  # byte after the ElementDataFile line (start of LOCAL data)
    file_list: list[str] = field(default_factory=list)  # names after ElementDataFile = LIST

    def get(self, key: str, default: str = "") -> str:
        """Value of ``key`` (MetaIO keys, matched case-insensitively)."""
        for k, v in self.fields.items():
            if k.lower() == key.lower():
                return v
        return default


def read_meta_header(path: Path) -> MetaHeader:
    """Parse the ``key = value`` lines of a MetaImage header, up to ElementDataFile (bounded).

    Raises:
        ReaderError: unreadable file, no ElementDataFile line in the first
            :data:`HEADER_MAX_BYTES`.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER_MAX_BYTES)
    except OSError as exc:
        raise ReaderError(path, f"cannot read header: {exc.strerror}") from exc
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(head):
        nl = head.find(b"\n", pos)
        line_end = len(head) if nl < 0 else nl + 1
        line = head[pos:line_end].decode("latin-1").strip()
        pos = line_end
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            header = MetaHeader(fields, pos)
            if value.strip().upper().startswith("LIST"):
                header.file_list = [n.strip() for n in head[pos:].decode("latin-1").splitlines() if n.strip()]
            return header
    raise ReaderError(path, f"MetaImage header has no ElementDataFile line (in its first {human_bytes(HEADER_MAX_BYTES)})", ReasonCode.MISSING_DATA_FILE)


def _number(path: Path, key: str, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ReaderError(path, f"invalid {key} value {text!r} in the MetaImage header") from None
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ReaderError(path, f"invalid {key} value {text!r} in the MetaImage header")
    return int(value)


def _data_files(path: Path, header: MetaHeader) -> list[str]:
    """Names of the data files (``[]`` for LOCAL data)."""
    value = header.get("ElementDataFile")
    if value.upper() == "LOCAL":
        return []
    if value.upper().startswith("LIST"):
        if not header.file_list:
            raise ReaderError(path, "ElementDataFile = LIST names no files")
        return header.file_list
    if "%" in value:  # "name%03d.raw first last [step]"
        parts = value.split()
        try:
            first, last = int(parts[1]), int(parts[2])
            step = int(parts[3]) if len(parts) > 3 else 1
            names = [parts[0] % i for i in range(first, last + 1, step)] if step > 0 else []
        except (IndexError, ValueError, TypeError):
            raise ReaderError(path, f"unreadable ElementDataFile pattern {value!r} (expected 'name%d.raw first last step')") from None
        if not names:
            raise ReaderError(path, f"ElementDataFile pattern {value!r} names no files")
        return names
    return [value]


def check_metaimage(path: str | Path, limits: ReadLimits | None = None) -> None:
    """Refuse a MetaImage whose header or data files are hostile or inconsistent (see the module doc).

    Raises:
        ReaderError: ``outside_source``, ``not_regular_file``, ``too_large``, ``truncated``;
            ``unreadable`` for a missing data file or header field.
    """
    path = Path(path)
    header = read_meta_header(path)
    names = _data_files(path, header)
    sizes: list[int] = []
    for name in names:
        target = Path(name) if Path(name).is_absolute() else path.parent / name
        if not os.path.lexists(target):
            raise ReaderError(path, f"data file {target.name} named by ElementDataFile is missing (expected at {target})", ReasonCode.MISSING_DATA_FILE)
        st = regular_file(target, report=path, role=f"data file {name} (ElementDataFile)")  # devices, FIFOs: refused first
        inside_folder(path, target, role=f"data file {name} (ElementDataFile)")
        sizes.append(st.st_size)
    dim_text = header.get("DimSize")
    if not dim_text:
        raise ReaderError(path, "MetaImage header has no DimSize line")
    dims = [_number(path, "DimSize", d) for d in dim_text.split()]
    channels = _number(path, "ElementNumberOfChannels", header.get("ElementNumberOfChannels", "1"))
    element = header.get("ElementType").upper()
    itemsize = MET_SIZES.get(element)
    voxels = math.prod(dims) * max(channels, 1)
    what = f"{'x'.join(map(str, dims))}{f' x {channels} channels' if channels > 1 else ''} {element or '?'} voxels"
    check_declared(path, limits, voxels=voxels, nbytes=voxels * (itemsize or 1), what=what)
    binary = header.get("BinaryData", "True").lower() not in ("false", "0")
    compressed = header.get("CompressedData", "False").lower() in ("true", "1")
    if not names:
        available = os.path.getsize(path) - header.data_offset
        where = "after the header (ElementDataFile = LOCAL)"
    else:
        header_size = header.get("HeaderSize", "0").strip()
        skip = 0 if header_size == "-1" else _number(path, "HeaderSize", header_size)  # -1: data at the end of the file
        available = sum(max(size - skip, 0) for size in sizes)
        where = f"in data file {names[0]}" if len(names) == 1 else f"in the {len(names)} data files ({names[0]}, ...)"
    if compressed:
        declared = header.get("CompressedDataSize")
        if declared and _number(path, "CompressedDataSize", declared) > available:
            reason = f"truncated: CompressedDataSize = {declared} bytes but only {available:,} bytes are present {where}"
            raise ReaderError(path, reason, code="truncated")
    elif binary and itemsize is not None and available < voxels * itemsize:
        raise ReaderError(
            path,
            f"truncated: DimSize {what} need {voxels * itemsize:,} bytes but only {max(available, 0):,} are present {where}",
            code="truncated",
        )


def read_metaimage(path: str | Path, limits: ReadLimits | None = None) -> Volume:
    """Read ``.mhd``/``.mha`` into a Volume (3-D or 4-D).

    ``limits`` (default :data:`~pipeline.core.limits.DEFAULT_READ_LIMITS`) bounds what the
    header may declare; :func:`check_metaimage` runs before SimpleITK opens anything.

    Raises:
        ReaderError: missing, outside or non-regular data file (named), declared size beyond
            the limits or the data, unreadable file, multi-component pixels, non-finite voxels.
    """
    import SimpleITK as sitk

    path = Path(path)
    st = regular_file(path)
    if st.st_size == 0:
        raise ReaderError(path, "empty file (0 bytes)", ReasonCode.EMPTY_FILE)
    check_metaimage(path, limits)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()
        detail = next((line.strip() for line in msg if "ERROR" in line.upper() or "could not" in line.lower()), msg[-1] if msg else "")
        raise ReaderError(path, f"SimpleITK could not read the MetaImage: {detail}", ReasonCode.UNREADABLE) from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ReaderError(path, f"multi-component pixels ({img.GetNumberOfComponentsPerPixel()} per voxel) are not supported", ReasonCode.UNSUPPORTED_IMAGE)
    dim = img.GetDimension()
    array = sitk.GetArrayFromImage(img)  # [t,] z, y, x
    spacing = np.asarray(img.GetSpacing(), float)
    origin = np.asarray(img.GetOrigin(), float)
    direction = np.asarray(img.GetDirection(), float).reshape(dim, dim)
    if dim == 2:
        array = array[None]
        spacing = np.append(spacing, 1.0)
        origin = np.append(origin, 0.0)
        d3 = np.eye(3)
        d3[:2, :2] = direction
        direction = d3
    elif dim == 4:
        if not (np.allclose(direction[:3, 3], 0) and np.allclose(direction[3, :3], 0)):
            raise ReaderError(path, "4-D MetaImage whose 4th axis mixes with space is not supported", ReasonCode.UNSUPPORTED_IMAGE)
        spacing, origin, direction = spacing[:3], origin[:3], direction[:3, :3]
        if array.shape[0] == 1:
            array = array[0]
    elif dim != 3:
        raise ReaderError(path, f"{dim}-D MetaImage is not supported (2-D, 3-D or 4-D only)", ReasonCode.UNSUPPORTED_IMAGE)
    array = _as_volume_dtype(np.ascontiguousarray(array))
    check_finite(array, path)
    try:
        return Volume(array=array, spacing=spacing, origin=origin, direction=direction, meta={"source_format": "metaimage"})
    except ValueError as exc:
        raise ReaderError(path, f"invalid geometry: {exc}", ReasonCode.GEOMETRY_UNKNOWN) from exc
