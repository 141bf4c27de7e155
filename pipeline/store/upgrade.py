"""Upgrade a store written by an older lesionflow to the current layout, in place (``lesionflow upgrade``).

Schema 1.3 makes every case group an OME-Zarr 0.5 image (see :mod:`pipeline.store.ngff`), and 1.5
gives it a resolution pyramid. An older store is brought there without rewriting a stored voxel:
steps 1-3 and 5-6 rewrite metadata only (nothing decoded or re-encoded); step 4 adds new arrays computed
from level 0, which stays byte for byte as it was:

1. each mask beside the image (``label``, ``foreground``, ``predictions/<model>/mask``) moves to
   its NGFF label image ``labels/<name>/0``: the label group's ``zarr.json`` (multiscales and
   ``image-label``) is written first, then the array folder is renamed into it (one
   ``os.replace`` on a file system, so its chunk files keep their inodes); on an object store,
   which has no rename, its objects are copied server-side byte for byte, chunks first and the
   array's ``zarr.json`` last, then the old node is deleted marker first;
2. every array's ``zarr.json`` gets ``dimension_names`` (``(c, z, y, x)``, ``(z, y, x)``,
   ``(patch, zyx)``) where it has none;
3. ``labels/zarr.json`` lists the case's label images;
4. (schema 1.5) the pyramid levels a case lacks (:func:`pipeline.store.ngff.pyramid_factors`;
   none for grids within 64³): ``image_<k>`` (block mean of ``image``) and ``labels/<name>/<k>``
   (block maximum of ``labels/<name>/0``), each committed whole like any array (staging and
   rename; marker last on an object store), then each label group's ``multiscales`` lists them;
5. the case group's ``zarr.json`` gets the 0.5 ``ome`` metadata (every level) and the current
   ``schema_version``, in one atomic write;
6. when every case is done, the manifest's ``schema_version``.

Every step is idempotent and leaves a readable store: readers look for a mask at its 1.3 place
first and at its old place second, a level is listed in metadata only once its array is
committed, so a store interrupted half-way reads the same and a second run finishes it. Run it
while nothing else writes to the store (no ingest or scoring).

Example:
    >>> import tempfile
    >>> from pipeline.store import init_store
    >>> upgrade_store(init_store(tempfile.mkdtemp() + "/s.zarr"))["cases_changed"]
    0
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipeline.store import ngff
from pipeline.store.backend.base import Backend, group_json, join
from pipeline.store.cases import list_cases, refresh_labels, write_missing_levels
from pipeline.store.handle import StoreLike, open_store
from pipeline.store.layout import CASE_META_KEY, CASES, MANIFEST_KEY, NODE_MARKER, StoreError
from pipeline.store.manifest import read_manifest
from storage_schemas.models import SCHEMA_VERSION, CaseMeta


def _array_doc(b: Backend, node: str) -> dict[str, Any] | None:
    blob = b.read(join(node, NODE_MARKER))
    if blob is None:
        return None
    try:
        doc = json.loads(blob)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and doc.get("node_type") == "array" else None


def _arrays_below(b: Backend, node: str, prefix: str = "", depth: int = 4) -> list[str]:
    """Relative paths of the arrays under the group ``node`` (hidden names skipped)."""
    out: list[str] = []
    for name in b.list(join(node, prefix)):
        if name.startswith(".") or name == NODE_MARKER:
            continue
        rel = join(prefix, name)
        blob = b.read(join(node, rel, NODE_MARKER))
        if blob is None:
            continue
        kind = (json.loads(blob) or {}).get("node_type")
        if kind == "array":
            out.append(rel)
        elif kind == "group" and depth > 1:
            out.extend(_arrays_below(b, node, rel, depth - 1))
    return out


def _set_dimension_names(b: Backend, node: str, dims: tuple[str, ...], dry_run: bool) -> bool:
    """Add ``dimension_names`` to the array ``node``'s ``zarr.json`` when it has none; True when changed."""
    doc = _array_doc(b, node)
    if doc is None or doc.get("dimension_names"):
        return False
    if len(dims) != len(doc.get("shape", ())):
        raise StoreError(f"{node}: dimension names {dims} do not fit its shape {doc.get('shape')}")
    if not dry_run:
        doc["dimension_names"] = list(dims)
        b.put(join(node, NODE_MARKER), json.dumps(doc, indent=2).encode())
    return True


