"""The training loop in pieces: :func:`setup` → :func:`train_step` × n → :func:`validate` → :func:`save_model`.

:func:`train` composes them: a plain function (no Prefect) that flows call, forwarding its
``progress`` events. Everything it can be told is one :class:`~training.config.TrainConfig`
(or keyword overrides of one). It seeds torch and numpy, plans the patch and batch when the
config leaves them open (:mod:`training.plan`), picks CUDA when available (bf16 autocast there,
fp16 with gradient scaling where bf16 is missing; channels-last and ``torch.compile`` when the
config asks; full precision on CPU), trains with Adam and a cosine learning-rate decay,
validates every ``val_every`` iterations (whole-volume sliding-window Dice on the validation
cases) with early stopping, and writes a checkpoint to ``<store>/models/<model_version>/`` whose
``model.json`` holds the config as used: the best validated weights, or the last
(``cfg.select``).

**Resume.** Each run has a folder ``<store>/runs/<run_id>/``: ``run.json`` (config, cases,
status), ``last.pt`` (everything needed to continue: weights, optimiser, scheduler, gradient
scaler, the torch/numpy/Python RNG states, the iteration, which fixes the data loader's position
because sample ``i`` is a pure function of ``(seed, i)``, and the loss and validation history),
rewritten every ``checkpoint_every`` iterations and at each validation, and ``best.pt`` (the best
validated weights). ``train(store, resume=RUN)`` (``lesionflow train --resume RUN``) continues a
run killed at any point from its last checkpoint; on the CPU with the same thread count it ends
with the same weights as a run that was never interrupted (tested with a SIGKILL). On CUDA,
cuDNN's kernels are not bitwise deterministic, so a resumed run is equivalent, not identical.

Examples:
    >>> result = train("store", iterations=300, val_case_ids=["sub-05_ses-01"])  # doctest: +SKIP
    >>> result.model_version, result.metrics["val_dice"]  # doctest: +SKIP
    ('unet3d-20250101T120000-1a2b3c4d', 0.71)
    >>> result = train("store", TrainConfig.from_file("train.json"), seed=1)  # doctest: +SKIP
    >>> result = train("store", resume="latest")  # after a crash  # doctest: +SKIP

    The pieces, for a custom loop (threads as :func:`train` sets them are up to the caller):

    >>> state = setup("store", TrainConfig(iterations=50))  # doctest: +SKIP
    >>> for batch in state.loader:  # doctest: +SKIP
    ...     if state.iteration >= state.cfg.iterations:
    ...         break
    ...     train_step(state, batch)
    >>> flush_losses(state)  # on CUDA the losses are read back in batches  # doctest: +SKIP
    >>> scores = validate(state, ["sub-05_ses-01"])  # doctest: +SKIP
    >>> version, path = save_model(state, scores)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import random
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from training.plan import plan_training
from training.slices import CachedPatchDataset, SliceDataset

log = logging.getLogger("lesionflow.training")

Progress = Callable[[dict[str, Any]], None]
THREADS_ENV = "LESIONFLOW_TORCH_THREADS"
RUNS = "runs"
"""``<store>/runs/<run_id>/``: a training run's resumable state (see the module docstring)."""
RUN_FILE, LAST_FILE, BEST_FILE = "run.json", "last.pt", "best.pt"
CHECKPOINT_FORMAT = 1


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model_version: str
    checkpoint_path: Path | str
    """The model directory: a local path, or its URL when the store is on object storage."""
    metrics: dict[str, Any] = field(default_factory=dict)
    model: torch.nn.Module | None = field(default=None, repr=False, compare=False)
    """The trained network (eval mode, the exported weights), for callers that go on to predict in the same process."""
    config: TrainConfig | None = None
    """The config as used (channels, patch and batch resolved): what ``model.json`` holds as ``train_config``."""
    run_id: str | None = None
    """The run's folder under ``<store>/runs/`` (None when nothing was saved)."""


