"""Visit pairs of a subject: ``pairs/<pair_id>/`` groups holding change masks on the pair's grid.

::

    pairs/<pair_id>/                 pair_id = "<subject>_<baseline session>_<follow-up session>"
        zarr.json                    attributes["lesionflow_pair"] = PairMeta (grid, registration, expert source)
        expert/                      uint8 (Z, Y, X) the expert change mask (ingested with the sessions)
        change-<method>-<model>/     uint8 (Z, Y, X) a computed change mask (pipeline.lesions.change.CHANGE_CODES)

Every array lies on the pair grid (``PairMeta.geometry``). The group's ``zarr.json`` is one
atomic file write; each array is committed whole like a case array (staging and rename locally,
marker last on an object store), so a reader sees an array whole or not at all.

Example:
    >>> import tempfile, numpy as np
    >>> from pipeline.core.volume import Volume
    >>> from pipeline.store import geometry_of, init_store
    >>> from storage_schemas.models import PairMeta
    >>> root = init_store(tempfile.mkdtemp() + "/s.zarr")
    >>> pid = pair_id_of("sub-a", "ses-1", "ses-2")
    >>> meta = PairMeta(pair_id=pid, subject="sub-a", baseline_case="sub-a_ses-1", followup_case="sub-a_ses-2",
    ...                 geometry=geometry_of(Volume(np.zeros((4, 5, 6)))), grid="baseline")
    >>> write_pair_meta(root, meta)
    >>> write_pair_mask(root, pid, "expert", np.ones((4, 5, 6), np.uint8))
    >>> list_pairs(root), int(read_pair_mask(root, pid, "expert").sum()), read_pair_meta(root, pid).grid
    (['sub-a_ses-1_ses-2'], 120, 'baseline')
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from pipeline.store.backend.base import group_json, join
from pipeline.store.cases import _write_array
from pipeline.store.handle import StoreLike, open_store
from pipeline.store.layout import NODE_MARKER, StoreError
from storage_schemas.models import PairMeta

PAIRS = "pairs"
PAIR_META_KEY = "lesionflow_pair"
EXPERT = "expert"


def pair_id_of(subject: str, baseline_session: str, followup_session: str) -> str:
    """``<subject>_<baseline session>_<follow-up session>`` (pseudonyms only)."""
    return f"{subject}_{baseline_session}_{followup_session}"


def change_mask_name(method: str, model_version: str | None) -> str:
    """Array name of a computed change mask: ``change-subtraction`` or ``change-model-<model_version>``."""
    return f"change-{method}" if method == "subtraction" else f"change-{method}-{model_version}"


def write_pair_meta(root: StoreLike, meta: PairMeta) -> None:
    """Create or update the pair group with ``meta`` (one atomic write of its ``zarr.json``)."""
    st = open_store(root)
    if st.backend.read(join(PAIRS, NODE_MARKER)) is None:
        st.backend.put(join(PAIRS, NODE_MARKER), group_json())
    st.backend.makedirs(join(PAIRS, meta.pair_id))
    st.backend.put(join(PAIRS, meta.pair_id, NODE_MARKER), group_json({PAIR_META_KEY: meta.model_dump(mode="json")}))


def read_pair_meta(root: StoreLike, pair_id: str) -> PairMeta | None:
    """The pair's metadata, None when the store has no such pair."""
    attrs = open_store(root).backend.node_attrs(join(PAIRS, pair_id))
    if not attrs or PAIR_META_KEY not in attrs:
        return None
    try:
        return PairMeta.model_validate(attrs[PAIR_META_KEY])
    except Exception as exc:
        raise StoreError(f"pair {pair_id}: invalid metadata: {exc}") from exc


def list_pairs(root: StoreLike) -> list[str]:
    """Pair ids of the store (groups under ``pairs/`` with pair metadata), sorted."""
    return open_store(root).backend.committed_children(PAIRS, PAIR_META_KEY)


def write_pair_mask(root: StoreLike, pair_id: str, name: str, data: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
    """Add or replace the uint8 mask ``name`` of a pair, atomically; it must lie on the pair grid."""
    st = open_store(root)
    meta = read_pair_meta(st, pair_id)
    if meta is None:
        raise StoreError(f"pair {pair_id!r} is not in store {st.root}")
    if tuple(data.shape) != tuple(meta.geometry.shape_zyx):
        raise StoreError(f"pair {pair_id}: mask {name} shape {tuple(data.shape)} is not the pair grid {tuple(meta.geometry.shape_zyx)}")

    def build(scratch: zarr.Group, node: str) -> None:
        _write_array(scratch, node, np.asarray(data, np.uint8), (64, 64, 64), attrs, ("z", "y", "x"))

    st.backend.commit_node(join(PAIRS, pair_id, name), build)


def read_pair_mask(root: StoreLike, pair_id: str, name: str) -> np.ndarray | None:
    """The pair's mask ``name`` as a numpy array, None when it has none."""
    st = open_store(root)
    node = join(PAIRS, pair_id, name)
    if not st.backend.has_node(node):
        return None
    return np.asarray(zarr.open_array(st.backend.zarr_store(node, read_only=True), mode="r")[...])


def pair_mask_attrs(root: StoreLike, pair_id: str, name: str) -> dict[str, Any] | None:
    """The attributes of the pair's mask ``name`` (its ``zarr.json``), None when it has none."""
    return open_store(root).backend.node_attrs(join(PAIRS, pair_id, name))


def pair_masks(root: StoreLike, pair_id: str) -> list[str]:
    """Names of the pair's committed masks."""
    st = open_store(root)
    base = join(PAIRS, pair_id)
    return [n for n in st.backend.list(base) if n != NODE_MARKER and st.backend.has_node(join(base, n))]
