"""MetaImage reader (``.mhd`` + data file, or single-file ``.mha``) via SimpleITK.

ITK already uses LPS, so spacing/origin/direction are copied as they are. 4-D images
become 4-D Volumes (``[t, z, y, x]``; the 4th axis' spacing/origin/direction are dropped
after checking that it does not mix with the spatial axes).

Example:
    >>> from pipeline.io.readers.metaimage import read_metaimage   # doctest: +SKIP
    >>> vol = read_metaimage("T1.mhd")                            # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io.readers.errors import ReaderError, ReasonCode
from pipeline.io.readers.nifti import _as_volume_dtype, check_finite
from pipeline.core.volume import Volume


def _mhd_header(path: Path) -> dict[str, str]:
    """Parse the ``key = value`` lines of a MetaImage header (stops at ElementDataFile)."""
    fields: dict[str, str] = {}
    with open(path, "rb") as fh:
        for raw in fh:
            line = raw.decode("latin-1").strip()
            if "=" not in line:
                continue
            key, _, value = line.partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    return fields


def _check_data_files(path: Path) -> None:
    """For a ``.mhd``: the referenced data file(s) must exist; raise naming the missing one."""
    try:
        header = _mhd_header(path)
    except OSError as exc:
        raise ReaderError(path, f"cannot read header: {exc.strerror}", ReasonCode.UNREADABLE) from exc
    if "ElementDataFile" not in header:
        raise ReaderError(path, "MetaImage header has no ElementDataFile line", ReasonCode.MISSING_DATA_FILE)
    data_file = header["ElementDataFile"]
    if data_file.upper() == "LOCAL":
        return
    if data_file.upper().startswith("LIST") or "%" in data_file:
        return  # multi-file layouts: let ITK report precisely
    target = (path.parent / data_file) if not Path(data_file).is_absolute() else Path(data_file)
    if not target.is_file():
        raise ReaderError(path, f"data file {target.name} named by ElementDataFile is missing (expected at {target})", ReasonCode.MISSING_DATA_FILE)


def read_metaimage(path: str | Path) -> Volume:
    """Read ``.mhd``/``.mha`` into a Volume (3-D or 4-D).

    Raises:
        ReaderError: missing data file (named), unreadable file, multi-component pixels,
            non-finite voxels.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file():
        raise ReaderError(path, "file not found", ReasonCode.UNREADABLE)
    if path.stat().st_size == 0:
        raise ReaderError(path, "empty file (0 bytes)", ReasonCode.EMPTY_FILE)
    if path.suffix.lower() == ".mhd":
        _check_data_files(path)
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