@dataclass
class TrainState:
    """Everything a run holds between :func:`setup` and :func:`save_model`."""

    cfg: TrainConfig
    """The config with ``channels``, ``patch_zyx`` and ``batch_size`` resolved."""
    store_root: str | Path
    device: torch.device
    dataset: PatchDataset | BankDataset
    loader: DataLoader | BankLoader
    model: torch.nn.Module
    """The network (its ``state_dict`` is what is saved)."""
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    val_case_ids: list[str]
    emit: Progress = field(default=lambda _event: None, repr=False)
    iteration: int = 0
    losses: list[float] = field(default_factory=list, repr=False)
    pending_losses: list[tuple[int, torch.Tensor]] = field(default_factory=list, repr=False)
    """``(iteration, loss on the device)`` not yet read back (CUDA; :func:`flush_losses`)."""
    val_history: list[dict[str, Any]] = field(default_factory=list)
    """One ``{iteration, val_dice}`` per validation during training (``cfg.val_every``)."""
    forward: torch.nn.Module | None = field(default=None, repr=False)
    """What training calls: ``model``, or its ``torch.compile`` on CUDA with ``cfg.compile``."""
    plan: dict[str, Any] = field(default_factory=dict)
    """The planner's decisions (:func:`training.plan.plan_training`)."""
    run_id: str | None = None
    runs_root: str | Path | None = None
    """Where ``<run_id>/`` lives (``<store>/runs``); None = no resumable checkpoints."""
    best: dict[str, Any] | None = None
    """``{iteration, val_dice, weights}`` of the best validation so far (weights on the CPU)."""
    bad_validations: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    """Training time so far (validation excluded), across resumes."""
    resumed_from: int | None = None

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


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, in a form ``torch.load(weights_only=True)`` reads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


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


def _split_cases(store_root: str | Path, cfg: TrainConfig, case_ids: Sequence[str] | None,
                 val_case_ids: Sequence[str] | None) -> tuple[list[str], list[str]]:
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


def _make_dataset(store_root: str | Path, cfg: TrainConfig, candidates: Sequence[str]) -> PatchDataset:
    """The sampler the config asks for: axial slices (2-D), cases in memory, or patches read from Zarr."""
    common = dict(channels=cfg.channels, lesion_fraction=cfg.lesion_fraction, samples_per_epoch=cfg.iterations * int(cfg.batch_size or 1),
                  flip_prob=cfg.flip_prob, seed=cfg.seed)
    assert cfg.patch_zyx is not None
    if cfg.spatial_dims == 2:
        return SliceDataset(store_root, candidates, patch_yx=cfg.patch_zyx[1:], background_slices=cfg.background_slices,  # type: ignore[arg-type]
                            **common)
    cls = CachedPatchDataset if cfg.cache_cases else PatchDataset
    return cls(store_root, candidates, patch_zyx=cfg.patch_zyx, **common)  # type: ignore[arg-type]


def samples_from(dataset: PatchDataset | BankDataset) -> str:
    """``"bank"`` when a run trains from augmentation banks (:class:`BankDataset`), ``"volumes"`` from the raw volumes (flips only)."""
    return "bank" if isinstance(dataset, BankDataset) else "volumes"


def make_loader(dataset: PatchDataset | BankDataset, cfg: TrainConfig, device: torch.device, start_iteration: int = 0) -> DataLoader | BankLoader:
    """Batches of ``cfg.batch_size`` samples in index order, starting after ``start_iteration`` batches.

    Each index is already a seeded random draw, so the loader's whole state is its position. A
    bank's loader (:func:`training.data.bank_loader`) draws its own seeded order and starts from
    the beginning on resume (the resumed weights then differ from an uninterrupted run's).
    """
    if isinstance(dataset, BankDataset):
        return bank_loader(dataset, cfg, device)
    batch = int(cfg.batch_size or 1)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=range(start_iteration * batch, cfg.iterations * batch),
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        drop_last=False,
    )


