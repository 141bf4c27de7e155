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
    np.testing.assert_array_equal(label[0].numpy(), g["labels/reference/0"][window])


def test_dataset_pads_when_volume_smaller_than_patch(store):
    ds = PatchDataset(store["root"], store["labelled"][:1], patch_zyx=(48, 64, 64), seed=0)
    image, label = ds[0]
    assert image.shape == (3, 48, 64, 64) and label.shape == (1, 48, 64, 64)


def test_a_different_seed_gives_different_samples(store):
    """The seed reaches every draw: which case, which centre, which flips, and the patch index a
    case without a stored one gets in memory."""
    kwargs = dict(patch_zyx=PATCH, samples_per_epoch=16)

    def specs(ds):
        return [{k: v for k, v in ds.sample_spec(i).items() if k != "_case"} for i in range(len(ds))]

    # the case with a stored patch index (written once, seed 0): the centres to choose from are
    # fixed, so any difference comes from the per-sample draws
    (case_with_index,) = [c for c in store["labelled"] if PatchDataset(store["root"], [c], **kwargs).cases[0].index_source == "store"]
    a, b, again = (PatchDataset(store["root"], [case_with_index], seed=s, **kwargs) for s in (5, 6, 5))
    np.testing.assert_array_equal(a.cases[0].lesion, b.cases[0].lesion)
    assert specs(a) == specs(again)
    differing = sum(x != y for x, y in zip(specs(a), specs(b)))
    assert differing >= len(a) // 2, differing
    assert [s["flips"] for s in specs(a)] != [s["flips"] for s in specs(b)]
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(4))

    # every labelled case: which case each sample comes from follows the seed
    a, b, again = (PatchDataset(store["root"], store["labelled"], seed=s, **kwargs) for s in (5, 6, 5))
    assert [s["case_id"] for s in specs(a)] != [s["case_id"] for s in specs(b)]
    # the cases without a stored patch index: their in-memory index is drawn with the dataset's seed
    built = [i for i, c in enumerate(a.cases) if c.index_source == "built-in-memory"]
    assert built
    for i in built:
        np.testing.assert_array_equal(a.cases[i].lesion, again.cases[i].lesion)
        assert not np.array_equal(a.cases[i].lesion, b.cases[i].lesion)
        assert not np.array_equal(a.cases[i].background, b.cases[i].background)


# ----------------------------------------------------------------------------- the augmentation bank
BANK_PATCH = (24, 24, 24)


@pytest.fixture(scope="module")
def banked(tmp_path_factory):
    """3 labelled cases with banks of 16-voxel-larger samples (K=8), 1 without a bank."""
    from pipeline.prepare.augment import BankConfig
    from pipeline.prepare.bank import build_bank
    from tests.store_factory import make_store

    root = tmp_path_factory.mktemp("banked") / "store"
    cases = make_store(root, n_cases=4, shape_zyx=(32, 40, 36), seed=5)
    cfg = BankConfig(samples_per_case=8, patch_zyx=(32, 32, 32), seed=1)
    for case_id in cases[:3]:
        build_bank(root, case_id, cfg)
    return {"root": root, "banked": cases[:3], "bare": cases[3]}


