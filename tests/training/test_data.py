"""training.data: class-balanced patches from the store, channels resolved from the store by default."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from pipeline.store import StoreError
from tests.training.conftest import PATCH
from training.data import PatchDataset, usable_cases


def test_dataset_skips_unusable_cases_with_reasons(store):
    ds = PatchDataset(store["root"], store["labelled"] + [store["unlabelled"], store["two_channel"], "sub-nope_ses-01"], patch_zyx=PATCH)
    assert ds.case_ids == store["labelled"]
    reasons = {s["case_id"]: s["reason"] for s in ds.skipped}
    assert "label" in reasons[store["unlabelled"]]
    assert "T2" in reasons[store["two_channel"]]
    assert "sub-nope_ses-01" in reasons
    sources = {c.case_id: c.index_source for c in ds.cases}
    assert sources[store["labelled"][0]] == "store" and sources[store["labelled"][1]] == "built-in-memory"
    ok, skipped = usable_cases(store["root"], None, ("FLAIR", "T1", "T2"))
    assert ok == store["labelled"] and len(skipped) == 2


def test_channels_default_to_the_stores(store):
    """No channels given: the store's (FLAIR, T1, T2 here); given ones are kept in their order."""
    assert PatchDataset(store["root"], store["labelled"][:1], patch_zyx=PATCH).channels == ("FLAIR", "T1", "T2")
    assert PatchDataset(store["root"], store["labelled"][:1], patch_zyx=PATCH, channels=["T2", "FLAIR"]).channels == ("T2", "FLAIR")
    with pytest.raises(StoreError, match=r"requested \['PD'\], the store has \['FLAIR', 'T1', 'T2'\]"):
        PatchDataset(store["root"], store["labelled"][:1], patch_zyx=PATCH, channels=["PD"])


def test_dataset_items_shapes_determinism_and_alignment(store):
    ds = PatchDataset(store["root"], store["labelled"], patch_zyx=PATCH, lesion_fraction=1.0, seed=5, samples_per_epoch=24)
    image, label = ds[3]
    assert image.shape == (3, *PATCH) and image.dtype == torch.float32
    assert label.shape == (1, *PATCH) and label.dtype == torch.int64
    image2, label2 = PatchDataset(store["root"], store["labelled"], patch_zyx=PATCH, lesion_fraction=1.0, seed=5)[3]
    assert torch.equal(image, image2) and torch.equal(label, label2)
    flipped = 0
    for i in range(len(ds)):
        image, label = ds[i]
        spec = ds.sample_spec(i)
        flipped += bool(spec["flips"])
        lesion = label[0].bool()
        assert lesion.any(), "lesion_fraction=1 must centre every patch on a lesion"
        # flips hit image and label alike: lesions are bright on FLAIR (channel 0), dark on T1
        assert image[0][lesion].mean() > image[0][~lesion].mean() + 1.0
        assert image[1][lesion].mean() < image[1][~lesion].mean()
    assert flipped > 0


def test_dataset_reads_requested_channels_in_order(store):
    ds = PatchDataset(store["root"], store["labelled"], channels=("T2", "FLAIR"), patch_zyx=PATCH, flip_prob=0.0, seed=1)
    image, label = ds[0]
    spec = ds.sample_spec(0)
    g = zarr.open_group(str(store["root"] / "cases" / spec["case_id"]), mode="r")
    z, y, x = (c - p // 2 for c, p in zip(spec["centre"], PATCH))
    window = (slice(z, z + PATCH[0]), slice(y, y + PATCH[1]), slice(x, x + PATCH[2]))
    np.testing.assert_array_equal(image.numpy(), g["image"][(slice(None), *window)][[2, 0]])
    np.testing.assert_array_equal(label[0].numpy(), g["label"][window])


def test_dataset_pads_when_volume_smaller_than_patch(store):
    ds = PatchDataset(store["root"], store["labelled"][:1], patch_zyx=(48, 64, 64), seed=0)
    image, label = ds[0]
    assert image.shape == (3, 48, 64, 64) and label.shape == (1, 48, 64, 64)