def new_run_id(when: datetime | None = None) -> str:
    """``<UTC yyyymmddTHHMMSS>-<6 random hex>`` (the hex from the OS, not from the seeded RNGs)."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    return f"{when.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


# ----------------------------------------------------------------------------- the pieces
def setup(
    store_root: str | Path,
    cfg: TrainConfig,
    *,
    case_ids: Sequence[str] | None = None,
    val_case_ids: Sequence[str] | None = None,
    progress: Progress | None = None,
    run_id: str | None = None,
    runs_root: str | Path | None = None,
) -> TrainState:
    """Seed, resolve channels, choose the cases, plan patch and batch, and build the loader, network,
    loss, optimiser and schedule.

    Args:
        store_root: the lesionflow store (cases with ``label``; patch indices from ``prepare``,
            built in memory where missing).
        cfg: the run's configuration; ``cfg.channels=None`` becomes the store's channels,
            ``patch_zyx``/``batch_size`` None are planned (:func:`training.plan.plan_training`).
        case_ids: training cases; default every case in the store not held out for validation.
            Cases without a label or lacking a channel are skipped (``state.dataset.skipped``).
        val_case_ids: validation cases; default ``cfg.val_fraction`` of the usable labelled cases
            (at least one, never all; chosen with ``cfg.seed``), or none.
        progress: receives the run's events (see :func:`train`).
        run_id, runs_root: where resumable checkpoints go (``<runs_root>/<run_id>/``); None = none.

    Raises:
        ValueError: no usable training case, or CUDA requested where there is none.
    """
    dev = pick_device(cfg.device)
    seed_everything(cfg.seed)
    cfg = cfg.with_overrides(channels=resolve_channels(store_root, cfg.channels))
    candidates, val_ids = _split_cases(store_root, cfg, case_ids, val_case_ids)
    usable, skipped = usable_cases(store_root, candidates, cfg.channels or (), require_label=True)
    if not usable:
        reasons = "; ".join(f"{s['case_id']}: {s['reason']}" for s in skipped) or "no cases in the store"
        raise ValueError(f"no usable training cases ({reasons})")
    cfg, plan = plan_training(store_root, cfg, usable, dev)
    # the store's augmentation bank (3-D, or 2-D for axial slices) when it has one for these cases (cfg.augmentation),
    # else samples from the raw volumes
    bank = bank_dataset(store_root, candidates, cfg, dev)
    dataset = bank if bank is not None else _make_dataset(store_root, cfg, candidates)
    if not dataset.cases:
        reasons = "; ".join(f"{s['case_id']}: {s['reason']}" for s in dataset.skipped) or "no cases in the store"
        raise ValueError(f"no usable training cases ({reasons})")
    overlap_ids = sorted(set(dataset.case_ids) & set(val_ids))
    if overlap_ids:
        log.warning("training: validation cases also used for training: %s", overlap_ids)
    model = build_network(cfg).to(dev)  # after seeding: the initial weights follow cfg.seed
    forward = model
    if dev.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last_3d if cfg.spatial_dims == 3 else torch.channels_last)
        forward = model
    if dev.type == "cuda" and cfg.compile:
        forward = torch.compile(model)  # type: ignore[assignment]
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    amp_dtype = _amp_dtype(dev, cfg.amp)
    model.train()
    return TrainState(
        cfg=cfg,
        store_root=store_root,
        device=dev,
        dataset=dataset,
        loader=make_loader(dataset, cfg, dev),
        model=model,
        loss_fn=build_loss(cfg.loss),
        optimizer=optimizer,
        scheduler=_cosine_schedule(optimizer, cfg),
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        amp_dtype=amp_dtype,
        val_case_ids=val_ids,
        emit=progress or (lambda _event: None),
        forward=forward,
        plan=plan,
        run_id=run_id,
        runs_root=runs_root,
    )


def train_step(state: TrainState, batch: tuple[torch.Tensor, torch.Tensor]) -> float | None:
    """One optimiser step on ``(image, label)``; advances ``state.iteration``.

    On the CPU returns the loss (also appended to ``state.losses``) and raises before the backward
    pass when it is not finite. On CUDA nothing is read back from the GPU: reading the loss would
    stop the host until the step had run, leaving the GPU idle while the next batch is prepared and
    launched (on an H200 with the default network this cost a third of its time). The loss stays on
    the device in ``state.pending_losses``, returns None, and :func:`flush_losses` reads the
    pending ones in one go (:func:`fit` does at every log line, validation and checkpoint), raising
    then if one was not finite: a diverged CUDA run stops within ``log_every`` steps.

    Raises:
        FloatingPointError: the loss is not finite (CPU; on CUDA from :func:`flush_losses`).
    """
    dev = state.device
    image, label = (t.to(dev, non_blocking=True) for t in batch)
    if dev.type == "cuda" and state.cfg.channels_last:
        image = image.contiguous(memory_format=torch.channels_last_3d)
    state.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(dev.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
        logits = (state.forward or state.model)(image)
    loss = state.loss_fn(logits.float(), label)
    deferred = dev.type == "cuda"
    if not deferred and not torch.isfinite(loss):
        raise FloatingPointError(f"training diverged: loss {float(loss)} at iteration {state.iteration + 1}")
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    state.iteration += 1
    if deferred:
        state.pending_losses.append((state.iteration, loss.detach()))
        return None
    value = float(loss.detach())
    state.losses.append(value)
    return value


def flush_losses(state: TrainState) -> list[float]:
    """Read the losses :func:`train_step` left on the device (one transfer), append them to
    ``state.losses`` and return them; raises :class:`FloatingPointError` naming the first iteration
    whose loss was not finite."""
    if not state.pending_losses:
        return []
    iterations = [it for it, _ in state.pending_losses]
    values = torch.stack([t.float() for _, t in state.pending_losses]).tolist()
    state.pending_losses.clear()
    for it, v in zip(iterations, values):
        if not math.isfinite(v):
            raise FloatingPointError(f"training diverged: loss {v} at iteration {it}")
    state.losses.extend(values)
    return values


def validate(state: TrainState, case_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Whole-volume Dice (:func:`pipeline.lesions.components.dice`) of the current network on validation cases.

    Each case is predicted by sliding-window inference (``cfg.val_overlap``) and compared with its
    label; cases that are missing, lack a channel or have no label are logged and skipped. Emits
    one ``event="val"`` per case. The network's train/eval mode is restored afterwards.

    Returns:
        ``{"iteration", "val_dice" (mean, or None without a scored case), "val_dice_per_case"}``.
    """
    ids = state.val_case_ids if case_ids is None else list(case_ids)
    info = {"channels": list(state.cfg.channels or ()), "patch_zyx": list(state.cfg.patch_zyx or ())}
    was_training = state.model.training
    state.model.eval()
    per_case: dict[str, float] = {}
    try:
        for case_id in ids:
            try:
                group = _store.open_case(state.store_root, case_id)
                label = _store.reference_label(group)
                if label is None:
                    log.warning("validation: %s has no label; skipped", case_id)
                    continue
                mask = predict_case(state.model, info, state.store_root, case_id, device=state.device, overlap=state.cfg.val_overlap)
                per_case[case_id] = dice(mask, label[...])
            except _store.StoreError as exc:
                log.warning("validation: skipping %s: %s", case_id, exc)
                continue
            state.emit({"event": "val", "case_id": case_id, "dice": per_case[case_id], "iteration": state.iteration})
    finally:
        state.model.train(was_training)
    mean = float(np.mean(list(per_case.values()))) if per_case else None
    return {"iteration": state.iteration, "val_dice": mean, "val_dice_per_case": per_case}


