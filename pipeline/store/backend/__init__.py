"""Storage backends of the store: one interface, one module per kind of storage.

* :mod:`.base`   — :class:`Backend`, the interface (files, Zarr nodes, commit), and Zarr helpers
* :mod:`.local`  — :class:`LocalBackend`: POSIX file system, staging + ``os.replace``
* :mod:`.fsspec` — :class:`FsspecBackend`: object stores through fsspec, marker last

:func:`backend_for` picks one from a root: a URL (``s3://bucket/prefix``, ``gs://…``,
``memory://…``) gets the fsspec backend, anything else (a path, a ``file://`` URL) the local one.
Only these modules know which kind of storage a store is on.

Example:
    >>> backend_for("/data/store.zarr")
    LocalBackend('/data/store.zarr')
    >>> backend_for("s3://bucket/store.zarr/")
    FsspecBackend('s3://bucket/store.zarr')
    >>> is_remote("file:///data/store.zarr"), url_of("S3://bucket/x/")
    (False, 's3://bucket/x')
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pipeline.store.backend.base import Backend
from pipeline.store.backend.fsspec import ENV_S3_ENDPOINT, ENV_STORAGE_OPTIONS, FsspecBackend, resolve_storage_options
from pipeline.store.backend.local import LocalBackend

__all__ = [
    "Backend", "LocalBackend", "FsspecBackend", "backend_for", "is_remote", "url_of", "local_path",
    "resolve_storage_options", "ENV_STORAGE_OPTIONS", "ENV_S3_ENDPOINT",
]

_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):/{1,2}(.*)$")


def url_of(root: str | Path) -> str | None:
    """The normalised URL of a remote ``root`` (``proto://rest`` without trailing slash), else None.

    A ``Path`` built from a URL (``Path("s3://b/x")`` reads ``s3:/b/x``) is recognised too;
    ``file://`` URLs are local paths.
    """
    m = _URL_RE.match(str(root))
    if m is None or m.group(1).lower() == "file":
        return None
    return f"{m.group(1).lower()}://{m.group(2).rstrip('/')}"


def local_path(root: str | Path) -> Path:
    """``root`` as a local path (a ``file://`` prefix removed)."""
    text = str(root)
    return Path(text[len("file://"):]) if text.lower().startswith("file://") else Path(root)


def is_remote(root: str | Path) -> bool:
    """True when ``root`` is an fsspec URL (object store) rather than a local path."""
    return url_of(root) is not None


def backend_for(root: str | Path, options: dict[str, Any] | None = None) -> Backend:
    """The backend of the store at ``root``; ``options`` override the environment's fsspec options."""
    url = url_of(root)
    if url is None:
        return LocalBackend(local_path(root))
    return FsspecBackend(url, resolve_storage_options(url, options))
