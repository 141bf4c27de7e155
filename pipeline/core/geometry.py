"""Voxel-to-world geometry: the single place where LPS (DICOM/ITK) and RAS (NIfTI) meet.

A :class:`~pipeline.core.volume.Volume` stores spacing/origin/direction in LPS. NIfTI stores a
4x4 affine that maps voxel index ``(i, j, k)`` to RAS+ millimetres. The two differ by a
sign flip of the first two world axes: ``RAS = diag(-1, -1, 1) @ LPS``.

Example:
    >>> import numpy as np
    >>> from pipeline.core.volume import Volume
    >>> v = Volume(np.zeros((2, 3, 4)), spacing=(1, 2, 3), origin=(10, 20, 30))
    >>> ras = affine_ras(v)
    >>> ras[:3, 3].tolist()
    [-10.0, -20.0, 30.0]
    >>> spacing, origin, direction = decompose_ras_affine(ras)
    >>> spacing, origin
    ((1.0, 2.0, 3.0), (10.0, 20.0, 30.0))
"""

from __future__ import annotations

import numpy as np

from pipeline.core.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""Homogeneous matrix converting LPS world coordinates to RAS (and back: it is its own inverse)."""


def affine_ras(volume: Volume) -> np.ndarray:
    """NIfTI-style 4x4 affine: voxel index (x, y, z order) → RAS+ mm."""
    return LPS_TO_RAS @ volume.affine_lps


def decompose_affine(affine_lps: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """Split a voxel→LPS affine into ``(spacing, origin, direction)``.

    Spacing is the column norm; direction columns are normalised. Shear is not
    representable in ITK geometry: a non-orthogonal affine raises ``ValueError``.
    """
    affine_lps = np.asarray(affine_lps, dtype=float)
    m = affine_lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"affine has a zero or invalid axis: column norms {spacing.tolist()}")
    direction = m / spacing[None, :]
    gram = direction.T @ direction
    if not np.allclose(gram, np.eye(3), atol=1e-4):
        raise ValueError("affine is sheared (non-orthogonal axes); cannot be stored as spacing+direction")
    return (
        tuple(float(s) for s in spacing),  # type: ignore[return-value]
        tuple(float(o) for o in affine_lps[:3, 3]),  # type: ignore[return-value]
        direction,
    )


def decompose_ras_affine(affine_ras_: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    """Split a NIfTI (voxel→RAS) affine into LPS ``(spacing, origin, direction)``."""
    return decompose_affine(LPS_TO_RAS @ np.asarray(affine_ras_, dtype=float))


def orientation_code(direction: np.ndarray, convention: str = "RAS") -> str:
    """Three-letter axis code (e.g. ``"RAS"``, ``"LPS"``, ``"LAS"``) of the nearest axes.

    Letter *i* names the world direction towards which voxel axis *i* (x, y, z) increases,
    in the given ``convention`` (``"RAS"`` like nibabel's ``aff2axcodes`` or ``"LPS"``).
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if convention.upper() == "RAS":
        d = np.diag([-1.0, -1.0, 1.0]) @ d
        pos, neg = "RAS", "LPI"
    elif convention.upper() == "LPS":
        pos, neg = "LPS", "RAI"
    else:
        raise ValueError(f"unknown convention {convention!r}; use 'RAS' or 'LPS'")
    code = []
    for i in range(3):
        col = d[:, i]
        ax = int(np.argmax(np.abs(col)))
        code.append(pos[ax] if col[ax] > 0 else neg[ax])
    return "".join(code)


def obliquity_deg(direction: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis and its nearest world axis; 0 = not oblique."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    cosines = np.max(np.abs(d), axis=0).clip(-1.0, 1.0)
    return float(np.degrees(np.max(np.arccos(cosines))))


def world_bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS bounding box (min, max) of the voxel centres, in mm."""
    x, y, z = volume.shape_xyz
    corners = np.array([[i, j, k] for i in (0, x - 1) for j in (0, y - 1) for k in (0, z - 1)], float)
    world = volume.index_to_world(corners)
    return world.min(axis=0), world.max(axis=0)
