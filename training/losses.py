"""Training losses from a :class:`training.config.TrainConfig`'s ``loss``, chosen by its ``kind``.

The network outputs 2 logits per voxel (background, lesion); labels are ``(B, 1, Z, Y, X)``
integer class maps, one-hot encoded by the loss. Region losses (Dice, Tversky) are computed
with ``batch=True`` by default, i.e. over the whole batch rather than per patch, which keeps
them well defined when a background patch has no lesion voxel (lesions are tiny and half the
patches have none), and on the lesion class only (``include_background=False``) except in
``dice_ce``, which keeps MONAI's default of both classes as before.

========================  =====================================================================
``kind``                  loss (p = softmax probability, g = one-hot label, sums over voxels)
========================  =====================================================================
``dice_ce`` (default)     ``lambda_dice * (1 - Dice) + lambda_ce * cross-entropy`` (MONAI ``DiceCELoss``)
``dice``                  ``1 - (2 sum(p g) + s) / (sum p + sum g + s)`` (MONAI ``DiceLoss``)
``tversky``               ``1 - TI``, ``TI = (TP + s) / (TP + fn_weight FN + fp_weight FP + s)`` with
                          ``TP = sum(p g)``, ``FN = sum((1 - p) g)``, ``FP = sum(p (1 - g))``
``focal_tversky``         ``(1 - TI) ** gamma`` (Abraham & Khan 2019: fn_weight 0.7, fp_weight 0.3, gamma 0.75)
``focal``                 ``mean over voxels of -alpha_t (1 - p_t) ** gamma log p_t`` (Lin et al. 2017;
                          t = the true class, alpha_t = alpha for lesion, 1 - alpha for background)
``dice_focal``            ``lambda_dice * (Dice loss) + lambda_focal * focal``
========================  =====================================================================

A DynUNet trained with deep supervision outputs a stack ``(B, 1 + k, 2, ...)``;
:func:`build_loss` wraps the loss in :class:`DeepSupervision` (nnU-Net's weights: halving per
level, normalised to sum 1), which passes a plain output straight through.

Example:
    >>> import torch
    >>> from training.config import DiceCELossConfig, FocalTverskyLossConfig
    >>> loss = build_loss(DiceCELossConfig(lambda_ce=0.5))
    >>> logits = torch.zeros(2, 2, 8, 8, 8); target = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    >>> float(loss(logits, target)) > 0
    True
    >>> target[0, 0, :4] = 1  # a quarter of the voxels are lesion; p = 0.5 everywhere
    >>> ti = 0.5 * 256 / (0.5 * 256 + 0.7 * 0.5 * 256 + 0.3 * 0.5 * 768)
    >>> round(float(build_loss(FocalTverskyLossConfig(smooth=0))(logits, target)), 5) == round((1 - ti) ** 0.75, 5)
    True
"""

from __future__ import annotations

from typing import Any

import torch

from training.config import (
    DiceCELossConfig,
    DiceFocalLossConfig,
    DiceLossConfig,
    FocalLossConfig,
    FocalTverskyLossConfig,
    TverskyLossConfig,
)


