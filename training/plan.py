"""Patch size and batch planned from the data and the device's memory, the way nnU-Net's planner does.

When a :class:`~training.config.TrainConfig` leaves ``patch_zyx`` or ``batch_size`` unset
(``None``), :func:`plan_training` chooses them, and every decision goes into the plan it returns
(recorded in ``model.json`` as ``plan``):

1. **the data**: the median shape of the training cases' foreground (the head or brain, cropped
   to its bounding box, as nnU-Net crops to non-zero) and their median spacing, from up to
   ``MAX_CASES`` cases;
2. **the start**: the median shape (3-D) or its axial plane ``(1, y, x)`` (2-D: nnU-Net's "2d"
   uses whole slices), capped at 256 voxels a side, rounded up to what the network's
   downsampling divides;
3. **the memory**: an activation estimate, ``batch x sum over levels of features x voxels at that
   level x ACTIVATIONS_PER_FEATURE x bytes per value`` (bf16 on CUDA, fp32 elsewhere), must fit the
   budget (``memory_budget_mb``; default 70 % of the GPU's memory, ``CPU_BUDGET_MB`` on the CPU) at
   batch 2; while it does not, the axis longest relative to the median shape is shortened by one
   step of its multiple (nnU-Net's rule);
4. **the batch**: as many patches as the budget holds, at least 2, and at most as many as cover
   5 % of the training voxels (nnU-Net's cap; with one case that keeps the batch small);
5. a DynUNet without kernels/strides gets them planned for that patch and spacing
   (:func:`training.config.plan_dynunet`).

The estimate is a model of memory, not a measurement: ``benchmarks/bench_train.py`` prints it
beside the measured peak (CUDA) so the constant can be checked.

Example:
    >>> plan = plan_patch((140, 172, 140), TrainConfig(), budget_bytes=512 * 2**20, dtype_bytes=4)
    >>> plan["patch_zyx"], plan["batch_size"] >= 2
    ((56, 72, 64), True)
    >>> plan_patch((140, 172, 140), TrainConfig(spatial_dims=2), budget_bytes=512 * 2**20, dtype_bytes=4)["patch_zyx"]
    (1, 176, 144)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import store as _store
from training.config import DynUNetConfig, TrainConfig

log = logging.getLogger("lesionflow.training")

MAX_CASES = 20
"""Cases whose foreground is measured for the median shape (the first ones, in order)."""
MAX_SIDE = 256
"""No planned patch side is longer than this (voxels)."""
CPU_BUDGET_MB = 512.0
"""Default activation budget on the CPU, where time per step, not memory, is the limit: for the
default U-Net on a skull-stripped MNI brain it plans 56x72x64, batch 2, measured at 0.37 s per
step with 1 thread on the 2-core development VM (load average ~4)."""
GPU_FRACTION = 0.7
"""Default activation budget on CUDA: this fraction of the device's memory (the rest: weights,
optimiser state, the allocator's slack, the data loader's pinned buffers)."""
ACTIVATIONS_PER_FEATURE = 12
"""Values kept for the backward pass per feature channel and voxel of a level, encoder and decoder
together (two convolutions each with a norm and an activation, both paths)."""
DATASET_FRACTION = 0.05
"""A batch covers at most this fraction of the training voxels (nnU-Net)."""


def foreground_shape(store_root: str | Path, case_id: str) -> tuple[int, int, int]:
    """The bounding-box shape (z, y, x) of a case's foreground (voxels); the whole grid without one."""
    group = _store.open_case(store_root, case_id)
    fg_arr = _store.foreground_mask(group)
    if fg_arr is None:
        return tuple(int(s) for s in group["image"].shape[1:])  # type: ignore[return-value]
    fg = np.asarray(fg_arr[...]) != 0
    if not fg.any():
        return tuple(int(s) for s in fg.shape)  # type: ignore[return-value]
    out = []
    for axis in range(3):
        hit = np.flatnonzero(fg.any(axis=tuple(a for a in range(3) if a != axis)))
        out.append(int(hit[-1] - hit[0] + 1))
    return tuple(out)  # type: ignore[return-value]


