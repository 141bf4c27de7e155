"""Names of the store's parts (documented in ``storage_schemas/LAYOUT.md``) and its error type.

::

    STORE/
      zarr.json                      root group; attributes[MANIFEST_KEY] = StoreManifest
      cases/<case_id>/               CASES: one group per committed case, attributes[CASE_META_KEY]
          labels/<name>/0            the masks as OME-Zarr labels (schema 1.3; see pipeline.store.ngff)
          predictions/<model>/mask   PREDICTIONS: where schema <= 1.2 kept a prediction (still read)
      catalog/part-*.parquet         CATALOG
      tables/                        TABLES
      models/<model_version>/        MODELS
      .staging/                      STAGING (local stores only)

Example:
    >>> f"{CASES}/sub-01_ses-01/{PREDICTIONS}/unet3d-x/mask"
    'cases/sub-01_ses-01/predictions/unet3d-x/mask'
"""

from __future__ import annotations

CASES = "cases"
PREDICTIONS = "predictions"  # schema <= 1.2: cases/<id>/predictions/<model_version>/mask (1.3: labels/prediction-<v>/0)
CATALOG = "catalog"
TABLES = "tables"
MODELS = "models"
STAGING = ".staging"
MANIFEST_KEY = "lesionflow"
CASE_META_KEY = "lesionflow_case"
NODE_MARKER = "zarr.json"
"""The object whose presence makes a Zarr v3 node (group or array) exist."""


class StoreError(RuntimeError):
    """A store that cannot be used as asked (wrong schema, missing case, unknown channel, ...)."""