class FocalTverskyLoss(torch.nn.Module):
    """``(1 - TI) ** gamma`` on softmax probabilities, averaged over the scored classes.

    ``TI = (TP + smooth) / (TP + fn_weight * FN + fp_weight * FP + smooth)`` with soft counts
    ``TP = sum(p g)``, ``FN = sum((1 - p) g)``, ``FP = sum(p (1 - g))`` over the spatial axes
    (and the batch with ``batch=True``). ``gamma=1`` is the plain Tversky loss.

    Args:
        fn_weight, fp_weight: weights of false negatives and false positives (Abraham & Khan:
            alpha 0.7 on FN, beta 0.3 on FP).
        gamma: exponent (0.75 in the paper, written there as ``1/gamma`` with gamma 4/3).
        include_background: also score class 0.
        batch: sum counts over the batch before the ratio (else per sample, then averaged).
        smooth: added to numerator and denominator.
    """

    def __init__(self, fn_weight: float = 0.7, fp_weight: float = 0.3, gamma: float = 0.75, include_background: bool = False,
                 batch: bool = True, smooth: float = 1e-5) -> None:
        super().__init__()
        self.fn_weight, self.fp_weight, self.gamma = float(fn_weight), float(fp_weight), float(gamma)
        self.include_background, self.batch, self.smooth = bool(include_background), bool(batch), float(smooth)

    def tversky_index(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """TI per scored class (``batch=True``: shape ``(K,)``, else ``(B, K)``)."""
        probs = torch.softmax(logits.float(), dim=1)
        onehot = torch.zeros_like(probs).scatter_(1, target.long(), 1.0)
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        dims = tuple(range(2, probs.ndim))
        if self.batch:
            dims = (0, *dims)
        tp = (probs * onehot).sum(dims)
        fn = ((1 - probs) * onehot).sum(dims)
        fp = (probs * (1 - onehot)).sum(dims)
        return (tp + self.smooth) / (tp + self.fn_weight * fn + self.fp_weight * fp + self.smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ti = self.tversky_index(logits, target)
        return torch.clamp(1 - ti, min=0).pow(self.gamma).mean()


class FocalLoss(torch.nn.Module):
    """Softmax focal loss (Lin et al. 2017): the mean over voxels of ``-alpha_t (1 - p_t) ** gamma log p_t``,
    ``p_t`` the probability of the true class, ``alpha_t`` = ``alpha`` for the lesion class and
    ``1 - alpha`` for the background (``alpha=None``: 1 for both). ``gamma=0, alpha=None`` is cross-entropy.

    (MONAI's ``FocalLoss`` averages over classes too, so its value is this one divided by the
    number of classes, and its ``DiceFocalLoss`` applies a sigmoid per channel, not a softmax.)
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=1)
        logp_t = logp.gather(1, target.long())
        p_t = logp_t.exp()
        loss = -((1 - p_t).clamp(min=0) ** self.gamma) * logp_t
        if self.alpha is not None:
            loss = loss * torch.where(target > 0, self.alpha, 1 - self.alpha)
        return loss.mean()


class DiceFocalLoss(torch.nn.Module):
    """``lambda_dice * Dice loss + lambda_focal * focal`` (Dice: MONAI ``DiceLoss`` on softmax; focal: :class:`FocalLoss`)."""

    def __init__(self, lambda_dice: float = 1.0, lambda_focal: float = 1.0, gamma: float = 2.0, include_background: bool = False,
                 batch: bool = True) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(to_onehot_y=True, softmax=True, include_background=include_background, batch=batch)
        self.focal = FocalLoss(gamma=gamma)
        self.lambda_dice, self.lambda_focal = float(lambda_dice), float(lambda_focal)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_dice * self.dice(logits, target) + self.lambda_focal * self.focal(logits, target)


class DeepSupervision(torch.nn.Module):
    """A loss over deep-supervision outputs ``(B, n, K, ...)``: ``sum_i w_i loss(out[:, i], target)``
    with ``w_i`` proportional to ``2 ** -i`` and summing to 1 (nnU-Net). A plain ``(B, K, ...)``
    output gets the loss itself."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    @staticmethod
    def weights(n: int) -> list[float]:
        raw = [0.5**i for i in range(n)]
        return [w / sum(raw) for w in raw]

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.ndim != target.ndim + 1:
            return self.loss(output, target)
        heads = torch.unbind(output, dim=1)
        return sum(w * self.loss(h, target) for w, h in zip(self.weights(len(heads)), heads))  # type: ignore[return-value]


def _loss(cfg: Any) -> torch.nn.Module:
    from monai import losses

    kind = cfg.kind
    if kind == "dice_ce":
        return losses.DiceCELoss(to_onehot_y=True, softmax=True, batch=cfg.batch, lambda_dice=cfg.lambda_dice, lambda_ce=cfg.lambda_ce)
    if kind == "dice":
        return losses.DiceLoss(to_onehot_y=True, softmax=True, include_background=cfg.include_background, batch=cfg.batch)
    if kind == "tversky":
        # MONAI's alpha weighs false positives, beta false negatives
        return losses.TverskyLoss(to_onehot_y=True, softmax=True, include_background=cfg.include_background, batch=cfg.batch,
                                  alpha=cfg.fp_weight, beta=cfg.fn_weight, smooth_nr=cfg.smooth, smooth_dr=cfg.smooth)
    if kind == "focal_tversky":
        return FocalTverskyLoss(cfg.fn_weight, cfg.fp_weight, cfg.gamma, cfg.include_background, cfg.batch, cfg.smooth)
    if kind == "focal":
        return FocalLoss(gamma=cfg.gamma, alpha=cfg.alpha)
    if kind == "dice_focal":
        return DiceFocalLoss(cfg.lambda_dice, cfg.lambda_focal, cfg.gamma, cfg.include_background, cfg.batch)
    raise ValueError(f"unknown loss kind {kind!r}")  # pragma: no cover - the config's union forbids it


LossConfigs = DiceCELossConfig | DiceLossConfig | TverskyLossConfig | FocalTverskyLossConfig | FocalLossConfig | DiceFocalLossConfig


def build_loss(cfg: LossConfigs | None = None) -> torch.nn.Module:
    """The loss module a config describes (default: :class:`DiceCELossConfig`), taking logits
    ``(B, 2, ...)`` or a deep-supervision stack ``(B, n, 2, ...)`` and labels ``(B, 1, ...)``."""
    return DeepSupervision(_loss(cfg or DiceCELossConfig()))
