"""The catalog: append-only Parquet parts under ``catalog/``, one row per input (``CatalogRow``).

Each converted session appends a part (one atomic file write: temporary name and rename on a
file system, one PUT on an object store; parts are new names, so appends never overwrite).
Every part has the Arrow schema derived from :class:`~storage_schemas.models.CatalogRow`
(:func:`catalog_arrow_schema`), so any Parquet reader reads the parts as one table. When many
parts have accumulated, :func:`compact_catalog` merges them; readers drop the exact duplicate
rows an interrupted or concurrent compaction may leave. :func:`read_catalog` returns pandas,
:func:`query_catalog` runs DuckDB SQL over the view ``catalog`` (current rows) and
``catalog_history`` (every row).

Example:
    >>> import tempfile
    >>> from pipeline.store import init_store
    >>> root = init_store(tempfile.mkdtemp() + "/s.zarr")
    >>> row = CatalogRow(status="converted", source_relpath="p1/flair.nii.gz", pipeline_version="0", config_hash="h", run_id="r")
    >>> _ = append_catalog(root, [row])
    >>> query_catalog(root, "SELECT status, count(*) AS n FROM catalog GROUP BY status").to_dict("records")
    [{'status': 'converted', 'n': 1}]
"""

from __future__ import annotations

import fnmatch
import io
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.store.backend.base import join
from pipeline.store.handle import StoreLike, open_store
from pipeline.store.layout import CATALOG
from storage_schemas.models import CatalogRow

COMPACT_MIN_PARTS = 64
"""Every ingest merges the catalog's parts into one when there are at least this many."""

PART_PATTERN = "part-*.parquet"


def catalog_arrow_schema() -> Any:
    """The Arrow schema of catalog parts, from :class:`CatalogRow` (same column types in every
    part, whatever values a part holds, so any Parquet reader can read them as one dataset)."""
    import datetime as _dt
    import types
    import typing

    import pyarrow as pa

    arrow = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_(), _dt.datetime: pa.timestamp("us", tz="UTC")}
    fields = []
    for name, info in CatalogRow.model_fields.items():
        ann = info.annotation
        optional = typing.get_origin(ann) in (typing.Union, types.UnionType) and type(None) in typing.get_args(ann)
        if optional:
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        kind = str if typing.get_origin(ann) is typing.Literal else ann
        fields.append(pa.field(name, arrow[kind], nullable=optional))
    return pa.schema(fields)


def _part_name(when: datetime, kind: str = "") -> str:
    return f"part-{when.strftime('%Y%m%dT%H%M%S')}-{kind + '-' if kind else ''}{uuid.uuid4().hex[:8]}.parquet"


def _write_part(root: StoreLike, table: Any, name: str) -> Path | str:
    """One catalog part, written whole (atomic on both backends); returns its location."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return open_store(root).backend.put(join(CATALOG, name), buf.getvalue())


def append_catalog(root: StoreLike, rows: Iterable[CatalogRow]) -> Path | str | None:
    """Append validated rows as one new Parquet part; returns the part's path or URL (None: no rows)."""
    import pyarrow as pa

    rows = [CatalogRow.model_validate(r.model_dump()) for r in rows]
    if not rows:
        return None
    table = pa.Table.from_pylist([r.model_dump() for r in rows], schema=catalog_arrow_schema())
    return _write_part(root, table, _part_name(rows[0].recorded_at))


def _catalog_parts(root: StoreLike) -> list[str]:
    """Store-relative paths of the catalog's parts, sorted."""
    names = open_store(root).backend.list(CATALOG)
    return [join(CATALOG, n) for n in names if fnmatch.fnmatchcase(n, PART_PATTERN)]


def _read_parts(root: StoreLike, parts: list[str], columns: list[str] | None) -> Any:
    """Catalog parts as one Arrow table in today's schema, exact duplicate rows dropped."""
    import pyarrow.dataset as pads

    paths, fs = open_store(root).backend.dataset_source(parts)
    table = pads.dataset(paths, schema=catalog_arrow_schema(), format="parquet", filesystem=fs).to_table()
    if table.num_rows:
        table = table.group_by(table.column_names, use_threads=False).aggregate([]).sort_by("recorded_at")
    return table.select(columns) if columns is not None else table


