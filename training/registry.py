"""The model registry of a store: what each model is, and aliases such as ``production``.

Every checkpoint's ``model.json`` already holds what a registry needs; :func:`registry` reads
them into one row per model: version, creation time, network and loss, 2-D or 3-D, validation
Dice (and whether the weights are the best validated or the last), training cases, the
training data's fingerprint (:func:`data_fingerprint`: which cases, as which source files and
pipeline settings), the training config hash and the code version (:func:`code_version`).

Aliases live in ``<store>/models/aliases.json`` (written whole, like every store file) with the
history of every change (who moved ``production`` from which version to which, when). An alias
is accepted wherever a model version is (:func:`training.checkpoint.resolve_model_dir`), and
scoring uses :data:`DEFAULT_ALIAS` when no model is named, so "what the hospital runs" is one
name that an administrator moves deliberately, not "whichever model was trained last".

Example:
    >>> set_alias("store", "production", "unet3d-20250101T120000-1a2b3c4d")  # doctest: +SKIP
    >>> [r["model_version"] for r in registry("store") if "production" in r["aliases"]]  # doctest: +SKIP
    ['unet3d-20250101T120000-1a2b3c4d']
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import store as _store
from pipeline.store import MODELS
from training.checkpoint import ALIASES_FILE, INFO_FILE, CheckpointError, list_models, read_aliases

DEFAULT_ALIAS = "production"
"""The alias scoring uses when no model is named."""
_ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """lesionflow's version, plus the git commit (``+g<12 hex>``, ``.dirty`` with uncommitted changes to
    tracked files) when the code runs from a git checkout."""
    from pipeline import __version__

    repo = Path(__file__).resolve().parents[1]
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5, check=True).stdout.strip()

        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}" if sha else __version__


def data_fingerprint(store_root: str | Path, case_ids: Sequence[str]) -> dict[str, Any]:
    """What a model was trained and validated on: ``{"sha256", "cases"}``, the hash over each case's id,
    source fingerprint (its source files' digests) and pipeline config hash, in id order. The same
    cases re-ingested from the same files with the same settings give the same fingerprint."""
    h = hashlib.sha256()
    n = 0
    for case_id in sorted(set(case_ids)):
        try:
            meta = _store.read_case_meta(store_root, case_id)
            h.update(f"{case_id}|{meta.source_fingerprint}|{meta.config_hash}\n".encode())
        except _store.StoreError:
            h.update(f"{case_id}|missing\n".encode())
        n += 1
    return {"sha256": h.hexdigest(), "cases": n}


def _row(info: dict[str, Any], aliases: dict[str, str]) -> dict[str, Any]:
    cfg = info.get("train_config") or {}
    model = cfg.get("model") or {}
    loss = cfg.get("loss") or {}
    version = info.get("model_version")
    return {
        "model_version": version,
        "created_at": info.get("created_at"),
        "aliases": sorted(a for a, v in aliases.items() if v == version),
        "network": info.get("network") or model.get("kind", "unet"),
        "spatial_dims": info.get("spatial_dims") or cfg.get("spatial_dims", 3),
        "loss": info.get("loss") or loss.get("kind", "dice_ce"),
        "val_dice": info.get("val_dice"),
        "selected": info.get("selected", "last"),
        "best_iteration": info.get("best_iteration"),
        "iterations": info.get("iterations"),
        "train_case_ids": list(info.get("train_case_ids") or []),
        "val_case_ids": list(info.get("val_case_ids") or []),
        "data_fingerprint": (info.get("data_fingerprint") or {}).get("sha256"),
        "train_config_hash": info.get("train_config_hash"),
        "code_version": info.get("code_version") or info.get("lesionflow_version"),
        "run_id": info.get("run_id"),
        "path": info.get("path"),
    }


def registry(store_root: str | Path) -> list[dict[str, Any]]:
    """One row per model in the store, oldest first (see the module docstring for the columns)."""
    aliases = read_aliases(store_root)["aliases"]
    return [_row(info, aliases) for info in list_models(store_root)]


def aliases(store_root: str | Path) -> dict[str, str]:
    """``{alias: model_version}`` of the store."""
    return dict(read_aliases(store_root)["aliases"])


def _write(store_root: str | Path, data: dict[str, Any]) -> None:
    _store.put_bytes(store_root, f"{MODELS}/{ALIASES_FILE}", json.dumps(data, indent=2).encode())


def set_alias(store_root: str | Path, name: str, model_version: str, note: str | None = None) -> dict[str, Any]:
    """Point ``name`` at ``model_version`` (which must be in the store); returns the history entry.

    Raises:
        ValueError: a bad alias name, or a name that is itself a model version.
        training.checkpoint.CheckpointError: no such model in the store.
    """
    if not _ALIAS_NAME.match(name) or name == "latest":
        raise ValueError(f"alias {name!r}: use a letter then letters, digits, '.', '_' or '-' (64 at most), and not 'latest'")
    if _store.has_file(store_root, f"{MODELS}/{name}/{INFO_FILE}"):
        raise ValueError(f"alias {name!r} is a model version; choose another name")
    if not _store.has_file(store_root, f"{MODELS}/{model_version}/{INFO_FILE}"):
        raise CheckpointError(f"model {model_version!r} is not in {_store.location(store_root, MODELS)}; see `lesionflow models --store ...`")
    data = read_aliases(store_root)
    entry = {"alias": name, "model_version": model_version, "previous": data["aliases"].get(name),
             "at": datetime.now(UTC).isoformat(), **({"note": note} if note else {})}
    data["aliases"][name] = model_version
    data["history"].append(entry)
    _write(store_root, data)
    return entry


def remove_alias(store_root: str | Path, name: str) -> dict[str, Any]:
    """Remove ``name``; returns the history entry.

    Raises:
        ValueError: no such alias.
    """
    data = read_aliases(store_root)
    if name not in data["aliases"]:
        raise ValueError(f"no alias {name!r} (aliases: {', '.join(sorted(data['aliases'])) or 'none'})")
    entry = {"alias": name, "model_version": None, "previous": data["aliases"].pop(name), "at": datetime.now(UTC).isoformat()}
    data["history"].append(entry)
    _write(store_root, data)
    return entry


def default_model(store_root: str | Path) -> str:
    """The model scoring uses when none is named: the :data:`DEFAULT_ALIAS` alias's version.

    Raises:
        training.checkpoint.CheckpointError: the alias is not set (the message says how to set it).
    """
    target = aliases(store_root).get(DEFAULT_ALIAS)
    if target is None:
        raise CheckpointError(f"no model given and no {DEFAULT_ALIAS!r} alias in {_store.location(store_root, MODELS)}: pass --model "
                              f"VERSION (or 'latest'), or set it with `lesionflow models --store STORE --alias {DEFAULT_ALIAS} VERSION`")
    return target