def _cpu_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def record_validation(state: TrainState, scores: Mapping[str, Any]) -> bool:
    """Keep the weights when ``scores`` beat the best validation by more than ``early_stop_min_delta``;
    count validations without improvement and set ``state.stopped_early`` at the patience.
    Returns True when these are the new best weights."""
    value = scores.get("val_dice")
    if value is None:
        return False
    cfg = state.cfg
    if state.best is None or value > state.best["val_dice"] + cfg.early_stop_min_delta:
        state.best = {"iteration": state.iteration, "val_dice": float(value), "weights": _cpu_weights(state.model)}
        state.bad_validations = 0
        if state.runs_root is not None and state.run_id:
            _put_torch(state, BEST_FILE, {"model": state.best["weights"], "iteration": state.iteration, "val_dice": float(value)})
        return True
    state.bad_validations += 1
    if cfg.early_stop_patience and state.bad_validations >= cfg.early_stop_patience:
        state.stopped_early = True
        state.emit({"event": "early_stop", "iteration": state.iteration, "best_iteration": state.best["iteration"],
                    "best_val_dice": state.best["val_dice"]})
    return False


def fit(state: TrainState) -> float:
    """Run :func:`train_step` until ``cfg.iterations`` (or early stopping), emitting ``train`` events
    every ``cfg.log_every``, validating every ``cfg.val_every`` (into ``state.val_history``, keeping
    the best weights) and writing the resumable checkpoint every ``cfg.checkpoint_every`` and at each
    validation; returns the training seconds of this call (validation time excluded)."""
    cfg = state.cfg
    t_loop = time.perf_counter()
    val_seconds = 0.0
    start_it = state.iteration
    logged = len(state.losses)
    for batch in state.loader:
        if state.iteration >= cfg.iterations:
            break
        train_step(state, batch)
        it = state.iteration
        if it % cfg.log_every == 0 or it == cfg.iterations:
            flush_losses(state)
            window, logged = state.losses[logged:], len(state.losses)
            elapsed = time.perf_counter() - t_loop - val_seconds
            state.emit({
                "event": "train",
                "iteration": it,
                "iterations": cfg.iterations,
                "loss": float(np.mean(window)) if window else None,
                "lr": float(state.optimizer.param_groups[0]["lr"]),
                "elapsed_s": round(state.train_seconds + elapsed, 2),
                "it_per_s": round((it - start_it) / elapsed, 3) if elapsed > 0 else None,
            })
        validated = False
        if cfg.val_every and state.val_case_ids and it % cfg.val_every == 0 and it < cfg.iterations:
            flush_losses(state)
            t_val = time.perf_counter()
            scores = validate(state)
            state.val_history.append({"iteration": it, "val_dice": scores["val_dice"]})
            record_validation(state, scores)
            val_seconds += time.perf_counter() - t_val
            validated = True
        if (it < cfg.iterations and not state.stopped_early and state.runs_root is not None
                and ((cfg.checkpoint_every and it % cfg.checkpoint_every == 0) or validated)):
            write_run_checkpoint(state, extra_seconds=time.perf_counter() - t_loop - val_seconds)
        if state.stopped_early:
            break
    flush_losses(state)
    seconds = time.perf_counter() - t_loop - val_seconds
    state.train_seconds += seconds
    return seconds