def _catalog_table(root: StoreLike, columns: list[str] | None = None) -> Any:
    """Every catalog part as one Arrow table in :func:`catalog_arrow_schema` (``columns``: only these)."""
    parts = _catalog_parts(root)
    if not parts:
        return catalog_arrow_schema().empty_table().select(columns or catalog_arrow_schema().names)
    return _read_parts(root, parts, columns)


def catalog_dataset(root: StoreLike, columns: list[str], filter: Any = None) -> Any:
    """Every catalog row ever written (the history, exact duplicates included) as an Arrow table of
    ``columns``, read from the parts with ``filter`` (a ``pyarrow.compute`` expression) pushed
    down: for aggregate queries over large catalogs (the latest conversion of each case), where
    :func:`read_catalog`'s de-duplication of whole rows is the costly part."""
    import pyarrow.dataset as pads

    parts = _catalog_parts(root)
    if not parts:
        return catalog_arrow_schema().empty_table().select(columns)
    paths, fs = open_store(root).backend.dataset_source(parts)
    return pads.dataset(paths, schema=catalog_arrow_schema(), format="parquet", filesystem=fs).to_table(columns=columns, filter=filter)


def cases_of_run(root: StoreLike, run_id: str) -> list[str]:
    """Ids of the cases an ingest run converted (its ``run_id``, as in the run summary), sorted."""
    import pyarrow.compute as pc

    rows = catalog_dataset(root, ["case_id"], filter=(pc.field("run_id") == run_id) & (pc.field("status") == "converted")
                           & pc.field("case_id").is_valid())
    return sorted(set(rows.column("case_id").to_pylist()))


def compact_catalog(root: StoreLike, min_parts: int | None = None) -> int:
    """Merge the catalog's parts into one (each converted session appends a part, so a store fed
    every night would otherwise collect thousands of small files). Returns the parts merged.

    Crash- and concurrency-safe: the merged part is written (atomically) before the parts it
    holds are deleted, and only those; a crash in between leaves rows twice, which readers drop
    (exact duplicate rows are removed on read), as they do when two ingests compact the same
    parts at once. ``min_parts`` defaults to :data:`COMPACT_MIN_PARTS`.
    """
    parts = _catalog_parts(root)
    if len(parts) < max(2, COMPACT_MIN_PARTS if min_parts is None else min_parts):
        return 0
    table = _read_parts(root, parts, None)
    _write_part(root, table, _part_name(datetime.now(UTC), "compact"))
    backend = open_store(root).backend
    for part in parts:
        backend.remove(part)  # already gone when another ingest compacted it first
    return len(parts)


def read_catalog(root: StoreLike, latest_only: bool = True, *, columns: list[str] | None = None) -> Any:
    """The catalog as a pandas DataFrame (``columns``: only these).

    With ``latest_only`` each (source, case, modality) keeps its most recent row, which is the
    current state; otherwise the full history is returned. Parts written by older versions
    (whose column types pandas inferred) are read into today's schema.
    """
    wanted = None
    if columns is not None:
        wanted = list(columns)
        if latest_only:
            wanted += [c for c in ("recorded_at", "source_relpath", "case_id", "modality") if c not in wanted]
    df = _catalog_table(root, wanted).to_pandas()
    if latest_only and len(df):
        df = df.sort_values("recorded_at").drop_duplicates(["source_relpath", "case_id", "modality"], keep="last")
    if columns is not None:
        df = df[list(columns)]
    return df.reset_index(drop=True)


def query_catalog(root: StoreLike, sql: str) -> Any:
    """Run DuckDB SQL over a store's catalog (local or URL); the current rows are the view ``catalog``.

    Example: ``query_catalog(store, "SELECT status, count(*) FROM catalog GROUP BY status")``.
    The full history (every run's rows) is ``catalog_history``. For a local store DuckDB can
    also read the parts directly, ``read_parquet('STORE/catalog/part-*.parquet')``, but then
    does not drop the duplicate rows an interrupted compaction may leave (use ``SELECT DISTINCT``).
    """
    import duckdb

    history = _catalog_table(root, None)
    con = duckdb.connect()
    try:
        con.register("catalog_history", history)
        con.execute(
            "CREATE VIEW catalog AS SELECT * EXCLUDE (rn) FROM (SELECT *, row_number() OVER ("
            "PARTITION BY source_relpath, case_id, modality ORDER BY recorded_at DESC) AS rn FROM catalog_history) WHERE rn = 1"
        )
        return con.execute(sql).df()
    finally:
        con.close()
