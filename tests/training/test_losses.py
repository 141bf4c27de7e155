"""training.losses: each loss against a hand computation on a 4-voxel tensor.

The tensor: one sample, 2 classes, 4 voxels in a row. The lesion logit is ``log(p / (1 - p))``
and the background logit 0, so the softmax lesion probabilities are exactly
``p = [0.9, 0.6, 0.2, 0.1]``; the label is ``g = [1, 1, 0, 1]``. Soft counts of the lesion class:

    TP = 0.9 + 0.6 + 0.1 = 1.6     FN = 0.1 + 0.4 + 0.9 = 1.4     FP = 0.2     sum p = 1.8, sum g = 3

and of the background class (p_bg = [0.1, 0.4, 0.8, 0.9], g_bg = [0, 0, 1, 0]):

    TP = 0.8     sum p = 2.2, sum g = 1
"""

from __future__ import annotations

import math

import pytest
import torch

from training.config import TrainConfig
from training.losses import DeepSupervision, FocalTverskyLoss, build_loss

P = [0.9, 0.6, 0.2, 0.1]
G = [1, 1, 0, 1]
P_TRUE = [0.9, 0.6, 0.8, 0.1]  # probability of the true class per voxel


def _tiny() -> tuple[torch.Tensor, torch.Tensor]:
    lesion = torch.tensor([math.log(p / (1 - p)) for p in P], dtype=torch.float64)
    logits = torch.stack([torch.zeros(4, dtype=torch.float64), lesion]).reshape(1, 2, 1, 1, 4)
    target = torch.tensor(G).reshape(1, 1, 1, 1, 4)
    return logits, target


def _loss(kind: str, **fields) -> float:
    cfg = TrainConfig(loss={"kind": kind, **fields}).loss
    logits, target = _tiny()
    return float(build_loss(cfg)(logits, target))


def test_dice_ce_default_both_classes_plus_cross_entropy():
    dice_lesion = 1 - 2 * 1.6 / (1.8 + 3)  # 1/3
    dice_bg = 1 - 2 * 0.8 / (2.2 + 1)  # 1/2
    ce = -sum(math.log(p) for p in P_TRUE) / 4
    assert _loss("dice_ce") == pytest.approx((dice_lesion + dice_bg) / 2 + ce, abs=1e-5)
    assert _loss("dice_ce", lambda_ce=0.0) == pytest.approx((dice_lesion + dice_bg) / 2, abs=1e-5)


def test_dice_lesion_class():
    assert _loss("dice") == pytest.approx(1 - 2 * 1.6 / (1.8 + 3), abs=1e-5)
    assert _loss("dice", include_background=True) == pytest.approx(((1 - 3.2 / 4.8) + (1 - 1.6 / 3.2)) / 2, abs=1e-5)


def test_tversky_weighs_false_negatives_0_7_and_false_positives_0_3():
    ti = 1.6 / (1.6 + 0.7 * 1.4 + 0.3 * 0.2)  # 1.6 / 2.64
    assert _loss("tversky") == pytest.approx(1 - ti, abs=1e-5)
    # the weights are where their names say: swapping them changes the value as the formula says
    assert _loss("tversky", fn_weight=0.3, fp_weight=0.7) == pytest.approx(1 - 1.6 / (1.6 + 0.3 * 1.4 + 0.7 * 0.2), abs=1e-5)
    # 0.5 / 0.5 is the Dice loss
    assert _loss("tversky", fn_weight=0.5, fp_weight=0.5) == pytest.approx(_loss("dice"), abs=1e-5)


def test_focal_tversky_is_abraham_and_khan():
    ti = 1.6 / (1.6 + 0.7 * 1.4 + 0.3 * 0.2)
    assert _loss("focal_tversky") == pytest.approx((1 - ti) ** 0.75, abs=1e-5)
    assert _loss("focal_tversky", gamma=1.0) == pytest.approx(_loss("tversky"), abs=1e-6)
    logits, target = _tiny()
    assert FocalTverskyLoss(smooth=0).tversky_index(logits, target).tolist() == pytest.approx([ti])


def test_focal_loss_mean_over_voxels_of_the_true_class_term():
    expected = sum(-((1 - p) ** 2) * math.log(p) for p in P_TRUE) / 4
    assert _loss("focal") == pytest.approx(expected, abs=1e-6)
    alpha = [0.25 if g else 0.75 for g in G]  # alpha 0.25 on lesion voxels, 0.75 on background
    assert _loss("focal", alpha=0.25) == pytest.approx(sum(a * -((1 - p) ** 2) * math.log(p) for a, p in zip(alpha, P_TRUE)) / 4, abs=1e-6)
    assert _loss("focal", gamma=0.0) == pytest.approx(-sum(math.log(p) for p in P_TRUE) / 4, abs=1e-6)  # cross-entropy


def test_dice_focal_is_the_sum():
    dice = 1 - 2 * 1.6 / (1.8 + 3)
    focal = sum(-((1 - p) ** 2) * math.log(p) for p in P_TRUE) / 4
    assert _loss("dice_focal") == pytest.approx(dice + focal, abs=1e-5)
    assert _loss("dice_focal", lambda_dice=0.5, lambda_focal=2.0) == pytest.approx(0.5 * dice + 2 * focal, abs=1e-5)


def test_deep_supervision_weights_halve_and_sum_to_one():
    assert DeepSupervision.weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    logits, target = _tiny()
    zero = torch.zeros_like(logits)  # p = 0.5 everywhere
    stack = torch.stack([logits, zero, logits], dim=1)  # (B, 3, K, ...)
    loss = build_loss(TrainConfig(loss={"kind": "dice"}).loss)
    half = float(loss(zero, target))
    assert float(loss(stack, target)) == pytest.approx(4 / 7 * _loss("dice") + 2 / 7 * half + 1 / 7 * _loss("dice"), abs=1e-6)


@pytest.mark.parametrize("kind", ["dice_ce", "dice", "tversky", "focal_tversky", "focal", "dice_focal"])
def test_every_loss_has_a_gradient_and_is_zero_or_small_when_right(kind):
    logits, target = _tiny()
    logits = logits.clone().requires_grad_(True)
    loss = build_loss(TrainConfig(loss={"kind": kind}).loss)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None and logits.grad.abs().sum() > 0
    perfect = torch.where(torch.nn.functional.one_hot(target[:, 0], 2).permute(0, 4, 1, 2, 3) > 0, 20.0, -20.0).double()
    assert float(build_loss(TrainConfig(loss={"kind": kind}).loss)(perfect, target)) < 1e-3
