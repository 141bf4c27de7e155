"""Slice stacks: a folder of numbered 2-D TIFF slices (and their ``_mask`` slices) as one volume.

The layout (the TCGA LGG set of Buda et al. 2019, "kaggle_3m"): ``<stem>_<n>.tif`` for slice
``n`` (1-based, *not* zero-padded: sort numerically, 1, 2, ..., 10, 11) and ``<stem>_<n>_mask.tif``
for its mask (0/255). An image slice may hold several colour planes (samples), each one a
modality named by configuration (:class:`~pipeline.core.config.SliceStackConfig`).

Conventions:

* slice ``n`` becomes array index ``z = n - 1``; a TIFF row is ``y``, a column ``x``;
* the files hold no spacing or orientation: the volume gets unit spacing (or the configured one),
  identity direction, origin 0, and ``meta["geometry_source"]`` = ``"unknown"`` (or
  ``"configured_spacing"``), which the store records (:attr:`storage_schemas.models.Geometry.source`);
* masks: 255 (and any other non-zero value) is kept as is except 255 → 1, so a mask of
  0/255 or 0/1 becomes 0/1 and one with other values stays non-binary for the session's label check.

Files are read with tifffile; each slice's declared size is checked against the
:class:`~pipeline.core.limits.ReadLimits` before anything is allocated.

Example:
    >>> parse_slice_name("TCGA_CS_4941_19960909_10_mask.tif")
    ('TCGA_CS_4941_19960909', 10, True)
    >>> parse_slice_name("TCGA_CS_4941_19960909_2.tif")
    ('TCGA_CS_4941_19960909', 2, False)
    >>> parse_slice_name("notes.tif") is None
    True
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.limits import ReadLimits
from pipeline.core.volume import Volume
from pipeline.io.readers.errors import ReaderError, ReasonCode
from pipeline.io.readers.limits import check_declared, regular_file, resolve

__all__ = ["SLICE_SUFFIXES", "is_slice_file", "parse_slice_name", "read_slice_planes", "read_slice_stack", "read_mask_stack",
           "equal_planes", "sort_slices"]

SLICE_SUFFIXES = (".tif", ".tiff")
"""File endings of slice-stack slices (case-insensitive)."""


def _pattern(mask_suffix: str) -> re.Pattern[str]:
    return re.compile(rf"^(?P<stem>.+?)_(?P<n>\d+)(?P<mask>{re.escape(mask_suffix)})?\.tiff?$", re.IGNORECASE)


def is_slice_file(path: str | os.PathLike[str]) -> bool:
    """True for a ``.tif`` / ``.tiff`` name (by name; nothing is opened)."""
    return os.fspath(path).lower().endswith(SLICE_SUFFIXES)


def parse_slice_name(name: str, mask_suffix: str = "_mask") -> tuple[str, int, bool] | None:
    """``(stem, slice number, is_mask)`` of a slice file name, or None when it is not numbered."""
    m = _pattern(mask_suffix).match(os.path.basename(name))
    if m is None:
        return None
    return m["stem"], int(m["n"]), m["mask"] is not None


def sort_slices(paths: Sequence[str | os.PathLike[str]], mask_suffix: str = "_mask") -> list[Path]:
    """``paths`` ordered by slice number (numerically: 2 before 10). Unnumbered names raise ValueError."""
    keyed = []
    for p in paths:
        parsed = parse_slice_name(os.fspath(p), mask_suffix)
        if parsed is None:
            raise ValueError(f"{p}: not a numbered slice (<stem>_<n>.tif)")
        keyed.append((parsed[1], Path(p)))
    return [p for _, p in sorted(keyed)]


def _check_numbering(paths: Sequence[Path], mask_suffix: str) -> None:
    numbers = [parse_slice_name(str(p), mask_suffix)[1] for p in paths]  # type: ignore[index]
    if len(set(numbers)) != len(numbers):
        dup = sorted({n for n in numbers if numbers.count(n) > 1})
        raise ReaderError(paths[0].parent, f"slice stack numbers slices {dup[:5]} more than once", ReasonCode.DUPLICATE_SLICE)
    missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
    if missing:
        raise ReaderError(paths[0].parent, f"slice stack of {len(numbers)} slices lacks slice number(s) {missing[:10]} "
                                           f"(slices are numbered from 1)", ReasonCode.MISSING_SLICE)


def read_slice_planes(paths: Sequence[str | os.PathLike[str]], limits: ReadLimits | None = None, mask_suffix: str = "_mask") -> np.ndarray:
    """Every plane of a numbered slice stack, ``(planes, z, y, x)`` as stored (uint8 for the LGG set).

    Raises:
        ReaderError: a missing or repeated slice number (``missing_slice`` / ``duplicate_slice``),
            slices of different sizes or plane counts (``incomplete_stack``), an unreadable file
            (``corrupt``), more voxels or bytes than ``limits`` allow (``too_large``).
    """
    import tifffile

    if not paths:
        raise ReaderError(".", "empty slice stack", ReasonCode.EMPTY_SERIES)
    ordered = sort_slices(paths, mask_suffix)
    _check_numbering(ordered, mask_suffix)
    limits = resolve(limits)
    planes: list[np.ndarray] = []
    first: tuple[tuple[int, ...], np.dtype] | None = None
    for i, path in enumerate(ordered):
        regular_file(path)
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                shape, dtype = tuple(int(s) for s in page.shape), np.dtype(page.dtype)
                if first is None:
                    check_declared(path, limits, voxels=int(np.prod(shape)) * len(ordered), nbytes=int(np.prod(shape)) * dtype.itemsize * len(ordered),
                                   what=f"{len(ordered)} slices of {'x'.join(map(str, shape))} {dtype}")
                    first = (shape, dtype)
                elif (shape, dtype) != first:
                    raise ReaderError(path, f"slice {i + 1} is {'x'.join(map(str, shape))} {dtype}, slice 1 is "
                                            f"{'x'.join(map(str, first[0]))} {first[1]}", ReasonCode.INCOMPLETE_STACK)
                arr = page.asarray()
        except ReaderError:
            raise
        except Exception as exc:  # tifffile raises many types for damaged files
            raise ReaderError(path, f"unreadable TIFF slice ({type(exc).__name__}: {exc})", ReasonCode.CORRUPT) from exc
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise ReaderError(path, f"TIFF slice of shape {arr.shape}: expected rows x columns (x samples)", ReasonCode.UNSUPPORTED_IMAGE)
        planes.append(arr)
    stack = np.stack(planes)  # (z, y, x, planes)
    return np.ascontiguousarray(np.moveaxis(stack, -1, 0))


def _volume(array: np.ndarray, spacing_mm: Sequence[float] | None, n_slices: int) -> Volume:
    source = "unknown" if spacing_mm is None else "configured_spacing"
    return Volume(array, spacing=tuple(spacing_mm) if spacing_mm is not None else (1.0, 1.0, 1.0),
                  meta={"geometry_source": source, "slices": n_slices})


def read_slice_stack(paths: Sequence[str | os.PathLike[str]], plane: int = 0, spacing_mm: Sequence[float] | None = None,
                     limits: ReadLimits | None = None, mask_suffix: str = "_mask") -> Volume:
    """One colour plane of a numbered slice stack as a 3-D :class:`Volume` ``[z, y, x]``, float32.

    Args:
        paths: the image slices (any order; sorted by their number).
        plane: the colour plane (sample) to take, 0-based.
        spacing_mm: voxel size (x, y, z) in mm when known; None: unit spacing, geometry unknown.
        limits: reader ceilings (:class:`~pipeline.core.limits.ReadLimits`).
    """
    planes = read_slice_planes(paths, limits, mask_suffix)
    if not 0 <= plane < planes.shape[0]:
        raise ReaderError(Path(paths[0]).parent, f"slice stack has {planes.shape[0]} plane(s); plane {plane} was asked for",
                          ReasonCode.UNSUPPORTED_IMAGE)
    return _volume(planes[plane].astype(np.float32), spacing_mm, planes.shape[1])


def read_mask_stack(paths: Sequence[str | os.PathLike[str]], spacing_mm: Sequence[float] | None = None,
                    limits: ReadLimits | None = None, mask_suffix: str = "_mask") -> Volume:
    """The ``_mask`` slices of a stack as a uint8 :class:`Volume`, 255 → 1 (0/255 and 0/1 masks give 0/1).

    A multi-plane mask is read from its first plane. Other values are kept, so the session's
    label check rejects a mask that is not binary (``label_not_binary``).
    """
    planes = read_slice_planes(paths, limits, mask_suffix)
    mask = planes[0]
    if mask.dtype != np.uint8 and mask.max(initial=0) > 255:
        raise ReaderError(Path(paths[0]).parent, f"mask slices hold values up to {int(mask.max())}: expected 0/255 or 0/1",
                          ReasonCode.UNSUPPORTED_IMAGE)
    out = mask.astype(np.uint8)
    out[mask == 255] = 1
    return _volume(out, spacing_mm, planes.shape[1])


def equal_planes(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two planes hold the same voxels (a copied sequence; exact equality, as the LGG set copies bytes)."""
    return a.shape == b.shape and bool(np.array_equal(a, b))