def _move_node(b: Backend, src: str, dst: str) -> None:
    """Move the node ``src`` (with its chunks) to ``dst``; ``dst``'s parent group exists.

    Local: one ``os.replace`` (the chunk files keep their inodes). Object store: server-side
    copies of every object, chunks first and ``zarr.json`` last, then ``src`` is deleted marker first.
    """
    if not b.remote:
        os.replace(b.location(src), b.location(dst))
        return
    fs, src_key, dst_key = b.fs, b.key(src), b.key(dst)  # type: ignore[attr-defined]
    fs.invalidate_cache(src_key)
    objects = sorted(str(p) for p in fs.find(src_key))
    marker = f"{src_key}/{NODE_MARKER}"
    for key in [k for k in objects if k != marker] + [marker]:
        fs.copy(key, dst_key + key[len(src_key):])
    fs.invalidate_cache(dst_key)
    b.remove_prefix(src)


def _legacy_masks(b: Backend, case: str) -> list[tuple[str, str]]:
    """``(legacy relpath, label name)`` of the masks a case still keeps at their ≤ 1.2 place."""
    found = [(rel, name) for rel, name in (("label", ngff.REFERENCE), (ngff.FOREGROUND, ngff.FOREGROUND)) if _array_doc(b, join(case, rel))]
    for model in b.list(join(case, ngff.LEGACY_PREDICTIONS)):
        rel = f"{ngff.LEGACY_PREDICTIONS}/{model}/mask"
        if not model.startswith(".") and _array_doc(b, join(case, rel)):
            found.append((rel, ngff.prediction_label(model)))
    return found


