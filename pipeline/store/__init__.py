"""The store: Zarr v3 case groups, the Parquet catalog, tables and single files (see LAYOUT.md)."""

from pipeline.store._legacy import *  # noqa: F401,F403  (split into modules next)
from pipeline.store._legacy import _local, _remote  # noqa: F401
