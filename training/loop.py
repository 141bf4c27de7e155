"""The training loop: class-balanced patches from the store → 3-D U-Net → checkpoint.

:func:`train` is a plain function (no Prefect): flows call it and forward its ``progress``
events. It seeds torch and numpy, picks CUDA when available (with bf16/fp16 autocast there,
full precision on CPU), trains for a fixed number of iterations with Adam and a cosine
learning-rate decay, optionally measures Dice on validation cases by whole-volume sliding-window
inference, and writes a checkpoint to ``<store>/models/<model_version>/``.

Example:
    >>> result = train("store", iterations=300, val_case_ids=["sub-05_ses-01"])  # doctest: +SKIP
    >>> result.model_version, result.metrics["val_dice"]  # doctest: +SKIP
    ('unet3d-20250101T120000-1a2b3c4d', 0.71)
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
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline import store as _store
from training.checkpoint import save_checkpoint
from training.data import PatchDataset, usable_cases
from training.infer import predict_case
from training.losses import build_loss, loss_config
from training.model import build_model, default_arch, size_multiple

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


def cpu_threads(requested: int | None = None) -> int:
    """Torch CPU threads for training: ``requested``, else ``$LESIONFLOW_TORCH_THREADS``, else ``os.cpu_count()``."""
    if requested:
        return max(1, int(requested))
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        return max(1, int(env))
    return max(1, os.cpu_count() or 1)


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


def dice_score(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two binary masks; 1.0 when both are empty."""
    pred, ref = np.asarray(pred) != 0, np.asarray(ref) != 0
    denom = int(pred.sum()) + int(ref.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & ref).sum()) / denom


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


