"""Model checkpoints: ``<store>/models/<model_version>/{model.pt, model.json}``.

* ``model.pt`` — the ``state_dict`` (``torch.save``; load with ``weights_only=True``).
* ``model.json`` — ``train_config``: the :class:`~training.config.TrainConfig` as used
  (``cfg.model_dump(mode="json")``, channels resolved), from which :func:`load_model` rebuilds the
  network; beside it the run's facts: ``model_version``, ``channels`` and ``patch_zyx`` (what
  scoring needs), ``normalization`` ("zscore": images as the store holds them),
  ``train_config_hash``, training and validation case ids, iterations, final loss, validation
  Dice, device, torch/monai/lesionflow versions, ``created_at`` (UTC), the pipeline's
  ``config_hash`` and ``weights_sha256``. Checkpoints written before TrainConfig have a
  top-level ``arch`` dict instead of ``train_config``; they still load.

``model_version`` is ``<kind><2|3>d-<UTC yyyymmddTHHMMSS>-<8 hex>`` (``unet3d-…`` for the 3-D
U-Net, ``dynunet2d-…`` for a 2-D DynUNet), the hex being the start of :func:`state_dict_sha256`
— so two different weight sets never share a version and a copied checkpoint can be verified
on load.

**Aliases.** ``<store>/models/aliases.json`` maps names such as ``production`` to model versions
(:mod:`training.registry` sets them); wherever a model version is accepted
(:func:`resolve_model_dir`, :func:`load_model`, scoring), an alias is too. Each file is written whole through
:func:`pipeline.store.put_bytes` (locally a temporary file and a rename, on an object store
one PUT), ``model.pt`` first and ``model.json`` last: a model is listed and loadable only once
its ``model.json`` exists, so a half-written one is never used. All file access goes through
:mod:`pipeline.store` (``put_bytes``, ``read_bytes``, ``has_file``, ``list_dir``).

Example:
    >>> from training.config import TrainConfig  # doctest: +SKIP
    >>> from training.model import build_network  # doctest: +SKIP
    >>> cfg = TrainConfig(channels=("FLAIR", "T1", "T2"))  # doctest: +SKIP
    >>> info = {"train_config": cfg.model_dump(mode="json"), "channels": list(cfg.channels), "patch_zyx": list(cfg.patch_zyx)}  # doctest: +SKIP
    >>> version, path = save_checkpoint(build_network(cfg), info, "store")  # doctest: +SKIP
    >>> model, info = load_model(version, store_root="store")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from pipeline import store as _store
from pipeline.store import MODELS
from training.config import TrainConfig
from training.model import build_model, build_network

MODEL_FILE = "model.pt"
INFO_FILE = "model.json"
ALIASES_FILE = "aliases.json"
"""``<store>/models/aliases.json``: ``{"aliases": {name: model_version}, "history": [...]}``."""


def version_prefix(kind: str, spatial_dims: int = 3) -> str:
    """The model-version prefix of a network kind: ``"unet"`` → ``"unet3d"``, ``("dynunet", 2)`` → ``"dynunet2d"``."""
    return f"{kind}{int(spatial_dims)}d"


VERSION_PREFIX = version_prefix("unet")
"""The prefix of the default network (and of every checkpoint written before TrainConfig)."""


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


def make_model_version(state_dict: dict[str, torch.Tensor], when: datetime | None = None, kind: str = "unet", spatial_dims: int = 3) -> str:
    """``<kind><dims>d-<UTC yyyymmddTHHMMSS>-<first 8 hex of state_dict_sha256>``."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    return f"{version_prefix(kind, spatial_dims)}-{when.strftime('%Y%m%dT%H%M%S')}-{state_dict_sha256(state_dict)[:8]}"


def _versions() -> dict[str, str]:
    import monai

    from pipeline import __version__

    return {"torch": torch.__version__, "monai": monai.__version__, "lesionflow": __version__}


def train_config_of(info: dict[str, Any]) -> TrainConfig | None:
    """The :class:`TrainConfig` recorded in a ``model.json`` (channels filled in from ``info``);
    ``None`` for a checkpoint written before TrainConfig (top-level ``arch``).

    Raises:
        pydantic.ValidationError: ``train_config`` is not a valid TrainConfig.
    """
    raw = info.get("train_config")
    if raw is None:
        return None
    cfg = TrainConfig.model_validate(raw)
    if cfg.channels is None and info.get("channels"):
        cfg = cfg.with_overrides(channels=tuple(info["channels"]))
    return cfg


def _network_kind(info: dict[str, Any]) -> tuple[str, int]:
    """``(network kind, spatial dims)`` of a ``model.json``."""
    raw = info.get("train_config")
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        return str(raw["model"].get("kind", "unet")), int(raw.get("spatial_dims", 3))
    return "unet", 3


