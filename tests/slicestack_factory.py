"""Synthetic numbered TIFF slice stacks (the LGG set's layout) for the reader, ingest and recipe tests.

``write_stack(folder, stem, n)`` writes ``<stem>_<k>.tif`` (RGB, 3 planes) and ``<stem>_<k>_mask.tif``
(0/255) for k = 1..n, not zero-padded. Every voxel of plane p of slice k holds a value that
encodes (k, p), so a test can check order and channel mapping from the voxels alone; a disc of
tumour (255) sits in the slices listed in ``tumour_slices``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def plane_value(k: int, p: int) -> int:
    """Background value of plane ``p`` (0-based) of slice ``k`` (1-based): 10 k + p (k ≤ 24)."""
    return 10 * k + p


def write_stack(folder: Path, stem: str, n: int, size: int = 32, tumour_slices: Iterable[int] = (), copy_flair_into: int | None = None,
                masks: bool = True, radius: int = 5, seed: int = 0) -> dict[int, int]:
    """Write the stack; returns the tumour voxels per slice number. ``copy_flair_into``: a plane
    (0-based) overwritten with the FLAIR plane (1), as the LGG set does for a missing sequence."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    tumour = set(tumour_slices)
    counts: dict[int, int] = {}
    for k in range(1, n + 1):
        rgb = np.empty((size, size, 3), np.uint8)
        for p in range(3):
            rgb[..., p] = plane_value(k, p)
        rgb[0, 0, :] += rng.integers(0, 3, 3).astype(np.uint8)  # planes differ beyond their background
        mask = np.zeros((size, size), np.uint8)
        if k in tumour:
            disc = (yy - size // 2) ** 2 + (xx - size // 2 - k % 3) ** 2 <= radius**2
            mask[disc] = 255
            rgb[disc, 1] = 250  # bright on FLAIR
        if copy_flair_into is not None:
            rgb[..., copy_flair_into] = rgb[..., 1]
        counts[k] = int((mask > 0).sum())
        tifffile.imwrite(folder / f"{stem}_{k}.tif", rgb, photometric="rgb")
        if masks:
            tifffile.imwrite(folder / f"{stem}_{k}_mask.tif", mask)
    return counts
