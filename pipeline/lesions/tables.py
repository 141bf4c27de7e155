"""Lesion-volume tables for every scored case of a store.

Two tables, each written as Parquet and CSV under ``<store>/tables/``:

* ``case_volumes``: one row per (case, model version): total lesion volume (mL), lesion count,
  with the case's source fingerprint and configuration hash for lineage.
* ``lesions``: one row per lesion: voxels, volume (mm³), LPS centroid (mm), bounding box.

Rows of other model versions already in the tables are kept, so the tables accumulate the
history of re-scoring an archive with newer models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.lesions.components import lesion_table
from pipeline.store import list_cases, open_case, prediction_mask, read_case_meta, read_table, reference_label, volume_from_geometry, write_table
from storage_schemas.models import CaseVolumeRow, LesionRow



def mask_of(store_root: str | Path, case_id: str, model_version: str | None) -> np.ndarray | None:
    """The predicted mask of ``model_version`` (or, with None, the reference label); None when absent."""
    g = open_case(store_root, case_id)
    arr = reference_label(g) if model_version is None else prediction_mask(g, model_version)
    return None if arr is None else np.asarray(arr[...])


def case_lesion_rows(store_root: str | Path, case_id: str, model_version: str, connectivity: int = 26, min_size_mm3: float = 0.0) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """Validated (case row, lesion rows) of one case's predicted mask, or None when unscored."""
    meta = read_case_meta(store_root, case_id)
    mask = mask_of(store_root, case_id, model_version)
    if mask is None:
        return None
    summary, lesions = lesion_table(volume_from_geometry(meta.geometry, mask), connectivity, min_size_mm3)
    ids = {"case_id": case_id, "subject": meta.subject, "session": meta.session, "model_version": model_version}
    case_row = CaseVolumeRow(
        **ids,
        total_volume_ml=summary["total_volume_ml"],
        lesion_count=summary["lesion_count"],
        connectivity=connectivity,
        min_lesion_mm3=min_size_mm3,
        voxel_volume_mm3=summary["voxel_volume_mm3"],
        source_fingerprint=meta.source_fingerprint,
        config_hash=meta.config_hash,
    ).model_dump()
    rows = [LesionRow(**ids, **r).model_dump() for r in lesions]
    return case_row, rows


def write_lesion_tables(store_root: str | Path, model_version: str, case_ids: list[str] | None = None, connectivity: int = 26, min_size_mm3: float = 0.0) -> dict[str, Any]:
    """Compute and write both tables for ``model_version``; returns paths and the case table."""
    import pandas as pd

    case_rows: list[dict[str, Any]] = []
    lesion_rows: list[dict[str, Any]] = []
    for case_id in case_ids or list_cases(store_root):
        out = case_lesion_rows(store_root, case_id, model_version, connectivity, min_size_mm3)
        if out is None:
            continue
        case_rows.append(out[0])
        lesion_rows.extend(out[1])
    new_cases = pd.DataFrame(case_rows, columns=list(CaseVolumeRow.model_fields))
    new_lesions = pd.DataFrame(lesion_rows, columns=list(LesionRow.model_fields))
    merged = {}
    for name, new in (("case_volumes", new_cases), ("lesions", new_lesions)):
        old = read_table(store_root, name)  # local path or object-store URL
        if old is not None:
            keep = ~((old["model_version"] == model_version) & old["case_id"].isin(new_cases["case_id"]))
            new = pd.concat([old[keep], new], ignore_index=True) if len(new) else old[keep]
        merged[name] = new.sort_values([c for c in ("model_version", "case_id", "lesion_id") if c in new.columns]).reset_index(drop=True)
    paths = {name: write_table(store_root, name, df) for name, df in merged.items()}
    return {"paths": paths, "case_volumes": new_cases, "lesions": new_lesions}