def read_aliases(store_root: str | Path) -> dict[str, Any]:
    """``models/aliases.json`` of the store: ``{"aliases": {name: model_version}, "history": [...]}`` (empty when absent)."""
    blob = _store.read_bytes(store_root, f"{MODELS}/{ALIASES_FILE}")
    if blob is None:
        return {"aliases": {}, "history": []}
    try:
        data = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{_store.location(store_root, f'{MODELS}/{ALIASES_FILE}')}: unreadable ({exc}); set the aliases again") from exc
    return {"aliases": dict(data.get("aliases", {})), "history": list(data.get("history", []))}


def save_checkpoint(model: torch.nn.Module, info: dict[str, Any], store_root: str | Path | None = None, models_dir: str | Path | None = None) -> tuple[str, Path | str]:
    """Write a checkpoint; returns ``(model_version, model directory)`` (a URL on an object store).

    Args:
        model: the trained network (its ``state_dict`` is saved on CPU).
        info: fields for ``model.json``: ``train_config`` (a TrainConfig's JSON dump; or, as
            before TrainConfig, an ``arch`` dict) and the run's facts; ``model_version``,
            ``created_at``, ``weights_sha256`` and library versions are filled in here.
        store_root: the store (path or URL); the checkpoint goes to ``<store>/models/<model_version>/``.
        models_dir: alternatively, a folder (path or URL) to hold ``<model_version>/`` (outside any store).
    """
    if "train_config" not in info and "arch" not in info:
        raise ValueError("checkpoint info needs 'train_config' (or an 'arch' dict) to rebuild the model")
    if "train_config" in info:
        try:
            TrainConfig.model_validate(info["train_config"])
        except ValidationError as exc:
            raise ValueError(f"checkpoint info: train_config is not a valid TrainConfig: {exc}") from exc
    if (store_root is None) == (models_dir is None):
        raise ValueError("give exactly one of store_root or models_dir")
    parent = _store.location(store_root, MODELS) if store_root is not None else _store.location(models_dir)  # type: ignore[arg-type]
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    now = datetime.now(UTC)
    kind, dims = _network_kind(info)
    version = make_model_version(state, now, kind=kind, spatial_dims=dims)
    payload = {
        **info,
        "model_version": version,
        "weights_sha256": state_dict_sha256(state),
        "created_at": now.isoformat(),
        **{f"{k}_version": v for k, v in _versions().items()},
    }
    payload.setdefault("normalization", "zscore")
    weights = io.BytesIO()
    torch.save(state, weights)
    # each file whole (temporary file + rename locally, one PUT on an object store); model.json,
    # the marker that makes the checkpoint visible, last
    _store.put_bytes(parent, f"{version}/{MODEL_FILE}", weights.getvalue())
    _store.put_bytes(parent, f"{version}/{INFO_FILE}", json.dumps(payload, indent=2, default=str).encode())
    return version, _store.location(parent, version)


def _read_info(model_dir: Path | str) -> dict[str, Any]:
    """``model.json`` of a model directory (path or URL) as a dict."""
    where = _store.location(model_dir, INFO_FILE)
    try:
        blob = _store.read_bytes(model_dir, INFO_FILE)
    except OSError as exc:
        raise CheckpointError(f"{where}: unreadable ({exc}); check its permissions") from exc
    if blob is None:
        raise CheckpointError(f"{where}: missing; the checkpoint is incomplete (save it again) or the path is wrong")
    try:
        info = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{where}: unreadable ({exc}); save the checkpoint again") from exc
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: not a JSON object; save the checkpoint again")
    return info


def read_model_info(path_or_version: str | Path, store_root: str | Path | None = None) -> dict[str, Any]:
    """``model.json`` of a model (anything :func:`resolve_model_dir` accepts) as a dict, weights not read."""
    return _read_info(resolve_model_dir(path_or_version, store_root))


def list_models(store_root: str | Path) -> list[dict[str, Any]]:
    """``model.json`` contents of every checkpoint in the store, oldest first (with ``path``).

    A checkpoint counts once both ``model.json`` and ``model.pt`` exist (on an object store
    ``model.json`` is written last, so a half-written model is never listed).
    """
    out = []
    for name in _store.list_dir(store_root, MODELS):
        if name.startswith("."):
            continue
        rel = f"{MODELS}/{name}"
        blob = _store.read_bytes(store_root, f"{rel}/{INFO_FILE}")
        if blob is None or not _store.has_file(store_root, f"{rel}/{MODEL_FILE}"):
            continue
        try:
            info = json.loads(blob)
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        info["path"] = str(_store.location(store_root, rel))
        out.append(info)
    return sorted(out, key=lambda i: (str(i.get("created_at", "")), i.get("model_version", "")))


