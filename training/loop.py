"""The training loop in pieces: :func:`setup` → :func:`train_step` × n → :func:`validate` → :func:`save_model`.

:func:`train` composes them: a plain function (no Prefect) that flows call, forwarding its
``progress`` events. Everything it can be told is one :class:`~training.config.TrainConfig`
(or keyword overrides of one). It seeds torch and numpy, picks CUDA when available (with
bf16/fp16 autocast there, full precision on CPU), trains for a fixed number of iterations with
Adam and a cosine learning-rate decay, optionally measures Dice on validation cases by
whole-volume sliding-window inference, and writes a checkpoint to ``<store>/models/<model_version>/``
whose ``model.json`` holds the config as used.

Examples:
    >>> result = train("store", iterations=300, val_case_ids=["sub-05_ses-01"])  # doctest: +SKIP
    >>> result.model_version, result.metrics["val_dice"]  # doctest: +SKIP
    ('unet3d-20250101T120000-1a2b3c4d', 0.71)
    >>> result = train("store", TrainConfig.from_file("train.json"), seed=1)  # doctest: +SKIP

    The pieces, for a custom loop (threads as :func:`train` sets them are up to the caller):

    >>> state = setup("store", TrainConfig(iterations=50))  # doctest: +SKIP
    >>> for batch in state.loader:  # doctest: +SKIP
    ...     if state.iteration >= state.cfg.iterations:
    ...         break
    ...     loss = train_step(state, batch)
    >>> scores = validate(state, ["sub-05_ses-01"])  # doctest: +SKIP
    >>> version, path = save_model(state, scores)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline import store as _store
from pipeline.lesions.components import dice
from pipeline.store import resolve_channels
from training.checkpoint import save_checkpoint
from training.config import TrainConfig, make_config
from training.data import BankDataset, BankLoader, PatchDataset, bank_dataset, bank_loader, usable_cases
from training.infer import predict_case
from training.losses import build_loss
from training.model import build_network

log = logging.getLogger("lesionflow.training")

Progress = Callable[[dict[str, Any]], None]
THREADS_ENV = "LESIONFLOW_TORCH_THREADS"


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model_version: str
    checkpoint_path: Path | str
    """The model directory: a local path, or its URL when the store is on object storage."""
    metrics: dict[str, Any] = field(default_factory=dict)
    model: torch.nn.Module | None = field(default=None, repr=False, compare=False)
    """The trained network (eval mode), for callers that go on to predict in the same process."""
    config: TrainConfig | None = None
    """The config as used (channels resolved): what ``model.json`` holds as ``train_config``."""


@dataclass
class TrainState:
    """Everything a run holds between :func:`setup` and :func:`save_model`."""

    cfg: TrainConfig
    """The config with ``channels`` resolved."""
    store_root: str | Path
    device: torch.device
    dataset: PatchDataset | BankDataset
    loader: DataLoader | BankLoader
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    val_case_ids: list[str]
    emit: Progress = field(default=lambda _event: None, repr=False)
    iteration: int = 0
    losses: list[float] = field(default_factory=list, repr=False)
    val_history: list[dict[str, Any]] = field(default_factory=list)
    """One ``{iteration, val_dice}`` per validation during training (``cfg.val_every``)."""

    @property
    def train_case_ids(self) -> list[str]:
        return self.dataset.case_ids


# ----------------------------------------------------------------------------- helpers
def cpu_threads(requested: int | None = None) -> int:
    """Torch CPU threads for training: ``requested``, else ``$LESIONFLOW_TORCH_THREADS``, else ``os.cpu_count()``."""
    if requested:
        return max(1, int(requested))
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        return max(1, int(env))
    return max(1, os.cpu_count() or 1)


def pick_device(requested: str | torch.device | None = None) -> torch.device:
    """``requested``, else CUDA when available, else CPU; a CUDA request without CUDA is refused."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(requested)!r} requested but torch sees no CUDA device; use device='cpu' or leave it unset")
    return dev


def split_validation(store_root: str | Path, case_ids: Sequence[str] | None, channels: Sequence[str], fraction: float, seed: int) -> list[str]:
    """Seeded choice of ``round(fraction * n)`` (at least 1, at most n - 1) usable labelled cases; [] when n < 2."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    usable, _ = usable_cases(store_root, case_ids, channels, require_label=True)
    if fraction == 0 or len(usable) < 2:
        return []
    k = min(len(usable) - 1, max(1, int(round(fraction * len(usable)))))
    rng = np.random.default_rng([seed, 1])
    return sorted(usable[i] for i in rng.choice(len(usable), size=k, replace=False))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 (or fp16 where bf16 is unsupported) on CUDA with ``enabled``; ``None`` = full precision."""
    if device.type == "cuda" and enabled:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@contextlib.contextmanager
