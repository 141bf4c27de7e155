"""Tables under ``tables/``: ``<name>.parquet`` plus a ``<name>.csv`` copy, each written whole.

The lesion tables (``case_volumes``, ``lesions``; :mod:`pipeline.lesions.tables`) live here. Each
file is encoded in memory and committed atomically by the backend (temporary name and rename on
a file system, one PUT on an object store).

Example:
    >>> import tempfile, pandas as pd
    >>> root = tempfile.mkdtemp()
    >>> paths = write_table(root, "t", pd.DataFrame({"a": [1, 2]}))
    >>> sorted(paths), read_table(root, "t")["a"].tolist(), read_table(root, "missing")
    (['csv', 'parquet'], [1, 2], None)
"""

from __future__ import annotations

import io
from typing import Any

from pipeline.store.backend.base import join
from pipeline.store.handle import StoreLike, open_store
from pipeline.store.layout import TABLES


def write_table(root: StoreLike, name: str, df: Any) -> dict[str, str]:
    """Write ``tables/<name>.parquet`` and ``.csv`` atomically; returns both paths (or URLs) by extension."""
    backend = open_store(root).backend
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    encoded = {"parquet": buf.getvalue(), "csv": df.to_csv(index=False).encode()}
    return {ext: str(backend.put(join(TABLES, f"{name}.{ext}"), data)) for ext, data in encoded.items()}


def read_table(root: StoreLike, name: str) -> Any | None:
    """``tables/<name>.parquet`` as a DataFrame, or None when the table does not exist yet."""
    import pandas as pd

    blob = open_store(root).backend.read(join(TABLES, f"{name}.parquet"))
    return None if blob is None else pd.read_parquet(io.BytesIO(blob))
