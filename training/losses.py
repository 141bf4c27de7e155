"""Training loss: Dice + cross-entropy on softmax outputs (MONAI's ``DiceCELoss``).

The network outputs 2 logits per voxel (background, lesion); labels are ``(B, 1, Z, Y, X)``
integer class maps, one-hot encoded by the loss. With ``batch=True`` (default) the Dice term is
computed over the whole batch rather than per patch, which keeps it well defined when a
background patch has no lesion voxel (lesions are tiny and half the patches have none).

Example:
    >>> import torch
    >>> loss = build_loss()
    >>> logits = torch.zeros(2, 2, 8, 8, 8); target = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    >>> float(loss(logits, target)) > 0
    True
"""

from __future__ import annotations

from typing import Any

import torch


def loss_config(batch: bool = True, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> dict[str, Any]:
    """The loss settings recorded in ``model.json``."""
    return {"name": "monai.DiceCELoss", "to_onehot_y": True, "softmax": True, "batch": batch, "lambda_dice": lambda_dice, "lambda_ce": lambda_ce}


def build_loss(config: dict[str, Any] | None = None) -> torch.nn.Module:
    """``DiceCELoss(to_onehot_y=True, softmax=True, ...)`` from :func:`loss_config`."""
    from monai.losses import DiceCELoss

    cfg = dict(config or loss_config())
    cfg.pop("name", None)
    return DiceCELoss(**cfg)