def _cpu_threads(dev: torch.device, requested: int | None) -> Iterator[None]:
    """Use :func:`cpu_threads` torch threads on the CPU while training; restore the setting after."""
    previous = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(cpu_threads(requested))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _cosine_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay from ``lr`` to ``min_lr_factor * lr`` over ``iterations``, then flat."""
    n, floor = cfg.iterations, cfg.optim.min_lr_factor
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(it, n) / max(n, 1)))
    )


def _split_cases(store_root: str | Path, cfg: TrainConfig, case_ids: Sequence[str] | None, val_case_ids: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """``(training candidates, validation ids)``: explicit validation ids, else ``cfg.val_fraction`` held out."""
    val_ids = list(val_case_ids or [])
    if not val_ids and cfg.val_fraction > 0:
        val_ids = split_validation(store_root, case_ids, cfg.channels or (), cfg.val_fraction, cfg.seed)
    held_out = set(val_ids)
    if case_ids is None:
        return [c for c in _store.list_cases(store_root) if c not in held_out], val_ids
    if val_case_ids is None:
        return [c for c in case_ids if c not in held_out], val_ids
    return list(case_ids), val_ids


def _tail_mean(values: Sequence[float], n: int = 10, head: bool = False) -> float | None:
    if not values:
        return None
    k = min(n, len(values))
    return float(np.mean(values[:k] if head else values[-k:]))


# ----------------------------------------------------------------------------- the pieces
def setup(
    store_root: str | Path,
    cfg: TrainConfig,
    *,
    case_ids: Sequence[str] | None = None,
    val_case_ids: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> TrainState:
    """Seed, resolve channels, choose the cases, and build the loader, network, loss, optimiser and schedule.

    Args:
        store_root: the lesionflow store (cases with ``label``; patch indices from ``prepare``,
            built in memory where missing).
        cfg: the run's configuration; ``cfg.channels=None`` becomes the store's channels.
        case_ids: training cases; default every case in the store not held out for validation.
            Cases without a label or lacking a channel are skipped (``state.dataset.skipped``).
        val_case_ids: validation cases; default ``cfg.val_fraction`` of the usable labelled cases
            (at least one, never all; chosen with ``cfg.seed``), or none.
        progress: receives the run's events (see :func:`train`).

    Raises:
        ValueError: no usable training case, or CUDA requested where there is none.
    """
    dev = pick_device(cfg.device)
    seed_everything(cfg.seed)
    cfg = cfg.with_overrides(channels=resolve_channels(store_root, cfg.channels))
    candidates, val_ids = _split_cases(store_root, cfg, case_ids, val_case_ids)
    dataset: PatchDataset | BankDataset | None = bank_dataset(store_root, candidates, cfg, dev)  # cfg.augmentation: the store's bank by default
    if dataset is None:
        dataset = PatchDataset(
            store_root,
            candidates,
            channels=cfg.channels,
            patch_zyx=cfg.patch_zyx,
            lesion_fraction=cfg.lesion_fraction,
            samples_per_epoch=cfg.iterations * cfg.batch_size,
            flip_prob=cfg.flip_prob,
            seed=cfg.seed,
        )
    if not dataset.cases:
        reasons = "; ".join(f"{s['case_id']}: {s['reason']}" for s in dataset.skipped) or "no cases in the store"
        raise ValueError(f"no usable training cases ({reasons})")
    overlap_ids = sorted(set(dataset.case_ids) & set(val_ids))
    if overlap_ids:
        log.warning("training: validation cases also used for training: %s", overlap_ids)
    loader = bank_loader(dataset, cfg, dev) if isinstance(dataset, BankDataset) else DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=False,  # each index is already a seeded random draw
        num_workers=cfg.num_workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        drop_last=False,
    )
    model = build_network(cfg).to(dev)  # after seeding: the initial weights follow cfg.seed
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    amp_dtype = _amp_dtype(dev, cfg.amp)
    model.train()
    return TrainState(
        cfg=cfg,
        store_root=store_root,
        device=dev,
        dataset=dataset,
        loader=loader,
        model=model,
        loss_fn=build_loss(cfg.loss),
        optimizer=optimizer,
        scheduler=_cosine_schedule(optimizer, cfg),
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        amp_dtype=amp_dtype,
        val_case_ids=val_ids,
        emit=progress or (lambda _event: None),
    )


def train_step(state: TrainState, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """One optimiser step on ``(image, label)``; returns the loss and advances ``state.iteration``.

    Raises:
        FloatingPointError: the loss is not finite.
    """
    dev = state.device
    image, label = (t.to(dev, non_blocking=True) for t in batch)
    state.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
        logits = state.model(image)
    loss = state.loss_fn(logits.float(), label)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training diverged: loss {float(loss)} at iteration {state.iteration + 1}")
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    value = float(loss.detach())
    state.losses.append(value)
    state.iteration += 1
    return value


def validate(state: TrainState, case_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Whole-volume Dice (:func:`pipeline.lesions.components.dice`) of the current network on validation cases.

    Each case is predicted by sliding-window inference (``cfg.val_overlap``) and compared with its
    label; cases that are missing, lack a channel or have no label are logged and skipped. Emits
    one ``event="val"`` per case. The network's train/eval mode is restored afterwards.

    Returns:
        ``{"iteration", "val_dice" (mean, or None without a scored case), "val_dice_per_case"}``.
    """
    ids = state.val_case_ids if case_ids is None else list(case_ids)
    info = {"channels": list(state.cfg.channels or ()), "patch_zyx": list(state.cfg.patch_zyx)}
    was_training = state.model.training
    state.model.eval()
    per_case: dict[str, float] = {}
    try:
        for case_id in ids:
            try:
                group = _store.open_case(state.store_root, case_id)
                if "label" not in group:
                    log.warning("validation: %s has no label; skipped", case_id)
                    continue
                mask = predict_case(state.model, info, state.store_root, case_id, device=state.device, overlap=state.cfg.val_overlap)
                per_case[case_id] = dice(mask, group["label"][...])
            except _store.StoreError as exc:
                log.warning("validation: skipping %s: %s", case_id, exc)
                continue
            state.emit({"event": "val", "case_id": case_id, "dice": per_case[case_id], "iteration": state.iteration})
    finally:
        state.model.train(was_training)
    mean = float(np.mean(list(per_case.values()))) if per_case else None
    return {"iteration": state.iteration, "val_dice": mean, "val_dice_per_case": per_case}