def case_spacing_zyx(store_root: str | Path, case_id: str) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x) in mm from the case's metadata (1 mm when unknown)."""
    try:
        x, y, z = _store.read_case_meta(store_root, case_id).geometry.spacing
        return float(z), float(y), float(x)
    except (_store.StoreError, AttributeError, ValueError):
        return 1.0, 1.0, 1.0


def data_fingerprint(store_root: str | Path, case_ids: Sequence[str]) -> dict[str, Any]:
    """Median foreground shape (z, y, x), median spacing (z, y, x, mm), total foreground voxels and the cases measured."""
    ids = list(case_ids)[:MAX_CASES]
    shapes = [foreground_shape(store_root, c) for c in ids]
    spacings = [case_spacing_zyx(store_root, c) for c in ids]
    median = tuple(int(round(v)) for v in np.median(np.asarray(shapes), axis=0)) if shapes else (128, 128, 128)
    spacing = tuple(float(v) for v in np.median(np.asarray(spacings), axis=0)) if spacings else (1.0, 1.0, 1.0)
    per_case = int(np.prod(median))
    return {"median_shape_zyx": median, "median_spacing_zyx": spacing, "cases_measured": len(ids),
            "total_voxels": per_case * max(1, len(list(case_ids)))}


def activation_bytes(cfg: TrainConfig, patch_zyx: Sequence[int], batch: int, dtype_bytes: int) -> int:
    """Estimated activation memory (bytes) of one training step (see the module docstring)."""
    dims = cfg.spatial_dims
    seen = tuple(patch_zyx)[3 - dims:]
    voxels = int(np.prod(seen))
    per_sample = sum(f * voxels / down for f, down in cfg.model.levels(patch_zyx, dims))
    return int(batch * per_sample * ACTIVATIONS_PER_FEATURE * dtype_bytes)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(-(-int(round(value)) // multiple) * multiple))


def _multiples(cfg: TrainConfig, patch_zyx: Sequence[int]) -> tuple[int, ...]:
    if isinstance(cfg.model, DynUNetConfig) and cfg.model.strides is None:
        return (2,) * cfg.spatial_dims  # the planner pools an axis only while it halves evenly; keep sides even
    return cfg.model.axis_multiples(patch_zyx, cfg.spatial_dims)


def plan_patch(median_zyx: Sequence[int], cfg: TrainConfig, budget_bytes: float, dtype_bytes: int = 4,
               total_voxels: int | None = None, spacing_zyx: Sequence[float] | None = None) -> dict[str, Any]:
    """The planned ``patch_zyx`` and ``batch_size`` (given ones are kept) and the numbers behind them."""
    dims = cfg.spatial_dims
    median = [int(m) for m in median_zyx]
    seen_median = median[3 - dims:]
    steps: list[str] = []
    if cfg.patch_zyx is not None:
        patch = list(cfg.patch_zyx)
    else:
        mult = _multiples(cfg, [1] * (3 - dims) + seen_median if dims == 2 else median)
        seen = [_round_to(min(m, MAX_SIDE), k) for m, k in zip(seen_median, mult)]
        patch = ([1] + seen) if dims == 2 else seen
        batch_for_fit = cfg.batch_size or 2
        while activation_bytes(cfg, patch, batch_for_fit, dtype_bytes) > budget_bytes:
            seen = patch[3 - dims:]
            ratios = [p / max(1, m) for p, m in zip(seen, seen_median)]
            order = sorted(range(dims), key=lambda i: (-ratios[i], -seen[i]))
            shrunk = False
            for i in order:
                step = mult[i]
                if seen[i] - step >= step:
                    seen[i] -= step
                    shrunk = True
                    break
            if not shrunk:
                steps.append("the smallest patch the network allows still exceeds the budget")
                break
            patch = ([1] + seen) if dims == 2 else seen
    patch_t = tuple(int(p) for p in patch)
    if isinstance(cfg.model, DynUNetConfig) and cfg.model.strides is None:
        from training.config import plan_dynunet

        _, _, padded = plan_dynunet(patch_t[3 - dims:], (spacing_zyx or (1.0, 1.0, 1.0))[3 - dims:], max_levels=cfg.model.max_levels)
        patch_t = ((1,) + tuple(padded)) if dims == 2 else tuple(padded)  # type: ignore[assignment]
    one = activation_bytes(cfg, patch_t, 1, dtype_bytes)
    if cfg.batch_size is not None:
        batch = int(cfg.batch_size)
    else:
        batch = max(2, int(budget_bytes // max(1, one)))
        if total_voxels:
            cap = max(2, int(DATASET_FRACTION * total_voxels // max(1, int(np.prod(patch_t)))))
            if cap < batch:
                steps.append(f"batch capped at {cap} ({DATASET_FRACTION:.0%} of the training voxels)")
            batch = min(batch, cap)
    return {"patch_zyx": patch_t, "batch_size": batch, "estimated_activation_mb": round(one * batch / 2**20, 1),
            "budget_mb": round(budget_bytes / 2**20, 1), "notes": steps}


def memory_budget(device: torch.device, cfg: TrainConfig) -> tuple[float, int, str]:
    """``(budget bytes, bytes per activation value, where the budget came from)`` for ``device``."""
    if cfg.memory_budget_mb is not None:
        source = "memory_budget_mb"
        budget = cfg.memory_budget_mb * 2**20
    elif device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        budget, source = GPU_FRACTION * total, f"{GPU_FRACTION:.0%} of {torch.cuda.get_device_name(device)} ({total / 2**30:.1f} GiB)"
    else:
        budget, source = CPU_BUDGET_MB * 2**20, f"CPU default {CPU_BUDGET_MB:.0f} MB"
    dtype_bytes = 2 if device.type == "cuda" and cfg.amp else 4
    return budget, dtype_bytes, source


def plan_training(store_root: str | Path, cfg: TrainConfig, case_ids: Sequence[str], device: torch.device) -> tuple[TrainConfig, dict[str, Any]]:
    """``cfg`` with ``patch_zyx``, ``batch_size`` and a DynUNet's kernels/strides filled in, and the plan.

    A config that sets all of them comes back unchanged (plan ``{"planned": []}``).
    """
    needs_dyn = isinstance(cfg.model, DynUNetConfig) and cfg.model.strides is None
    planned = [name for name, missing in (("patch_zyx", cfg.patch_zyx is None), ("batch_size", cfg.batch_size is None),
                                          ("model.kernels/strides", needs_dyn)) if missing]
    if not planned:
        return cfg, {"planned": []}
    data = data_fingerprint(store_root, case_ids)
    budget, dtype_bytes, source = memory_budget(device, cfg)
    choice = plan_patch(data["median_shape_zyx"], cfg, budget, dtype_bytes, data["total_voxels"], data["median_spacing_zyx"])
    updates: dict[str, Any] = {"patch_zyx": choice["patch_zyx"], "batch_size": choice["batch_size"]}
    resolved = cfg.with_overrides(**updates)
    if needs_dyn:
        model = resolved.model.resolved(choice["patch_zyx"], cfg.spatial_dims, data["median_spacing_zyx"][3 - cfg.spatial_dims:])  # type: ignore[union-attr]
        resolved = resolved.with_overrides(model=model.model_dump(mode="json"))
    plan = {"planned": planned, **data, **choice, "budget_source": source, "bytes_per_value": dtype_bytes, "device": str(device)}
    log.info("training plan: patch %s, batch %s (%s)", choice["patch_zyx"], choice["batch_size"], source)
    return resolved, plan
