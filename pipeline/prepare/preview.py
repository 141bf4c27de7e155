"""See the augmentation bank: a grid of a case's stored samples with the label outlined.

Each tile is the middle axial slice (``z = pz // 2``, the slice through the sample's centre, so a
lesion-centred sample shows its lesion) of one channel, grey-windowed at the 1st-99th percentile
of the tiles shown, with the label's outline in red. Lesion-centred samples come first. Used by
``lesionflow augment-preview`` and by the data-quality report.

Example:
    >>> import tempfile
    >>> from tests.store_factory import make_store
    >>> from pipeline.prepare.augment import BankConfig
    >>> from pipeline.prepare.bank import build_bank
    >>> root = tempfile.mkdtemp() + "/s.zarr"
    >>> case = make_store(root, n_cases=1, shape_zyx=(24, 28, 26))[0]
    >>> _ = build_bank(root, case, BankConfig(samples_per_case=6, patch_zyx=(16, 16, 16)))
    >>> grid = bank_grid(root, case, n_samples=6, columns=3, tile_px=32)
    >>> grid.shape, grid.dtype
    ((66, 100, 3), dtype('uint8'))
    >>> preview_png(root, case)[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.png import png_bytes
from pipeline.prepare.bank import dequantize, open_bank

OUTLINE_RGB = (1.0, 0.15, 0.1)
GAP_PX = 2


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~inner


def _nearest(a: np.ndarray, h: int, w: int) -> np.ndarray:
    rows = (np.arange(h) * a.shape[0] // h).clip(0, a.shape[0] - 1)
    cols = (np.arange(w) * a.shape[1] // w).clip(0, a.shape[1] - 1)
    return a[rows][:, cols]


def bank_grid(root: str | Path, case_id: str, n_samples: int = 16, channel: str | None = None, columns: int = 8,
              tile_px: int = 96) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` grid of up to ``n_samples`` bank samples of a case (lesion-centred first).

    Args:
        root, case_id: the store and the case (its bank must exist).
        n_samples: tiles to show.
        channel: the channel shown (default: the bank's first, FLAIR in lesionflow's default order).
        columns: tiles per row.
        tile_px: tile edge in pixels (nearest-neighbour scaling, no smoothing).
    """
    image_arr, label_arr, bank = open_bank(root, case_id)
    c = 0 if channel is None else bank.channels.index(channel)
    order = [s.index for s in bank.samples if s.kind == "lesion"] + [s.index for s in bank.samples if s.kind != "lesion"]
    picks = order[: max(1, int(n_samples))]
    z = bank.patch_zyx[0] // 2
    slices = [dequantize(np.asarray(image_arr[k, c, z]), bank.scale) for k in picks]
    labels = [np.asarray(label_arr[k, z]) for k in picks]
    lo, hi = np.percentile(np.concatenate([s.ravel() for s in slices]), [1, 99])
    cols = min(columns, len(picks))
    rows = -(-len(picks) // cols)
    py, px = bank.patch_zyx[1], bank.patch_zyx[2]
    th, tw = (tile_px, max(1, round(tile_px * px / py))) if py >= px else (max(1, round(tile_px * py / px)), tile_px)
    grid = np.zeros((rows * th + (rows - 1) * GAP_PX, cols * tw + (cols - 1) * GAP_PX, 3), np.float32)
    for i, (img, lab) in enumerate(zip(slices, labels)):
        grey = np.clip((img - lo) / (hi - lo + 1e-6), 0, 1)
        rgb = np.repeat(_nearest(grey, th, tw)[..., None], 3, axis=2)
        edge = _outline(_nearest(lab != 0, th, tw))
        rgb[edge] = OUTLINE_RGB
        r, q = divmod(i, cols)
        y0, x0 = r * (th + GAP_PX), q * (tw + GAP_PX)
        grid[y0 : y0 + th, x0 : x0 + tw] = rgb
    return (grid * 255 + 0.5).astype(np.uint8)


def preview_png(root: str | Path, case_id: str, **grid_options: object) -> bytes:
    """:func:`bank_grid` as PNG bytes."""
    return png_bytes(bank_grid(root, case_id, **grid_options))  # type: ignore[arg-type]
