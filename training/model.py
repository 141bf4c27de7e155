"""The segmentation network: a small 3-D U-Net from MONAI, built from a recorded ``arch`` dict.

The architecture is data, not code: :func:`default_arch` returns the dict that
:func:`build_model` turns into a network, and the same dict is written into every
checkpoint's ``model.json`` so a model can be rebuilt exactly from its directory.

Example:
    >>> arch = default_arch(in_channels=3)
    >>> model = build_model(arch)
    >>> sum(p.numel() for p in model.parameters()) > 0
    True
"""

from __future__ import annotations

from typing import Any

import torch

ARCH_NAME = "monai.UNet"


def default_arch(in_channels: int, out_channels: int = 2) -> dict[str, Any]:
    """The default small 3-D U-Net (4 levels, 16–128 features, one residual unit, instance norm)."""
    return {
        "name": ARCH_NAME,
        "spatial_dims": 3,
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
        "channels": [16, 32, 64, 128],
        "strides": [2, 2, 2],
        "num_res_units": 1,
        "norm": "instance",
    }


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
        out_channels=int(arch.pop("out_channels", 2)),
        channels=tuple(int(c) for c in arch.pop("channels")),
        strides=tuple(int(s) for s in arch.pop("strides")),
        **arch,
    )
