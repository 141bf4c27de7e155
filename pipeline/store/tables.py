"""Tables under ``tables/``: each a partitioned Parquet dataset, with whole-file exports for people.

::

    tables/<name>/part-<time>-<id>.parquet   the dataset: one part per write (a scoring run), never rewritten
    tables/<name>.parquet                    export: the current rows, one file (rewritten after every write)
    tables/<name>.csv                        export: the same rows as CSV

Writers never read-modify-write: each write adds one new part (a new name, written whole and
atomically: temporary name and rename on a file system, one PUT on an object store), so two
writers at once (two scoring runs of different models) both succeed and every row of both
survives. A table may have ``keys`` (the lesion tables: ``model_version``, ``case_id``): a part
then *replaces* the rows of the key groups it covers (its rows' keys, plus ``covers``: groups
it empties, e.g. a case re-scored with no lesion left), and readers keep, per key group, the
rows of the latest part that covers it. :func:`write_table` adds a part that replaces the whole
table. Each part records its time and id in its rows (``_written_at``, ``_part``, ``_row``) and
what it covers in its Parquet metadata, so the current rows do not depend on file names.

When a table has :data:`TABLE_COMPACT_MIN_PARTS` parts, a write merges them like the catalog:
the merged part (current rows only, with their original provenance) is written first, then
exactly the parts it holds are deleted; a crash in between, or two writers compacting at once,
leaves rows twice, which readers drop (one row per ``(_part, _row)``).

After every write the exports are rewritten (each atomically) from the dataset; a writer that
finds the parts changed while it exported exports again, so the last export holds every part.
Tools reading the dataset folder directly see superseded rows too: read the exports, or
:func:`read_table`. A table written whole by older versions (``tables/<name>.parquet`` and no
dataset) is read as it is and becomes the dataset's oldest part at the first write.

Example:
    >>> import tempfile, pandas as pd
    >>> root = tempfile.mkdtemp()
    >>> paths = append_table(root, "t", pd.DataFrame({"k": ["a", "b"], "v": [1, 2]}), keys=["k"])
    >>> _ = append_table(root, "t", pd.DataFrame({"k": ["b"], "v": [3]}), keys=["k"])  # replaces key b
    >>> read_table(root, "t").to_dict("records"), read_table(root, "missing")
    ([{'k': 'a', 'v': 1}, {'k': 'b', 'v': 3}], None)
    >>> sorted(paths), open(paths["csv"]).read()
    (['csv', 'dataset', 'parquet', 'part'], 'k,v\\na,1\\nb,3\\n')
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pipeline.store.backend.base import join
from pipeline.store.handle import StoreLike, open_store
from pipeline.store.layout import TABLES

log = logging.getLogger("lesionflow.store")

TABLE_COMPACT_MIN_PARTS = 16
"""A write merges a table's parts into one when there are at least this many."""

EXPORT_ATTEMPTS = 5
"""How often a writer re-exports when other writers keep adding parts meanwhile."""

PROVENANCE = ("_written_at", "_part", "_row")
"""Columns every stored row carries: its part's time and id, and its position in that part."""

_META = b"lesionflow_table"
_OLDEST = "00000000T000000.000000Z"  # the time of a table written whole by an older version


def _now() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _dataset(name: str) -> str:
    return join(TABLES, name)


def _parts(root: StoreLike, name: str) -> list[str]:
    """Store-relative paths of the table's parts, sorted."""
    names = open_store(root).backend.list(_dataset(name))
    return [join(TABLES, name, n) for n in names if n.startswith("part-") and n.endswith(".parquet")]


# ------------------------------------------------------------------------------- reading
class _Part:
    """One part: its rows (with provenance columns) and what it covers."""

    def __init__(self, rows: Any, keys: list[str], covers: Any, snapshot_at: tuple[str, str] | None) -> None:
        self.rows, self.keys, self.covers, self.snapshot_at = rows, keys, covers, snapshot_at