def train(
    store_root: str | Path,
    *,
    case_ids: Sequence[str] | None = None,
    channels: Sequence[str] = ("FLAIR", "T1", "T2"),
    patch_zyx: Sequence[int] = (48, 48, 48),
    batch_size: int = 2,
    iterations: int = 300,
    lr: float = 2e-3,
    weight_decay: float = 1e-5,
    lesion_fraction: float = 0.5,
    seed: int = 0,
    val_case_ids: Sequence[str] | None = None,
    val_fraction: float = 0.0,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    log_every: int = 10,
    arch: dict[str, Any] | None = None,
    amp: bool = True,
    num_workers: int = 0,
    num_threads: int | None = None,
    config_hash: str | None = None,
    save: bool = True,
    models_dir: str | Path | None = None,
    val_overlap: float = 0.25,
) -> TrainResult:
    """Train a 3-D U-Net on stored cases and save a checkpoint.

    Args:
        store_root: the lesionflow store (cases with ``label``; patch indices from ``prepare``,
            built in memory where missing).
        case_ids: training cases; default every labelled case in the store not in ``val_case_ids``.
            Cases without a label or lacking a channel are skipped (logged, listed in
            ``metrics["skipped"]``).
        channels: modalities fed to the network, in order (recorded in the checkpoint).
        patch_zyx: patch size in voxels; each side a multiple of 8 (the U-Net's 3 strides of 2).
        batch_size, iterations: patches per step, optimiser steps.
        lr, weight_decay: Adam; the learning rate decays to 5 % along a cosine.
        lesion_fraction: probability that a patch is centred on a lesion (class balance).
        seed: seeds torch/numpy and the patch sampler; recorded.
        val_case_ids: cases for whole-volume validation Dice after training (optional).
        val_fraction: when ``val_case_ids`` is not given, hold out this fraction of the usable
            labelled cases (at least one, never all; chosen with ``seed``) for validation.
        device: ``"cuda"``/``"cpu"``; default CUDA when available.
        progress: called with a dict every ``log_every`` iterations (``event="train"``,
            ``iteration``, ``iterations``, ``loss`` (mean since the last event), ``lr``,
            ``elapsed_s``, ``it_per_s``) and once per validation case (``event="val"``).
        arch: network description (default :func:`training.model.default_arch`).
        amp: autocast (bf16 where supported, else fp16 with gradient scaling) — CUDA only.
        num_workers: DataLoader worker processes (0 = read patches in the main process).
        num_threads: torch CPU threads during training (default ``$LESIONFLOW_TORCH_THREADS`` or
            ``os.cpu_count()``); the previous setting is restored on return. On a CPU shared
            with other busy processes, 1 thread can be several times faster than 2.
        config_hash: the pipeline configuration hash, recorded in ``model.json``.
        save: write the checkpoint (to ``<store>/models`` or ``models_dir``).

    Returns:
        :class:`TrainResult` with ``model_version``, ``checkpoint_path`` (the model directory) and
        ``metrics``: ``final_loss`` (mean of the last 10 iterations), ``first_loss`` (mean of the
        first 10), ``loss_history``, ``val_dice`` (mean, or ``None``), ``val_dice_per_case``,
        ``seconds``, ``it_per_s``, ``device``, ``cpu_threads``, ``train_case_ids``, ``val_case_ids``, ``skipped``.
    """
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with _cpu_threads(dev, num_threads):
        t_start = time.perf_counter()
        emit = progress or (lambda _event: None)
        seed_everything(seed)

        channels = tuple(channels)
        patch = tuple(int(p) for p in patch_zyx)
        arch = dict(arch or default_arch(in_channels=len(channels)))
        if int(arch["in_channels"]) != len(channels):
            raise ValueError(f"arch has {arch['in_channels']} input channels but {len(channels)} channels were requested")
        mult = size_multiple(arch)
        if len(patch) != 3 or any(p % mult for p in patch):
            raise ValueError(f"patch_zyx {patch} must be 3 sides, each a multiple of {mult} (product of the U-Net strides)")

        val_ids = list(val_case_ids or [])
        if not val_ids and val_fraction > 0:
            val_ids = split_validation(store_root, case_ids, channels, val_fraction, seed)
        if case_ids is None:
            candidates = [c for c in _store.list_cases(store_root) if c not in set(val_ids)]
        else:
            candidates = [c for c in case_ids if c not in set(val_ids)] if val_case_ids is None else list(case_ids)
        dataset = PatchDataset(
            store_root,
            candidates,
            channels=channels,
            patch_zyx=patch,
            lesion_fraction=lesion_fraction,
            samples_per_epoch=iterations * batch_size,
            seed=seed,
        )
        if not dataset.cases:
            reasons = "; ".join(f"{s['case_id']}: {s['reason']}" for s in dataset.skipped) or "no cases in the store"
            raise ValueError(f"no usable training cases ({reasons})")
        overlap_ids = sorted(set(dataset.case_ids) & set(val_ids))
        if overlap_ids:
            log.warning("training: validation cases also used for training: %s", overlap_ids)

        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,  # each index is already a seeded random draw
            num_workers=num_workers,
            pin_memory=dev.type == "cuda",
            persistent_workers=num_workers > 0,
            drop_last=False,
        )

        model = build_model(arch).to(dev)
        loss_cfg = loss_config()
        loss_fn = build_loss(loss_cfg)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        min_factor = 0.05
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda it: min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(it, iterations) / max(iterations, 1)))
        )
        amp_dtype = _amp_dtype(dev, amp)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

        emit({"event": "start", "device": str(dev), "iterations": iterations, "train_cases": dataset.case_ids, "skipped": dataset.skipped, "patch_zyx": list(patch), "batch_size": batch_size})
        losses: list[float] = []
        model.train()
        t_loop = time.perf_counter()
        window: list[float] = []
        it = 0
        for image, label in loader:
            if it >= iterations:
                break
            image = image.to(dev, non_blocking=True)
            label = label.to(dev, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(image)
            loss = loss_fn(logits.float(), label)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training diverged: loss {float(loss)} at iteration {it + 1}")
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            value = float(loss.detach())
            losses.append(value)
            window.append(value)
            it += 1
            if it % max(log_every, 1) == 0 or it == iterations:
                elapsed = time.perf_counter() - t_loop
                emit({
                    "event": "train",
                    "iteration": it,
                    "iterations": iterations,
                    "loss": float(np.mean(window)),
                    "lr": float(optimizer.param_groups[0]["lr"]),
                    "elapsed_s": round(elapsed, 2),
                    "it_per_s": round(it / elapsed, 3) if elapsed > 0 else None,
                })
                window = []
        train_seconds = time.perf_counter() - t_loop

        model.eval()
        val_per_case: dict[str, float] = {}
        if val_ids:
            from pipeline.store import open_case

            info = {"channels": list(channels), "patch_zyx": list(patch)}
            for case_id in val_ids:
                try:
                    mask = predict_case(model, info, store_root, case_id, device=dev, overlap=val_overlap)
                    group = open_case(store_root, case_id)
                    if "label" not in group:
                        log.warning("validation: %s has no label; skipped", case_id)
                        continue
                    val_per_case[case_id] = dice_score(mask, group["label"][...])
                except _store.StoreError as exc:
                    log.warning("validation: skipping %s: %s", case_id, exc)
                    continue
                emit({"event": "val", "case_id": case_id, "dice": val_per_case[case_id]})
        val_dice = float(np.mean(list(val_per_case.values()))) if val_per_case else None

        n = min(10, len(losses))
        metrics: dict[str, Any] = {
            "iterations": it,
            "first_loss": float(np.mean(losses[:n])) if losses else None,
            "final_loss": float(np.mean(losses[-n:])) if losses else None,
            "loss_history": losses,
            "val_dice": val_dice,
            "val_dice_per_case": val_per_case,
            "train_seconds": round(train_seconds, 2),
            "it_per_s": round(it / train_seconds, 3) if train_seconds > 0 else None,
            "device": str(dev),
            "cpu_threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "train_case_ids": dataset.case_ids,
            "val_case_ids": val_ids,
            "skipped": dataset.skipped,
        }
        root = _store.location(store_root)
        info = {
            "arch": arch,
            "channels": list(channels),
            "patch_zyx": list(patch),
            "normalization": "zscore",
            "loss": loss_cfg,
            "optimizer": {"name": "Adam", "lr": lr, "weight_decay": weight_decay, "schedule": f"cosine to {min_factor} x lr"},
            "batch_size": batch_size,
            "lesion_fraction": lesion_fraction,
            "augmentation": {"flips": "each spatial axis, p=0.5"},
            "train_case_ids": dataset.case_ids,
            "val_case_ids": val_ids,
            "iterations": it,
            "seed": seed,
            "final_loss": metrics["final_loss"],
            "val_dice": val_dice,
            "val_dice_per_case": val_per_case,
            "device": str(dev),
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else None,
            "config_hash": config_hash,
            "store": str(root.resolve() if isinstance(root, Path) else root),  # local: absolute; object store: URL
        }
        version, path = "", Path()
        if save:
            if models_dir is not None:
                version, path = save_checkpoint(model, info, models_dir=models_dir)
            else:
                version, path = save_checkpoint(model, info, store_root=store_root)
        metrics["seconds"] = round(time.perf_counter() - t_start, 2)
        emit({"event": "done", "model_version": version, "checkpoint_path": str(path), "final_loss": metrics["final_loss"], "val_dice": val_dice, "seconds": metrics["seconds"]})
        return TrainResult(model_version=version, checkpoint_path=path, metrics=metrics, model=model)


