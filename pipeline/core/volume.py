"""The one image type that flows through the library.

Conventions (used everywhere in lesionflow):

* ``array`` is a numpy array indexed ``[z, y, x]`` for 3-D and ``[t, z, y, x]`` for 4-D
  volumes, exactly as :func:`SimpleITK.GetArrayFromImage` returns it.
* ``spacing``, ``origin`` and the columns of ``direction`` are given in ITK order
  ``(x, y, z)``, in millimetres, in the **LPS** patient coordinate system used by DICOM
  and ITK. ``direction[:, i]`` is the unit vector of voxel axis *i* (x, y, z) in LPS.
* The world position (LPS, mm) of voxel index ``(i, j, k)`` (= x, y, z, i.e. ``array[k, j, i]``)
  is ``origin + direction @ (spacing * (i, j, k))``.

Conversions to NIfTI's RAS+ affine live in :mod:`pipeline.core.geometry` and nowhere else.

Example:
    >>> import numpy as np
    >>> v = Volume(np.zeros((4, 5, 6), np.float32), spacing=(1.0, 1.0, 2.5))
    >>> v.shape_xyz
    (6, 5, 4)
    >>> v.index_to_world((1, 0, 0))
    array([1., 0., 0.])
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


def affine_lps_of(spacing: Any, origin: Any, direction: Any) -> np.ndarray:
    """4x4 voxel-index (x, y, z) → LPS mm matrix of a grid: ``[direction * spacing | origin]``.

    The one place the voxel-to-world formula is written; every grid type uses it.
    """
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing, float)[None, :]
    aff[:3, 3] = np.asarray(origin, float)
    return aff


def _as_tuple3(values: Any, name: str) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.shape != (3,):
        raise ValueError(f"{name} must have 3 components, got {arr.tolist()}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


@dataclass(frozen=True)
class Volume:
    """A 3-D or 4-D image with its complete voxel-to-world geometry (LPS, mm).

    Attributes:
        array: voxel values, ``[z, y, x]`` or ``[t, z, y, x]``.
        spacing: voxel size in mm along x, y, z (ITK order).
        origin: LPS world position (mm) of the centre of voxel (0, 0, 0).
        direction: 3x3 direction cosines; column *i* is voxel axis *i* in LPS.
        meta: free-form, non-identifying metadata (e.g. SeriesDescription).
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim not in (3, 4):
            raise ValueError(f"Volume array must be 3-D or 4-D, got shape {self.array.shape}")
        object.__setattr__(self, "spacing", _as_tuple3(self.spacing, "spacing"))
        object.__setattr__(self, "origin", _as_tuple3(self.origin, "origin"))
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if not np.all(np.isfinite(direction)):
            raise ValueError("direction cosines must be finite")
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        object.__setattr__(self, "direction", direction)

    # ----------------------------------------------------------------- shape helpers
    @property
    def is_4d(self) -> bool:
        return self.array.ndim == 4

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Spatial shape in array order (z, y, x)."""
        return tuple(int(s) for s in self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """Spatial shape in ITK order (x, y, z)."""
        z, y, x = self.shape_zyx
        return (x, y, z)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm³."""
        return float(np.prod(self.spacing))

    # ----------------------------------------------------------------- geometry
    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping voxel index ``(i, j, k, 1)`` (x, y, z order) to LPS mm."""
        return affine_lps_of(self.spacing, self.origin, self.direction)

    def index_to_world(self, ijk: Any) -> np.ndarray:
        """LPS world coordinates (mm) of voxel indices ``(..., 3)`` given in (x, y, z) order."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ (self.direction * np.asarray(self.spacing)[None, :]).T + np.asarray(self.origin)

    def same_grid(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when both volumes share shape, spacing, origin and direction (within ``atol`` mm)."""
        return (
            self.shape_zyx == other.shape_zyx
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """A copy with a new array (and optionally other fields) on the same geometry."""
        return replace(self, array=array, **changes)

    # ----------------------------------------------------------------- SimpleITK bridge
    def to_sitk(self) -> Any:
        """A SimpleITK image (3-D only) carrying the same geometry."""
        import SimpleITK as sitk

        if self.is_4d:
            raise ValueError("to_sitk() supports 3-D volumes only; iterate over array[t]")
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.reshape(-1)))
        return img

    @classmethod
    def from_sitk(cls, img: Any, meta: dict[str, Any] | None = None) -> Volume:
        """Build a Volume from a 3-D SimpleITK image."""
        import SimpleITK as sitk

        if img.GetDimension() != 3:
            raise ValueError(f"expected a 3-D image, got {img.GetDimension()}-D")
        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing=img.GetSpacing(),
            origin=img.GetOrigin(),
            direction=np.asarray(img.GetDirection()).reshape(3, 3),
            meta=dict(meta or {}),
        )
