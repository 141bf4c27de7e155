"""The :class:`Store` handle: a store's root opened once, with its options and its backend.

Every function of :mod:`pipeline.store` takes a root (a local path or a URL) or a ``Store`` and
reaches the storage through ``open_store(root).backend``; the choice between the local and the
object-store backend is made here, once per root, never in the functions.

Options for URLs come from the environment (``LESIONFLOW_STORAGE_OPTIONS``,
``LESIONFLOW_S3_ENDPOINT_URL``, AWS variables; see :mod:`pipeline.store.backend.fsspec`).
A library user may pass explicit ``options``: ``open_store(url, options=...)`` makes them that
root's options for the rest of the process, so the functions called with the plain URL use them.

Example:
    >>> import tempfile
    >>> st = open_store(tempfile.mkdtemp())
    >>> st is open_store(str(st.root)), st.remote
    (True, False)
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from pipeline.store.backend import Backend, backend_for, local_path, resolve_storage_options, url_of


class Store:
    """A store at ``root`` (path or URL) with its backend; ``options`` override the environment's."""

    def __init__(self, root: StoreLike, options: dict[str, Any] | None = None) -> None:
        if isinstance(root, Store):
            root = root.root
        self.explicit_options = options is not None
        self.backend: Backend = backend_for(root, options)

    @property
    def root(self) -> Path | str:
        """The normalised root: a local ``Path`` or the URL without trailing slash."""
        return self.backend.root

    @property
    def remote(self) -> bool:
        return self.backend.remote

    def location(self, relpath: str = "") -> Path | str:
        """``relpath`` inside the store: a local ``Path`` or a URL."""
        return self.backend.location(relpath)

    def __str__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def is_current(self) -> bool:
        """False when the environment's options changed since this store was opened from them."""
        if self.explicit_options or not self.remote:
            return True
        return resolve_storage_options(str(self.root)) == getattr(self.backend, "options", {})


StoreLike = str | os.PathLike | Store
"""What the store functions take: a path, a URL or an opened :class:`Store`."""

_OPEN: OrderedDict[str, Store] = OrderedDict()
_OPEN_MAX = 128
_LOCK = threading.Lock()


def open_store(root: StoreLike, options: dict[str, Any] | None = None) -> Store:
    """The :class:`Store` at ``root``, opened once per root and reused (a ``Store`` is returned as is).

    With ``options`` the store is opened with them and they become the root's options for the
    rest of the process.
    """
    if isinstance(root, Store):
        return root if options is None else open_store(root.root, options)
    key = url_of(root) or str(local_path(root))
    with _LOCK:
        st = _OPEN.get(key)
        if options is not None or st is None or not st.is_current():
            st = Store(root, options)
        _OPEN[key] = st
        _OPEN.move_to_end(key)
        while len(_OPEN) > _OPEN_MAX:
            _OPEN.popitem(last=False)
        return st
