"""Change masks of visit pairs as NIfTI, for viewers: one file per pair, named by pseudonyms only.

``export_change(store, OUT, method, model_version)`` writes
``OUT/<pair_id>_change-<method>[-<model>].nii.gz`` (``pair_id`` = ``<subject>_<baseline
session>_<follow-up session>``, the store's keyed pseudonyms) on the pair grid: the grid of the
pair's expert change mask when one was ingested (so the two overlay voxel for voxel), else the
baseline case's grid, with its exact affine (:func:`pipeline.io.writers.write_nifti`). Values are
:data:`pipeline.lesions.change.CHANGE_CODES` (1 new, 2 enlarged, 3 shrunk, 4 disappeared).
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.io.writers import write_nifti
from pipeline.store import StoreLike, change_mask_name, list_pairs, read_pair_mask, read_pair_meta, volume_from_geometry


def export_change(store: StoreLike, out: str | Path, method: str, model_version: str | None = None) -> list[Path]:
    """Write each pair's change mask of ``method`` (and ``model_version``) as NIfTI under ``out``; returns the files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = change_mask_name(method, model_version)
    written = []
    for pid in list_pairs(store):
        mask = read_pair_mask(store, pid, name)
        meta = read_pair_meta(store, pid)
        if mask is None or meta is None:
            continue
        path = out / f"{pid}_{re.sub(r'[^A-Za-z0-9.-]+', '', name)}.nii.gz"
        write_nifti(volume_from_geometry(meta.geometry, mask), path)
        written.append(path)
    return written
