"""Lesion-volume tables from a binary mask with its geometry.

Connected components use ``cc3d`` with 6-, 18- or 26-connectivity (default 26, the usual
choice for MS lesion counts). Volumes use the voxel size from the mask's geometry:
``volume_mm3 = voxels * prod(spacing)``; totals are reported in mL (1 mL = 1000 mm³).
Centroids are LPS world coordinates (mm) of the mean voxel index of each component.

Example:
    >>> import numpy as np
    >>> from pipeline.core.volume import Volume
    >>> m = np.zeros((10, 10, 10), np.uint8); m[2:4, 2:4, 2:4] = 1; m[7, 7, 7] = 1
    >>> summary, rows = lesion_table(Volume(m, spacing=(1, 1, 2)))
    >>> summary["lesion_count"], summary["total_volume_ml"]
    (2, 0.018)
    >>> [r["volume_mm3"] for r in rows]
    [16.0, 2.0]
"""

from __future__ import annotations

from typing import Any

import cc3d
import numpy as np

from pipeline.core.volume import Volume


def lesion_table(mask: Volume, connectivity: int = 26, min_size_mm3: float = 0.0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-mask summary and per-lesion rows.

    Args:
        mask: 3-D volume; every non-zero voxel is lesion.
        connectivity: 6, 18 or 26 (voxel neighbourhood).
        min_size_mm3: components smaller than this (mm³) are dropped before counting.

    Returns:
        ``(summary, rows)`` where summary has ``total_volume_ml``, ``lesion_count``,
        ``voxel_volume_mm3``, ``connectivity``, ``min_lesion_mm3``; rows (largest first) have
        ``lesion_id, voxels, volume_mm3, centroid_{x,y,z}_mm, bbox_min_zyx, bbox_max_zyx``.
    """
    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    if mask.is_4d:
        raise ValueError("lesion_table needs a 3-D mask; got a 4-D volume")
    binary = np.ascontiguousarray(mask.array != 0)
    voxel_mm3 = mask.voxel_volume_mm3
    labels = cc3d.connected_components(binary.astype(np.uint8), connectivity=connectivity)
    stats = cc3d.statistics(labels)
    counts = np.asarray(stats["voxel_counts"])
    rows: list[dict[str, Any]] = []
    for comp in range(1, len(counts)):
        n = int(counts[comp])
        if n == 0 or n * voxel_mm3 < min_size_mm3:
            continue
        cz, cy, cx = (float(c) for c in stats["centroids"][comp])  # array order z, y, x
        world = mask.index_to_world((cx, cy, cz))
        bbox = stats["bounding_boxes"][comp]  # tuple of slices (z, y, x)
        rows.append(
            {
                "voxels": n,
                "volume_mm3": round(n * voxel_mm3, 6),
                "centroid_x_mm": round(float(world[0]), 4),
                "centroid_y_mm": round(float(world[1]), 4),
                "centroid_z_mm": round(float(world[2]), 4),
                "bbox_min_zyx": ",".join(str(s.start) for s in bbox),
                "bbox_max_zyx": ",".join(str(s.stop - 1) for s in bbox),
            }
        )
    rows.sort(key=lambda r: (-r["voxels"], r["bbox_min_zyx"]))
    for i, r in enumerate(rows, start=1):
        r["lesion_id"] = i
    total_voxels = sum(r["voxels"] for r in rows)
    summary = {
        "total_volume_ml": round(total_voxels * voxel_mm3 / 1000.0, 6),
        "lesion_count": len(rows),
        "voxel_volume_mm3": voxel_mm3,
        "connectivity": connectivity,
        "min_lesion_mm3": min_size_mm3,
    }
    return summary, [{"lesion_id": r.pop("lesion_id"), **r} for r in rows]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    a = np.asarray(a) != 0
    b = np.asarray(b) != 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denom
