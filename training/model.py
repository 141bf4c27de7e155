"""The segmentation networks, built from data: MONAI's UNet, DynUNet, VNet and SegResNet, in 3-D or 2-D.

The architecture is data, not code: the ``model`` of a :class:`~training.config.TrainConfig`
(:class:`~training.config.UNetConfig`, :class:`~training.config.DynUNetConfig`,
:class:`~training.config.VNetConfig`, :class:`~training.config.SegResNetConfig`) describes it,
its ``arch()`` turns that into MONAI's keyword dict (``name`` says which network), and
:func:`build_model` turns the dict into a module. :func:`build_network` does both for a whole
config. Checkpoints written before TrainConfig recorded the ``arch`` dict itself; :func:`build_model`
still builds those.

Every network takes and returns 5-D tensors ``(B, C, Z, Y, X)``, whatever its ``spatial_dims``:
a 2-D network is wrapped in :class:`AxialSlices`, which takes patches one slice thick
``(B, C, 1, Y, X)``, so the data loader, the losses and sliding-window inference are the same
for both. VNet's input block needs a channel count dividing 16: :class:`PadChannels` adds zero
channels (3 modalities -> 4). In training mode a DynUNet with deep supervision returns
``(B, 1 + k, 2, Z, Y, X)`` (the main output and k decoder outputs, upsampled to full size);
:class:`training.losses.DeepSupervision` weighs them. In eval mode every network returns the
main output only.

Example:
    >>> from training.config import TrainConfig
    >>> model = build_network(TrainConfig(channels=("FLAIR", "T1", "T2")))
    >>> sum(p.numel() for p in model.parameters()) > 0
    True
    >>> default_arch(in_channels=3) == TrainConfig(channels=("FLAIR", "T1", "T2")).arch()
    True
    >>> slices = build_network(TrainConfig(channels=("FLAIR",), spatial_dims=2, patch_zyx=(1, 32, 32))).eval()
    >>> slices(torch.zeros(2, 1, 1, 32, 32)).shape
    torch.Size([2, 2, 1, 32, 32])
"""

from __future__ import annotations

from typing import Any

import torch

from training.config import NUM_CLASSES, TrainConfig, UNetConfig

ARCH_NAME = "monai.UNet"
ARCH_NAMES = ("monai.UNet", "monai.DynUNet", "monai.VNet", "monai.SegResNet")


def default_arch(in_channels: int, out_channels: int = NUM_CLASSES) -> dict[str, Any]:
    """The default small 3-D U-Net (4 levels, 16–128 features, one residual unit, instance norm)."""
    return {**UNetConfig().arch(in_channels), "out_channels": int(out_channels)}


def size_multiple(arch: dict[str, Any]) -> int:
    """Patch sides must be multiples of this (the product of the strides; per axis the largest)."""
    if arch.get("name") == "monai.VNet":
        return 16
    if arch.get("name") == "monai.SegResNet":
        return 2 ** (len(arch.get("blocks_down", (1, 2, 2, 4))) - 1)
    m = 1
    for s in arch.get("strides", []):
        m *= max(int(x) for x in s) if isinstance(s, (list, tuple)) else int(s)
    return m


class AxialSlices(torch.nn.Module):
    """A 2-D network applied to patches one slice thick: ``(B, C, 1, Y, X)`` in, ``(B, K, 1, Y, X)`` out
    (deep-supervision outputs ``(B, n, K, Y, X)`` become ``(B, n, K, 1, Y, X)``)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[2] != 1:
            raise ValueError(f"a 2-D network takes (B, C, 1, Y, X) slices, got {tuple(x.shape)}")
        out = self.net(x[:, :, 0])
        return out.unsqueeze(-3)


class PadChannels(torch.nn.Module):
    """Zero channels appended to the input so that the wrapped network gets ``channels`` of them."""

    def __init__(self, net: torch.nn.Module, channels: int) -> None:
        super().__init__()
        self.net = net
        self.channels = int(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        missing = self.channels - x.shape[1]
        if missing > 0:
            x = torch.cat([x, x.new_zeros((x.shape[0], missing, *x.shape[2:]))], dim=1)
        return self.net(x)


def _pairs(values: Any) -> Any:
    """JSON lists back to the tuples MONAI's constructors compare against."""
    if isinstance(values, list):
        return tuple(_pairs(v) for v in values)
    return values


def build_model(arch: dict[str, Any]) -> torch.nn.Module:
    """Instantiate the network described by ``arch`` (see :func:`default_arch` and the configs' ``arch()``)."""
    from monai.networks import nets

    arch = dict(arch)
    name = arch.pop("name", ARCH_NAME)
    spatial_dims = int(arch.pop("spatial_dims", 3))
    in_channels = int(arch.pop("in_channels"))
    out_channels = int(arch.pop("out_channels", NUM_CLASSES))
    net: torch.nn.Module
    if name == "monai.UNet":
        net = nets.UNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(int(c) for c in arch.pop("channels")),
            strides=tuple(int(s) for s in arch.pop("strides")),
            **arch,
        )
    elif name == "monai.DynUNet":
        net = nets.DynUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=_pairs(arch.pop("kernel_size")),
            strides=_pairs(arch.pop("strides")),
            upsample_kernel_size=_pairs(arch.pop("upsample_kernel_size")),
            norm_name=_pairs(arch.pop("norm_name", ("INSTANCE", {"affine": True}))),
            act_name=_pairs(arch.pop("act_name", ("leakyrelu", {"inplace": True, "negative_slope": 0.01}))),
            **arch,
        )
    elif name == "monai.VNet":
        padded = int(arch.pop("pad_channels_to", in_channels))
        up = arch.pop("dropout_prob_up", (0.5, 0.5))
        net = nets.VNet(spatial_dims=spatial_dims, in_channels=padded, out_channels=out_channels, dropout_prob_up=tuple(up), **arch)
        if padded != in_channels:
            net = PadChannels(net, padded)
    elif name == "monai.SegResNet":
        net = nets.SegResNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            blocks_down=tuple(arch.pop("blocks_down")),
            blocks_up=tuple(arch.pop("blocks_up")),
            **arch,
        )
    else:
        raise ValueError(f"unknown architecture {name!r}; this lesionflow builds {', '.join(ARCH_NAMES)}")
    return AxialSlices(net) if spatial_dims == 2 else net


def build_network(cfg: TrainConfig) -> torch.nn.Module:
    """The network of a config with resolved ``channels`` (one input channel per modality) and patch."""
    return build_model(cfg.arch())


def main_output(output: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """The main prediction of a network output: deep-supervision stacks ``(B, n, K, ...)`` give ``[:, 0]``."""
    return output[:, 0] if output.ndim == target_ndim + 1 else output
