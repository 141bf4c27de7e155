"""training.model: every network builds from its config, takes one optimiser step, and keeps the
output shape, in 3-D (patches) and 2-D (axial slices one voxel thick); old arch dicts still build."""

from __future__ import annotations

import pytest
import torch

from training.config import TrainConfig
from training.losses import build_loss
from training.model import AxialSlices, PadChannels, build_model, build_network, default_arch, main_output, size_multiple

CHANNELS = ("FLAIR", "T1", "T2")
# small enough for a shared CPU; VNet has no width setting (16 features at the top, 45 M parameters in 3-D)
NETWORKS = {
    "unet": {"kind": "unet", "features": [4, 8, 16], "strides": [2, 2]},
    "dynunet": {"kind": "dynunet", "base_filters": 4, "max_filters": 16},
    "vnet": {"kind": "vnet"},
    "segresnet": {"kind": "segresnet", "init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]},
}
PATCHES = {3: (16, 16, 16), 2: (1, 32, 32)}


@pytest.mark.parametrize("dims", [3, 2])
@pytest.mark.parametrize("kind", list(NETWORKS))
def test_each_network_builds_steps_and_keeps_the_shape(kind, dims):
    if kind == "vnet" and dims == 3:
        pytest.skip("covered by the slow test below (45 M parameters)")
    _one_step(kind, dims)


@pytest.mark.slow
def test_vnet_3d_builds_steps_and_keeps_the_shape():
    _one_step("vnet", 3)


def _one_step(kind: str, dims: int) -> None:
    torch.manual_seed(0)
    patch = PATCHES[dims]
    cfg = TrainConfig(model=NETWORKS[kind], spatial_dims=dims, patch_zyx=patch, channels=CHANNELS)
    net = build_network(cfg)
    assert isinstance(net, AxialSlices) == (dims == 2)
    x = torch.randn(2, 3, *patch)
    y = torch.zeros(2, 1, *patch, dtype=torch.long)
    y[:, :, ..., 4:9, 4:9] = 1
    net.train()
    out = net(x)
    deep = kind == "dynunet"
    assert out.shape == ((2, out.shape[1], 2, *patch) if deep else (2, 2, *patch))
    if deep:
        assert out.shape[1] >= 2  # main output + at least one deep-supervision output
    loss = build_loss(cfg.loss)(out, y)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    net.eval()
    with torch.inference_mode():
        assert net(x).shape == (2, 2, *patch)  # eval: the main output only
    # the config rebuilds the same network: a checkpoint's state dict loads
    build_network(cfg).load_state_dict(net.state_dict())


def test_vnet_pads_three_modalities_to_four_channels():
    arch = TrainConfig(model={"kind": "vnet"}, spatial_dims=2, patch_zyx=(1, 16, 16), channels=CHANNELS).arch()
    assert arch["pad_channels_to"] == 4 and size_multiple(arch) == 16
    net = build_model(arch)
    assert isinstance(net.net, PadChannels) and net.net.channels == 4


def test_two_d_network_refuses_thick_patches():
    net = build_network(TrainConfig(model=NETWORKS["unet"], spatial_dims=2, patch_zyx=(1, 16, 16), channels=("FLAIR",)))
    with pytest.raises(ValueError, match=r"takes \(B, C, 1, Y, X\) slices, got \(1, 1, 2, 16, 16\)"):
        net(torch.zeros(1, 1, 2, 16, 16))


def test_old_arch_dicts_still_build_and_unknown_names_are_refused():
    old = default_arch(3)  # what checkpoints written before TrainConfig hold
    assert old["name"] == "monai.UNet" and "spatial_dims" in old
    assert sum(p.numel() for p in build_model(old).parameters()) > 0
    del old["name"]
    build_model(old)  # before names were recorded: the U-Net
    with pytest.raises(ValueError, match="unknown architecture 'monai.SwinUNETR'"):
        build_model({"name": "monai.SwinUNETR", "in_channels": 1})


def test_main_output_picks_the_first_of_a_deep_supervision_stack():
    stack = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 1, 1, 4)
    assert torch.equal(main_output(stack, target_ndim=5), stack[:, 0])
    assert main_output(stack[:, 0], target_ndim=5) is not None and main_output(stack[:, 0], 5).shape == (2, 2, 1, 1, 4)
