"""Lesion-volume tables for every scored case of a store.

Two tables under ``<store>/tables/`` (:mod:`pipeline.store.tables`: a Parquet dataset of one
part per scoring run, with ``.parquet`` and ``.csv`` exports of the current rows):

* ``case_volumes``: one row per (case, model version): total lesion volume (mL) and voxels, lesion
  count, with the case's source fingerprint and configuration hash for lineage.
* ``lesions``: one row per lesion: voxels, volume (mm³), LPS centroid (mm), bounding box.

A case whose geometry is unknown (a slice stack without ``slice_stack.spacing_mm``,
``Geometry.source == "unknown"``) gets no mm³ or mL (None): its sizes are in voxels, its
centroids in voxel indices; ``min_size_mm3`` then counts voxels.

Both are keyed by ``(model_version, case_id)``: a scoring run adds one part to each table, which
replaces the rows of the cases it scored with that model (a case re-scored with no lesion left
loses its old lesion rows). Rows of other model versions and other cases are kept, so the
tables accumulate the history of re-scoring an archive with newer models, and two scoring runs
at once (different models, or different cases) both keep every row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.lesions.components import lesion_table
from pipeline.store import (
    append_table,
    finish_table,
    list_cases,
    open_case,
    prediction_mask,
    read_case_meta,
    reference_label,
    volume_from_geometry,
)
from storage_schemas.models import CaseVolumeRow, LesionRow

TABLE_KEYS = ("model_version", "case_id")
"""The key of both lesion tables: one scoring of one case by one model."""


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
    known = meta.geometry.source != "unknown"  # unit spacing assumed: a voxel is not a mm³
    case_row = CaseVolumeRow(
        **ids,
        total_volume_ml=summary["total_volume_ml"] if known else None,
        lesion_count=summary["lesion_count"],
        connectivity=connectivity,
        min_lesion_mm3=min_size_mm3,
        voxel_volume_mm3=summary["voxel_volume_mm3"] if known else None,
        total_voxels=sum(r["voxels"] for r in lesions),
        geometry_source=meta.geometry.source,
        source_fingerprint=meta.source_fingerprint,
        config_hash=meta.config_hash,
    ).model_dump()
    rows = [LesionRow(**ids, **{**r, "volume_mm3": r["volume_mm3"] if known else None}).model_dump() for r in lesions]
    return case_row, rows


def lesion_rows(store_root: str | Path, model_version: str, case_ids: list[str] | None = None, connectivity: int = 26,
                min_size_mm3: float = 0.0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Both tables' rows (case rows, lesion rows) of ``model_version`` for ``case_ids`` (default
    every case); cases without this model's mask have none."""
    case_rows: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for case_id in case_ids if case_ids is not None else list_cases(store_root):
        out = case_lesion_rows(store_root, case_id, model_version, connectivity, min_size_mm3)
        if out is None:
            continue
        case_rows.append(out[0])
        rows.extend(out[1])
    return case_rows, rows


def append_lesion_rows(store_root: str | Path, case_rows: list[dict[str, Any]], rows: list[dict[str, Any]],
                       finish: bool = True) -> dict[str, Any]:
    """Add rows from :func:`lesion_rows` as one part of each table; ``finish=False`` only adds the
    parts, reading nothing already stored (:func:`finish_lesion_tables` later). Returns the
    locations and the rows as DataFrames, as :func:`write_lesion_tables` does."""
    import pandas as pd

    new_cases = pd.DataFrame(case_rows, columns=list(CaseVolumeRow.model_fields))
    new_lesions = pd.DataFrame(rows, columns=list(LesionRow.model_fields))
    scored = new_cases[list(TABLE_KEYS)]  # a case with no lesion left still replaces its old lesion rows
    paths = {
        "case_volumes": append_table(store_root, "case_volumes", new_cases, keys=TABLE_KEYS, finish=finish),
        "lesions": append_table(store_root, "lesions", new_lesions, keys=TABLE_KEYS, covers=scored, finish=finish),
    }
    return {"paths": paths, "case_volumes": new_cases, "lesions": new_lesions}


def finish_lesion_tables(store_root: str | Path) -> dict[str, dict[str, str]]:
    """Compact (when many parts) and export both lesion tables; returns their locations by table."""
    return {name: finish_table(store_root, name) for name in LESION_TABLES}


LESION_TABLES = ("case_volumes", "lesions")


def write_lesion_tables(store_root: str | Path, model_version: str, case_ids: list[str] | None = None, connectivity: int = 26, min_size_mm3: float = 0.0) -> dict[str, Any]:
    """Compute both tables' rows for ``model_version`` and add them (one part each); returns the
    locations (``paths[<table>]``: ``part``, ``dataset``, ``parquet`` and ``csv`` exports) and the
    new rows."""
    case_rows, rows = lesion_rows(store_root, model_version, case_ids or None, connectivity, min_size_mm3)
    return append_lesion_rows(store_root, case_rows, rows)