def fit(state: TrainState) -> float:
    """Run :func:`train_step` until ``cfg.iterations``, emitting ``train`` events every ``cfg.log_every``
    and validating every ``cfg.val_every`` (into ``state.val_history``); returns the training seconds
    (validation time excluded)."""
    cfg = state.cfg
    t_loop = time.perf_counter()
    val_seconds = 0.0
    window: list[float] = []
    for batch in state.loader:
        if state.iteration >= cfg.iterations:
            break
        window.append(train_step(state, batch))
        it = state.iteration
        if it % cfg.log_every == 0 or it == cfg.iterations:
            elapsed = time.perf_counter() - t_loop - val_seconds
            state.emit({
                "event": "train",
                "iteration": it,
                "iterations": cfg.iterations,
                "loss": float(np.mean(window)),
                "lr": float(state.optimizer.param_groups[0]["lr"]),
                "elapsed_s": round(elapsed, 2),
                "it_per_s": round(it / elapsed, 3) if elapsed > 0 else None,
            })
            window = []
        if cfg.val_every and state.val_case_ids and it % cfg.val_every == 0 and it < cfg.iterations:
            t_val = time.perf_counter()
            scores = validate(state)
            state.val_history.append({"iteration": it, "val_dice": scores["val_dice"]})
            val_seconds += time.perf_counter() - t_val
    return time.perf_counter() - t_loop - val_seconds


def save_model(
    state: TrainState,
    validation: Mapping[str, Any] | None = None,
    *,
    models_dir: str | Path | None = None,
    pipeline_config_hash: str | None = None,
) -> tuple[str, Path | str]:
    """Write the checkpoint (to ``<store>/models`` or ``models_dir``); returns ``(model_version, directory)``.

    ``model.json`` holds ``train_config`` (``state.cfg`` as is) beside the run's facts.
    """
    validation = validation or {}
    root = _store.location(state.store_root)
    info = {
        "train_config": state.cfg.model_dump(mode="json"),
        "train_config_hash": state.cfg.config_hash(),
        "channels": list(state.cfg.channels or ()),
        "patch_zyx": list(state.cfg.patch_zyx),
        "normalization": "zscore",
        "train_case_ids": state.train_case_ids,
        "val_case_ids": state.val_case_ids,
        "iterations": state.iteration,
        "final_loss": _tail_mean(state.losses),
        "val_dice": validation.get("val_dice"),
        "val_dice_per_case": dict(validation.get("val_dice_per_case") or {}),
        "val_history": state.val_history,
        "device": str(state.device),
        "amp": str(state.amp_dtype).replace("torch.", "") if state.amp_dtype is not None else None,
        "config_hash": pipeline_config_hash,
        "store": str(root.resolve() if isinstance(root, Path) else root),  # local: absolute; object store: URL
    }
    if models_dir is not None:
        return save_checkpoint(state.model, info, models_dir=models_dir)
    return save_checkpoint(state.model, info, store_root=state.store_root)


