"""Backend for a store on an object store reached through fsspec (``s3://``, ``gs://``, ``memory://``):
marker last.

Commit protocol. Object stores have no atomic rename, so visibility is carried by one object
written last. A Zarr node is visible only once its ``zarr.json`` exists, and a case only once
its group ``zarr.json`` carries the ``lesionflow_case`` metadata (the ``marker_key`` of
:meth:`FsspecBackend.committed_attrs`). Committing a node (:meth:`FsspecBackend.commit_node`)
builds it in memory, then (1) deletes an existing node's ``zarr.json`` (it becomes invisible),
(2) deletes the rest of its old objects (no stale array or chunk survives into the new node),
(3) uploads every chunk, (4) every array's ``zarr.json``, deepest first, and (5) the node's own
``zarr.json`` last. A crash at any step leaves the node invisible; everything below an invisible
prefix is debris that is never read and that the next write of the node replaces. Replacing a
node is therefore not seamless (it is absent between (1) and (5), never half-visible); the
protocol assumes one writer per node at a time and read-after-write consistency (S3 has had it
since 2020). There is no staging area.

Single files (catalog parts, tables, reports, checkpoints) are encoded in memory and written
with one PUT, which is atomic on S3: a reader sees the old object or the new one.

Storage options: the environment (``LESIONFLOW_STORAGE_OPTIONS`` as JSON, merged;
``LESIONFLOW_S3_ENDPOINT_URL`` → ``client_kwargs.endpoint_url`` for ``s3://``), overridden by
options given to :class:`pipeline.store.Store`, plus whatever the file-system library reads
itself (s3fs/botocore: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ...). Dask worker processes see only the environment, so configure
remote stores there for ``ingest``.

Example:
    >>> b = FsspecBackend("memory://doc-store")
    >>> str(b.put("tables/x.csv", b"a\\n1\\n")), b.read("tables/x.csv"), b.list("tables")
    ('memory://doc-store/tables/x.csv', b'a\\n1\\n', ['x.csv'])
    >>> b.remove_prefix("")
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from typing import Any

import zarr

from pipeline.store.backend.base import Backend, NodeBuilder, node_attrs
from pipeline.store.layout import NODE_MARKER, StoreError

ENV_STORAGE_OPTIONS = "LESIONFLOW_STORAGE_OPTIONS"
ENV_S3_ENDPOINT = "LESIONFLOW_S3_ENDPOINT_URL"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_storage_options(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """fsspec options for ``url``: environment defaults overridden by ``options``.

    Example:
        >>> resolve_storage_options("memory://x", {"skip_instance_cache": True})
        {'skip_instance_cache': True}
    """
    opts: dict[str, Any] = {}
    protocol = url.split("://", 1)[0].lower()
    endpoint = os.environ.get(ENV_S3_ENDPOINT)
    if endpoint and protocol in ("s3", "s3a"):
        opts = {"client_kwargs": {"endpoint_url": endpoint}}
    env_json = os.environ.get(ENV_STORAGE_OPTIONS)
    if env_json:
        try:
            opts = _merge(opts, json.loads(env_json))
        except ValueError as exc:
            raise StoreError(f"{ENV_STORAGE_OPTIONS} is not valid JSON ({exc})") from exc
    return _merge(opts, options or {})


class FsspecBackend(Backend):
    """A store at the normalised URL ``url`` (``proto://rest``, no trailing slash).

    ``options`` are the resolved fsspec options (see :func:`resolve_storage_options`); the file
    system is created on first use.
    """

    remote = True

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.root = self.url = url
        self.options = dict(options or {})

    def __repr__(self) -> str:
        return f"FsspecBackend({self.url!r})"

    @cached_property
    def _fs_and_path(self) -> tuple[Any, str]:
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(self.url, **self.options)
        return fs, path.rstrip("/")

    @property
    def fs(self) -> Any:
        """The synchronous fsspec file system (plain objects; Zarr goes through ``FsspecStore``)."""
        return self._fs_and_path[0]

    def key(self, relpath: str = "") -> str:
        """The file system's key of ``relpath`` (bucket/prefix/relpath)."""
        return "/".join([self._fs_and_path[1], *(p for p in relpath.strip("/").split("/") if p)])

    # ---------------------------------------------------------------- single files
    def location(self, relpath: str = "") -> str:
        return "/".join([self.url, *(p for p in relpath.strip("/").split("/") if p)])

    def read(self, relpath: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.key(relpath))
        except FileNotFoundError:
            return None

    def put(self, relpath: str, data: bytes) -> str:
        self.fs.pipe_file(self.key(relpath), bytes(data))
        return self.location(relpath)

    def isfile(self, relpath: str) -> bool:
        key = self.key(relpath)
        self.fs.invalidate_cache(key)  # ask the server, not a listing cached before a write
        try:
            return bool(self.fs.isfile(key))
        except FileNotFoundError:
            return False

    def list(self, relpath: str = "") -> list[str]:
        prefix = self.key(relpath)
        self.fs.invalidate_cache(prefix)
        try:
            entries = self.fs.ls(prefix, detail=False)
        except FileNotFoundError:
            return []
        below = [str(e).rstrip("/") for e in entries]
        return sorted({e.rsplit("/", 1)[-1] for e in below if e != prefix.rstrip("/")} - {""})

    def remove(self, relpath: str) -> None:
        try:
            self.fs.rm_file(self.key(relpath))
        except FileNotFoundError:
            pass

    def remove_prefix(self, relpath: str) -> None:
        """Delete a node: its ``zarr.json`` first (it becomes invisible), then everything below it."""
        prefix = self.key(relpath)
        try:
            self.fs.rm_file(f"{prefix}/{NODE_MARKER}")
        except FileNotFoundError:
            pass
        try:
            self.fs.rm(prefix + "/", recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(prefix)

    # ---------------------------------------------------------------- Zarr nodes
    def zarr_store(self, relpath: str, read_only: bool = False) -> Any:
        from zarr.storage import FsspecStore

        # no listing cache: zarr's file system instance is shared per thread and our writes go
        # through another one, so a cached listing would hide arrays added later (new predictions)
        options = {"use_listings_cache": False, **self.options}
        return FsspecStore.from_url(self.location(relpath), storage_options=options, read_only=read_only)

    def commit_node(self, relpath: str, build: NodeBuilder) -> str:
        """Build the node in memory, delete the old one marker first, upload the new one marker last."""
        objects: dict[str, Any] = {}
        build(zarr.open_group(zarr.storage.MemoryStore(store_dict=objects), mode="w", zarr_format=3), "node")
        node = {k[len("node/"):]: v for k, v in objects.items() if k.startswith("node/")}
        self.remove_prefix(relpath)
        self._upload(self.key(relpath), node)
        return self.location(relpath)

    def _upload(self, prefix: str, objects: dict[str, Any]) -> None:
        """Chunks first, then the ``zarr.json`` files from the deepest up, the node's own last."""
        blobs = {f"{prefix}/{k}": (v.to_bytes() if hasattr(v, "to_bytes") else bytes(v)) for k, v in objects.items()}
        markers = [k for k in blobs if k.endswith(f"/{NODE_MARKER}")]
        chunks = {k: v for k, v in blobs.items() if k not in markers}
        if chunks:
            self.fs.pipe(chunks)
        for depth in sorted({k.count("/") for k in markers}, reverse=True):
            self.fs.pipe({k: blobs[k] for k in markers if k.count("/") == depth})
        self.fs.invalidate_cache(prefix)

    def committed_children(self, relpath: str, marker_key: str) -> list[str]:
        """The prefixes under ``relpath`` whose group ``zarr.json`` exists and holds ``marker_key``."""
        prefix = self.key(relpath)
        self.fs.invalidate_cache(prefix)
        try:
            entries = self.fs.ls(prefix, detail=True)
        except FileNotFoundError:
            return []
        names = sorted({e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"})
        names = [n for n in names if n and not n.startswith(".")]
        if not names:
            return []
        markers = {n: f"{prefix}/{n}/{NODE_MARKER}" for n in names}
        blobs = self.fs.cat(list(markers.values()), on_error="omit")
        return [n for n in names if marker_key in (node_attrs(blobs.get(markers[n])) or {})]

    def committed_attrs(self, relpath: str, marker_key: str) -> dict[str, Any] | None:
        attrs = self.node_attrs(relpath)  # one GET, no Zarr round trip
        return attrs if attrs is not None and marker_key in attrs else None

    # ---------------------------------------------------------------- housekeeping
    def dataset_source(self, relpaths: list[str]) -> tuple[list[str], Any]:
        return [self.key(p) for p in relpaths], self.fs
