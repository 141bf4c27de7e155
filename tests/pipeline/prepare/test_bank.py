"""pipeline.prepare.bank: layout, bit-identical regeneration, incremental rebuilds, sizes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline import store
from pipeline.prepare.augment import BankConfig
from pipeline.prepare.bank import (
    BANK,
    bank_status,
    bank_table,
    build_bank,
    ensure_bank,
    open_bank,
    plan_banks,
    read_bank,
    read_sample,
    regenerate_sample,
)
from tests.store_factory import make_store

SHAPE = (32, 40, 36)
CFG = BankConfig(samples_per_case=8, patch_zyx=(16, 16, 16), spatial={"p_rotation": 0.5, "p_scaling": 0.5, "p_lowres": 0.5})


@pytest.fixture(scope="module")
def banked(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank") / "s.zarr"
    cases = make_store(root, n_cases=2, shape_zyx=SHAPE, seed=3)
    rows = [build_bank(root, c, CFG) for c in cases]
    return root, cases, rows


def _stored_files(root, case_id):
    folder = root / "cases" / case_id / BANK
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "zarr.json"}


def test_layout_one_chunk_per_sample_and_the_record(banked):
    root, cases, rows = banked
    image, label, bank = open_bank(root, cases[0])
    assert image.shape == (8, 3, 16, 16, 16) and image.chunks == (1, 3, 16, 16, 16) and image.dtype == np.int16
    assert label.shape == (8, 16, 16, 16) and label.chunks == (1, 16, 16, 16)
    assert bank.n_samples == 8 and bank.n_lesion == 4 and [s.kind for s in bank.samples] == ["lesion"] * 4 + ["background"] * 4
    assert bank.channels == ["FLAIR", "T1", "T2"] and bank.bank_config_hash == CFG.config_hash()
    assert bank.source_fingerprint == store.read_case_meta(root, cases[0]).source_fingerprint
    assert len({s.seed for s in bank.samples}) == 8
    assert rows[0]["image_bytes"] == bank.image_bytes > 0 and rows[0]["bytes_per_sample"] > 0
    for s in bank.samples:  # every lesion-centred sample shows lesion, as recorded
        _, lab = read_sample(root, cases[0], s.index)
        assert int(lab.sum()) == s.lesion_voxels
        assert (s.lesion_voxels > 0) == (s.kind == "lesion") or s.kind == "background"
    assert bank_table(root)[0]["case_id"] == cases[0]


def test_samples_regenerate_bit_identically_from_the_case_and_the_record(banked):
    root, cases, _ = banked
    image, label, bank = open_bank(root, cases[1])
    for s in bank.samples:
        img, lab, record = regenerate_sample(root, cases[1], s.index)
        assert img.tobytes() == np.asarray(image[s.index]).tobytes()
        assert lab.tobytes() == np.asarray(label[s.index]).tobytes()
        assert record == s


def test_plain_crops_cut_from_the_quantised_volume_are_the_same_samples(banked):
    """build_bank cuts the samples that are only cropped from the volume quantised once: the same bytes and records."""
    from pipeline.prepare.augment import is_plain, quantize
    from pipeline.prepare.bank import _case_arrays, _scale_for, plan_samples, render_sample

    root, cases, _ = banked
    for dtype in ("int16", "float16"):
        cfg = CFG.model_copy(update={"dtype": dtype, "samples_per_case": 16})
        image, label, foreground, _ = _case_arrays(root, cases[0])
        scale = _scale_for(image, cfg)
        plans = plan_samples(label, foreground, cfg, store.read_case_meta(root, cases[0]).source_fingerprint, image.shape[0])
        assert any(is_plain(p["params"]) for p in plans) and not all(is_plain(p["params"]) for p in plans)
        stored = quantize(image, dtype, scale)
        for plan in plans:
            a, b = render_sample(image, label, plan, cfg, scale), render_sample(image, label, plan, cfg, scale, stored)
            assert a[0].dtype == b[0].dtype and a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes() and a[2] == b[2]


def test_rebuilding_writes_the_same_bytes(banked, tmp_path):
    root, cases, _ = banked
    before = _stored_files(root, cases[0])
    build_bank(root, cases[0], CFG)
    assert _stored_files(root, cases[0]) == before
    # a separate store with the same case: the same chunks
    other = tmp_path / "other.zarr"
    make_store(other, n_cases=2, shape_zyx=SHAPE, seed=3)
    build_bank(other, cases[0], CFG)
    assert _stored_files(other, cases[0]) == before
    assert read_bank(other, cases[0]).samples == read_bank(root, cases[0]).samples


def test_a_bank_from_before_the_lz4_codec_is_up_to_date_and_reads_the_same(banked, tmp_path, monkeypatch):
    """Banks written with Zstandard (before 2026-11-30) are not rebuilt: the same status, the same values, the same loader items."""
    from zarr.codecs import ZstdCodec

    import pipeline.prepare.bank as bank_module
    from training.data import BankDataset

    root, cases, _ = banked
    old = tmp_path / "old.zarr"
    make_store(old, n_cases=2, shape_zyx=SHAPE, seed=3)
    monkeypatch.setattr(bank_module, "_image_codecs", lambda: [ZstdCodec(level=1)])
    build_bank(old, cases[0], CFG)
    monkeypatch.undo()
    old_image, _, _ = open_bank(old, cases[0])
    new_image, _, _ = open_bank(root, cases[0])
    assert "zstd" in repr(old_image.compressors).lower() and "blosc" in repr(new_image.compressors).lower()
    assert bank_status(old, cases[0], CFG) == "up-to-date"
    np.testing.assert_array_equal(np.asarray(old_image[...]), np.asarray(new_image[...]))
    items = [BankDataset(r, [cases[0]], patch_zyx=CFG.patch_zyx, seed=2, samples_per_epoch=6) for r in (old, root)]
    for i in range(6):
        assert all(a.equal(b) for a, b in zip(items[0][i], items[1][i]))


def test_incremental_new_case_only_then_config_change_rebuilds_all(tmp_path):
    root = tmp_path / "s.zarr"
    cases = make_store(root, n_cases=2, shape_zyx=SHAPE, seed=1)
    assert [ensure_bank(root, c, CFG)["status"] for c in cases] == ["built", "built"]
    first_ids = {c: read_bank(root, c).bank_id for c in cases}
    added = make_store(root, n_cases=1, shape_zyx=SHAPE, seed=2, start=5)
    todo, fresh = plan_banks(root, CFG, cases + added)
    assert (todo, fresh) == (added, cases)  # only the new case is built
    rows = [ensure_bank(root, c, CFG) for c in cases + added]
    assert [r["status"] for r in rows] == ["up-to-date", "up-to-date", "built"]
    assert {c: read_bank(root, c).bank_id for c in cases} == first_ids  # untouched
    changed = CFG.model_copy(update={"samples_per_case": 6})
    assert [bank_status(root, c, changed) for c in cases + added] == ["stale-config"] * 3
    assert plan_banks(root, changed, cases + added) == (cases + added, [])
    assert [ensure_bank(root, c, changed)["status"] for c in cases + added] == ["built"] * 3
    assert read_bank(root, added[0]).n_samples == 6


def test_a_reingested_case_makes_its_bank_stale(tmp_path):
    root = tmp_path / "s.zarr"
    case = make_store(root, n_cases=1, shape_zyx=SHAPE, seed=1)[0]
    build_bank(root, case, CFG)
    make_store(root, n_cases=1, shape_zyx=SHAPE, seed=9)  # the same case id from other sources: a new fingerprint
    assert bank_status(root, case, CFG) in ("stale-case", "missing")  # the case commit replaced its group, bank included
    assert ensure_bank(root, case, CFG)["status"] == "built"


def test_class_balance_and_lesion_centres_follow_the_config(tmp_path):
    root = tmp_path / "s.zarr"
    case = make_store(root, n_cases=1, shape_zyx=SHAPE, seed=4, n_lesions=1)[0]
    cfg = BankConfig(samples_per_case=10, lesion_share=0.3, patch_zyx=(16, 16, 16), spatial={"p_rotation": 1.0, "p_scaling": 1.0})
    build_bank(root, case, cfg)
    bank = read_bank(root, case)
    assert bank.n_lesion == 3
    source = np.array(ndimage.center_of_mass(np.asarray(store.reference_label(store.open_case(root, case))[...])))
    for s in bank.samples:
        _, lab = read_sample(root, case, s.index)
        if s.kind == "lesion":  # the lesion lies inside the patch: its centroid maps back through the recorded matrix
            assert s.rotation_rad is not None and s.scale is not None
            back = (np.asarray(s.matrix_zyx).reshape(4, 4) @ np.r_[ndimage.center_of_mass(lab), 1.0])[:3]
            assert np.abs(back - source).max() < 0.5, (s.index, back, source)


def test_unlabelled_and_lesion_free_cases_get_background_samples_only(tmp_path):
    root = tmp_path / "s.zarr"
    case = make_store(root, n_cases=1, shape_zyx=SHAPE, seed=1, n_lesions=0)[0]
    build_bank(root, case, CFG)
    assert read_bank(root, case).n_lesion == 0 and read_bank(root, case).n_samples == 8


def test_object_store_backend_commits_and_reads_the_bank():
    """memory:// goes through the fsspec backend (built in memory, marker last), like s3://."""
    import uuid

    from training.data import BankDataset

    root = f"memory://bank-{uuid.uuid4().hex}/s.zarr"
    case = make_store(root, n_cases=1, shape_zyx=SHAPE, seed=3)[0]
    assert build_bank(root, case, CFG)["status"] == "built" and bank_status(root, case, CFG) == "up-to-date"
    image, _, bank = open_bank(root, case)
    assert regenerate_sample(root, case, 5)[0].tobytes() == np.asarray(image[5]).tobytes() and bank.image_bytes > 0
    ds = BankDataset(root, [case], patch_zyx=(16, 16, 16), samples_per_epoch=2)
    assert ds[0][0].shape == (3, 16, 16, 16)
