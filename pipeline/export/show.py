"""A look at a case without a viewer: one PNG of orthogonal slices (``lesionflow show``).

Rows are the case's channels in stored order; columns are the axial (z), coronal (y) and
sagittal (x) slices through one voxel: the centre of the largest lesion (of the reference label,
else of the prediction), or the middle of the volume when there is none. Slices are drawn in
voxel order, axial with the first row (y = 0) at the top and the other two with z increasing
upwards, each stretched to its physical aspect (mm); for the usual axial grids (orientation
``LPS``) that is the radiological convention (patient right on the left). The reference label is
outlined in red, the prediction in yellow, where they overlap in orange. Grey levels are
the 1st to 99.5th percentile of the channel inside the foreground.

Nothing but numpy and zlib: the PNG is encoded here.

Example:
    >>> import numpy as np
    >>> rgb = compose([[np.zeros((4, 6, 3))], [np.ones((2, 3, 3))]])
    >>> rgb.shape, png_bytes((rgb * 255).astype(np.uint8))[:8]
    ((10, 6, 3), b'\\x89PNG\\r\\n\\x1a\\n')
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.atomic import write_bytes_atomic
from pipeline.store import StoreLike, foreground_mask, open_case, prediction_mask, prediction_versions, read_case_meta, reference_label

REFERENCE_RGB = (1.0, 0.1, 0.1)
PREDICTION_RGB = (1.0, 0.85, 0.0)
BOTH_RGB = (1.0, 0.5, 0.0)
GAP = 4


def png_bytes(rgb: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` uint8 array as PNG bytes."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def _resize_nearest(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    rows = np.minimum((np.arange(out_h) + 0.5) * a.shape[0] / out_h, a.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(out_w) + 0.5) * a.shape[1] / out_w, a.shape[1] - 1).astype(int)
    return a[rows][:, cols]


def _edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the outline)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def compose(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tiles (float RGB in 0..1) laid out in rows with a :data:`GAP`-pixel dark gap."""
    heights = [max(t.shape[0] for t in r) for r in rows]
    widths = [sum(t.shape[1] for t in r) + GAP * (len(r) - 1) for r in rows]
    out = np.full((sum(heights) + GAP * (len(rows) - 1), max(widths), 3), 0.08)
    y = 0
    for r, h in zip(rows, heights):
        x = 0
        for t in r:
            out[y:y + t.shape[0], x:x + t.shape[1]] = t
            x += t.shape[1] + GAP
        y += h + GAP
    return out


