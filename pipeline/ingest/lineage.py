"""Lineage for key holders: a case (or a sealed path) back to its source files.

The store names sources by sealed path only (``src:…`` relative to the ingest folder,
``root:…`` for the ingest folder; :mod:`pipeline.core.lineage`). With the pseudonymisation key,
:func:`case_lineage` opens them for one case: the ingest folder, every file each channel and the
lesion mask were converted from (with digest and size, to check the file is still the one), and
the case's inputs that were left unused or rejected, with their reasons.
:func:`input_lineage` does the same for every rejected/unused input of the store (discovery's
rejections belong to no case). A key that did not seal the paths raises
:class:`~pipeline.core.lineage.LineageKeyError`; nothing is guessed. Paths stored before schema
1.4 are plain and are returned as they are (``sealed`` is then False).

This is what ``lesionflow lineage`` prints.

Example::

    from pipeline.core.config import pseudonym_key
    info = case_lineage("ms.zarr", "sub-4a133905e944_ses-1f2e3d4c", pseudonym_key())
    info["source_root"], [f["path"] for f in info["files"]]
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from pipeline.core.lineage import Lineage, is_sealed, lineage
from pipeline.store import read_case_meta, read_catalog

__all__ = ["case_lineage", "input_lineage", "open_token"]


def _joined(root: str | None, rel: str) -> str | None:
    return posixpath.join(Path(root).as_posix(), rel) if root else None


def _file(lin: Lineage, root: str | None, role: str, sealed: str, **fields: Any) -> dict[str, Any]:
    rel = lin.reveal(sealed)
    return {"role": role, "path": rel, "absolute": _joined(root, rel), "sealed": is_sealed(sealed), "token": sealed, **fields}


def case_lineage(store: Any, case_id: str, key: bytes) -> dict[str, Any]:
    """The sources of ``case_id`` with their paths opened by ``key``.

    Returns ``{"case_id", "source_root", "files": [...], "inputs": [...]}``: ``files`` has one
    entry per source file (``role`` = modality or ``label``, ``path`` relative to the ingest
    folder, ``absolute``, ``sha256``, ``size_bytes``, ``token``); ``inputs`` the case's current
    unused and rejected catalog rows (``role`` = status, ``path``, ``reason``, ``code``).
    Raises :class:`~pipeline.core.lineage.LineageKeyError` for another key,
    :class:`~pipeline.store.StoreError` for an unknown case.
    """
    lin = lineage(key)
    meta = read_case_meta(store, case_id)
    root = lin.reveal(meta.source_root) if meta.source_root else None
    files = [_file(lin, root, ch.modality, s.relpath, sha256=s.sha256, size_bytes=s.size_bytes) for ch in meta.channel_info for s in ch.sources]
    if meta.label_source is not None:
        s = meta.label_source
        files.append(_file(lin, root, "label", s.relpath, sha256=s.sha256, size_bytes=s.size_bytes))
    inputs = [i for i in input_lineage(store, key) if i["case_id"] == case_id]
    return {"case_id": case_id, "source_root": root, "files": files, "inputs": inputs}


def input_lineage(store: Any, key: bytes, statuses: tuple[str, ...] = ("rejected", "unused")) -> list[dict[str, Any]]:
    """Every current catalog row of the store with one of ``statuses``, its path opened by ``key``:
    ``{"role", "case_id", "modality", "path", "absolute", "reason", "code", "token"}``."""
    lin = lineage(key)
    cat = read_catalog(store)
    if not len(cat):
        return []
    cat = cat[cat["status"].isin(statuses)]
    out = []
    for _, r in cat.iterrows():
        root = r.get("source_root")
        root = lin.reveal(root) if isinstance(root, str) and root else None
        out.append(_file(lin, root, r["status"], r["source_relpath"], case_id=r.get("case_id") if isinstance(r.get("case_id"), str) else None,
                         modality=r.get("modality") if isinstance(r.get("modality"), str) else None,
                         reason=r.get("reason"), code=r.get("reason_code")))
    return out


def open_token(token: str, key: bytes) -> str:
    """The path sealed in ``token`` (``src:`` relative to its ingest folder, ``root:`` absolute)."""
    return lineage(key).open(token)