# ----------------------------------------------------------------------------- runs: checkpoints and resume
def _put_torch(state: TrainState, name: str, payload: Any) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    _store.put_bytes(state.runs_root, f"{state.run_id}/{name}", buf.getvalue())  # type: ignore[arg-type]


def _run_record(state: TrainState, status: str, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": state.run_id,
        "status": status,
        "iteration": state.iteration,
        "iterations": state.cfg.iterations,
        "train_config": state.cfg.model_dump(mode="json"),
        "train_case_ids": state.train_case_ids,
        "val_case_ids": state.val_case_ids,
        "skipped": state.dataset.skipped,
        "plan": state.plan,
        "best_iteration": state.best["iteration"] if state.best else None,
        "best_val_dice": state.best["val_dice"] if state.best else None,
        "updated_at": datetime.now(UTC).isoformat(),
        **extra,
    }


def write_run_record(state: TrainState, status: str = "running", **extra: Any) -> None:
    """``<runs_root>/<run_id>/run.json`` (status ``running``, ``finished`` or ``stopped_early``)."""
    if state.runs_root is None or not state.run_id:
        return
    _store.put_bytes(state.runs_root, f"{state.run_id}/{RUN_FILE}", json.dumps(_run_record(state, status, **extra), indent=2, default=str).encode())


def write_run_checkpoint(state: TrainState, extra_seconds: float = 0.0) -> None:
    """``last.pt``: everything :func:`resume` needs to continue exactly where the run is now, then ``run.json``.

    Written whole (a temporary file and a rename locally, one PUT on an object store): a kill
    during the write leaves the previous checkpoint.
    """
    if state.runs_root is None or not state.run_id:
        return
    flush_losses(state)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "iteration": state.iteration,
        "model": _cpu_weights(state.model),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "rng": rng_state(),
        "losses": list(state.losses),
        "val_history": list(state.val_history),
        "best": {k: v for k, v in state.best.items() if k != "weights"} if state.best else None,
        "bad_validations": state.bad_validations,
        "train_seconds": state.train_seconds + extra_seconds,
    }
    _put_torch(state, LAST_FILE, payload)
    write_run_record(state, "running")
    state.emit({"event": "checkpoint", "iteration": state.iteration, "run_id": state.run_id})


def list_runs(store_root: str | Path, runs_root: str | Path | None = None) -> list[dict[str, Any]]:
    """``run.json`` of every run in ``<store>/runs/`` (or ``runs_root``), oldest first."""
    root = runs_root if runs_root is not None else _store.location(store_root, RUNS)
    out = []
    for name in _store.list_dir(root):
        blob = _store.read_bytes(root, f"{name}/{RUN_FILE}")
        if blob is None:
            continue
        try:
            out.append(json.loads(blob))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
    return sorted(out, key=lambda r: str(r.get("run_id", "")))