def focus_voxel(label: np.ndarray | None, prediction: np.ndarray | None, shape: tuple[int, ...]) -> tuple[tuple[int, int, int], str]:
    """``((z, y, x), why)``: the centre of the largest lesion of ``label`` (else ``prediction``), else the middle."""
    from scipy import ndimage

    for name, mask in (("reference", label), ("prediction", prediction)):
        if mask is None or not mask.any():
            continue
        comps, n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(comps.reshape(-1))[1:]
        biggest = int(np.argmax(sizes)) + 1
        centre = np.round(ndimage.center_of_mass(comps == biggest)).astype(int)
        return (int(centre[0]), int(centre[1]), int(centre[2])), f"largest {name} lesion ({int(sizes.max())} voxels, {n} lesions)"
    return tuple(int(s) // 2 for s in shape), "middle of the volume (no lesion)"  # type: ignore[return-value]


def _tile(img: np.ndarray, window: tuple[float, float], label: np.ndarray | None, pred: np.ndarray | None,
          spacing_hw: tuple[float, float], flip: bool, mm_per_px: float) -> np.ndarray:
    lo, hi = window
    grey = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
    if flip:  # z increasing upwards
        grey, label, pred = grey[::-1], None if label is None else label[::-1], None if pred is None else pred[::-1]
    h = max(1, round(img.shape[0] * spacing_hw[0] / mm_per_px))
    w = max(1, round(img.shape[1] * spacing_hw[1] / mm_per_px))
    rgb = np.repeat(_resize_nearest(grey, h, w)[..., None], 3, axis=2)
    lab = _edge(_resize_nearest(label > 0, h, w)) if label is not None else np.zeros((h, w), bool)
    prd = _edge(_resize_nearest(pred > 0, h, w)) if pred is not None else np.zeros((h, w), bool)
    rgb[lab] = REFERENCE_RGB
    rgb[prd] = PREDICTION_RGB
    rgb[lab & prd] = BOTH_RGB
    return rgb


def render_case(store_root: StoreLike, case_id: str, out_png: str | Path, model: str | None = None, focus: str = "lesion",
                tile_mm: float | None = None) -> dict[str, Any]:
    """Write the PNG of one case (see the module docstring) and return what it shows.

    Args:
        model: the prediction to outline (a model version); None: the most recently scored one, if any.
        focus: ``"lesion"`` (slices through the largest lesion, else the middle) or ``"middle"``.
        tile_mm: millimetres per pixel; default the smallest voxel spacing (never below 0.5 mm).

    Returns:
        ``{"png", "case_id", "channels" (rows), "views" (columns), "voxel_zyx", "focus", "model_version",
        "reference" (bool), "colours"}``.
    """
    meta = read_case_meta(store_root, case_id)
    group = open_case(store_root, case_id)
    versions = prediction_versions(group)
    if model is None and versions:
        stamps = {v: str((prediction_mask(group, v).attrs.asdict().get("lesionflow_prediction") or {}).get("created_at", "")) for v in versions}
        model = max(versions, key=lambda v: (stamps[v], v))
    pred_arr = prediction_mask(group, model) if model else None
    if model and pred_arr is None:
        raise ValueError(f"case {case_id} has no prediction by {model} (it has: {versions or 'none'})")
    label_arr, fg_arr = reference_label(group), foreground_mask(group)
    label = np.asarray(label_arr[...]) if label_arr is not None else None
    pred = np.asarray(pred_arr[...]) if pred_arr is not None else None
    shape = tuple(meta.geometry.shape_zyx)
    if focus == "middle":
        (z, y, x), why = tuple(s // 2 for s in shape), "middle of the volume"
    else:
        (z, y, x), why = focus_voxel(label, pred, shape)
    sx, sy, sz = meta.geometry.spacing
    mm = tile_mm or max(0.5, min(sx, sy, sz))
    fg = np.asarray(fg_arr[...]).astype(bool) if fg_arr is not None else None
    image = group["image"]
    rows: list[list[np.ndarray]] = []
    for c in range(image.shape[0]):
        vol = np.asarray(image[c], np.float32)
        vals = vol[fg] if fg is not None and fg.any() else vol.reshape(-1)
        vals = vals[np.isfinite(vals)]
        window = (float(np.percentile(vals, 1)), float(np.percentile(vals, 99.5))) if vals.size else (0.0, 1.0)
        views = [(vol[z], None if label is None else label[z], None if pred is None else pred[z], (sy, sx), False),
                 (vol[:, y], None if label is None else label[:, y], None if pred is None else pred[:, y], (sz, sx), True),
                 (vol[:, :, x], None if label is None else label[:, :, x], None if pred is None else pred[:, :, x], (sz, sy), True)]
        rows.append([_tile(img, window, lab, prd, hw, flip, mm) for img, lab, prd, hw, flip in views])
    rgb = compose(rows)
    write_bytes_atomic(out_png, png_bytes((rgb * 255 + 0.5).astype(np.uint8)))
    return {"png": str(out_png), "case_id": case_id, "channels": list(meta.channels), "views": ["axial", "coronal", "sagittal"],
            "voxel_zyx": [z, y, x], "focus": why, "model_version": model, "reference": label is not None,
            "colours": {"reference": "red", "prediction": "yellow", "both": "orange"}, "size_px": [int(rgb.shape[1]), int(rgb.shape[0])]}
