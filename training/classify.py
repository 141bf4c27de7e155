""""Is there a lesion on this slice?" as its own small network, beside the segmentation.

The brain-tumour write-up decides "tumour present?" per slice. Derived from a 2-D segmentation (the
slice's maximum lesion probability, :mod:`training.crossval`) the call ranks slices poorly on the
LGG set: a few confident false-positive pixels make a tumour-free slice look like a tumour slice
(slice ROC AUC 0.81 over 4 folds by patient). A classifier sees the whole slice and is trained on
the question itself: in the recipe's 4 folds it ranked held-out slices at AUC 0.92 against 0.81 (2026-11-30,
README "Brain tumours").

The network is MONAI's :class:`~monai.networks.nets.ResNet` (basic blocks, one per stage, widths
16-32-64-128 by default, 2-D) on the case's stored (z-scored) channels, each axial slice shrunk to
``size`` x ``size`` by area averaging; one logit per slice. Training draws batches half from slices
with lesion and half from slices without (the write-up's 50/50 balance), with the cheap
augmentations that keep the answer: mirroring, 90-degree rotations, and a per-channel intensity
scale and shift; AdamW with a one-cycle schedule, binary cross-entropy. Everything is seeded by
``SliceClassifierConfig.seed``, so a run is reproducible on the CPU whatever process runs it.

Example:
    >>> cfg = SliceClassifierConfig(iterations=2, size=32)
    >>> net = build_classifier(cfg, in_channels=3)
    >>> import torch
    >>> tuple(net(torch.zeros(4, 3, 32, 32)).shape)
    (4, 1)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from pipeline import store as _store

__all__ = ["SliceClassifierConfig", "build_classifier", "slice_arrays", "train_slice_classifier", "classify_slices",
           "save_classifier", "load_classifier", "CLASSIFIER_DIR"]

CLASSIFIER_DIR = "classifier"
"""The sub-folder of an exported model folder that holds its slice classifier (``classifier.pt``, ``classifier.json``)."""


class SliceClassifierConfig(BaseModel):
    """How the slice classifier is built and trained (recorded in ``classifier.json``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    size: int = Field(128, ge=16, le=1024, description="slices are shrunk (area averaging) to size x size pixels")
    widths: tuple[int, int, int, int] = Field((16, 32, 64, 128), description="channels of the four ResNet stages")
    iterations: int = Field(600, ge=1)
    batch_size: int = Field(16, ge=2, description="slices per step, half with lesion and half without")
    lr: float = Field(2e-3, gt=0, description="peak learning rate of the one-cycle schedule")
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = Field(0, ge=0)
    threads: int | None = Field(1, ge=1, description="torch threads while training (None: torch's default)")


def build_classifier(cfg: SliceClassifierConfig, in_channels: int) -> torch.nn.Module:
    """MONAI's 2-D ResNet with one basic block per stage and one output logit."""
    from monai.networks.nets import ResNet

    return ResNet("basic", [1, 1, 1, 1], list(cfg.widths), spatial_dims=2, n_input_channels=in_channels, num_classes=1)


def slice_arrays(store_root: str | Path, case_id: str, size: int, channels: Sequence[str] | None = None,
                 with_label: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """``(slices (Z, C, size, size) float32, has_lesion (Z,) float32 or None, channels)`` of a stored case.

    ``channels``: the image channels to take, by name, in this order (default: all, as stored); a
    missing or absent one is an error naming the case (from :func:`training.data.check_case`)."""
    from training.data import check_case

    group = _store.open_case(store_root, case_id)
    stored = list(group["image"].attrs.get("channels", []))
    wanted = list(channels) if channels is not None else stored
    index, reason = check_case(store_root, case_id, wanted, require_label=with_label)
    if index is None:
        raise ValueError(f"case {case_id}: {reason}")
    image = torch.from_numpy(np.asarray(group["image"][...], dtype=np.float32)[list(index)])  # (C, Z, Y, X)
    slices = torch.nn.functional.interpolate(image.permute(1, 0, 2, 3), size=(size, size), mode="area")
    label = None
    if with_label:
        ref = np.asarray(_store.reference_label(group)[...]) != 0
        label = torch.from_numpy(ref.reshape(ref.shape[0], -1).any(axis=1).astype(np.float32))
    return slices.contiguous(), label, wanted


def train_slice_classifier(store_root: str | Path, case_ids: Sequence[str], cfg: SliceClassifierConfig | None = None,
                           channels: Sequence[str] | None = None,
                           progress: Callable[[dict[str, Any]], None] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train a slice classifier on the labelled ``case_ids``; returns ``(network in eval mode, info)``.

    ``info`` holds the config, the channels, the training cases and slice counts, the final loss and
    the seconds; it is what :func:`save_classifier` writes beside the weights.
    """
    cfg = cfg or SliceClassifierConfig()
    if not case_ids:
        raise ValueError("the slice classifier needs at least one labelled case")
    t0 = time.perf_counter()
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        xs, ys = [], []
        for c in case_ids:
            x, y, channels = slice_arrays(store_root, c, cfg.size, channels)
            xs.append(x)
            ys.append(y)
        x_all, y_all = torch.cat(xs), torch.cat(ys)
        pos, neg = torch.nonzero(y_all == 1)[:, 0], torch.nonzero(y_all == 0)[:, 0]
        if len(pos) == 0 or len(neg) == 0:
            raise ValueError(f"the slice classifier needs slices with and without lesion; the {len(case_ids)} case(s) have "
                             f"{len(pos)} with and {len(neg)} without")
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        net = build_classifier(cfg, x_all.shape[1])
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.iterations)
        half = cfg.batch_size // 2
        net.train()
        loss = torch.zeros(())
        for it in range(1, cfg.iterations + 1):
            idx = torch.cat([pos[torch.randint(len(pos), (half,), generator=gen)],
                             neg[torch.randint(len(neg), (cfg.batch_size - half,), generator=gen)]])
            xb, yb = _augment(x_all[idx], gen), y_all[idx]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xb)[:, 0], yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress and it == cfg.iterations:
                progress({"event": "classifier", "iteration": it, "iterations": cfg.iterations, "loss": float(loss.detach())})
        net.eval()
    finally:
        torch.set_num_threads(previous)
    info = {"kind": "slice_classifier", "network": "monai.networks.nets.ResNet", "config": cfg.model_dump(mode="json"),
            "channels": list(channels or []), "train_cases": len(case_ids), "train_slices": int(len(y_all)),
            "train_lesion_slices": int(len(pos)), "final_loss": float(loss.detach()), "seconds": round(time.perf_counter() - t0, 1)}
    return net, info


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirroring, a 90-degree rotation and a per-slice, per-channel intensity scale and shift (none changes the answer)."""
    x = x.clone()
    if torch.rand(1, generator=gen) < 0.5:
        x = x.flip(3)
    if torch.rand(1, generator=gen) < 0.5:
        x = x.flip(2)
    x = torch.rot90(x, int(torch.randint(4, (1,), generator=gen)), (2, 3))
    n, c = x.shape[:2]
    return x * (1 + 0.1 * torch.randn(n, c, 1, 1, generator=gen)) + 0.1 * torch.randn(n, c, 1, 1, generator=gen)


@torch.no_grad()
def classify_slices(net: torch.nn.Module, info: dict[str, Any], store_root: str | Path, case_id: str) -> np.ndarray:
    """The probability that each axial slice of ``case_id`` holds lesion, ``(Z,)`` float64 in [0, 1]."""
    cfg = SliceClassifierConfig.model_validate(info["config"])
    x, _, _ = slice_arrays(store_root, case_id, cfg.size, info.get("channels") or None, with_label=False)
    net.eval()
    logits = torch.cat([net(chunk)[:, 0] for chunk in torch.split(x, 64)])
    return torch.sigmoid(logits).double().numpy()


def save_classifier(net: torch.nn.Module, info: dict[str, Any], folder: str | Path) -> Path:
    """Write ``classifier.pt`` (the weights) and ``classifier.json`` (``info``) into ``folder``; returns it."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "classifier.pt")
    (out / "classifier.json").write_text(json.dumps(info, indent=1))
    return out


def load_classifier(folder: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The classifier :func:`save_classifier` wrote into ``folder`` (in eval mode) and its info."""
    folder = Path(folder)
    if not (folder / "classifier.json").is_file():
        raise FileNotFoundError(f"{folder}: no slice classifier (classifier.json) here")
    info = json.loads((folder / "classifier.json").read_text())
    net = build_classifier(SliceClassifierConfig.model_validate(info["config"]), len(info["channels"]))
    net.load_state_dict(torch.load(folder / "classifier.pt", map_location=device, weights_only=True))
    return net.to(device).eval(), info
