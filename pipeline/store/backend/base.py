"""The backend interface: what the store needs from where it lives.

A backend is opened on a store's root (a local path or a URL) and answers in store-relative
paths (``relpath``, ``"/"``-separated, ``""`` for the root). It offers

* single files: :meth:`~Backend.read`, :meth:`~Backend.put` (whole and atomic),
  :meth:`~Backend.isfile`, :meth:`~Backend.list`, :meth:`~Backend.remove`;
* Zarr nodes: :meth:`~Backend.zarr_store` to read one, :meth:`~Backend.commit_node` to write one
  so that readers see it whole or not at all, :meth:`~Backend.committed_attrs` /
  :meth:`~Backend.committed_children` for what is committed, :meth:`~Backend.remove_prefix`;
* housekeeping: :meth:`~Backend.makedirs`, :meth:`~Backend.clean_staging`, and
  :meth:`~Backend.dataset_source` to hand files to pyarrow.

Two implementations, one file each: :mod:`.local` (POSIX file system: staging and atomic rename)
and :mod:`.fsspec` (object stores: marker last). Each explains its commit protocol. Everything
above the backends (cases, catalog, tables, files) is written once against this interface.

Example (a node committed through any backend)::

    def build(scratch: zarr.Group, name: str) -> None:
        scratch.create_array(name, shape=(4,), dtype="uint8")[...] = 1

    backend.commit_node("cases/sub-01_ses-01/extra", build)
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zarr

from pipeline.store.layout import NODE_MARKER

NodeBuilder = Callable[[zarr.Group, str], None]
"""Writes one node (group or array) named ``name`` into an empty scratch group."""


def group_json(attrs: dict[str, Any] | None = None) -> bytes:
    """The ``zarr.json`` bytes of a Zarr v3 group with ``attrs``, as zarr writes it."""
    objects: dict[str, Any] = {}
    g = zarr.open_group(zarr.storage.MemoryStore(store_dict=objects), mode="w", zarr_format=3)
    if attrs:
        g.attrs.update(attrs)
    return objects[NODE_MARKER].to_bytes()


def node_attrs(blob: bytes | None) -> dict[str, Any] | None:
    """The attributes in a node's ``zarr.json`` bytes; None when absent or unreadable."""
    if blob is None:
        return None
    try:
        doc = json.loads(blob)
    except ValueError:
        return None
    return doc.get("attributes", {}) if isinstance(doc, dict) else None


def join(*parts: str) -> str:
    """Store-relative path of ``parts`` (``join("cases", "x/", "zarr.json")`` → ``cases/x/zarr.json``)."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class Backend(ABC):
    """Storage of one store; see the module docstring. ``root`` is the normalised path or URL."""

    remote: bool = False
    root: Path | str

    # ---------------------------------------------------------------- single files
    @abstractmethod
    def location(self, relpath: str = "") -> Path | str:
        """``relpath`` as a local ``Path`` or a URL."""

    @abstractmethod
    def read(self, relpath: str) -> bytes | None:
        """Content of the file ``relpath``, or None when there is no such file."""

    @abstractmethod
    def put(self, relpath: str, data: bytes) -> Path | str:
        """Write the file ``relpath`` whole and atomically (old or new content, never a mix)."""

    @abstractmethod
    def isfile(self, relpath: str) -> bool:
        """True when the file (object) ``relpath`` exists; a folder (prefix) is not a file."""

    @abstractmethod
    def list(self, relpath: str = "") -> list[str]:
        """Sorted names directly under ``relpath`` (files and folders/prefixes); [] when absent."""

    @abstractmethod
    def remove(self, relpath: str) -> None:
        """Delete one file; a missing file is not an error."""

    @abstractmethod
    def remove_prefix(self, relpath: str) -> None:
        """Delete ``relpath`` and everything below it (a node: its ``zarr.json`` first)."""

    # ---------------------------------------------------------------- Zarr nodes
    @abstractmethod
    def zarr_store(self, relpath: str, read_only: bool = False) -> Any:
        """What ``zarr.open_group`` takes to open the node at ``relpath``."""

    @abstractmethod
    def commit_node(self, relpath: str, build: NodeBuilder) -> Path | str:
        """Write a node with ``build`` and make it visible at ``relpath`` atomically, replacing
        what was there; returns its location. The parent must exist (see :meth:`ensure_groups`)."""

    @abstractmethod
    def committed_children(self, relpath: str, marker_key: str) -> list[str]:
        """Sorted names of the committed child groups of ``relpath`` (hidden names excluded);
        ``marker_key`` is the attribute that marks a commit where a backend needs one."""

    @abstractmethod
    def committed_attrs(self, relpath: str, marker_key: str) -> dict[str, Any] | None:
        """Attributes of the committed node ``relpath``, None when it is not committed."""

    def node_attrs(self, relpath: str) -> dict[str, Any] | None:
        """Attributes of the node ``relpath`` (its ``zarr.json``), None when absent or unreadable."""
        return node_attrs(self.read(join(relpath, NODE_MARKER)))

    def has_node(self, relpath: str) -> bool:
        """True when the node ``relpath`` exists (its ``zarr.json`` does)."""
        return self.isfile(join(relpath, NODE_MARKER))

    def ensure_groups(self, base: str, below: str) -> None:
        """Create the groups ``base/a``, ``base/a/b``, ... of ``below`` = ``"a/b/..."`` where missing
        (``base`` itself must exist)."""
        parts = [p for p in below.strip("/").split("/") if p]
        for i in range(1, len(parts) + 1):
            marker = join(base, *parts[:i], NODE_MARKER)
            if self.read(marker) is None:
                self.put(marker, group_json())

    # ---------------------------------------------------------------- housekeeping
    def makedirs(self, *relpaths: str) -> None:  # noqa: B027 - a no-op by default on purpose
        """Create folders where the storage has them (object stores: nothing to do)."""

    def clean_staging(self, older_than_s: float) -> int:
        """Remove the staging debris of dead writers (``older_than_s``: the age after which debris
        whose writer cannot be checked goes); returns how many entries went."""
        return 0

    @abstractmethod
    def dataset_source(self, relpaths: list[str]) -> tuple[list[str], Any]:
        """``(paths, filesystem)`` of files for ``pyarrow.dataset`` (filesystem None: local)."""