def resolve_run(store_root: str | Path, run: str, runs_root: str | Path | None = None) -> dict[str, Any]:
    """The ``run.json`` of ``run``: a run id, ``"latest"`` (the newest unfinished run) or a model
    version (the run that produced it), from ``<store>/runs/`` (or ``runs_root``).

    Raises:
        ValueError: no such run.
    """
    runs = list_runs(store_root, runs_root)
    if run == "latest":
        open_runs = [r for r in runs if r.get("status") == "running"]
        if not open_runs:
            raise ValueError(f"no unfinished run in {runs_root if runs_root is not None else _store.location(store_root, RUNS)}; nothing to resume")
        return open_runs[-1]
    for r in runs:
        if r.get("run_id") == run or r.get("model_version") == run:
            return r
    blob = _store.read_bytes(store_root, f"{_store.MODELS}/{run}/model.json")
    if blob is not None:
        run_id = json.loads(blob).get("run_id")
        for r in runs:
            if run_id and r.get("run_id") == run_id:
                return r
        raise ValueError(f"model {run} records no resumable run (it was trained before runs were kept, or its run folder is gone)")
    known = ", ".join(str(r.get("run_id")) for r in runs[-5:]) or "none"
    where = runs_root if runs_root is not None else _store.location(store_root, RUNS)
    raise ValueError(f"no run {run!r} in {where} (latest runs: {known}); give a run id, a model version or 'latest'")


def resume(store_root: str | Path, run: str, *, progress: Progress | None = None, runs_root: str | Path | None = None) -> TrainState:
    """The state of run ``run`` (see :func:`resolve_run`) at its last checkpoint, ready for :func:`fit`.

    The network, optimiser, scheduler, gradient scaler, RNG states, loss and validation history,
    best weights and the loader's position are restored; a run killed before its first
    checkpoint starts again from iteration 0 with the same config and cases.

    Raises:
        ValueError: the run does not exist or has already finished.
    """
    runs_root = runs_root if runs_root is not None else _store.location(store_root, RUNS)
    record = resolve_run(store_root, run, runs_root)
    if record.get("status") != "running":
        raise ValueError(f"run {record['run_id']} has {record.get('status', 'finished')} (model {record.get('model_version')}); nothing to resume")
    cfg = TrainConfig.model_validate(record["train_config"])
    state = setup(store_root, cfg, case_ids=record["train_case_ids"], val_case_ids=record["val_case_ids"], progress=progress,
                  run_id=record["run_id"], runs_root=runs_root)
    state.plan = dict(record.get("plan") or {})
    blob = _store.read_bytes(runs_root, f"{record['run_id']}/{LAST_FILE}")
    if blob is None:
        log.warning("run %s has no checkpoint yet; starting it again from iteration 0", record["run_id"])
        state.resumed_from = 0
        return state
    ckpt = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"run {record['run_id']}: checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}")
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    state.scaler.load_state_dict(ckpt["scaler"])
    state.iteration = int(ckpt["iteration"])
    state.losses = list(ckpt["losses"])
    state.val_history = list(ckpt["val_history"])
    state.bad_validations = int(ckpt["bad_validations"])
    state.train_seconds = float(ckpt.get("train_seconds", 0.0))
    if ckpt.get("best"):
        best_blob = _store.read_bytes(runs_root, f"{record['run_id']}/{BEST_FILE}")
        if best_blob is not None:
            best = torch.load(io.BytesIO(best_blob), map_location="cpu", weights_only=True)
            state.best = {"iteration": int(best["iteration"]), "val_dice": float(best["val_dice"]), "weights": best["model"]}
    state.loader = make_loader(state.dataset, state.cfg, state.device, start_iteration=state.iteration)
    state.resumed_from = state.iteration
    set_rng_state(ckpt["rng"])
    state.model.train()
    return state