def upgrade_case(root: StoreLike, case_id: str, dry_run: bool = False) -> list[str]:
    """Bring one committed case to the current layout (see the module docstring); returns what
    was (with ``dry_run``: would be) done, one line per step, empty when it is up to date."""
    st = open_store(root)
    b = st.backend
    case = join(CASES, case_id)
    attrs = b.committed_attrs(case, CASE_META_KEY)
    if attrs is None:
        raise StoreError(f"case {case_id!r} is not in store {st.root}")
    try:
        meta = CaseMeta.model_validate(attrs[CASE_META_KEY])
    except Exception as exc:
        raise StoreError(f"case {case_id}: invalid metadata: {exc}") from exc
    done: list[str] = []

    legacy = _legacy_masks(b, case)
    names = sorted({n for _, n in legacy} | set(b.list(join(case, ngff.LABELS))))
    for rel, name in legacy:
        dst = join(case, ngff.label_array(name))
        if _array_doc(b, dst) is not None:  # an interrupted upgrade copied it already, or it was rewritten since
            done.append(f"removed {rel} (already at {ngff.label_array(name)})")
            if not dry_run:
                b.remove_prefix(join(case, rel))
            continue
        done.append(f"moved {rel} -> {ngff.label_array(name)}")
        if dry_run:
            continue
        b.ensure_groups(case, ngff.LABELS)
        colour = ngff.prediction_colour_index(names, name) if name.startswith(ngff.PREDICTION_PREFIX) else 0
        b.put(join(case, ngff.LABELS, name, NODE_MARKER), group_json({"ome": ngff.label_ome(meta.geometry, name, colour)}))
        _set_dimension_names(b, join(case, rel), ngff.MASK_DIMS, dry_run)
        _move_node(b, join(case, rel), dst)
    legacy_preds = join(case, ngff.LEGACY_PREDICTIONS)
    if not dry_run and b.list(legacy_preds) and not _arrays_below(b, legacy_preds):  # the emptied predictions/ group
        b.remove_prefix(legacy_preds)

    for name in b.list(join(case, ngff.LABELS)):  # label groups without their metadata (written by hand, or an old crash)
        group = join(case, ngff.LABELS, name)
        ome = (b.node_attrs(group) or {}).get("ome") or {}
        if name != NODE_MARKER and "image-label" not in ome and _array_doc(b, join(group, ngff.LEVEL0)) is not None:
            done.append(f"label metadata for labels/{name}")
            if not dry_run:
                colour = ngff.prediction_colour_index(names, name) if name.startswith(ngff.PREDICTION_PREFIX) else 0
                b.put(join(group, NODE_MARKER), group_json({"ome": ngff.label_ome(meta.geometry, name, colour)}))

    for rel in _arrays_below(b, case):
        doc = _array_doc(b, join(case, rel)) or {}
        dims = ngff.dimension_names(rel, doc.get("shape", ()), meta.geometry.shape_zyx)
        if _set_dimension_names(b, join(case, rel), dims, dry_run):
            done.append(f"dimension_names {list(dims)} on {rel}")

    # schema 1.5: the resolution pyramid; new arrays computed from level 0, which stays as it is
    factors = ngff.pyramid_factors(meta.geometry)
    done += write_missing_levels(st, case_id, dry_run)
    for name in b.list(join(case, ngff.LABELS)):
        group = join(case, ngff.LABELS, name)
        ome = (b.node_attrs(group) or {}).get("ome") or {}
        if name == NODE_MARKER or "image-label" not in ome:
            continue
        wanted = ngff.label_ome(meta.geometry, name, 0, factors)["multiscales"]  # the colour stays as written
        if ome.get("multiscales") != wanted:
            done.append(f"levels listed in labels/{name}")
            if not dry_run:
                b.put(join(group, NODE_MARKER), group_json({**(b.node_attrs(group) or {}), "ome": {**ome, "multiscales": wanted}}))

    if b.has_node(join(case, ngff.LABELS)) and not dry_run:
        before = ((b.node_attrs(join(case, ngff.LABELS)) or {}).get("ome") or {}).get("labels")
        listed = refresh_labels(st, case_id)
        if listed != before:
            done.append(f"labels listed: {listed}")

    ome = ngff.image_ome(meta.geometry, meta.case_id, list(meta.channels), factors)
    case_meta = {**attrs[CASE_META_KEY], "schema_version": SCHEMA_VERSION}
    if attrs.get("ome") != ome or attrs[CASE_META_KEY] != case_meta:
        done.append(f"case metadata: OME-Zarr {ngff.NGFF_VERSION}, schema {SCHEMA_VERSION}")
        if not dry_run:
            b.put(join(case, NODE_MARKER), group_json({**attrs, "ome": ome, CASE_META_KEY: case_meta}))
    return done


def upgrade_store(root: StoreLike, dry_run: bool = False) -> dict[str, Any]:
    """Upgrade every case, then the manifest (see the module docstring).

    Returns ``{"store", "schema_before", "schema_after", "cases", "cases_changed", "actions"}``
    (``actions``: case id → the lines of :func:`upgrade_case`, for the cases that changed).
    Raises :class:`StoreError` for a store of another major version or a newer minor one.
    """
    st = open_store(root)
    manifest = read_manifest(st)
    actions: dict[str, list[str]] = {}
    cases = list_cases(st)
    for case_id in cases:
        lines = upgrade_case(st, case_id, dry_run)
        if lines:
            actions[case_id] = lines
    before = manifest.schema_version
    if before != SCHEMA_VERSION and not dry_run:
        attrs = st.backend.node_attrs("") or {}
        updated = manifest.model_copy(update={"schema_version": SCHEMA_VERSION}).model_dump(mode="json")
        st.backend.put(NODE_MARKER, group_json({**attrs, MANIFEST_KEY: updated}))
    return {"store": str(st.root), "schema_before": before, "schema_after": before if dry_run else SCHEMA_VERSION,
            "cases": len(cases), "cases_changed": len(actions), "actions": actions, "dry_run": dry_run}
