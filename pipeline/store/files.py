"""Single files in (or beside) a store, and where things are: reports, JSON, checkpoints, paths and URLs.

Each file is written whole, so a reader sees the old file or the new one: locally through
:func:`pipeline.core.atomic.write_bytes_atomic` (unique temporary name, then rename), on an
object store with one PUT (atomic there). ``relpath`` is store-relative with ``"/"`` separators;
``root`` is a local path, a URL or an opened :class:`~pipeline.store.handle.Store`. Every module
reaches store files through these functions, so each works the same on a path and on a URL.

:func:`location`, :func:`split_location` and :func:`store_name` only compute names; they never
touch the storage.

Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> put_bytes(root, "quality/summary.json", b"{}").name
    'summary.json'
    >>> read_bytes(root, "quality/summary.json"), has_file(root, "quality"), list_dir(root, "quality")
    (b'{}', False, ['summary.json'])
    >>> location("s3://bucket/store/", "models/m1"), split_location("s3://bucket/store/models/m1/model.pt")
    ('s3://bucket/store/models/m1', ('s3://bucket/store/models/m1', 'model.pt'))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.store.backend import local_path, url_of
from pipeline.store.handle import Store, StoreLike, open_store


def location(root: StoreLike, relpath: str = "") -> Path | str:
    """``relpath`` inside ``root``: a local ``Path``, or the URL on an object store."""
    if isinstance(root, Store):
        return root.location(relpath)
    parts = [p for p in relpath.strip("/").split("/") if p]
    url = url_of(root)
    if url is not None:
        return "/".join([url, *parts])
    return local_path(root).joinpath(*parts)


def split_location(path: StoreLike) -> tuple[Path | str, str]:
    """``(parent, name)`` of a local path or a URL (``s3://b/x/model.pt`` → ``("s3://b/x", "model.pt")``)."""
    url = url_of(str(path))
    if url is None:
        p = local_path(str(path))
        return p.parent, p.name
    parent, _, name = url.rpartition("/")
    if parent.endswith(":/"):  # the bucket itself
        return url, ""
    return parent, name


def store_name(root: StoreLike) -> str:
    """The last component of a store's path or URL (for titles)."""
    return split_location(root)[1] or str(location(root))


def write_bytes_atomic(path: StoreLike, data: bytes) -> None:
    """Write ``data`` to the file ``path`` whole: temporary file and rename, on a URL one PUT."""
    parent, name = split_location(path)
    open_store(parent).backend.put(name, bytes(data))


def write_json_atomic(path: StoreLike, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` whole (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, json.dumps(payload, indent=2, default=str).encode())


def put_bytes(root: StoreLike, relpath: str, data: bytes) -> Path | str:
    """Write the file ``relpath`` of the store whole; returns its location."""
    return open_store(root).backend.put(relpath, bytes(data))


def read_bytes(root: StoreLike, relpath: str = "") -> bytes | None:
    """Content of the file ``relpath`` of the store, or None when there is no such file."""
    return open_store(root).backend.read(relpath)


def has_file(root: StoreLike, relpath: str = "") -> bool:
    """True when the file (object) ``relpath`` exists; a folder (prefix) is not a file."""
    return open_store(root).backend.isfile(relpath)


def list_dir(root: StoreLike, relpath: str = "") -> list[str]:
    """Sorted names of the entries (files and folders/prefixes) directly under ``relpath``; [] when absent."""
    return open_store(root).backend.list(relpath)
