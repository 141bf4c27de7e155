"""Training configuration as data: :class:`TrainConfig`, validated at the door, hashed, stored as is.

One typed object holds every knob of :func:`training.loop.train`: the network (``model``), the
loss (``loss``), the optimiser and its schedule (``optim``), 3-D patches or 2-D axial slices
(``spatial_dims``), patch sampling, the run length and seed, validation, early stopping and
which weights are kept, and where it runs (device, precision, threads, loader workers). It is
``extra="forbid"`` and frozen: a misspelt key or an impossible value fails when the config is
built, with the field and the reason, not halfway through a training run.

``model`` and ``loss`` are discriminated by ``kind``:

* networks: ``unet`` (MONAI UNet, the default), ``dynunet`` (DynUNet planned the nnU-Net way,
  with deep supervision), ``vnet``, ``segresnet``; each in 3-D or 2-D;
* losses: ``dice_ce`` (default), ``dice``, ``tversky``, ``focal_tversky`` (Abraham & Khan 2019),
  ``focal``, ``dice_focal``.

A ``model`` or ``loss`` without ``kind`` is the default kind, so configs written before the
choice existed still load.

``model.json`` holds the config as it was used (``cfg.model_dump(mode="json")``) and
:func:`training.checkpoint.load_model` rebuilds the network from it.
:meth:`TrainConfig.config_hash` is the SHA-256 of the canonical JSON of the fields that shape
the weights (not of device, precision, threads, workers, logging, checkpointing or validation cadence).

``channels=None`` means "the store's channels", ``patch_zyx=None``/``batch_size=None`` "planned
from the data and the device's memory" (:mod:`training.plan`); :func:`training.loop.setup`
resolves them and records the resolved values, so a stored config always names its inputs,
patch and batch.

Example:
    >>> cfg = TrainConfig(iterations=2000, patch_zyx=(64, 64, 64), channels=("FLAIR", "T1"))
    >>> cfg.in_channels, cfg.model.size_multiple, cfg.optim.lr
    (2, 8, 0.002)
    >>> cfg.with_overrides(lr=1e-3, seed=7).optim.lr
    0.001
    >>> TrainConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    True
    >>> len(cfg.config_hash())
    64
    >>> slices = TrainConfig(model={"kind": "dynunet"}, loss={"kind": "focal_tversky"}, spatial_dims=2, patch_zyx=(1, 64, 96), channels=("FLAIR",))
    >>> slices.arch()["strides"], slices.loss.fn_weight, slices.loss.gamma
    ([[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]], 0.7, 0.75)
    >>> TrainConfig(patch_zyx=(30, 32, 32))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for TrainConfig
      Value error, patch_zyx (30, 32, 32): each side must be a multiple of 8 ...
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from training.augment import AugmentationConfig

# Network outputs: background and lesion. Inference reads the lesion probability (class 1).
NUM_CLASSES = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _product(values: Sequence[int]) -> int:
    m = 1
    for v in values:
        m *= int(v)
    return m


def _plane(patch_zyx: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """The axes a network of ``spatial_dims`` sees: all three, or (y, x) of an axial slice."""
    return tuple(int(p) for p in patch_zyx)[3 - spatial_dims:]


class UNetConfig(_Strict):
    """MONAI's ``UNet``: ``features[i]`` channels at level ``i``, downsampled by ``strides[i]`` (isotropic)."""

    kind: Literal["unet"] = "unet"
    features: tuple[int, ...] = Field((16, 32, 64, 128), description="feature channels per level (MONAI UNet's `channels`)")
    strides: tuple[int, ...] = Field((2, 2, 2), description="downsampling between levels; one fewer than features")
    num_res_units: int = Field(1, ge=0, le=8, description="residual units per block (0 = plain convolutions)")
    norm: Literal["instance", "batch"] = "instance"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("features", "strides")
    @classmethod
    def _positive(cls, v: tuple[int, ...], info: Any) -> tuple[int, ...]:
        if any(x < 1 for x in v):
            raise ValueError(f"{info.field_name} must be positive integers, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _levels(self) -> UNetConfig:
        if len(self.features) < 2:
            raise ValueError(f"features needs at least 2 levels, got {list(self.features)}")
        if len(self.strides) != len(self.features) - 1:
            raise ValueError(f"strides needs one entry fewer than features ({len(self.features) - 1}), got {list(self.strides)}")
        return self

    @property
    def size_multiple(self) -> int:
        """Patch sides must be multiples of this: the product of the strides."""
        return _product(self.strides)

    def axis_multiples(self, patch_zyx: Sequence[int] | None = None, spatial_dims: int = 3) -> tuple[int, ...]:
        """What each side the network sees must be a multiple of."""
        return (self.size_multiple,) * spatial_dims

    def levels(self, patch_zyx: Sequence[int], spatial_dims: int = 3) -> list[tuple[int, int]]:
        """``(features, downsampling factor in voxels)`` per level (for memory estimates)."""
        out, down = [], 1
        for i, f in enumerate(self.features):
            out.append((int(f), down ** spatial_dims))
            down *= self.strides[i] if i < len(self.strides) else 1
        return out

    def arch(self, in_channels: int, spatial_dims: int = 3, patch_zyx: Sequence[int] | None = None) -> dict[str, Any]:
        """The ``arch`` dict :func:`training.model.build_model` turns into the network."""
        arch: dict[str, Any] = {
            "name": "monai.UNet",
            "spatial_dims": int(spatial_dims),
            "in_channels": int(in_channels),
            "out_channels": NUM_CLASSES,
            "channels": list(self.features),
            "strides": list(self.strides),
            "num_res_units": self.num_res_units,
            "norm": self.norm,
        }
        if self.dropout:
            arch["dropout"] = self.dropout
        return arch


def plan_dynunet(patch: Sequence[int], spacing: Sequence[float] | None = None, min_feature_map: int = 4, max_levels: int = 6
                 ) -> tuple[list[list[int]], list[list[int]], tuple[int, ...]]:
    """nnU-Net's ``get_pool_and_conv_props``: ``(kernels, strides, patch padded to the strides)``.

    Each round pools (stride 2) every axis that is still at least ``2 * min_feature_map`` voxels
    and whose spacing is within a factor 2 of the finest; an axis much coarser than the others
    (thick slices) keeps kernel 1 and stride 1 until pooling the others has caught up. The first
    level has stride 1 and the bottleneck a 3-kernel, as in nnU-Net. ``patch`` and ``spacing``
    are the axes the network sees (z, y, x or y, x), spacing in mm (default isotropic).

    Example:
        >>> kernels, strides, patch = plan_dynunet((48, 48, 48))
        >>> strides
        [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
        >>> plan_dynunet((20, 160, 160), spacing=(3.0, 1.0, 1.0))[1][:3]
        [[1, 1, 1], [1, 2, 2], [2, 2, 2]]
    """
    dim = len(patch)
    spacing = [float(s) for s in (spacing or [1.0] * dim)]
    size = [float(p) for p in patch]
    pools = [0] * dim
    kernel = [1] * dim
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    while len(strides) < max_levels:
        valid = [i for i in range(dim) if size[i] >= 2 * min_feature_map]
        if not valid:
            break
        finest = min(spacing[i] for i in valid)
        valid = [i for i in valid if spacing[i] / finest < 2]
        if len(valid) == 1 and size[valid[0]] < 3 * min_feature_map:
            break
        if not valid:
            break
        for d in range(dim):
            if kernel[d] != 3 and spacing[d] / min(spacing) < 2:
                kernel[d] = 3
        stride = [1] * dim
        for v in valid:
            stride[v] = 2
            pools[v] += 1
            spacing[v] *= 2
            size[v] = math.ceil(size[v] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)
    multiple = [2 ** n for n in pools]
    padded = tuple(int(-(-int(p) // m) * m) for p, m in zip(patch, multiple))
    return kernels, strides, padded


class DynUNetConfig(_Strict):
    """MONAI's ``DynUNet`` set up the nnU-Net way: kernels and strides planned from the patch and the
    spacing (:func:`plan_dynunet`), ``base_filters * 2**level`` features capped at ``max_filters``,
    instance norm, leaky ReLU, and deep supervision (loss on the upper decoder outputs, weights
    halving per level, normalised; see :class:`training.losses.DeepSupervision`).

    ``kernels``/``strides`` None = planned when training starts (the planned values are recorded).
    """

    kind: Literal["dynunet"] = "dynunet"
    kernels: tuple[tuple[int, ...], ...] | None = Field(None, description="convolution kernel per level (per axis); None = planned")
    strides: tuple[tuple[int, ...], ...] | None = Field(None, description="stride per level (per axis), first 1; None = planned")
    base_filters: int = Field(32, ge=1, le=1024, description="features at the first level (nnU-Net: 32)")
    max_filters: int = Field(320, ge=1, le=4096, description="cap on features per level (nnU-Net: 320 in 3-D, 512 in 2-D)")
    deep_supervision: bool = True
    deep_supr_num: int | None = Field(None, ge=1, description="extra supervised decoder outputs; None = all but the two lowest resolutions")
    res_block: bool = False
    max_levels: int = Field(6, ge=2, le=8, description="most resolution levels the planner uses (nnU-Net: 6 in 3-D)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _shapes(self) -> DynUNetConfig:
        if (self.kernels is None) != (self.strides is None):
            raise ValueError("give both kernels and strides, or neither (planned)")
        if self.kernels is not None and self.strides is not None:
            if len(self.kernels) != len(self.strides) or len(self.kernels) < 2:
                raise ValueError(f"kernels and strides need the same number of levels (at least 2), got {len(self.kernels)} and {len(self.strides)}")
            if len({len(k) for k in (*self.kernels, *self.strides)}) != 1:
                raise ValueError("every kernel and stride needs one entry per spatial axis")
            if any(x < 1 for k in (*self.kernels, *self.strides) for x in k):
                raise ValueError("kernels and strides must be positive integers")
        return self

    def resolved(self, patch_zyx: Sequence[int], spatial_dims: int = 3, spacing: Sequence[float] | None = None) -> DynUNetConfig:
        """This config with kernels and strides planned for the patch (unchanged when given)."""
        if self.kernels is not None:
            return self
        kernels, strides, _ = plan_dynunet(_plane(patch_zyx, spatial_dims), spacing, max_levels=self.max_levels)
        return self.model_copy(update={"kernels": tuple(map(tuple, kernels)), "strides": tuple(map(tuple, strides))})

    def _filled(self, patch_zyx: Sequence[int] | None, spatial_dims: int) -> DynUNetConfig:
        if self.kernels is not None:
            return self
        if patch_zyx is None:
            raise ValueError("a DynUNet without kernels/strides needs the patch size to plan them")
        return self.resolved(patch_zyx, spatial_dims)

    def axis_multiples(self, patch_zyx: Sequence[int] | None = None, spatial_dims: int = 3) -> tuple[int, ...]:
        if self.strides is None:
            if patch_zyx is None:
                return (1,) * spatial_dims
            return tuple(_product(col) for col in zip(*self._filled(patch_zyx, spatial_dims).strides))  # type: ignore[arg-type]
        if len(self.strides[0]) != spatial_dims:
            raise ValueError(f"strides have {len(self.strides[0])} axes but spatial_dims is {spatial_dims}")
        return tuple(_product(col) for col in zip(*self.strides))

    def filters(self, n_levels: int) -> list[int]:
        return [min(self.base_filters * 2 ** i, self.max_filters) for i in range(n_levels)]

    def levels(self, patch_zyx: Sequence[int], spatial_dims: int = 3) -> list[tuple[int, int]]:
        cfg = self._filled(patch_zyx, spatial_dims)
        out, down = [], [1] * spatial_dims
        for f, stride in zip(cfg.filters(len(cfg.strides)), cfg.strides):  # type: ignore[arg-type]
            down = [d * s for d, s in zip(down, stride)]
            out.append((f, _product(down)))
        return out

    def arch(self, in_channels: int, spatial_dims: int = 3, patch_zyx: Sequence[int] | None = None) -> dict[str, Any]:
        cfg = self._filled(patch_zyx, spatial_dims)
        strides = [list(s) for s in cfg.strides]  # type: ignore[union-attr]
        n_up = len(strides) - 1
        supr = self.deep_supr_num if self.deep_supr_num is not None else max(1, n_up - 2)
        arch: dict[str, Any] = {
            "name": "monai.DynUNet",
            "spatial_dims": int(spatial_dims),
            "in_channels": int(in_channels),
            "out_channels": NUM_CLASSES,
            "kernel_size": [list(k) for k in cfg.kernels],  # type: ignore[union-attr]
            "strides": strides,
            "upsample_kernel_size": strides[1:],
            "filters": cfg.filters(len(strides)),
            "norm_name": ["INSTANCE", {"affine": True}],
            "act_name": ["leakyrelu", {"inplace": True, "negative_slope": 0.01}],
            "deep_supervision": bool(self.deep_supervision and n_up > 1),
            "deep_supr_num": int(min(supr, max(1, n_up - 1))),
            "res_block": self.res_block,
        }
        if self.dropout:
            arch["dropout"] = self.dropout
        return arch


class VNetConfig(_Strict):
    """MONAI's ``VNet`` (Milletari et al. 2016): four 2x downsamplings, so patch sides are multiples of 16.

    Its input block repeats the input 16 times over channels, which needs a channel count dividing
    16: other counts are zero-padded to the next divisor (3 modalities -> 4 input channels).
    """

    kind: Literal["vnet"] = "vnet"
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout of the deepest down and up blocks (MONAI's default 0.5)")

    @property
    def size_multiple(self) -> int:
        return 16

    def axis_multiples(self, patch_zyx: Sequence[int] | None = None, spatial_dims: int = 3) -> tuple[int, ...]:
        return (16,) * spatial_dims

    def levels(self, patch_zyx: Sequence[int], spatial_dims: int = 3) -> list[tuple[int, int]]:
        return [(16 * 2 ** i, 2 ** (i * spatial_dims)) for i in range(5)]

    def arch(self, in_channels: int, spatial_dims: int = 3, patch_zyx: Sequence[int] | None = None) -> dict[str, Any]:
        padded = next(d for d in (1, 2, 4, 8, 16) if d >= in_channels) if in_channels <= 16 else in_channels
        if 16 % padded:
            raise ValueError(f"VNet takes at most 16 input channels, got {in_channels}")
        return {
            "name": "monai.VNet",
            "spatial_dims": int(spatial_dims),
            "in_channels": int(in_channels),
            "pad_channels_to": int(padded),
            "out_channels": NUM_CLASSES,
            "dropout_prob_down": self.dropout or None,
            "dropout_prob_up": [self.dropout or None, self.dropout],
            "dropout_dim": int(spatial_dims),
        }


class SegResNetConfig(_Strict):
    """MONAI's ``SegResNet`` (Myronenko 2018, without the VAE branch): residual encoder, light decoder."""

    kind: Literal["segresnet"] = "segresnet"
    init_filters: int = Field(16, ge=1, le=512, description="features at the first level (a multiple of the 8 norm groups)")
    blocks_down: tuple[int, ...] = Field((1, 2, 2, 4), description="residual blocks per encoder level")
    blocks_up: tuple[int, ...] = Field((1, 1, 1), description="residual blocks per decoder level; one fewer than blocks_down")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _levels(self) -> SegResNetConfig:
        if len(self.blocks_down) < 2 or len(self.blocks_up) != len(self.blocks_down) - 1:
            raise ValueError(f"blocks_up needs one entry fewer than blocks_down ({len(self.blocks_down) - 1}), got {list(self.blocks_up)}")
        if self.init_filters % 8:
            raise ValueError(f"init_filters must be a multiple of 8 (group norm with 8 groups), got {self.init_filters}")
        return self

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.blocks_down) - 1)

    def axis_multiples(self, patch_zyx: Sequence[int] | None = None, spatial_dims: int = 3) -> tuple[int, ...]:
        return (self.size_multiple,) * spatial_dims

    def levels(self, patch_zyx: Sequence[int], spatial_dims: int = 3) -> list[tuple[int, int]]:
        return [(self.init_filters * 2 ** i, 2 ** (i * spatial_dims)) for i in range(len(self.blocks_down))]

    def arch(self, in_channels: int, spatial_dims: int = 3, patch_zyx: Sequence[int] | None = None) -> dict[str, Any]:
        return {
            "name": "monai.SegResNet",
            "spatial_dims": int(spatial_dims),
            "in_channels": int(in_channels),
            "out_channels": NUM_CLASSES,
            "init_filters": self.init_filters,
            "blocks_down": list(self.blocks_down),
            "blocks_up": list(self.blocks_up),
            "dropout_prob": self.dropout or None,
        }


def _kind_of(default: str) -> Any:
    """A discriminator that reads ``kind`` (dict or model) and takes ``default`` when it is absent,
    so configs written before the unions (no ``kind``) still validate."""

    def kind(value: Any) -> str:
        if isinstance(value, Mapping):
            return str(value.get("kind", default))
        return str(getattr(value, "kind", default))

    return Discriminator(kind)


ModelConfig = Annotated[
    Annotated[UNetConfig, Tag("unet")] | Annotated[DynUNetConfig, Tag("dynunet")] | Annotated[VNetConfig, Tag("vnet")] | Annotated[SegResNetConfig, Tag("segresnet")],
    _kind_of("unet"),
]
"""The network: ``kind`` one of ``unet`` (default), ``dynunet``, ``vnet``, ``segresnet``."""


class DiceCELossConfig(_Strict):
    """MONAI ``DiceCELoss`` on softmax outputs: ``lambda_dice * Dice + lambda_ce * cross-entropy``.

    ``batch=True`` computes Dice over the whole batch (well defined on lesion-free patches).
    """

    kind: Literal["dice_ce"] = "dice_ce"
    lambda_dice: float = Field(1.0, ge=0.0)
    lambda_ce: float = Field(1.0, ge=0.0)
    batch: bool = True

    @model_validator(mode="after")
    def _some_weight(self) -> DiceCELossConfig:
        if self.lambda_dice == 0 and self.lambda_ce == 0:
            raise ValueError("lambda_dice and lambda_ce are both 0: the loss would be constant")
        return self


class DiceLossConfig(_Strict):
    """Soft Dice (Milletari et al. 2016, the V-Net loss) on softmax outputs: ``1 - 2 sum(p g) / (sum p + sum g)``.

    ``include_background=False`` (default) scores the lesion class only; ``batch=True`` sums over the batch.
    """

    kind: Literal["dice"] = "dice"
    include_background: bool = False
    batch: bool = True


class TverskyLossConfig(_Strict):
    """Tversky loss ``1 - TI`` with ``TI = TP / (TP + fn_weight * FN + fp_weight * FP)`` (soft counts, lesion class).

    Weighting false negatives above false positives (0.7 / 0.3) trades precision for recall on
    small lesions. MONAI's ``TverskyLoss`` calls the false-positive weight ``alpha`` and the
    false-negative weight ``beta``; the names here say which is which.
    """

    kind: Literal["tversky"] = "tversky"
    fn_weight: float = Field(0.7, ge=0.0, le=1.0, description="weight of false negatives (Abraham & Khan's alpha)")
    fp_weight: float = Field(0.3, ge=0.0, le=1.0, description="weight of false positives (Abraham & Khan's beta)")
    include_background: bool = False
    batch: bool = True
    smooth: float = Field(1e-5, ge=0.0, description="added to numerator and denominator")


class FocalTverskyLossConfig(TverskyLossConfig):
    """Focal Tversky loss (Abraham & Khan 2019): ``(1 - TI) ** gamma`` with TI as in :class:`TverskyLossConfig`.

    ``gamma`` is the exponent applied (0.75; the paper writes it as ``1/gamma`` with gamma 4/3),
    which raises the loss of the poorly segmented (low TI) cases relative to the easy ones.
    """

    kind: Literal["focal_tversky"] = "focal_tversky"  # type: ignore[assignment]
    gamma: float = Field(0.75, gt=0.0, le=4.0, description="exponent: loss = (1 - TI) ** gamma")


class FocalLossConfig(_Strict):
    """Focal loss (Lin et al. 2017) on softmax outputs: the mean over voxels of
    ``-alpha_t (1 - p_t) ** gamma log p_t`` (t the true class; ``alpha`` weights the lesion class,
    ``1 - alpha`` the background; None = unweighted). See :class:`training.losses.FocalLoss`."""

    kind: Literal["focal"] = "focal"
    gamma: float = Field(2.0, ge=0.0, le=10.0)
    alpha: float | None = Field(None, ge=0.0, le=1.0)


class DiceFocalLossConfig(_Strict):
    """``lambda_dice * Dice loss + lambda_focal * focal`` (Dice as in :class:`DiceLossConfig`, focal as in :class:`FocalLossConfig`)."""

    kind: Literal["dice_focal"] = "dice_focal"
    lambda_dice: float = Field(1.0, ge=0.0)
    lambda_focal: float = Field(1.0, ge=0.0)
    gamma: float = Field(2.0, ge=0.0, le=10.0)
    include_background: bool = False
    batch: bool = True

    @model_validator(mode="after")
    def _some_weight(self) -> DiceFocalLossConfig:
        if self.lambda_dice == 0 and self.lambda_focal == 0:
            raise ValueError("lambda_dice and lambda_focal are both 0: the loss would be constant")
        return self


LossConfig = Annotated[
    Annotated[DiceCELossConfig, Tag("dice_ce")] | Annotated[DiceLossConfig, Tag("dice")] | Annotated[TverskyLossConfig, Tag("tversky")] | Annotated[FocalTverskyLossConfig, Tag("focal_tversky")] | Annotated[FocalLossConfig, Tag("focal")] | Annotated[DiceFocalLossConfig, Tag("dice_focal")],
    _kind_of("dice_ce"),
]
"""The loss: ``kind`` one of ``dice_ce`` (default), ``dice``, ``tversky``, ``focal_tversky``, ``focal``, ``dice_focal``."""


class AdamConfig(_Strict):
    """Adam with a cosine learning-rate decay from ``lr`` to ``min_lr_factor * lr`` over the run."""

    kind: Literal["adam"] = "adam"
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-5, ge=0.0, lt=1.0)
    schedule: Literal["cosine"] = "cosine"
    min_lr_factor: float = Field(0.05, ge=0.0, le=1.0, description="final learning rate as a fraction of lr")


# Names train() took before TrainConfig, accepted as overrides: old name -> (field, sub-field).
ALIASES: dict[str, tuple[str, ...]] = {
    "lr": ("optim", "lr"),
    "weight_decay": ("optim", "weight_decay"),
    "num_threads": ("threads",),
}

# Fields that do not change the trained weights (for a given device and precision): left out of config_hash.
# val_every/early stopping/select do not change the training trajectory either, but they choose which
# weights are kept; they are hashed (select, early_stop_*) except val_every, whose effect is recorded
# as best_iteration in model.json.
UNHASHED = frozenset({"log_every", "val_every", "val_overlap", "num_workers", "threads", "device", "amp", "checkpoint_every",
                      "memory_budget_mb", "compile", "channels_last", "cache_cases"})


class TrainConfig(_Strict):
    """Every knob of a training run. Defaults are lesionflow's defaults; see the module docstring."""

    # --- what is trained (hashed) ----------------------------------------------------------
    model: ModelConfig = Field(default_factory=UNetConfig)
    loss: LossConfig = Field(default_factory=DiceCELossConfig)
    optim: AdamConfig = Field(default_factory=AdamConfig)
    spatial_dims: Literal[2, 3] = Field(3, description="3 = 3-D patches; 2 = axial slices (patch_zyx (1, y, x)) through a 2-D network")
    channels: tuple[str, ...] | None = Field(None, description="modalities fed to the network, in order; None = the store's channels")
    patch_zyx: tuple[int, int, int] | None = Field(None, description="patch size in voxels (z, y, x); z = 1 in 2-D; "
                                                                     "None = planned from the data and memory")
    batch_size: int | None = Field(None, ge=1, le=4096, description="patches per step; None = planned from the data and memory")
    iterations: int = Field(300, ge=1, description="optimiser steps")
    lesion_fraction: float = Field(0.5, ge=0.0, le=1.0, description="probability that a patch is centred on a lesion")
    background_slices: Literal["any", "lesion_free"] = Field("any", description="2-D only: where the other samples come from; 'lesion_free': "
                                                            "slices without lesion, so lesion_fraction is the share of lesion slices (0.5: 50/50)")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0, description="probability of a flip along each spatial axis")
    seed: int = Field(0, ge=0, description="seeds torch, numpy, the patch sampler and the validation split")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="hold out this fraction of the usable cases when no validation cases are given")
    select: Literal["best", "last"] = Field("best", description="weights exported when validation ran during training: "
                                                                 "the best validation Dice, or the last")
    early_stop_patience: int | None = Field(None, ge=1, description="stop after this many validations without improvement; None = never")
    early_stop_min_delta: float = Field(0.0, ge=0.0, le=1.0, description="a validation Dice must beat the best by more than this to count")
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig,
                                             description="the augmentation bank (default: used when the store has one) and the transforms on the fly")

    # --- how it runs (not hashed) ----------------------------------------------------------
    val_every: int | None = Field(None, ge=1, description="also validate every this many iterations; None = only after training")
    val_overlap: float = Field(0.25, ge=0.0, lt=1.0, description="sliding-window overlap of validation inference")
    log_every: int = Field(10, ge=1, description="iterations between progress events")
    checkpoint_every: int | None = Field(100, ge=1, description="iterations between resumable run checkpoints (also at each validation); "
                                                                  "None = never")
    num_workers: int = Field(0, ge=0, le=256, description="loader workers: DataLoader processes for raw volumes (0 = main process); "
                             "threads of the bank loader (0 = 2 on the CPU, 4-8 on CUDA: training.data.loader_threads)")
    cache_cases: bool = Field(False, description="hold each training case's arrays in memory (per worker) instead of reading patches from Zarr")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = $LESIONFLOW_TORCH_THREADS or all cores")
    device: str | None = Field(None, pattern=r"^(cpu|cuda(:\d+)?|mps)$", description="None = CUDA when available, else CPU")
    amp: bool = Field(True, description="autocast on CUDA (bf16 where supported, else fp16 with gradient scaling)")
    channels_last: bool = Field(False, description="CUDA only: channels-last memory format (see benchmarks/bench_train.py)")
    compile: bool = Field(False, description="CUDA only: torch.compile the network (see benchmarks/bench_train.py)")
    memory_budget_mb: float | None = Field(None, gt=0, description="activation memory the planner may use; None = 70 % of the GPU's, 1024 MB on CPU")

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("channels is empty; give at least one modality, or None for the store's channels")
        if any(not c.strip() for c in v):
            raise ValueError(f"channels has an empty name: {list(v)}")
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"channels repeats {dup}: {list(v)}")
        return v

    @model_validator(mode="after")
    def _patch_fits_network(self) -> TrainConfig:
        if self.patch_zyx is None:
            return self
        if any(p < 1 for p in self.patch_zyx):
            raise ValueError(f"patch_zyx {self.patch_zyx}: sides must be positive")
        if self.spatial_dims == 2 and self.patch_zyx[0] != 1:
            raise ValueError(f"patch_zyx {self.patch_zyx}: 2-D training takes axial slices, so z must be 1, "
                             f"e.g. (1, {self.patch_zyx[1]}, {self.patch_zyx[2]})")
        seen = _plane(self.patch_zyx, self.spatial_dims)
        multiples = self.model.axis_multiples(self.patch_zyx, self.spatial_dims)
        if any(p < m or p % m for p, m in zip(seen, multiples)):
            fixed = tuple(_round_up(p, m) for p, m in zip(seen, multiples))
            if self.spatial_dims == 2:
                fixed = (1, *fixed)
            if isinstance(self.model, UNetConfig):
                what = f"the product of the U-Net strides {list(self.model.strides)}"
            else:
                what = f"the {self.model.kind} network's downsampling"
            m = multiples[0] if len(set(multiples)) == 1 else list(multiples)
            raise ValueError(f"patch_zyx {self.patch_zyx}: each side must be a multiple of {m} ({what}), e.g. {fixed}")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def in_channels(self) -> int:
        """Input channels of the network (one per modality); needs resolved ``channels``."""
        if self.channels is None:
            raise ValueError("channels is None (the store's channels): resolve it first (training.loop.setup does)")
        return len(self.channels)

    def arch(self) -> dict[str, Any]:
        """The network's ``arch`` dict (see :meth:`UNetConfig.arch`); needs resolved ``channels``."""
        return self.model.arch(self.in_channels, self.spatial_dims, self.patch_zyx)

    def config_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the fields that shape the weights."""
        payload = self.model_dump(mode="json", exclude=set(UNHASHED))
        return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    # ------------------------------------------------------------------ building
    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A new, validated config with ``overrides`` applied.

        Keys are field names (``iterations=2000``), the sub-models merged key by key
        (``optim={"lr": 1e-3}`` keeps the weight decay), or the names :func:`train` took before
        (``lr``, ``weight_decay``, ``num_threads``). An unknown key raises ``ValueError``
        naming the known ones.
        """
        data = self.model_dump(mode="python")
        for key, value in overrides.items():
            name, *sub = ALIASES.get(key, (key,))
            if name not in type(self).model_fields:
                known = sorted([*type(self).model_fields, *ALIASES])
                raise ValueError(f"unknown training setting {key!r}; known: {', '.join(known)}")
            if sub:
                data[name] = {**data[name], sub[0]: value}
            elif (isinstance(value, Mapping) and isinstance(data.get(name), dict)
                  and value.get("kind", data[name].get("kind")) != data[name].get("kind")):
                data[name] = dict(value)  # another network/loss kind: its own fields, not a merge
            elif isinstance(value, Mapping) and isinstance(data.get(name), dict):
                data[name] = {**data[name], **value}
            else:
                data[name] = value
        return type(self).model_validate(data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """Load a JSON file holding a (partial) TrainConfig; absent keys take the defaults."""
        return cls.model_validate_json(Path(path).read_text())


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-value // multiple) * multiple)


def make_config(cfg: TrainConfig | Mapping[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """``cfg`` (a TrainConfig, a dict of its fields, or None for the defaults) with ``overrides`` applied."""
    if cfg is None:
        base = TrainConfig()
    elif isinstance(cfg, TrainConfig):
        base = cfg
    else:  # a dict; anything else (a JSON list, say) fails validation with pydantic's message
        base = TrainConfig.model_validate(dict(cfg) if isinstance(cfg, Mapping) else cfg)
    return base.with_overrides(**overrides) if overrides else base


def describe_errors(exc: ValidationError) -> str:
    """One line per problem, ``field.path: reason (got value)``, for people (the CLI, flow logs)."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "config"
        msg = str(err["msg"]).removeprefix("Value error, ")
        got = "" if err["type"] in ("value_error", "missing") or "input" not in err or isinstance(err["input"], dict) else f" (got {err['input']!r})"
        lines.append(f"{where}: {msg}{got}")
    return "; ".join(lines)
