"""Training configuration as data: :class:`TrainConfig`, validated at the door, hashed, stored as is.

One typed object holds every knob of :func:`training.loop.train`: the network (``model``), the
loss (``loss``), the optimiser and its schedule (``optim``), patch sampling, the run length and
seed, validation, and where it runs (device, precision, threads, loader workers). It is
``extra="forbid"`` and frozen: a misspelt key or an impossible value fails when the config is
built, with the field and the reason, not halfway through a training run.

``model.json`` holds the config as it was used (``cfg.model_dump(mode="json")``) and
:func:`training.checkpoint.load_model` rebuilds the network from it.
:meth:`TrainConfig.config_hash` is the SHA-256 of the canonical JSON of the fields that shape
the weights (not of device, precision, threads, workers, logging or validation cadence).

``channels=None`` means "the store's channels"; :func:`training.loop.setup` resolves it and
records the resolved tuple, so a stored config always names its inputs.

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
    >>> TrainConfig(patch_zyx=(30, 32, 32))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for TrainConfig
      Value error, patch_zyx (30, 32, 32): each side must be a multiple of 8 ...
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from training.augment import AugmentationConfig

# Network outputs: background and lesion. Inference reads the lesion probability (class 1).
NUM_CLASSES = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UNetConfig(_Strict):
    """MONAI's 3-D ``UNet``: ``features[i]`` channels at level ``i``, downsampled by ``strides[i]``."""

    kind: Literal["unet"] = "unet"
    features: tuple[int, ...] = Field((16, 32, 64, 128), description="feature channels per level (MONAI UNet's `channels`)")
    strides: tuple[int, ...] = Field((2, 2, 2), description="downsampling between levels; one fewer than features")
    num_res_units: int = Field(1, ge=0, le=8, description="residual units per block (0 = plain convolutions)")
    norm: Literal["instance", "batch"] = "instance"

    @field_validator("features", "strides")
    @classmethod
    def _positive(cls, v: tuple[int, ...], info: Any) -> tuple[int, ...]:
        if any(x < 1 for x in v):
            raise ValueError(f"{info.field_name} must be positive integers, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _levels(self) -> "UNetConfig":
        if len(self.features) < 2:
            raise ValueError(f"features needs at least 2 levels, got {list(self.features)}")
        if len(self.strides) != len(self.features) - 1:
            raise ValueError(f"strides needs one entry fewer than features ({len(self.features) - 1}), got {list(self.strides)}")
        return self

    @property
    def size_multiple(self) -> int:
        """Patch sides must be multiples of this: the product of the strides."""
        m = 1
        for s in self.strides:
            m *= s
        return m

    def arch(self, in_channels: int) -> dict[str, Any]:
        """The ``arch`` dict :func:`training.model.build_model` turns into the network."""
        return {
            "name": "monai.UNet",
            "spatial_dims": 3,
            "in_channels": int(in_channels),
            "out_channels": NUM_CLASSES,
            "channels": list(self.features),
            "strides": list(self.strides),
            "num_res_units": self.num_res_units,
            "norm": self.norm,
        }


class DiceCELossConfig(_Strict):
    """MONAI ``DiceCELoss`` on softmax outputs: ``lambda_dice * Dice + lambda_ce * cross-entropy``.

    ``batch=True`` computes Dice over the whole batch (well defined on lesion-free patches).
    """

    kind: Literal["dice_ce"] = "dice_ce"
    lambda_dice: float = Field(1.0, ge=0.0)
    lambda_ce: float = Field(1.0, ge=0.0)
    batch: bool = True

    @model_validator(mode="after")
    def _some_weight(self) -> "DiceCELossConfig":
        if self.lambda_dice == 0 and self.lambda_ce == 0:
            raise ValueError("lambda_dice and lambda_ce are both 0: the loss would be constant")
        return self


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
UNHASHED = frozenset({"log_every", "val_every", "val_overlap", "num_workers", "threads", "device", "amp"})


class TrainConfig(_Strict):
    """Every knob of a training run. Defaults are lesionflow's defaults; see the module docstring."""

    # --- what is trained (hashed) ----------------------------------------------------------
    model: UNetConfig = Field(default_factory=UNetConfig)
    loss: DiceCELossConfig = Field(default_factory=DiceCELossConfig)
    optim: AdamConfig = Field(default_factory=AdamConfig)
    channels: tuple[str, ...] | None = Field(None, description="modalities fed to the network, in order; None = the store's channels")
    patch_zyx: tuple[int, int, int] = Field((48, 48, 48), description="patch size in voxels (z, y, x)")
    batch_size: int = Field(2, ge=1, le=4096)
    iterations: int = Field(300, ge=1, description="optimiser steps")
    lesion_fraction: float = Field(0.5, ge=0.0, le=1.0, description="probability that a patch is centred on a lesion")
    flip_prob: float = Field(0.5, ge=0.0, le=1.0, description="probability of a flip along each spatial axis")
    seed: int = Field(0, ge=0, description="seeds torch, numpy, the patch sampler and the validation split")
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="hold out this fraction of the usable cases when no validation cases are given")
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig,
                                             description="the augmentation bank (default: used when the store has one) and the transforms on the fly")

    # --- how it runs (not hashed) ----------------------------------------------------------
    val_every: int | None = Field(None, ge=1, description="also validate every this many iterations; None = only after training")
    val_overlap: float = Field(0.25, ge=0.0, lt=1.0, description="sliding-window overlap of validation inference")
    log_every: int = Field(10, ge=1, description="iterations between progress events")
    num_workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes (0 = main process)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = $LESIONFLOW_TORCH_THREADS or all cores")
    device: str | None = Field(None, pattern=r"^(cpu|cuda(:\d+)?|mps)$", description="None = CUDA when available, else CPU")
    amp: bool = Field(True, description="autocast on CUDA (bf16 where supported, else fp16 with gradient scaling)")

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
    def _patch_fits_network(self) -> "TrainConfig":
        m = self.model.size_multiple
        if any(p < m or p % m for p in self.patch_zyx):
            raise ValueError(f"patch_zyx {self.patch_zyx}: each side must be a multiple of {m} "
                             f"(the product of the U-Net strides {list(self.model.strides)}), e.g. {tuple(_round_up(p, m) for p in self.patch_zyx)}")
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
        return self.model.arch(self.in_channels)

    def config_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the fields that shape the weights."""
        payload = self.model_dump(mode="json", exclude=set(UNHASHED))
        return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    # ------------------------------------------------------------------ building
    def with_overrides(self, **overrides: Any) -> "TrainConfig":
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
            elif isinstance(value, Mapping) and isinstance(data.get(name), dict):
                data[name] = {**data[name], **value}
            else:
                data[name] = value
        return type(self).model_validate(data)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
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