def test_bank_dataset_items_are_one_bank_sample_each_and_deterministic(banked):
    from pipeline.prepare.bank import open_bank
    from training.data import BankDataset

    ds = BankDataset(banked["root"], banked["banked"], patch_zyx=BANK_PATCH, lesion_fraction=0.5, seed=3, samples_per_epoch=40)
    assert ds.case_ids == banked["banked"] and not ds.skipped and not ds.fresh_only
    for i in range(6):
        image, label, scale = ds[i]
        spec = ds.sample_spec(i)
        assert image.dtype == torch.int16 and image.shape == (3, *BANK_PATCH) and label.shape == (1, *BANK_PATCH)
        stored, stored_label, bank = open_bank(banked["root"], spec["case_id"])
        window = tuple(slice(o, o + p) for o, p in zip(spec["offset"], BANK_PATCH))
        np.testing.assert_array_equal(image.numpy(), np.asarray(stored[spec["sample"]])[(slice(None), *window)])
        np.testing.assert_array_equal(label[0].numpy(), np.asarray(stored_label[spec["sample"]])[window])
        assert float(scale) == bank.scale
        if spec["kind"] == "lesion":  # the crop keeps the sample's centre voxel, where the lesion is
            centre = tuple(b // 2 - o for b, o in zip(bank.patch_zyx, spec["offset"]))
            assert all(0 <= c < p for c, p in zip(centre, BANK_PATCH))
    again = BankDataset(banked["root"], banked["banked"], patch_zyx=BANK_PATCH, lesion_fraction=0.5, seed=3)
    assert all(torch.equal(ds[i][0], again[i][0]) for i in range(4))


@pytest.mark.parametrize("channels", [None, ["T2", "FLAIR"]])
def test_whole_bank_samples_are_decoded_into_the_batch_unchanged(banked, channels):
    """Training patch = bank patch: the sample is decoded straight into the batch slot (all channels) or
    through the thread's buffer (a subset); either way the stored bytes, also through the thread loader."""
    from pipeline.prepare.bank import open_bank
    from training.data import BankDataset, _ThreadBatches

    ds = BankDataset(banked["root"], banked["banked"], channels=channels, patch_zyx=(32, 32, 32), seed=6, samples_per_epoch=8)
    batches = list(_ThreadBatches(ds, batch_size=4, threads=2, prefetch=2, pin=False))
    items = [ds[i] for i in range(8)]
    for i in range(8):
        spec = ds.sample_spec(i)
        stored, stored_label, bank = open_bank(banked["root"], spec["case_id"])
        want = np.asarray(stored[spec["sample"]])[[bank.channels.index(c) for c in ds.channels]]
        for image, label in ((items[i][0], items[i][1][0]), (batches[i // 4][0][i % 4], batches[i // 4][1][i % 4, 0])):
            np.testing.assert_array_equal(image.numpy(), want)
            np.testing.assert_array_equal(label.numpy(), np.asarray(stored_label[spec["sample"]]))
    assert ds.channels == (("FLAIR", "T1", "T2") if channels is None else ("T2", "FLAIR"))


def test_drawn_batches_keep_the_configured_class_balance(banked):
    from training.data import BankDataset, BankLoader

    for fraction in (0.25, 0.5, 0.8):
        ds = BankDataset(banked["root"], banked["banked"], patch_zyx=BANK_PATCH, lesion_fraction=fraction, seed=1, samples_per_epoch=3000)
        kinds = [ds.sample_spec(i)["kind"] for i in range(len(ds))]
        assert abs(np.mean([k == "lesion" for k in kinds]) - fraction) < 0.03, fraction
    # real batches through the loader: lesion-centred samples hold lesion voxels
    ds = BankDataset(banked["root"], banked["banked"], patch_zyx=BANK_PATCH, lesion_fraction=1.0, seed=2, samples_per_epoch=16)
    batches = list(BankLoader(ds, batch_size=4, workers=2, kind="threads"))
    assert len(batches) == 4
    for image, label in batches:
        assert image.dtype == torch.float32 and label.dtype == torch.int64 and image.shape == (4, 3, *BANK_PATCH)
        assert all(label[b].any() for b in range(4))


def test_loader_threads_processes_and_in_worker_transforms_give_the_same_batches(banked):
    from training.augment import BatchAugment, IntensityAugmentConfig
    from training.data import BankDataset, BankLoader

    def batches(kind, workers, in_workers):
        aug = BatchAugment(IntensityAugmentConfig(), flip_prob=0.5)
        ds = BankDataset(banked["root"], banked["banked"], patch_zyx=BANK_PATCH, seed=4, samples_per_epoch=8, transform=aug if in_workers else None)
        return list(BankLoader(ds, batch_size=2, workers=workers, kind=kind, augment=None if in_workers else aug, seed=4))

    threads = batches("threads", 2, True)
    serial = batches("processes", 0, True)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(threads, serial))
    on_device = batches("threads", 1, False)  # per-batch draws differ from per-sample draws, but the data is the same bank
    assert all(a[0].shape == b[0].shape for a, b in zip(threads, on_device))


def test_fresh_samples_and_cases_without_a_bank(banked):
    from training.data import BankDataset

    ds = BankDataset(banked["root"], banked["banked"] + [banked["bare"]], patch_zyx=BANK_PATCH, lesion_fraction=1.0, seed=0,
                     samples_per_epoch=30, fresh_fraction=0.5)
    assert [e["case_id"] for e in ds.fresh_only] == [banked["bare"]]
    specs = [ds.sample_spec(i) for i in range(30)]
    assert all(s["fresh"] for s in specs if s["case_id"] == banked["bare"])
    banked_specs = [s for s in specs if s["case_id"] != banked["bare"]]
    assert 0 < sum(s["fresh"] for s in banked_specs) < len(banked_specs)
    for i in range(min(12, len(specs))):
        image, label, scale = ds[i]
        assert image.dtype == torch.int16 and image.shape == (3, *BANK_PATCH)
        assert label.any(), "lesion_fraction=1: fresh samples are lesion-centred too"
        assert 0 < float(scale) <= 1
    required = BankDataset(banked["root"], banked["banked"] + [banked["bare"]], patch_zyx=BANK_PATCH, require_bank=True)
    assert required.case_ids == banked["banked"] and required.skipped[0]["case_id"] == banked["bare"]


def test_training_uses_the_bank_by_default_and_falls_back_with_a_reason(banked, caplog):
    from training.config import TrainConfig
    from training.data import BankDataset, BankLoader, PatchDataset, bank_dataset, bank_loader

    cfg = TrainConfig(patch_zyx=BANK_PATCH, iterations=2, channels=("FLAIR", "T1", "T2"))
    cpu = torch.device("cpu")
    ds = bank_dataset(banked["root"], banked["banked"], cfg, cpu)
    assert isinstance(ds, BankDataset) and ds.transform is not None  # CPU: the transforms run in the loader's threads
    assert bank_loader(ds, cfg, cpu).kind == "threads"  # WORKER_KIND_NOTE
    on_device = bank_dataset(banked["root"], banked["banked"], cfg.with_overrides(augmentation={"where": "device"}), cpu)
    loader = bank_loader(on_device, cfg, cpu)
    assert on_device.transform is None and loader.augment is not None and loader.kind == "threads"
    assert bank_dataset(banked["root"], banked["banked"], cfg.with_overrides(augmentation={"bank": "off"}), cpu) is None
    with caplog.at_level("WARNING", logger="lesionflow.training"):
        assert bank_dataset(banked["root"], banked["banked"] + [banked["bare"]], cfg, cpu) is None
    assert banked["bare"] in caplog.text and "no augmentation bank" in caplog.text
    too_big = cfg.with_overrides(patch_zyx=(40, 40, 40))
    assert bank_dataset(banked["root"], banked["banked"], too_big, cpu) is None  # samples smaller than the patch
    from training.loop import flush_losses, setup, train_step

    state = setup(banked["root"], cfg.with_overrides(threads=1), case_ids=banked["banked"])  # what train() does
    assert isinstance(state.dataset, BankDataset) and isinstance(state.loader, BankLoader)
    train_step(state, next(iter(state.loader)))  # returns None on CUDA: the loss stays there until flushed
    flush_losses(state)
    assert state.losses[-1] > 0
    fallback = setup(banked["root"], cfg, case_ids=banked["banked"] + [banked["bare"]])
    assert isinstance(fallback.dataset, PatchDataset)


# ----------------------------------------------------------------------------- 2-D banks (axial slices)
SLICE_PATCH = (1, 24, 24)


@pytest.fixture(scope="module")
def banked_2d(tmp_path_factory):
    """3 labelled cases with 2-D banks (slices 1 x 32 x 32, K=12, lesion-free background slices), one with a 3-D bank, one bare."""
    from pipeline.prepare.augment import BankConfig
    from pipeline.prepare.bank import build_bank
    from tests.store_factory import make_store

    root = tmp_path_factory.mktemp("banked2d") / "store"
    cases = make_store(root, n_cases=5, shape_zyx=(12, 40, 36), seed=7, n_lesions=2)
    cfg = BankConfig(spatial_dims=2, samples_per_case=12, patch_zyx=(1, 32, 32), seed=1)
    for case_id in cases[:3]:
        build_bank(root, case_id, cfg)
    build_bank(root, cases[3], BankConfig(samples_per_case=4, patch_zyx=(8, 32, 32), seed=1))
    return {"root": root, "banked": cases[:3], "three_d": cases[3], "bare": cases[4]}


def _slice_cfg(**overrides):
    from training.config import TrainConfig

    base = dict(spatial_dims=2, patch_zyx=SLICE_PATCH, iterations=2, batch_size=4, channels=("FLAIR", "T1", "T2"),
                background_slices="lesion_free", model={"kind": "unet", "features": [4, 8], "strides": [2], "num_res_units": 0}, threads=1)
    return TrainConfig(**{**base, **overrides})


def test_2d_bank_items_are_slices_in_the_configured_balance(banked_2d):
    from pipeline import store
    from training.data import BankDataset, BankLoader

    root = banked_2d["root"]
    ds = BankDataset(root, banked_2d["banked"], patch_zyx=SLICE_PATCH, lesion_fraction=0.5, seed=2, samples_per_epoch=2000,
                     spatial_dims=2, background_slices="lesion_free")
    assert ds.case_ids == banked_2d["banked"] and not ds.fresh_only
    kinds = [ds.sample_spec(i)["kind"] for i in range(len(ds))]
    assert abs(np.mean([k == "lesion" for k in kinds]) - 0.5) < 0.04
    for i in range(16):
        image, label, _ = ds[i]
        assert image.shape == (3, *SLICE_PATCH) and label.shape == (1, *SLICE_PATCH)
        spec = ds.sample_spec(i)
        assert spec["offset"][0] == 0
        if spec["kind"] == "background":  # from a slice without lesion
            assert not label.any()
    # fresh samples are in-plane too, from lesion-free slices for background
    fresh = BankDataset(root, banked_2d["banked"], patch_zyx=SLICE_PATCH, lesion_fraction=0.0, seed=3, samples_per_epoch=12,
                        fresh_fraction=1.0, spatial_dims=2, background_slices="lesion_free")
    for i in range(6):
        spec = fresh.sample_spec(i)
        truth = np.asarray(store.reference_label(store.open_case(root, spec["case_id"]))[spec["centre"][0]])
        assert spec["fresh"] and not truth.any()
        image, label, _ = fresh[i]
        assert image.shape == (3, *SLICE_PATCH) and not label.any()
    batch = next(iter(BankLoader(ds, batch_size=4, workers=1, kind="threads")))
    assert batch[0].shape == (4, 3, *SLICE_PATCH) and batch[0].dtype == torch.float32


def test_2d_training_uses_the_2d_bank_and_refuses_others_by_the_auto_rules(banked_2d, caplog):
    from training.data import BankDataset, bank_dataset
    from training.loop import flush_losses, samples_from, setup, train_step
    from training.slices import SliceDataset

    root, cpu = banked_2d["root"], torch.device("cpu")
    cfg = _slice_cfg()
    ds = bank_dataset(root, banked_2d["banked"], cfg, cpu)
    assert isinstance(ds, BankDataset) and ds.spatial_dims == 2 and ds.transform is not None
    # a 3-D bank does not feed 2-D training, nor a 2-D bank 3-D training, nor one of another background rule
    with caplog.at_level("WARNING", logger="lesionflow.training"):
        assert bank_dataset(root, banked_2d["banked"] + [banked_2d["three_d"]], cfg, cpu) is None
        assert bank_dataset(root, banked_2d["banked"] + [banked_2d["bare"]], cfg, cpu) is None
        assert bank_dataset(root, banked_2d["banked"], cfg.with_overrides(background_slices="any"), cpu) is None
    assert "is 3-D, training is 2-D" in caplog.text and "no augmentation bank" in caplog.text and "background samples" in caplog.text
    three_d = _slice_cfg(spatial_dims=3, patch_zyx=(8, 24, 24), model={"kind": "unet", "features": [4, 8], "strides": [2], "num_res_units": 0})
    assert bank_dataset(root, banked_2d["banked"], three_d, cpu) is None
    assert isinstance(bank_dataset(root, [banked_2d["three_d"]], three_d, cpu), BankDataset)
    assert bank_dataset(root, banked_2d["banked"], cfg.with_overrides(augmentation={"bank": "off"}), cpu) is None
    required = bank_dataset(root, banked_2d["banked"] + [banked_2d["three_d"]], cfg.with_overrides(augmentation={"bank": "require"}), cpu)
    assert required.case_ids == banked_2d["banked"] and required.skipped[0]["case_id"] == banked_2d["three_d"]
    # setup() (what train() does) trains 2-D from the bank; without one, from SliceDataset as before
    state = setup(root, cfg, case_ids=banked_2d["banked"])
    assert isinstance(state.dataset, BankDataset) and samples_from(state.dataset) == "bank"
    image, label = next(iter(state.loader))
    assert image.shape == (4, 3, *SLICE_PATCH) and label.shape == (4, 1, *SLICE_PATCH)
    train_step(state, (image, label))
    assert np.isfinite(flush_losses(state) or state.losses[-1])
    fallback = setup(root, cfg, case_ids=banked_2d["banked"] + [banked_2d["bare"]])
    assert isinstance(fallback.dataset, SliceDataset) and samples_from(fallback.dataset) == "volumes"
