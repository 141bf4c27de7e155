"""The segmentation network: a small 3-D U-Net from MONAI, built from data.

The architecture is data, not code: :class:`training.config.UNetConfig` (the ``model`` of a
:class:`~training.config.TrainConfig`) describes it, :meth:`~training.config.UNetConfig.arch`
turns that into MONAI's keyword dict, and :func:`build_model` turns the dict into a network.
:func:`build_network` does both for a whole config. Checkpoints written before TrainConfig
recorded the ``arch`` dict itself; :func:`build_model` still builds those.

Example:
    >>> from training.config import TrainConfig
    >>> model = build_network(TrainConfig(channels=("FLAIR", "T1", "T2")))
    >>> sum(p.numel() for p in model.parameters()) > 0
    True
    >>> default_arch(in_channels=3) == TrainConfig(channels=("FLAIR", "T1", "T2")).arch()
    True
"""

from __future__ import annotations

from typing import Any

import torch

from training.config import NUM_CLASSES, TrainConfig, UNetConfig

ARCH_NAME = "monai.UNet"


def default_arch(in_channels: int, out_channels: int = NUM_CLASSES) -> dict[str, Any]:
    """The default small 3-D U-Net (4 levels, 16–128 features, one residual unit, instance norm)."""
    return {**UNetConfig().arch(in_channels), "out_channels": int(out_channels)}


def size_multiple(arch: dict[str, Any]) -> int:
    """Patch sides must be multiples of this (the product of the strides)."""
    m = 1
    for s in arch.get("strides", []):
        m *= int(s)
    return m


def build_model(arch: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the network described by ``arch`` (see :func:`default_arch`)."""
    from monai.networks.nets import UNet

    arch = dict(arch)
    name = arch.pop("name", ARCH_NAME)
    if name != ARCH_NAME:
        raise ValueError(f"unknown architecture {name!r}; this lesionflow builds {ARCH_NAME!r}")
    return UNet(
        spatial_dims=int(arch.pop("spatial_dims", 3)),
        in_channels=int(arch.pop("in_channels")),
        out_channels=int(arch.pop("out_channels", NUM_CLASSES)),
        channels=tuple(int(c) for c in arch.pop("channels")),
        strides=tuple(int(s) for s in arch.pop("strides")),
        **arch,
    )


def build_network(cfg: TrainConfig) -> torch.nn.Module:
    """The network of a config with resolved ``channels`` (one input channel per modality)."""
    return build_model(cfg.arch())
