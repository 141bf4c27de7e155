"""The store as a whole: create and check it (:func:`init_store`), its manifest, its channels,
and the clean-up of interrupted writes.

The manifest is the :class:`~storage_schemas.models.StoreManifest` in the root group's
attributes (``zarr.json``, key ``lesionflow``). Since schema 1.2 it records the store's
``channels``: the modalities that ingest stacks into each case's image, in order (a case may hold
fewer when its source lacked one). Readers that take channels (quality report, prepare, flows,
CLI) default to the store's and refuse a channel the store does not have.

Example:
    >>> import tempfile
    >>> root = init_store(tempfile.mkdtemp() + "/s.zarr", channels=("FLAIR", "T1"))
    >>> store_channels(root), resolve_channels(root, None), resolve_channels(root, ["T1"])
    (('FLAIR', 'T1'), ('FLAIR', 'T1'), ('T1',))
    >>> resolve_channels(root, ["T2"])
    Traceback (most recent call last):
    ...
    pipeline.store.layout.StoreError: ...: channel(s) ['T2'] not in this store: requested ['T2'], the store has ['FLAIR', 'T1']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline import __version__
from pipeline.core.config import DEFAULT_CHANNELS
from pipeline.store.backend.base import group_json
from pipeline.store.handle import StoreLike, open_store
from pipeline.store.layout import CASE_META_KEY, CASES, CATALOG, MANIFEST_KEY, MODELS, STAGING, TABLES, StoreError
from storage_schemas.models import SCHEMA_VERSION, StoreManifest


def init_store(root: StoreLike, channels: Sequence[str] | None = None) -> Path | str:
    """Create the store at ``root`` if needed, check its schema version and its channels.

    ``channels`` (ingest passes its configuration's) are recorded in a new store's manifest. An
    existing store that recorded other channels is refused (:class:`StoreError` naming both
    lists); one written before channels were recorded (schema < 1.2) records these. Returns the
    path (local) or the normalised URL (object store).
    """
    st = open_store(root)
    b = st.backend
    b.makedirs()
    wanted = None if channels is None else [str(c) for c in channels]
    if b.read("zarr.json") is None:
        b.put("zarr.json", group_json({MANIFEST_KEY: StoreManifest(pipeline_version=__version__, channels=wanted).model_dump(mode="json")}))
    else:
        manifest = read_manifest(st)
        attrs = b.node_attrs("") or {}
        if wanted is not None and manifest.channels is None:
            recorded = manifest.model_copy(update={"channels": wanted, "schema_version": SCHEMA_VERSION})
            b.put("zarr.json", group_json({**attrs, MANIFEST_KEY: recorded.model_dump(mode="json")}))
        elif wanted is not None and list(manifest.channels or []) != wanted:
            raise StoreError(f"{st.root}: the store holds channels {manifest.channels}, not the requested {wanted}; "
                             "ingest into a new store or configure the store's channels")
    b.makedirs(CASES, CATALOG, TABLES, MODELS, STAGING)
    b.ensure_groups("", CASES)
    return st.root


def read_manifest(root: StoreLike) -> StoreManifest:
    """Validated store manifest; raises :class:`StoreError` when absent or of another schema."""
    st = open_store(root)
    attrs = st.backend.node_attrs("")
    if attrs is None:
        raise StoreError(f"{st.root}: not a lesionflow store (no readable zarr.json); create one with `lesionflow ingest`")
    if MANIFEST_KEY not in attrs:
        raise StoreError(f"{st.root}: a Zarr group but not a lesionflow store (no '{MANIFEST_KEY}' manifest)")
    try:
        return StoreManifest.model_validate(attrs[MANIFEST_KEY])
    except Exception as exc:  # pydantic ValidationError carries the migration note
        raise StoreError(f"{st.root}: {exc}") from exc


def store_channels(root: StoreLike) -> tuple[str, ...]:
    """The store's channels: the manifest's; for a store written before they were recorded, the
    channels of its first committed case with readable metadata; for an empty one,
    :data:`pipeline.core.config.DEFAULT_CHANNELS`."""
    st = open_store(root)
    manifest = read_manifest(st)
    if manifest.channels is not None:
        return tuple(manifest.channels)
    for case_id in st.backend.committed_children(CASES, CASE_META_KEY):
        attrs = st.backend.committed_attrs(f"{CASES}/{case_id}", CASE_META_KEY) or {}
        channels = (attrs.get(CASE_META_KEY) or {}).get("channels")
        if isinstance(channels, list) and channels:
            return tuple(str(c) for c in channels)
    return DEFAULT_CHANNELS


def resolve_channels(root: StoreLike, requested: Sequence[str] | None = None) -> tuple[str, ...]:
    """The channels to work on: ``requested`` in its order, or the store's when None (or empty).

    Raises :class:`StoreError` naming both lists when a requested channel is not the store's.
    """
    have = store_channels(root)
    if not requested:
        return have
    wanted = tuple(str(c) for c in requested)
    missing = [c for c in wanted if c not in have]
    if missing:
        raise StoreError(f"{open_store(root).root}: channel(s) {missing} not in this store: "
                         f"requested {list(wanted)}, the store has {list(have)}")
    return wanted


def clean_staging(root: StoreLike, older_than_s: float = 6 * 3600) -> int:
    """Remove the leftovers of interrupted writes: staging entries whose writer is dead.

    Each staging entry records its writer (pid, process start time, host). An entry whose writer
    is a process of this host that no longer runs (or whose pid now belongs to another process)
    is removed at once; a live writer's entry is kept, however old. Entries this host cannot check
    (written on another host of a shared file system, or by an older version) are removed when
    older than ``older_than_s`` seconds. Returns how many entries were removed. A no-op (0) on
    object stores, which have no staging area: an interrupted case write there leaves an
    invisible case that the next write replaces.
    """
    return open_store(root).backend.clean_staging(older_than_s)
