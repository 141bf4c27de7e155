"""pipeline.prepare.patches: class-balanced patch index (numpy + zarr only)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import zarr
from scipy import ndimage

from pipeline.prepare.patches import (
    build_patch_index,
    clip_centres,
    has_patch_index,
    patch_bounds,
    read_patch_index,
    read_patch_index_attrs,
    write_patch_index,
)
from pipeline.store import StoreError, foreground_mask, reference_label, write_case_array
from tests.store_factory import make_store


def _blobs(shape=(40, 48, 44)):
    """Four separate lesions of very different sizes, all well inside the volume."""
    label = np.zeros(shape, np.uint8)
    label[10:20, 10:20, 10:20] = 1  # 1000 voxels
    label[30, 30, 30] = 1  # a single voxel
    label[25:27, 12:14, 30:32] = 1  # 8 voxels
    label[12:15, 35:38, 14:16] = 1  # 18 voxels
    fg = np.zeros(shape, np.uint8)
    fg[2:-2, 2:-2, 2:-2] = 1
    return label, fg


def _in_bounds(centres, shape, patch):
    for ax, (s, p) in enumerate(zip(shape, patch)):
        if s >= p:
            assert centres[:, ax].min() >= p // 2 and centres[:, ax].max() <= s - p + p // 2
        else:
            assert np.all(centres[:, ax] == s // 2)
        assert centres[:, ax].min() >= 0 and centres[:, ax].max() < s


def test_centres_in_bounds_and_on_lesions():
    label, fg = _blobs()
    patch = (8, 8, 8)
    idx = build_patch_index(label, fg, patch, n_lesion=200, n_background=300, seed=3)
    assert idx["lesion"].shape == (200, 3) and idx["background"].shape == (300, 3)
    assert idx["lesion"].dtype == np.int32 and idx["background"].dtype == np.int32
    for kind in ("lesion", "background"):
        _in_bounds(idx[kind], label.shape, patch)
    # lesions lie away from the border, so clipping never moves a lesion centre
    assert label[tuple(idx["lesion"].T)].all()
    assert not label[tuple(idx["background"].T)].any()
    assert fg[tuple(idx["background"].T)].all()


def test_every_component_represented_and_small_lesions_not_drowned():
    label, fg = _blobs()
    comps, n = ndimage.label(label, structure=np.ones((3, 3, 3)))
    assert n == 4
    for n_lesion in (4, 7, 400):
        idx = build_patch_index(label, fg, (8, 8, 8), n_lesion=n_lesion, n_background=10, seed=1)
        hit = comps[tuple(idx["lesion"].T)]
        counts = np.bincount(hit, minlength=n + 1)[1:]
        assert np.all(counts >= 1), (n_lesion, counts)
        assert counts.max() - counts.min() <= 1  # split evenly, not by size
    idx = build_patch_index(label, fg, (8, 8, 8), n_lesion=2, n_background=10, seed=1)
    assert len(idx["lesion"]) == 2 and len(set(comps[tuple(idx["lesion"].T)])) == 2


def test_deterministic_per_seed():
    label, fg = _blobs()
    a = build_patch_index(label, fg, (16, 16, 16), n_lesion=50, n_background=50, seed=7)
    b = build_patch_index(label, fg, (16, 16, 16), n_lesion=50, n_background=50, seed=7)
    c = build_patch_index(label, fg, (16, 16, 16), n_lesion=50, n_background=50, seed=8)
    for kind in ("lesion", "background"):
        np.testing.assert_array_equal(a[kind], b[kind])
    assert not np.array_equal(a["background"], c["background"])
    assert not np.array_equal(a["lesion"], c["lesion"])  # the lesion centres follow the seed too
    # 48 centres over 4 components: 12 each whatever the seed, so only the draws within each
    # component can differ, and they must (as a multiset, not only in order)
    d, e = (build_patch_index(label, fg, (16, 16, 16), n_lesion=48, n_background=0, seed=s)["lesion"] for s in (7, 8))
    assert sorted(map(tuple, d)) != sorted(map(tuple, e))


def test_empty_or_missing_label_gives_background_only():
    _, fg = _blobs()
    for label in (None, np.zeros_like(fg)):
        idx = build_patch_index(label, fg, (8, 8, 8), n_lesion=20, n_background=20, seed=0)
        assert idx["lesion"].shape == (0, 3)
        assert idx["background"].shape == (20, 3)
        assert fg[tuple(idx["background"].T)].all()


def test_empty_foreground_falls_back_to_non_lesion_voxels():
    label, _ = _blobs()
    idx = build_patch_index(label, np.zeros_like(label), (8, 8, 8), n_lesion=5, n_background=5)
    assert len(idx["background"]) == 5 and not label[tuple(idx["background"].T)].any()


def test_lesion_at_edge_is_clipped_but_stays_inside_patch():
    shape, patch = (30, 30, 30), (16, 16, 16)
    label = np.zeros(shape, np.uint8)
    label[0:2, 0:2, 28:30] = 1  # corner lesion
    fg = np.ones(shape, np.uint8)
    idx = build_patch_index(label, fg, patch, n_lesion=20, n_background=20, seed=0)
    _in_bounds(idx["lesion"], shape, patch)
    for centre in idx["lesion"]:
        slices, pad = patch_bounds(centre, shape, patch)
        assert all(p == (0, 0) for p in pad)  # fits: no padding needed
        assert label[slices].any()  # the sampled lesion voxel is still in the patch


def test_volume_smaller_than_patch():
    shape, patch = (10, 40, 6), (16, 16, 16)
    label = np.zeros(shape, np.uint8)
    label[4:6, 30:33, 2:4] = 1
    fg = np.ones(shape, np.uint8)
    idx = build_patch_index(label, fg, patch, n_lesion=10, n_background=10, seed=0)
    _in_bounds(idx["lesion"], shape, patch)
    _in_bounds(idx["background"], shape, patch)
    for centre in idx["lesion"]:
        slices, pad = patch_bounds(centre, shape, patch)
        block = np.pad(label[slices], pad)
        assert block.shape == patch and block.any()


def test_clip_centres_and_patch_bounds():
    c = clip_centres(np.array([[0, 0, 0], [99, 99, 99]]), (20, 20, 5), (8, 8, 8))
    assert c.tolist() == [[4, 4, 2], [16, 16, 2]]
    slices, pad = patch_bounds((2, 4, 2), (20, 20, 5), (8, 8, 8))
    assert slices[0] == slice(0, 6) and pad[0] == (2, 0)
    assert slices[2] == slice(0, 5) and pad[2] == (2, 1)


def test_write_and_read_patch_index(tmp_path):
    root = tmp_path / "store"
    ids = make_store(root, n_cases=2, shape_zyx=(24, 32, 28), seed=2)
    ids += make_store(root, n_cases=1, shape_zyx=(24, 32, 28), seed=3, with_label=False, start=5)
    for case_id in ids:
        assert not has_patch_index(root, case_id)
        with pytest.raises(StoreError):
            read_patch_index(root, case_id)
        attrs = write_patch_index(root, case_id, (16, 16, 16), n_lesion=30, n_background=40, seed=11)
        assert has_patch_index(root, case_id)
        idx = read_patch_index(root, case_id)
        assert attrs["seed"] == 11 and attrs["patch_zyx"] == [16, 16, 16]
        assert attrs["n_background"] == 40 == len(idx["background"])
        assert read_patch_index_attrs(root, case_id)["index_id"] == attrs["index_id"]
        g = zarr.open_group(str(root / "cases" / case_id), mode="r")
        label_arr = reference_label(g)
        label = label_arr[...] if label_arr is not None else None
        expected = build_patch_index(label, foreground_mask(g)[...], (16, 16, 16), n_lesion=30, n_background=40, seed=11)
        for kind in ("lesion", "background"):
            np.testing.assert_array_equal(idx[kind], expected[kind])
            assert g[f"patch_index/{kind}"].dtype == np.int32
        if label is None:
            assert attrs["has_label"] is False and attrs["n_lesion"] == 0 and idx["lesion"].shape == (0, 3)
        else:
            assert attrs["n_lesion"] == 30 and attrs["n_lesion_components"] >= 1
            assert 0 < attrs["lesion_fraction"] < 0.2
            assert attrs["lesion_voxels"] == int(label.sum())
    # a half-replaced index (arrays from two builds) is refused
    write_case_array(root, ids[0], "patch_index/lesion", np.zeros((1, 3), np.int32), chunk_zyx=(1, 3), attrs={"lesionflow_patch_index": {"index_id": "other"}})
    with pytest.raises(StoreError, match="different builds"):
        read_patch_index(root, ids[0])


def test_patches_module_imports_neither_torch_nor_prefect():
    code = "import sys, pipeline.prepare.patches; print([m for m in ('torch', 'prefect') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "[]"


def test_indexable_cases_hold_the_requested_channels(tmp_path):
    from pipeline.prepare.patches import indexable_cases

    root = tmp_path / "s.zarr"
    labelled = make_store(root, n_cases=2, shape_zyx=(16, 16, 16), n_lesions=1)
    make_store(root, n_cases=1, shape_zyx=(16, 16, 16), start=5, with_label=False)
    flair_only = make_store(root, n_cases=1, shape_zyx=(16, 16, 16), start=7, channels=("FLAIR",))
    assert indexable_cases(root) == labelled + flair_only  # the index does not depend on channels
    assert indexable_cases(root, ["T1"]) == labelled
    with pytest.raises(StoreError, match=r"requested \['PD'\], the store has \['FLAIR', 'T1', 'T2'\]"):
        indexable_cases(root, ["PD"])


def test_patch_bounds_and_crop_agree_with_voxel_by_voxel_indexing_also_outside_the_volume():
    """Every patch, centred inside, on the edge or wholly outside the volume (a patch of zeros), read
    through ``patch_bounds`` + ``np.pad`` and through ``augment.crop`` equals indexing voxel by voxel;
    a patch wholly outside once read wrapped-around voxels (a negative stop index)."""
    from pipeline.prepare.augment import crop

    rng = np.random.default_rng(0)
    volume = rng.normal(size=(2, 12, 15, 9)).astype(np.float32)
    for _ in range(400):
        centre = rng.integers(-25, 40, 3)
        size = tuple(int(s) for s in rng.integers(1, 30, 3))
        axes = [np.arange(p) + c - p // 2 for c, p in zip(centre, size)]
        inside = [(a >= 0) & (a < n) for a, n in zip(axes, volume.shape[1:])]
        expected = np.zeros((2, *size), np.float32)
        expected[np.ix_(range(2), *[np.nonzero(m)[0] for m in inside])] = volume[np.ix_(range(2), *[a[m] for a, m in zip(axes, inside)])]
        slices, pad = patch_bounds(centre, volume.shape[1:], size)
        np.testing.assert_array_equal(np.pad(volume[(slice(None), *slices)], ((0, 0), *pad)), expected)
        np.testing.assert_array_equal(crop(volume, centre, size), expected)