# ----------------------------------------------------------------------------- the whole run
def train(
    store_root: str | Path,
    cfg: TrainConfig | Mapping[str, Any] | None = None,
    *,
    case_ids: Sequence[str] | None = None,
    val_case_ids: Sequence[str] | None = None,
    progress: Progress | None = None,
    save: bool = True,
    models_dir: str | Path | None = None,
    pipeline_config_hash: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a network on stored cases and save a checkpoint: :func:`setup`, :func:`fit`,
    :func:`validate`, :func:`save_model`.

    Args:
        store_root: the lesionflow store (path or URL).
        cfg: a :class:`TrainConfig` (or a dict of its fields); default ``TrainConfig()``.
        case_ids, val_case_ids: training and validation cases (see :func:`setup`).
        progress: called with a dict: ``event="start"`` (device, cases, patch, batch size);
            every ``cfg.log_every`` iterations ``event="train"`` (``iteration``, ``iterations``,
            ``loss`` (mean since the last event), ``lr``, ``elapsed_s``, ``it_per_s``); once per
            validation case ``event="val"`` (``case_id``, ``dice``, ``iteration``); ``event="done"``.
        save: write the checkpoint (to ``<store>/models`` or ``models_dir``).
        pipeline_config_hash: the pipeline configuration hash, recorded as ``config_hash`` in ``model.json``.
        **overrides: TrainConfig fields applied over ``cfg`` (``iterations=40``, ``patch_zyx=(32, 32, 32)``,
            ``optim={"lr": 1e-3}``), and the names train() took before (``lr``, ``weight_decay``,
            ``num_threads``). Validated: a bad value or an unknown name raises ``ValueError``.

    Returns:
        :class:`TrainResult` with ``model_version``, ``checkpoint_path`` (the model directory),
        ``config`` (as used, channels resolved) and ``metrics``: ``final_loss`` (mean of the last
        10 iterations), ``first_loss`` (mean of the first 10), ``loss_history``, ``val_dice``
        (mean, or ``None``), ``val_dice_per_case``, ``val_history``, ``seconds``, ``train_seconds``,
        ``it_per_s``, ``device``, ``cpu_threads``, ``train_case_ids``, ``val_case_ids``, ``skipped``,
        ``train_config_hash``.
    """
    cfg = make_config(cfg, **overrides)
    dev = pick_device(cfg.device)
    with _cpu_threads(dev, cfg.threads):
        t_start = time.perf_counter()
        state = setup(store_root, cfg, case_ids=case_ids, val_case_ids=val_case_ids, progress=progress)
        cfg = state.cfg
        state.emit({"event": "start", "device": str(dev), "iterations": cfg.iterations, "train_cases": state.train_case_ids,
                    "skipped": state.dataset.skipped, "patch_zyx": list(cfg.patch_zyx), "batch_size": cfg.batch_size,
                    "channels": list(cfg.channels or ())})
        train_seconds = fit(state)
        state.model.eval()
        scores = validate(state)
        metrics: dict[str, Any] = {
            "iterations": state.iteration,
            "first_loss": _tail_mean(state.losses, head=True),
            "final_loss": _tail_mean(state.losses),
            "loss_history": state.losses,
            "val_dice": scores["val_dice"],
            "val_dice_per_case": scores["val_dice_per_case"],
            "val_history": state.val_history,
            "train_seconds": round(train_seconds, 2),
            "it_per_s": round(state.iteration / train_seconds, 3) if train_seconds > 0 else None,
            "device": str(dev),
            "cpu_threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "train_case_ids": state.train_case_ids,
            "val_case_ids": state.val_case_ids,
            "skipped": state.dataset.skipped,
            "train_config_hash": cfg.config_hash(),
        }
        version, path = "", Path()
        if save:
            version, path = save_model(state, scores, models_dir=models_dir, pipeline_config_hash=pipeline_config_hash)
        metrics["seconds"] = round(time.perf_counter() - t_start, 2)
        state.emit({"event": "done", "model_version": version, "checkpoint_path": str(path), "final_loss": metrics["final_loss"],
                    "val_dice": scores["val_dice"], "seconds": metrics["seconds"]})
        return TrainResult(model_version=version, checkpoint_path=path, metrics=metrics, model=state.model, config=cfg)