# ----------------------------------------------------------------------------- saving
def save_model(
    state: TrainState,
    validation: Mapping[str, Any] | None = None,
    *,
    models_dir: str | Path | None = None,
    pipeline_config_hash: str | None = None,
) -> tuple[str, Path | str]:
    """Write the checkpoint of ``state.model`` as it is (to ``<store>/models`` or ``models_dir``);
    returns ``(model_version, directory)``.

    ``model.json`` holds ``train_config`` (``state.cfg`` as is) beside the run's facts: the plan,
    the run id, which weights these are (``selected``, ``best_iteration``), the training data's
    fingerprint and the code version (see :mod:`training.registry`).
    """
    from training.registry import code_version, data_fingerprint

    validation = validation or {}
    root = _store.location(state.store_root)
    info = {
        "train_config": state.cfg.model_dump(mode="json"),
        "train_config_hash": state.cfg.config_hash(),
        "network": state.cfg.model.kind,
        "spatial_dims": state.cfg.spatial_dims,
        "loss": state.cfg.loss.kind,
        "channels": list(state.cfg.channels or ()),
        "patch_zyx": list(state.cfg.patch_zyx or ()),
        "batch_size": state.cfg.batch_size,
        "plan": state.plan,
        "normalization": "zscore",
        "train_case_ids": state.train_case_ids,
        "val_case_ids": state.val_case_ids,
        "iterations": state.iteration,
        "final_loss": _tail_mean(state.losses),
        "val_dice": validation.get("val_dice"),
        "val_dice_per_case": dict(validation.get("val_dice_per_case") or {}),
        "val_history": state.val_history,
        "selected": validation.get("selected", "last"),
        "best_iteration": validation.get("best_iteration"),
        "stopped_early": state.stopped_early,
        "run_id": state.run_id,
        "device": str(state.device),
        "amp": str(state.amp_dtype).replace("torch.", "") if state.amp_dtype is not None else None,
        "config_hash": pipeline_config_hash,
        "data_fingerprint": data_fingerprint(state.store_root, [*state.train_case_ids, *state.val_case_ids]),
        "code_version": code_version(),
        "store": str(root.resolve() if isinstance(root, Path) else root),  # local: absolute; object store: URL
    }
    if models_dir is not None:
        return save_checkpoint(state.model, info, models_dir=models_dir)
    return save_checkpoint(state.model, info, store_root=state.store_root)


