"""Training loss from a :class:`training.config.TrainConfig`'s ``loss``: Dice + cross-entropy today.

The network outputs 2 logits per voxel (background, lesion); labels are ``(B, 1, Z, Y, X)``
integer class maps, one-hot encoded by the loss. With ``batch=True`` (default) the Dice term is
computed over the whole batch rather than per patch, which keeps it well defined when a
background patch has no lesion voxel (lesions are tiny and half the patches have none).
A new loss is a new config class with its own ``kind`` and a branch in :func:`build_loss`.

Example:
    >>> import torch
    >>> from training.config import DiceCELossConfig
    >>> loss = build_loss(DiceCELossConfig(lambda_ce=0.5))
    >>> logits = torch.zeros(2, 2, 8, 8, 8); target = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    >>> float(loss(logits, target)) > 0
    True
"""

from __future__ import annotations

import torch

from training.config import DiceCELossConfig


def build_loss(cfg: DiceCELossConfig | None = None) -> torch.nn.Module:
    """The loss module a config describes (default: :class:`DiceCELossConfig`)."""
    cfg = cfg or DiceCELossConfig()
    if cfg.kind == "dice_ce":
        from monai.losses import DiceCELoss

        return DiceCELoss(to_onehot_y=True, softmax=True, batch=cfg.batch, lambda_dice=cfg.lambda_dice, lambda_ce=cfg.lambda_ce)
    raise ValueError(f"unknown loss kind {cfg.kind!r}")  # pragma: no cover - the config's Literal forbids it
