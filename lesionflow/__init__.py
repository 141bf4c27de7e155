"""lesionflow: raw MRI/CT study folders → Zarr → trained model → lesion-volume tables.

The command-line entry point lives in :mod:`lesionflow.cli`; the library in ``pipeline``,
schemas in ``storage_schemas``, training in ``training`` and Prefect flows in ``flows``.
"""

from pipeline import __version__  # noqa: F401
