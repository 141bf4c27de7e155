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
      cases.py         write_case, list_cases, open_case, read_case_meta, write_case_array, write_case_group, write_label, has_node, geometry
      ngff.py          the OME-Zarr 0.5 metadata of a case (image, labels/) and the mask readers of either layout
      upgrade.py       upgrade_store: a store of an older schema rewritten in place to the current layout (no voxel rewritten)
      catalog.py       append_catalog, compact_catalog, read_catalog, query_catalog (DuckDB), catalog_dataset,
                       cases_of_run, Arrow schema
      tables.py        append_table, write_table, read_table, compact_table, export_table, finish_table, table_dataset
                       (a Parquet dataset per table)
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
    has_prediction,
    list_cases,
    open_case,
    prediction_path,
    read_case_meta,
    refresh_labels,
    volume_from_geometry,
    write_case,
    write_case_array,
    write_case_group,
    write_label,
    write_missing_levels,
)
from pipeline.store.catalog import (
    COMPACT_MIN_PARTS,
    append_catalog,
    cases_of_run,
    catalog_arrow_schema,
    catalog_dataset,
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
from pipeline.store.ngff import (
    FOREGROUND,
    LABELS,
    REFERENCE,
    foreground_mask,
    mask_array,
    prediction_label,
    prediction_mask,
    prediction_versions,
    reference_label,
)
from pipeline.store.tables import (
    append_table,
    compact_table,
    export_table,
    finish_table,
    read_table,
    table_dataset,
    table_exports,
    write_table,
)
from pipeline.store.upgrade import upgrade_case, upgrade_store

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
    # masks (OME-Zarr labels; either layout)
    "LABELS", "REFERENCE", "FOREGROUND", "prediction_label", "mask_array", "reference_label", "foreground_mask", "prediction_mask",
    "prediction_versions", "write_label", "refresh_labels", "prediction_path", "has_prediction",
    "write_missing_levels", "upgrade_store", "upgrade_case",
    # catalog
    "COMPACT_MIN_PARTS", "append_catalog", "catalog_arrow_schema", "compact_catalog", "read_catalog", "query_catalog",
    "catalog_dataset", "cases_of_run",
    # tables
    "append_table", "write_table", "read_table", "compact_table", "export_table", "finish_table", "table_dataset", "table_exports",
    # single files and locations
    "location", "split_location", "store_name", "put_bytes", "read_bytes", "has_file", "list_dir",
    "write_bytes_atomic", "write_json_atomic",
]
