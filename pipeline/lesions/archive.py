"""What re-scoring an archive with one model has left to do, found by a query, not by opening cases.

A case needs scoring by a model when the ``case_volumes`` table has no row of that model for it,
or only rows written before the case's latest conversion (the case was re-ingested from changed
sources or with other settings, which replaces its group and its masks). Both sides come from
Parquet through DuckDB: the catalog's ``converted`` rows (case, modality, ``recorded_at``) and the
table parts' ``(model_version, case_id, _written_at)``, with the model version pushed down into the
Parquet read. A case whose catalog rows lack one of the model's channels is left out (it could
not be scored). A store without catalog rows (built by hand, or by tests) falls back to the list
of committed cases.

Because the lesion tables are appended in parts while a run goes on, an interrupted re-scoring
resumes where it stopped: the next run's query no longer finds the cases whose rows were
written. Cases whose mask was written but whose rows were not are found again; scoring finds their
mask and only measures it (:func:`training.infer.score_cases` skips cases already holding it).

Example:
    >>> unscored_cases("/data/store.zarr", "unet3d-20261121T101500-1a2b3c4d")  # doctest: +SKIP
    ['sub-4a13…_ses-1f2e…', ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.store import catalog_dataset, list_cases, table_dataset

CASE_TABLE = "case_volumes"
"""The table whose rows say which (case, model) pairs are scored."""

_WRITTEN_AT = "%Y%m%dT%H%M%S.%fZ"  # pipeline.store.tables' part times (UTC)


def _scored(store_root: str | Path, model_version: str) -> Any:
    """Arrow ``(case_id, _written_at)`` of every stored row of ``model_version`` (superseded ones too)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = table_dataset(store_root, CASE_TABLE, ["case_id", "_written_at"], filter=pc.field("model_version") == model_version)
    if rows is None:
        return pa.table({"case_id": pa.array([], pa.string()), "_written_at": pa.array([], pa.string())})
    return rows


def _converted(store_root: str | Path) -> Any:
    """Arrow ``(case_id, modality, recorded_at)`` of every ``converted`` catalog row ever written."""
    import pyarrow.compute as pc

    return catalog_dataset(store_root, ["case_id", "modality", "recorded_at"],
                           filter=(pc.field("status") == "converted") & pc.field("case_id").is_valid())


def unscored_cases(store_root: str | Path, model_version: str, channels: Sequence[str] | None = None,
                   overwrite: bool = False) -> list[str]:
    """Ids of the cases ``model_version`` still has to score, sorted.

    Args:
        channels: the model's input channels; a case whose catalog rows lack one is left out.
        overwrite: every case (holding ``channels``), scored or not.
    """
    import duckdb
    import pyarrow as pa

    converted = _converted(store_root)
    con = duckdb.connect()
    try:
        con.execute("SET threads TO 1")  # 10^5 rows: one thread is as fast, and the workers keep their cores
        params: list[Any] = []
        if converted.num_rows:
            con.register("converted", converted)
            cases = ("SELECT case_id, max(recorded_at) AS converted_at FROM converted GROUP BY case_id "
                     "HAVING list_has_all(list(DISTINCT modality), ?::VARCHAR[])")
            params.append(list(dict.fromkeys(channels or [])))
        else:  # no catalog: the committed cases, as if converted at the oldest time
            con.register("listed", pa.table({"case_id": pa.array(list_cases(store_root), pa.string())}))
            cases = "SELECT case_id, TIMESTAMPTZ '1970-01-01 00:00:00+00' AS converted_at FROM listed"
        if overwrite:
            sql = f"WITH cases AS ({cases}) SELECT case_id FROM cases ORDER BY case_id"
        else:
            con.register("scored_rows", _scored(store_root, model_version))
            # a row of a table written whole before datasets (time "00000000T…") counts as scored, at an unknown time
            sql = (f"WITH cases AS ({cases}), scored AS (SELECT case_id, max(coalesce(try_strptime(_written_at, '{_WRITTEN_AT}'), "
                   "TIMESTAMP '9999-12-31')) AS scored_at FROM scored_rows GROUP BY case_id) "
                   "SELECT c.case_id FROM cases c LEFT JOIN scored s USING (case_id) "
                   "WHERE s.scored_at IS NULL OR s.scored_at < timezone('UTC', c.converted_at) ORDER BY c.case_id")
        return [r[0] for r in con.execute(sql, params).fetchall()]
    finally:
        con.close()


def model_case_volumes(store_root: str | Path, model_version: str, columns: Sequence[str] = ("case_id", "total_volume_ml", "lesion_count")) -> Any:
    """The current ``case_volumes`` rows of one model version as a DataFrame (one per case, sorted by
    case), read from the table's parts with the version pushed down (the latest row of each case
    wins; the table's keys are ``(model_version, case_id)``, so no other version is read)."""
    import duckdb
    import pandas as pd
    import pyarrow.compute as pc

    cols = list(dict.fromkeys(["case_id", *columns]))
    rows = table_dataset(store_root, CASE_TABLE, [*cols, "_written_at", "_part", "_row"], filter=pc.field("model_version") == model_version)
    if rows is None:
        return pd.DataFrame(columns=cols)
    con = duckdb.connect()
    try:
        con.execute("SET threads TO 1")
        con.register("rows", rows)
        select = ", ".join(f'"{c}"' for c in cols)
        return con.execute(f"SELECT {select} FROM rows QUALIFY row_number() OVER (PARTITION BY case_id "
                           "ORDER BY _written_at DESC, _part DESC, _row DESC) = 1 ORDER BY case_id").df()
    finally:
        con.close()
