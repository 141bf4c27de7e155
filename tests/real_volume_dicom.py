"""DICOM series made from a REAL MRI volume, resliced onto chosen scanner geometries.

The source is a real FLAIR (open_ms, MNI space, 182x218x182, 1 mm). For every acquisition
we pick the target grid first (direction, spacing, matrix, origin, all LPS/ITK order, as in
:class:`pipeline.core.volume.Volume`), resample the source onto it with SimpleITK *through
physical space* (so the anatomy lands at the same world place whatever the slice plane),
quantise to int16 and write it with :mod:`dicom_factory`. The array + geometry written are
therefore known exactly, independently of any DICOM reader.

Example:
    >>> src = load_source(path)                                                # doctest: +SKIP
    >>> grid = target_grid(SAGITTAL, (2, 2, 2))                               # doctest: +SKIP
    >>> stored = quantise(reslice(src, grid))                                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from tests import dicom_factory as fac

SOURCE_RELPATH = "open_ms/cross_sectional/MNI/patient07/FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
SOURCE_ORIGIN = (-90.0, 126.0, -72.0)
"""LPS position (mm) of source voxel (0, 0, 0): what the file's header says (checked on load)."""
SOURCE_DIRECTION = np.diag([1.0, -1.0, 1.0])
"""Source voxel axes in LPS: i → L, j → A (−P), k → S (the NIfTI's RAS affine is diag(−1, 1, 1))."""
CENTRE = (-10.3, 17.6, 18.2)
"""LPS centre (mm) of every target field of view: about the middle of the brain (off-grid on purpose)."""
FOV = (140.0, 172.0, 140.0)
"""Field of view (mm) along the L-R, A-P and S-I world axes; a voxel axis gets the extent of
the world axis it is closest to (so a sagittal slice is 172 (A-P) x 140 (S-I))."""
QUANT = 16.0
"""Stored value = round(intensity × QUANT): the source (−20…200) fills about ±3200 of int16."""


@dataclass(frozen=True)
class Grid:
    """A target voxel grid, lesionflow conventions (ITK order, LPS mm)."""

    size: tuple[int, int, int]  # (x, y, z)
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(compare=False)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    @property
    def affine_lps(self) -> np.ndarray:
        aff = np.eye(4)
        aff[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        aff[:3, 3] = self.origin
        return aff

    @property
    def affine_ras(self) -> np.ndarray:
        """voxel (x, y, z) → RAS+ mm, computed here (not with pipeline.core.geometry)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps


def load_source(path: str | Path) -> sitk.Image:
    """The real volume as float32, with its header geometry checked against SOURCE_*."""
    img = sitk.ReadImage(str(path), sitk.sitkFloat32)
    assert img.GetSize() == (182, 218, 182), img.GetSize()
    np.testing.assert_allclose(img.GetSpacing(), (1.0, 1.0, 1.0), atol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), SOURCE_ORIGIN, atol=1e-4)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)), SOURCE_DIRECTION, atol=1e-6)
    # place it explicitly at the known LPS geometry (so nothing depends on header rounding)
    img.SetOrigin(SOURCE_ORIGIN)
    img.SetDirection(tuple(SOURCE_DIRECTION.reshape(-1)))
    return img


def target_grid(direction: np.ndarray, spacing: Sequence[float], *, centre: Sequence[float] = CENTRE,
                fov: Sequence[float] = FOV) -> Grid:
    """A grid with ``direction``/``spacing`` covering ``fov`` around ``centre`` (LPS)."""
    direction = np.asarray(direction, float)
    spacing = np.asarray(spacing, float)
    size = []
    for i in range(3):
        world_axis = int(np.argmax(np.abs(direction[:, i])))
        size.append(int(round(fov[world_axis] / spacing[i])))
    size_arr = np.asarray(size, float)
    origin = np.asarray(centre, float) - direction @ (spacing * (size_arr - 1) / 2.0)
    return Grid(tuple(size), tuple(float(s) for s in spacing), tuple(float(o) for o in origin), direction)


def reslice(source: sitk.Image, grid: Grid) -> np.ndarray:
    """Source intensities at the grid's voxel centres (linear, through physical space), [z, y, x]."""
    out = sitk.Resample(
        source, [int(s) for s in grid.size], sitk.Transform(), sitk.sitkLinear,
        grid.origin, grid.spacing, tuple(grid.direction.reshape(-1)), 0.0, sitk.sitkFloat32,
    )
    arr = sitk.GetArrayFromImage(out)
    assert arr.shape == grid.shape_zyx
    return arr


def quantise(values: np.ndarray, scale: float = QUANT) -> np.ndarray:
    return np.clip(np.rint(values * scale), -32768, 32767).astype(np.int16)


def sample_world(image: sitk.Image, grid_like: sitk.Image) -> np.ndarray:
    """``image`` resampled (linear, physical space) onto ``grid_like``'s grid, [z, y, x]."""
    out = sitk.Resample(image, grid_like, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


@dataclass(frozen=True)
class Variant:
    """One synthetic acquisition of the real volume."""

    name: str
    direction: np.ndarray = field(compare=False)
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    write: dict[str, Any] = field(default_factory=dict, compare=False)  # write_series options
    enhanced: bool = False
    frame_order: str = "spatial"  # enhanced only: "spatial", "reversed" or "shuffled" storage order
    slope: float = 1.0
    intercept: float = 0.0


@dataclass
class Written:
    """What was written: the stored array, the real values, and the geometry as written."""

    variant: Variant
    folder: Path
    grid: Grid
    stored: np.ndarray  # int16, [z, y, x], in the written slice order k
    values: np.ndarray  # stored × slope + intercept, the real values (int16 or float32)
    files: list[Path]
    frame_order: list[int] | None = None  # enhanced: slice index k of each stored frame, in file order


def write_variant(source: sitk.Image, variant: Variant, folder: Path, series_number: int = 1) -> Written:
    grid = target_grid(variant.direction, variant.spacing)
    stored = quantise(reslice(source, grid))
    if variant.slope != 1.0 or variant.intercept != 0.0:
        values = (stored.astype(np.float64) * variant.slope + variant.intercept).astype(np.float32)
    else:
        values = stored
    common = dict(spacing=grid.spacing, origin=grid.origin, direction=grid.direction, series_number=series_number,
                  description=f"real FLAIR {variant.name}")
    if variant.enhanced:
        assert variant.slope == 1.0 and variant.intercept == 0.0, "write_enhanced writes no rescale"
        n = grid.size[2]
        order = {"spatial": list(range(n)), "reversed": list(range(n))[::-1],
                 "shuffled": [int(i) for i in np.random.default_rng(3).permutation(n)]}[variant.frame_order]
        files = [fac.write_enhanced(folder, stored, frame_order=order, **common, **variant.write)]
        return Written(variant, folder, grid, stored, values, files, order)
    files = fac.write_series(folder, stored, slope=variant.slope, intercept=variant.intercept, **common, **variant.write)
    return Written(variant, folder, grid, stored, values, files)
