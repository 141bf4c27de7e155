"""Backend for a store on a local or shared POSIX file system: staging and atomic rename.

Commit protocol. A Zarr node (a whole case, or an array added later such as a patch index or a
prediction) is written completely under ``.staging/<uuid>/`` and then moved to its place with one
``os.replace``, atomic on a POSIX file system, so a reader never sees a half-written node.
Replacing an existing node moves the old one aside into staging first, then the new one in, so
a reader sees either the old or the new node, never a mix. A crash leaves only staging debris,
which :meth:`LocalBackend.clean_staging` removes on the next ingest (entries older than its age
guard, so a concurrent writer's work in progress survives).

Single files (catalog parts, tables, reports, JSON) are written to a unique temporary name in
their folder and renamed (:func:`pipeline.core.atomic.write_bytes_atomic`).

Because the rename is the commit, a case folder with a ``zarr.json`` is a committed case.

Example:
    >>> import tempfile
    >>> b = LocalBackend(tempfile.mkdtemp())
    >>> b.put("tables/x.csv", b"a\\n1\\n").name, b.read("tables/x.csv"), b.list("tables")
    ('x.csv', b'a\\n1\\n', ['x.csv'])
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import zarr

from pipeline.core.atomic import write_bytes_atomic
from pipeline.store.backend.base import Backend, NodeBuilder
from pipeline.store.layout import NODE_MARKER, STAGING


class LocalBackend(Backend):
    """A store in the folder ``root``."""

    remote = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    # ---------------------------------------------------------------- single files
    def location(self, relpath: str = "") -> Path:
        relpath = relpath.strip("/")
        return self.root / relpath if relpath else self.root

    def read(self, relpath: str) -> bytes | None:
        try:
            return self.location(relpath).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def put(self, relpath: str, data: bytes) -> Path:
        return write_bytes_atomic(self.location(relpath), bytes(data))

    def isfile(self, relpath: str) -> bool:
        return self.location(relpath).is_file()

    def list(self, relpath: str = "") -> list[str]:
        try:
            return sorted(p.name for p in self.location(relpath).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, relpath: str) -> None:
        try:
            os.remove(self.location(relpath))
        except FileNotFoundError:
            pass

    def remove_prefix(self, relpath: str) -> None:
        path = self.location(relpath)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            self.remove(relpath)

    # ---------------------------------------------------------------- Zarr nodes
    def zarr_store(self, relpath: str, read_only: bool = False) -> Any:
        return str(self.location(relpath))

    def commit_node(self, relpath: str, build: NodeBuilder) -> Path:
        """Build the node in ``.staging/<uuid>/``, then ``os.replace`` it onto ``relpath``.

        Raises ``OSError`` when another writer put a node at ``relpath`` between the two renames
        of a replacement (the caller decides whether that is fine).
        """
        staging = self.root / STAGING / uuid.uuid4().hex
        staging.mkdir(parents=True)
        try:
            build(zarr.open_group(str(staging), mode="w", zarr_format=3), "node")
            target = self.location(relpath)
            if target.exists():
                trash = self.root / STAGING / f"old-{uuid.uuid4().hex}"
                os.replace(target, trash)
                os.replace(staging / "node", target)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging / "node", target)
            return target
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def committed_children(self, relpath: str, marker_key: str) -> list[str]:
        folder = self.location(relpath)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / NODE_MARKER).exists())

    def committed_attrs(self, relpath: str, marker_key: str) -> dict[str, Any] | None:
        return self.node_attrs(relpath)  # the rename was the commit: any zarr.json counts

    # ---------------------------------------------------------------- housekeeping
    def makedirs(self, *relpaths: str) -> None:
        for relpath in relpaths or ("",):
            self.location(relpath).mkdir(parents=True, exist_ok=True)

    def clean_staging(self, older_than_s: float) -> int:
        staging = self.root / STAGING
        n = 0
        if staging.exists():
            now = time.time()
            for entry in staging.iterdir():
                try:
                    if now - entry.stat().st_mtime < older_than_s:
                        continue
                except FileNotFoundError:
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                n += 1
        return n

    def dataset_source(self, relpaths: list[str]) -> tuple[list[str], Any]:
        return [str(self.location(p)) for p in relpaths], None