def _finish(state: TrainState) -> dict[str, Any]:
    """The final validation, then the weights to export (best or last): ``{val_dice, ..., selected, best_iteration}``."""
    state.model.eval()
    last_validated = bool(state.val_history) and state.val_history[-1]["iteration"] == state.iteration
    if state.stopped_early and last_validated:
        scores = {"iteration": state.iteration, "val_dice": state.val_history[-1]["val_dice"], "val_dice_per_case": {}}
    else:
        scores = validate(state)
        record_validation(state, scores)
    last = dict(scores)
    selected, chosen = "last", scores
    if state.cfg.select == "best" and state.best is not None and state.best["iteration"] != state.iteration:
        state.model.load_state_dict(state.best["weights"])
        selected = "best"
        chosen = {"iteration": state.best["iteration"], "val_dice": state.best["val_dice"], "val_dice_per_case": {}}
    return {**chosen, "selected": selected, "best_iteration": state.best["iteration"] if state.best else None,
            "val_dice_last": last.get("val_dice"), "val_dice_per_case_last": last.get("val_dice_per_case")}


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
    runs_dir: str | Path | None = None,
    resume_run: str | None = None,
    pipeline_config_hash: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train a network on stored cases and save a checkpoint: :func:`setup` (or :func:`resume`),
    :func:`fit`, :func:`validate`, :func:`save_model`.

    Args:
        store_root: the lesionflow store (path or URL).
        cfg: a :class:`TrainConfig` (or a dict of its fields); default ``TrainConfig()``.
        case_ids, val_case_ids: training and validation cases (see :func:`setup`).
        progress: called with a dict: ``event="start"`` (device, cases, patch, batch size, run id,
            ``resumed_from``); every ``cfg.log_every`` iterations ``event="train"`` (``iteration``,
            ``iterations``, ``loss`` (mean since the last event), ``lr``, ``elapsed_s``, ``it_per_s``);
            once per validation case ``event="val"`` (``case_id``, ``dice``, ``iteration``);
            ``event="checkpoint"`` (``iteration``, ``run_id``); ``event="early_stop"``; ``event="done"``.
        save: write the model (to ``<store>/models`` or ``models_dir``) and keep the run's resumable
            checkpoints (in ``<store>/runs`` or ``runs_dir``).
        resume_run: continue this run (a run id, ``"latest"`` or a model version) from its last
            checkpoint instead of starting one; ``cfg``, ``case_ids``, ``val_case_ids`` and
            overrides must then be left out (the run's own are used).
        pipeline_config_hash: the pipeline configuration hash, recorded as ``config_hash`` in ``model.json``.
        **overrides: TrainConfig fields applied over ``cfg`` (``iterations=40``, ``patch_zyx=(32, 32, 32)``,
            ``optim={"lr": 1e-3}``), and the names train() took before (``lr``, ``weight_decay``,
            ``num_threads``). Validated: a bad value or an unknown name raises ``ValueError``.

    Returns:
        :class:`TrainResult` with ``model_version``, ``checkpoint_path`` (the model directory),
        ``config`` (as used, channels/patch/batch resolved), ``run_id`` and ``metrics``:
        ``final_loss`` (mean of the last 10 iterations), ``first_loss`` (mean of the first 10),
        ``loss_history``, ``val_dice`` (of the exported weights, or ``None``), ``val_dice_last``,
        ``val_dice_per_case``, ``val_history``, ``selected`` (``best``/``last``), ``best_iteration``,
        ``stopped_early``, ``seconds``, ``train_seconds``, ``it_per_s``, ``device``, ``cpu_threads``,
        ``train_case_ids``, ``val_case_ids``, ``skipped``, ``train_config_hash``, ``plan``, ``resumed_from``.
    """
    if resume_run is not None:
        if cfg is not None or case_ids is not None or val_case_ids is not None or overrides:
            raise ValueError("resume continues a run with its own config and cases; give only the run (and progress/models_dir)")
        record = resolve_run(store_root, resume_run, runs_dir)
        run_cfg = TrainConfig.model_validate(record["train_config"])
        dev = pick_device(run_cfg.device)
        threads = run_cfg.threads
    else:
        run_cfg = make_config(cfg, **overrides)
        dev = pick_device(run_cfg.device)
        threads = run_cfg.threads
    with _cpu_threads(dev, threads):
        t_start = time.perf_counter()
        runs_root = (runs_dir if runs_dir is not None else _store.location(store_root, RUNS)) if save else None
        if resume_run is not None:
            state = resume(store_root, resume_run, progress=progress, runs_root=runs_root)
        else:
            state = setup(store_root, run_cfg, case_ids=case_ids, val_case_ids=val_case_ids, progress=progress,
                          run_id=new_run_id() if save else None, runs_root=runs_root)
            write_run_record(state, "running")
        cfg_used = state.cfg
        state.emit({"event": "start", "device": str(dev), "iterations": cfg_used.iterations, "train_cases": state.train_case_ids,
                    "skipped": state.dataset.skipped, "patch_zyx": list(cfg_used.patch_zyx or ()), "batch_size": cfg_used.batch_size,
                    "channels": list(cfg_used.channels or ()), "network": cfg_used.model.kind, "spatial_dims": cfg_used.spatial_dims,
                    "loss_kind": cfg_used.loss.kind, "run_id": state.run_id, "resumed_from": state.resumed_from, "plan": state.plan,
                    "samples_from": samples_from(state.dataset)})
        fit(state)
        scores = _finish(state)
        metrics: dict[str, Any] = {
            "iterations": state.iteration,
            "first_loss": _tail_mean(state.losses, head=True),
            "final_loss": _tail_mean(state.losses),
            "loss_history": state.losses,
            "val_dice": scores["val_dice"],
            "val_dice_last": scores["val_dice_last"],
            "val_dice_per_case": scores["val_dice_per_case"] or scores["val_dice_per_case_last"],
            "val_history": state.val_history,
            "selected": scores["selected"],
            "best_iteration": scores["best_iteration"],
            "stopped_early": state.stopped_early,
            "train_seconds": round(state.train_seconds, 2),
            "it_per_s": round(state.iteration / state.train_seconds, 3) if state.train_seconds > 0 else None,
            "device": str(dev),
            "cpu_threads": torch.get_num_threads() if dev.type == "cpu" else None,
            "train_case_ids": state.train_case_ids,
            "val_case_ids": state.val_case_ids,
            "skipped": state.dataset.skipped,
            "samples_from": samples_from(state.dataset),
            "train_config_hash": cfg_used.config_hash(),
            "plan": state.plan,
            "resumed_from": state.resumed_from,
        }
        version, path = "", Path()
        if save:
            version, path = save_model(state, scores, models_dir=models_dir, pipeline_config_hash=pipeline_config_hash)
            write_run_record(state, "stopped_early" if state.stopped_early else "finished", model_version=version)
        metrics["seconds"] = round(time.perf_counter() - t_start, 2)
        state.emit({"event": "done", "model_version": version, "checkpoint_path": str(path), "final_loss": metrics["final_loss"],
                    "val_dice": scores["val_dice"], "seconds": metrics["seconds"], "run_id": state.run_id})
        return TrainResult(model_version=version, checkpoint_path=path, metrics=metrics, model=state.model, config=cfg_used, run_id=state.run_id)