def _decode(blob: bytes, default_keys: Sequence[str]) -> _Part:
    import pandas as pd
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(blob))
    meta = json.loads((table.schema.metadata or {}).get(_META, b"{}"))
    df = table.to_pandas()
    if "_part" not in df.columns:  # a whole table written by an older version
        df = df.assign(_written_at=_OLDEST, _part="legacy", _row=range(len(df)))
    keys = list(meta.get("keys", default_keys))
    if "covers" in meta:
        covers = pd.DataFrame(meta["covers"], columns=[*keys, "_written_at", "_part"])
    else:
        covers = df[[*keys, "_written_at", "_part"]].drop_duplicates() if keys else pd.DataFrame(columns=["_written_at", "_part"])
    snap = meta.get("snapshot_at")
    return _Part(df, keys, covers, tuple(snap) if snap else None)


def _read_parts(root: StoreLike, name: str, parts: list[str], keys: Sequence[str] = ()) -> list[_Part]:
    backend = open_store(root).backend
    out = []
    for part in parts:
        blob = backend.read(part)
        if blob is not None:  # gone: another writer compacted it (its rows are in the merged part)
            out.append(_decode(blob, keys))
    return out


def _concat(frames: list[Any]) -> Any:
    import pandas as pd

    full = [f for f in frames if len(f)]
    if not full:
        return frames[0].iloc[0:0] if frames else pd.DataFrame()
    return pd.concat(full, ignore_index=True) if len(full) > 1 else full[0].reset_index(drop=True)


def _resolve(parts: list[_Part]) -> tuple[Any, list[str], Any, tuple[str, str] | None]:
    """The current rows of ``parts`` (with provenance), the keys, the winning covers, the last
    whole-table write."""
    import pandas as pd

    keys = next((p.keys for p in parts if p.keys), [])
    snaps = [p.snapshot_at for p in parts if p.snapshot_at]
    snap = max(snaps) if snaps else None
    rows = _concat([p.rows for p in parts])
    covers = _concat([p.covers for p in parts]) if parts else pd.DataFrame(columns=[*keys, "_written_at", "_part"])
    if snap is not None:
        newer = lambda df: (df["_written_at"] > snap[0]) | ((df["_written_at"] == snap[0]) & (df["_part"] >= snap[1]))
        rows = rows[newer(rows)] if len(rows) else rows
        covers = covers[newer(covers)] if len(covers) else covers
    if keys and len(covers):
        winners = covers.sort_values(["_written_at", "_part"]).drop_duplicates(keys, keep="last")
        if len(rows):
            covered = rows.merge(winners[keys], on=keys, how="left", indicator=True)["_merge"].eq("both").to_numpy()
            won = rows.merge(winners, on=[*keys, "_written_at", "_part"], how="left", indicator=True)["_merge"].eq("both").to_numpy()
            rows = rows[won | ~covered]  # rows of a key group nobody covers are kept
        covers = winners
    if len(rows):
        rows = rows.drop_duplicates(["_part", "_row"])
        rows = rows.sort_values([*keys, "_written_at", "_part", "_row"], kind="stable")
    return rows.reset_index(drop=True), keys, covers, snap


def read_table(root: StoreLike, name: str) -> Any | None:
    """The current rows of the table ``name`` as a DataFrame (sorted by its keys, then in the order
    written), or None when the table does not exist yet."""
    parts = _parts(root, name)
    if not parts:
        blob = open_store(root).backend.read(join(TABLES, f"{name}.parquet"))  # a table from before datasets
        if blob is None:
            return None
        return _decode(blob, ()).rows.drop(columns=list(PROVENANCE), errors="ignore")
    rows, *_ = _resolve(_read_parts(root, name, parts))
    return rows.drop(columns=list(PROVENANCE), errors="ignore")


