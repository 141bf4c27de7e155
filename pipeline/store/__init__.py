"""The store: Zarr v3 case groups, the Parquet catalog, tables and single files (see ``storage_schemas/LAYOUT.md``).

A store lives in a local folder or on an object store (``s3://bucket/prefix``, ``gs://…``,
``memory://…``). Every function below takes its ``root`` as a path, a URL or an opened
:class:`Store`, and works the same on each.

Map of the package::

    pipeline/store/
      __init__.py      this map; the public API re-exported
      layout.py        names of the parts (CASES, CATALOG, ...), StoreError
      handle.py        Store, open_store: a root opened once, its options and backend
      backend/
        base.py        Backend: the interface (files, Zarr nodes, commit) both backends implement
        local.py       POSIX file system: staging + os.replace (its commit protocol is described there)
        fsspec.py      object stores: marker last (protocol described there); storage options
      manifest.py      init_store, read_manifest, store_channels, resolve_channels, clean_staging
      cases.py         write_case, list_cases, open_case, read_case_meta, write_case_array, write_case_group, has_node, geometry
      catalog.py       append_catalog, compact_catalog, read_catalog, query_catalog (DuckDB), Arrow schema
      tables.py        write_table, read_table
      files.py         location, split_location, store_name, put_bytes, read_bytes, has_file, list_dir,
                       write_bytes_atomic, write_json_atomic

The local single-file commit (temporary name + rename) is :mod:`pipeline.core.atomic`, shared
with :mod:`pipeline.io.writers`.

Example:
    >>> import tempfile
    >>> from pipeline import store
    >>> root = store.init_store(tempfile.mkdtemp() + "/s.zarr", channels=("FLAIR", "T1", "T2"))
    >>> store.list_cases(root), store.resolve_channels(root, None)
    ([], ('FLAIR', 'T1', 'T2'))
    >>> st = store.open_store("s3://bucket/store.zarr", options={"anon": True})  # explicit fsspec options
    >>> st.remote, store.location(st, "tables")
    (True, 's3://bucket/store.zarr/tables')
"""

from pipeline.store.backend import ENV_S3_ENDPOINT, ENV_STORAGE_OPTIONS, is_remote, resolve_storage_options
from pipeline.store.cases import (
    geometry_of,
    has_node,
    list_cases,
    open_case,
    read_case_meta,
    volume_from_geometry,
    write_case,
    write_case_array,
    write_case_group,
)
from pipeline.store.catalog import (
    COMPACT_MIN_PARTS,
    append_catalog,
    catalog_arrow_schema,
    compact_catalog,
    query_catalog,
    read_catalog,
)
from pipeline.store.files import (
    has_file,
    list_dir,
    location,
    put_bytes,
    read_bytes,
    split_location,
    store_name,
    write_bytes_atomic,
    write_json_atomic,
)
from pipeline.store.handle import Store, StoreLike, open_store
from pipeline.store.layout import (
    CASE_META_KEY,
    CASES,
    CATALOG,
    MANIFEST_KEY,
    MODELS,
    PREDICTIONS,
    STAGING,
    TABLES,
    StoreError,
)
from pipeline.store.manifest import clean_staging, init_store, read_manifest, resolve_channels, store_channels
from pipeline.store.tables import read_table, write_table

__all__ = [
    # handle and errors
    "Store", "StoreLike", "open_store", "StoreError", "is_remote", "resolve_storage_options",
    "ENV_STORAGE_OPTIONS", "ENV_S3_ENDPOINT",
    # layout names
    "CASES", "PREDICTIONS", "CATALOG", "TABLES", "MODELS", "STAGING", "MANIFEST_KEY", "CASE_META_KEY",
    # the store as a whole
    "init_store", "read_manifest", "store_channels", "resolve_channels", "clean_staging",
    # cases
    "geometry_of", "volume_from_geometry", "write_case", "list_cases", "open_case", "read_case_meta",
    "write_case_array", "write_case_group", "has_node",
    # catalog
    "COMPACT_MIN_PARTS", "append_catalog", "catalog_arrow_schema", "compact_catalog", "read_catalog", "query_catalog",
    # tables
    "write_table", "read_table",
    # single files and locations
    "location", "split_location", "store_name", "put_bytes", "read_bytes", "has_file", "list_dir",
    "write_bytes_atomic", "write_json_atomic",
]
