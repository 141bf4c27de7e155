"""Model checkpoints: ``<store>/models/<model_version>/{model.pt, model.json}``.

* ``model.pt`` — the ``state_dict`` (``torch.save``; load with ``weights_only=True``).
* ``model.json`` — everything needed to rebuild and use the model: ``model_version``, ``arch``,
  ``channels``, ``patch_zyx``, ``normalization`` ("zscore": images as the store holds them),
  training case ids, iterations, seed, final loss, validation Dice, torch/monai versions,
  ``created_at`` (UTC), ``config_hash`` and ``weights_sha256``.

``model_version`` is ``unet3d-<UTC yyyymmddTHHMMSS>-<8 hex>``, the hex being the start of
:func:`state_dict_sha256` — so two different weight sets never share a version and a copied
checkpoint can be verified on load. A checkpoint directory is written under a temporary name
and moved into place with one ``os.replace``.

Example:
    >>> from training.model import build_model, default_arch  # doctest: +SKIP
    >>> version, path = save_checkpoint(build_model(default_arch(3)), {"arch": default_arch(3)}, "store")  # doctest: +SKIP
    >>> model, info = load_model(version, store_root="store")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from pipeline.store import MODELS, STAGING
from training.model import build_model

MODEL_FILE = "model.pt"
INFO_FILE = "model.json"
VERSION_PREFIX = "unet3d"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found, read or verified."""


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the state dict: for each entry in key order, its name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        if not isinstance(t, torch.Tensor):
            h.update(f"{key}|{t!r}".encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def make_model_version(state_dict: dict[str, torch.Tensor], when: datetime | None = None) -> str:
    """``unet3d-<UTC yyyymmddTHHMMSS>-<first 8 hex of state_dict_sha256>``."""
    when = (when or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{VERSION_PREFIX}-{when.strftime('%Y%m%dT%H%M%S')}-{state_dict_sha256(state_dict)[:8]}"


def _versions() -> dict[str, str]:
    import monai

    return {"torch": torch.__version__, "monai": monai.__version__}


def save_checkpoint(model: torch.nn.Module, info: dict[str, Any], store_root: str | Path | None = None, models_dir: str | Path | None = None) -> tuple[str, Path]:
    """Write a checkpoint; returns ``(model_version, model directory)``.

    Args:
        model: the trained network (its ``state_dict`` is saved on CPU).
        info: fields for ``model.json`` (at least ``arch``); ``model_version``, ``created_at``,
            ``weights_sha256`` and library versions are filled in here.
        store_root: the store; the checkpoint goes to ``<store>/models/<model_version>/``.
        models_dir: alternatively, a folder to hold ``<model_version>/`` (outside any store).
    """
    if "arch" not in info:
        raise ValueError("checkpoint info needs the 'arch' dict to rebuild the model")
    if (store_root is None) == (models_dir is None):
        raise ValueError("give exactly one of store_root or models_dir")
    parent = Path(store_root) / MODELS if store_root is not None else Path(models_dir)  # type: ignore[arg-type]
    parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    now = datetime.now(timezone.utc)
    version = make_model_version(state, now)
    payload = {
        **info,
        "model_version": version,
        "weights_sha256": state_dict_sha256(state),
        "created_at": now.isoformat(),
        **{f"{k}_version": v for k, v in _versions().items()},
    }
    payload.setdefault("normalization", "zscore")

    staging_root = Path(store_root) / STAGING if store_root is not None and (Path(store_root) / STAGING).is_dir() else parent
    tmp = staging_root / f".tmp-model-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        torch.save(state, tmp / MODEL_FILE)
        (tmp / INFO_FILE).write_text(json.dumps(payload, indent=2, default=str))
        final = parent / version
        if final.exists():  # same weights saved twice within one second: identical content
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return version, final


def list_models(store_root: str | Path) -> list[dict[str, Any]]:
    """``model.json`` contents of every checkpoint in the store, oldest first (with ``path``)."""
    folder = Path(store_root) / MODELS
    out = []
    if folder.is_dir():
        for d in folder.iterdir():
            if d.is_dir() and not d.name.startswith(".") and (d / INFO_FILE).exists() and (d / MODEL_FILE).exists():
                try:
                    info = json.loads((d / INFO_FILE).read_text())
                except json.JSONDecodeError:
                    continue
                info["path"] = str(d)
                out.append(info)
    return sorted(out, key=lambda i: (str(i.get("created_at", "")), i.get("model_version", "")))


def resolve_model_dir(path_or_version: str | Path, store_root: str | Path | None = None) -> Path:
    """The checkpoint directory for a model directory, a ``model.pt``/``model.json`` path, a
    ``model_version`` in ``<store>/models/`` or ``"latest"`` (newest in the store)."""
    p = Path(path_or_version)
    if p.is_dir() and (p / INFO_FILE).exists():
        return p
    if p.is_file() and p.name in (MODEL_FILE, INFO_FILE):
        if not (p.parent / INFO_FILE).exists():
            raise CheckpointError(f"{p}: no {INFO_FILE} beside it; cannot rebuild the architecture")
        return p.parent
    if store_root is not None:
        if str(path_or_version) == "latest":
            models = list_models(store_root)
            if not models:
                raise CheckpointError(f"no models in {Path(store_root) / MODELS}; train one first")
            return Path(models[-1]["path"])
        d = Path(store_root) / MODELS / str(path_or_version)
        if (d / INFO_FILE).exists():
            return d
        raise CheckpointError(f"model {path_or_version!r} not found in {Path(store_root) / MODELS}")
    raise CheckpointError(f"{path_or_version!r} is neither a model directory nor a model file; pass store_root to look up a version")


def resolve_model_version(path_or_version: str | Path, store_root: str | Path | None = None) -> str:
    """The ``model_version`` of a checkpoint given as in :func:`resolve_model_dir` (read from its ``model.json``)."""
    model_dir = resolve_model_dir(path_or_version, store_root)
    try:
        return str(json.loads((model_dir / INFO_FILE).read_text())["model_version"])
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"{model_dir / INFO_FILE}: no readable model_version ({exc})") from exc


def load_model(
    path_or_version: str | Path,
    store_root: str | Path | None = None,
    device: str | torch.device | None = None,
    verify: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from its checkpoint; returns ``(model in eval mode on device, info)``.

    ``path_or_version`` is a model directory, a ``model.pt`` path (with ``model.json`` beside it;
    may lie outside any store), a ``model_version`` looked up in ``<store_root>/models/``, or
    ``"latest"``. ``info`` is ``model.json`` plus ``path`` (the directory). With ``verify`` the
    weights' SHA-256 must match the recorded one. ``device`` defaults to CUDA when available.
    """
    model_dir = resolve_model_dir(path_or_version, store_root)
    try:
        info = json.loads((model_dir / INFO_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{model_dir / INFO_FILE}: unreadable ({exc})") from exc
    if not (model_dir / MODEL_FILE).exists():
        raise CheckpointError(f"{model_dir}: no {MODEL_FILE}")
    state = torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    if verify and info.get("weights_sha256") and state_dict_sha256(state) != info["weights_sha256"]:
        raise CheckpointError(f"{model_dir}: weights do not match the SHA-256 recorded in {INFO_FILE} (corrupted or replaced)")
    model = build_model(info["arch"])
    model.load_state_dict(state)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev).eval()
    info["path"] = str(model_dir)
    return model, info