# ------------------------------------------------------------------------------- writing
def _encode(rows: Any, meta: dict[str, Any]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(rows, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META: json.dumps(meta, default=str).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _part_name(written_at: str, kind: str = "") -> str:
    return f"part-{written_at.replace('.', '')}-{kind + '-' if kind else ''}{uuid.uuid4().hex[:8]}.parquet"


def _put_part(root: StoreLike, name: str, df: Any, keys: Sequence[str], covers: Any, snapshot: bool,
              written_at: str | None = None, part: str | None = None) -> str:
    """Write ``df`` as one new part; returns its store-relative path."""
    import pandas as pd

    written_at = written_at or _now()
    part = part or uuid.uuid4().hex
    keys = list(keys)
    rows = df.reset_index(drop=True).assign(_written_at=written_at, _part=part, _row=range(len(df)))
    cover_keys = rows[keys] if keys else pd.DataFrame()
    if keys and covers is not None:
        cover_keys = pd.concat([cover_keys, pd.DataFrame(covers)[keys]], ignore_index=True)
    entries = [[*k, written_at, part] for k in cover_keys.drop_duplicates().values.tolist()] if keys else []
    meta = {"keys": keys, "covers": entries, "snapshot_at": [written_at, part] if snapshot else None}
    relpath = join(TABLES, name, _part_name(written_at))
    open_store(root).backend.put(relpath, _encode(rows, meta))
    return relpath


def _adopt_legacy(root: StoreLike, name: str, keys: Sequence[str]) -> None:
    """A table written whole by an older version becomes the dataset's oldest part."""
    if _parts(root, name):
        return
    blob = open_store(root).backend.read(join(TABLES, f"{name}.parquet"))
    if blob is None:
        return
    legacy = _decode(blob, keys).rows.drop(columns=list(PROVENANCE))
    # the same time and id in every writer that adopts it at once, so readers keep it once
    _put_part(root, name, legacy, [k for k in keys if k in legacy.columns], None, snapshot=False, written_at=_OLDEST, part="legacy")


def compact_table(root: StoreLike, name: str, min_parts: int | None = None) -> int:
    """Merge the table's parts into one when there are at least ``min_parts``
    (default :data:`TABLE_COMPACT_MIN_PARTS`); returns the number of parts merged.

    The merged part holds the current rows with their original provenance and the winning
    covers, and is written before exactly the parts it holds are deleted."""
    parts = _parts(root, name)
    if len(parts) < max(2, TABLE_COMPACT_MIN_PARTS if min_parts is None else min_parts):
        return 0
    rows, keys, covers, snap = _resolve(_read_parts(root, name, parts))
    entries = covers[[*keys, "_written_at", "_part"]].values.tolist() if keys else []
    meta = {"keys": keys, "covers": entries, "snapshot_at": list(snap) if snap else None}
    backend = open_store(root).backend
    backend.put(join(TABLES, name, _part_name(_now(), "compact")), _encode(rows, meta))
    for part in parts:
        backend.remove(part)  # already gone when another writer compacted it first
    return len(parts)


def export_table(root: StoreLike, name: str) -> dict[str, str]:
    """Rewrite ``tables/<name>.parquet`` and ``.csv`` (each atomically) from the dataset; again
    while other writers change the parts meanwhile. Returns both locations by extension."""
    backend = open_store(root).backend
    for _ in range(EXPORT_ATTEMPTS):
        parts = _parts(root, name)
        rows, keys, _, _ = _resolve(_read_parts(root, name, parts))
        current = rows.drop(columns=list(PROVENANCE), errors="ignore")
        encoded = {"parquet": _encode(current, {"export": True, "keys": keys}), "csv": current.to_csv(index=False).encode()}
        paths = {ext: str(backend.put(join(TABLES, f"{name}.{ext}"), data)) for ext, data in encoded.items()}
        if _parts(root, name) == parts:
            return paths
    log.warning("table %s: other writers kept adding parts; its exports may lag the dataset (read_table is current)", name)
    return paths


def append_table(root: StoreLike, name: str, df: Any, keys: Sequence[str] = (), covers: Any = None,
                 finish: bool = True) -> dict[str, str]:
    """Add the rows of ``df`` to the table ``name`` as one new part, then compact and export.

    Args:
        keys: columns naming a group of rows (e.g. ``("model_version", "case_id")``): the part
            replaces every earlier row of each group it covers. Without keys, rows accumulate.
        covers: further key groups (a DataFrame or records with the ``keys`` columns) the part
            replaces although it has no row for them (a case re-scored with no lesion left).
        finish: compact and export after the write (:func:`finish_table`). With False the write
            only adds the part and reads nothing already stored (a bulk run adds many parts and
            finishes once at its end, or leaves the exports to a later ``finish_table``).

    Returns the locations (paths or URLs): ``part`` (the new part), ``dataset`` (the table's
    folder), ``parquet`` and ``csv`` (the exports).
    """
    _adopt_legacy(root, name, keys)
    part = _put_part(root, name, df, keys, covers, snapshot=False)
    if not finish:
        st = open_store(root)
        return {"part": str(st.location(part)), "dataset": str(st.location(_dataset(name))), **table_exports(st, name)}
    return _finish(root, name, part)


def table_exports(root: StoreLike, name: str) -> dict[str, str]:
    """The locations of the table's exports (``parquet``, ``csv``), whether written yet or not."""
    st = open_store(root)
    return {ext: str(st.location(join(TABLES, f"{name}.{ext}"))) for ext in ("parquet", "csv")}


def finish_table(root: StoreLike, name: str) -> dict[str, str]:
    """Compact the table when it has many parts, then rewrite its exports; returns their locations
    (``dataset``, ``parquet``, ``csv``). Reads every part: run it once after a bulk write."""
    compact_table(root, name)
    st = open_store(root)
    return {"dataset": str(st.location(_dataset(name))), **export_table(st, name)}


def table_dataset(root: StoreLike, name: str, columns: Sequence[str], filter: Any = None) -> Any:
    """The stored rows of ``name`` as one Arrow table of ``columns`` (provenance columns
    ``_written_at``, ``_part`` allowed), read straight from the parts with ``filter`` (a
    ``pyarrow.compute`` expression) pushed down: for queries (DuckDB) over large tables.

    Superseded rows are included (every part's rows, each once): a query picks the current one
    of a key group by its latest ``_written_at``. A table written whole by an older version
    (no dataset) reads as one part written at the oldest time. Returns None when the table
    does not exist.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    parts = _parts(root, name)
    if not parts:
        blob = open_store(root).backend.read(join(TABLES, f"{name}.parquet"))
        if blob is None:
            return None
        rows = pa.Table.from_pandas(_decode(blob, ()).rows, preserve_index=False)
        return rows.filter(filter).select(list(columns)) if filter is not None else rows.select(list(columns))
    paths, fs = open_store(root).backend.dataset_source(parts)
    ds = pads.dataset(paths, format="parquet", filesystem=fs)
    cols = list(dict.fromkeys([*columns, "_part", "_row"]))
    table = ds.to_table(columns=cols, filter=filter)
    if table.num_rows:  # a compaction caught half-way leaves rows twice: keep one per (_part, _row)
        table = table.group_by(cols, use_threads=False).aggregate([])
    return table.select(list(columns))


def write_table(root: StoreLike, name: str, df: Any) -> dict[str, str]:
    """Replace the whole table ``name`` with ``df`` (one new part that supersedes every earlier
    one); returns the locations as :func:`append_table` does."""
    part = _put_part(root, name, df, (), None, snapshot=True)
    return _finish(root, name, part)


def _finish(root: StoreLike, name: str, part: str) -> dict[str, str]:
    compact_table(root, name)
    st = open_store(root)
    paths = export_table(st, name)
    return {"part": str(st.location(part)), "dataset": str(st.location(_dataset(name))), **paths}
