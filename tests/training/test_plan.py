"""training.plan: patch and batch from the median foreground shape and a memory budget (nnU-Net's rules)."""

from __future__ import annotations

import torch

from training.config import TrainConfig
from training.plan import activation_bytes, data_fingerprint, foreground_shape, memory_budget, plan_patch

MB = 2**20


def test_a_roomy_budget_takes_the_median_shape_rounded_to_the_network():
    plan = plan_patch((100, 120, 90), TrainConfig(), budget_bytes=64 * 1024 * MB)
    assert plan["patch_zyx"] == (104, 120, 96)  # multiples of 8
    assert plan["batch_size"] > 2


def test_a_tight_budget_shortens_the_axis_longest_relative_to_the_median():
    cfg = TrainConfig()
    need = activation_bytes(cfg, (64, 256, 64), 2, 4)
    # just too little: one step (8 voxels) off y, the longest side among equal ratios to the median
    assert plan_patch((64, 256, 64), cfg, budget_bytes=need - 1)["patch_zyx"] == (64, 248, 64)
    # y capped at 256 of a 300 median is relatively shorter than z and x: z is cut first
    assert plan_patch((64, 300, 64), cfg, budget_bytes=activation_bytes(cfg, (64, 256, 64), 2, 4) - 1)["patch_zyx"] == (56, 256, 64)
    plan = plan_patch((64, 256, 64), cfg, budget_bytes=256 * MB)
    assert activation_bytes(cfg, plan["patch_zyx"], 2, 4) <= 256 * MB and plan["batch_size"] == 2


def test_the_batch_covers_at_most_five_percent_of_the_training_voxels():
    plan = plan_patch((64, 64, 64), TrainConfig(), budget_bytes=64 * 1024 * MB, total_voxels=64**3)
    assert plan["batch_size"] == 2 and any("5%" in n for n in plan["notes"])
    roomy = plan_patch((64, 64, 64), TrainConfig(), budget_bytes=64 * 1024 * MB, total_voxels=200 * 64**3)
    assert roomy["batch_size"] == 10


def test_given_values_are_kept_and_2d_plans_whole_slices():
    assert plan_patch((100, 120, 90), TrainConfig(patch_zyx=(32, 32, 32), batch_size=3), budget_bytes=MB)["patch_zyx"] == (32, 32, 32)
    plan = plan_patch((100, 150, 130), TrainConfig(spatial_dims=2), budget_bytes=4096 * MB)
    assert plan["patch_zyx"] == (1, 152, 136)
    dyn = plan_patch((100, 150, 130), TrainConfig(model={"kind": "dynunet"}), budget_bytes=64 * 1024 * MB)
    assert all(p % 16 == 0 for p in dyn["patch_zyx"])  # padded to what the planned strides divide


def test_budget_sources():
    budget, dtype_bytes, source = memory_budget(torch.device("cpu"), TrainConfig())
    assert budget == 512 * MB and dtype_bytes == 4 and "CPU" in source
    assert memory_budget(torch.device("cpu"), TrainConfig(memory_budget_mb=100))[0] == 100 * MB


def test_foreground_shape_and_fingerprint(store):
    case = store["labelled"][0]
    z, y, x = foreground_shape(store["root"], case)
    assert 0 < z <= 40 and 0 < y <= 56 and 0 < x <= 48
    data = data_fingerprint(store["root"], store["labelled"])
    assert data["cases_measured"] == 3 and data["median_spacing_zyx"] == (1.0, 1.0, 1.0) or len(data["median_spacing_zyx"]) == 3