def resolve_model_dir(path_or_version: str | Path, store_root: str | Path | None = None) -> Path | str:
    """The checkpoint directory for a model directory, a ``model.pt``/``model.json`` path, a
    ``model_version`` in ``<store>/models/``, an alias of one (``models/aliases.json``, e.g.
    ``production``) or ``"latest"`` (newest in the store).

    Directories and files may be local paths or URLs (``s3://...``); a URL result stays a URL.
    """
    if _store.is_remote(path_or_version):
        loc = _store.location(path_or_version)
        if _store.has_file(loc, INFO_FILE):
            return loc
        parent, name = _store.split_location(loc)
        if name in (MODEL_FILE, INFO_FILE) and _store.has_file(loc):
            if not _store.has_file(parent, INFO_FILE):
                raise CheckpointError(f"{loc}: no {INFO_FILE} beside it; cannot rebuild the architecture")
            return parent
        raise CheckpointError(f"{loc}: neither a model folder (with {INFO_FILE}) nor a {MODEL_FILE}/{INFO_FILE} object; "
                              "check the URL, or pass a model version with store_root")
    p = Path(path_or_version)
    if p.is_dir() and (p / INFO_FILE).exists():
        return p
    if p.is_file() and p.name in (MODEL_FILE, INFO_FILE):
        if not (p.parent / INFO_FILE).exists():
            raise CheckpointError(f"{p}: no {INFO_FILE} beside it; cannot rebuild the architecture")
        return p.parent
    if store_root is not None:
        models_loc = _store.location(store_root, MODELS)
        if str(path_or_version) == "latest":
            models = list_models(store_root)
            if not models:
                raise CheckpointError(f"no models in {models_loc}; train one first")
            return _store.location(models[-1]["path"])
        rel = f"{MODELS}/{path_or_version}"
        if _store.has_file(store_root, f"{rel}/{INFO_FILE}"):
            return _store.location(store_root, rel)
        aliases = read_aliases(store_root)["aliases"]
        if str(path_or_version) in aliases:
            target = aliases[str(path_or_version)]
            if _store.has_file(store_root, f"{MODELS}/{target}/{INFO_FILE}"):
                return _store.location(store_root, f"{MODELS}/{target}")
            raise CheckpointError(f"alias {path_or_version!r} points to model {target!r}, which is not in {models_loc}; "
                                  "point the alias at an existing model (`lesionflow models --store S --alias NAME VERSION`)")
        hint = f"aliases: {', '.join(sorted(aliases))}" if aliases else "no aliases are set"
        raise CheckpointError(f"model {path_or_version!r} not found in {models_loc} ({hint}); "
                              "see the versions there (or use 'latest'), or train one first")
    raise CheckpointError(f"{path_or_version!r} is neither a model directory nor a model file; pass store_root to look up a version")


def resolve_model_version(path_or_version: str | Path, store_root: str | Path | None = None) -> str:
    """The ``model_version`` of a checkpoint given as in :func:`resolve_model_dir` (read from its ``model.json``)."""
    model_dir = resolve_model_dir(path_or_version, store_root)
    try:
        return str(_read_info(model_dir)["model_version"])
    except KeyError as exc:
        raise CheckpointError(f"{_store.location(model_dir, INFO_FILE)}: no model_version; save the checkpoint again") from exc


def load_model(
    path_or_version: str | Path,
    store_root: str | Path | None = None,
    device: str | torch.device | None = None,
    verify: bool = True,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a model from its checkpoint; returns ``(model in eval mode on device, info)``.

    ``path_or_version`` is a model directory, a ``model.pt`` path (with ``model.json`` beside it;
    may lie outside any store), a ``model_version`` looked up in ``<store_root>/models/``, or
    ``"latest"``; directories and files may be URLs. ``info`` is ``model.json`` plus ``path``
    (the directory). With ``verify`` the weights' SHA-256 must match the recorded one.
    ``device`` defaults to CUDA when available. The weights are read whole and loaded with
    ``torch.load(..., weights_only=True)``. The network is rebuilt from ``info["train_config"]``,
    or from ``info["arch"]`` for a checkpoint written before TrainConfig.
    """
    model_dir = resolve_model_dir(path_or_version, store_root)
    info = _read_info(model_dir)
    weights = _store.read_bytes(model_dir, MODEL_FILE)
    if weights is None:
        raise CheckpointError(f"{model_dir}: no {MODEL_FILE}; the checkpoint is incomplete, save it again")
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    if verify and info.get("weights_sha256") and state_dict_sha256(state) != info["weights_sha256"]:
        raise CheckpointError(f"{model_dir}: weights do not match the SHA-256 recorded in {INFO_FILE} (corrupted or replaced)")
    model = _rebuild(info, model_dir)
    model.load_state_dict(state)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev).eval()
    info["path"] = str(model_dir)
    return model, info


def _rebuild(info: dict[str, Any], model_dir: Path | str) -> torch.nn.Module:
    """The untrained network a ``model.json`` describes."""
    where = _store.location(model_dir, INFO_FILE)
    try:
        cfg = train_config_of(info)
    except ValidationError as exc:
        raise CheckpointError(f"{where}: train_config is not a valid TrainConfig ({exc}); save the checkpoint again") from exc
    if cfg is not None:
        return build_network(cfg)
    if "arch" in info:  # written before TrainConfig
        return build_model(info["arch"])
    raise CheckpointError(f"{where}: neither train_config nor arch; cannot rebuild the network")
