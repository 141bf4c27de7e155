"""The numbered TIFF slice-stack reader (pipeline/io/readers/slicestack.py) on synthetic stacks and one real LGG patient."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.limits import ReadLimits
from pipeline.io.readers.errors import ReaderError, ReasonCode
from pipeline.io.readers.slicestack import read_mask_stack, read_slice_planes, read_slice_stack, sort_slices
from tests.slicestack_factory import plane_value, write_stack


def _images(folder):
    return [p for p in folder.iterdir() if not p.name.endswith("_mask.tif")]


def test_slices_sorted_numerically_not_by_name(tmp_path):
    write_stack(tmp_path, "TCGA_XX_0001_20000101", 11)
    names = [p.name for p in sort_slices(_images(tmp_path))]
    assert names[:3] == ["TCGA_XX_0001_20000101_1.tif", "TCGA_XX_0001_20000101_2.tif", "TCGA_XX_0001_20000101_3.tif"]
    assert names[-2:] == ["TCGA_XX_0001_20000101_10.tif", "TCGA_XX_0001_20000101_11.tif"]
    assert sorted(p.name for p in _images(tmp_path))[1].endswith("_10.tif")  # what a name sort would have done


def test_planes_become_channels_in_slice_order(tmp_path):
    write_stack(tmp_path, "s", 11, size=16)
    planes = read_slice_planes(_images(tmp_path))
    assert planes.shape == (3, 11, 16, 16) and planes.dtype == np.uint8
    for p in range(3):
        vol = read_slice_stack(_images(tmp_path), plane=p)
        assert vol.shape_zyx == (11, 16, 16) and vol.array.dtype == np.float32
        # z = k - 1 holds slice k's plane p (the value encodes both)
        assert [int(vol.array[z, 5, 5]) for z in range(11)] == [plane_value(k, p) for k in range(1, 12)]


def test_geometry_unknown_unless_configured(tmp_path):
    write_stack(tmp_path, "s", 3, size=8)
    vol = read_slice_stack(_images(tmp_path), plane=1)
    assert vol.spacing == (1.0, 1.0, 1.0) and np.allclose(vol.direction, np.eye(3)) and vol.origin == (0.0, 0.0, 0.0)
    assert vol.meta["geometry_source"] == "unknown"
    vol = read_slice_stack(_images(tmp_path), plane=1, spacing_mm=(0.9, 0.9, 3.0))
    assert vol.spacing == (0.9, 0.9, 3.0) and vol.meta["geometry_source"] == "configured_spacing"


def test_mask_0_255_becomes_0_1_with_every_voxel(tmp_path):
    counts = write_stack(tmp_path, "s", 10, size=24, tumour_slices=(2, 3, 10))
    mask = read_mask_stack([p for p in tmp_path.iterdir() if p.name.endswith("_mask.tif")])
    assert mask.array.dtype == np.uint8 and set(np.unique(mask.array).tolist()) == {0, 1}
    assert [int(mask.array[k - 1].sum()) for k in range(1, 11)] == [counts[k] for k in range(1, 11)]
    assert counts[10] > 0 and mask.array[9].sum() == counts[10]  # slice 10 is the last, not the second


def test_missing_slice_named(tmp_path):
    write_stack(tmp_path, "s", 5, size=8)
    (tmp_path / "s_3.tif").unlink()
    with pytest.raises(ReaderError) as err:
        read_slice_planes(_images(tmp_path))
    assert err.value.code is ReasonCode.MISSING_SLICE and "[3]" in err.value.reason


def test_slices_of_different_sizes_refused(tmp_path):
    import tifffile

    write_stack(tmp_path, "s", 3, size=8)
    tifffile.imwrite(tmp_path / "s_2.tif", np.zeros((9, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(ReaderError) as err:
        read_slice_planes(_images(tmp_path))
    assert err.value.code is ReasonCode.INCOMPLETE_STACK and err.value.path.endswith("s_2.tif")


def test_damaged_slice_and_limits(tmp_path):
    write_stack(tmp_path, "s", 3, size=8)
    with pytest.raises(ReaderError) as err:
        read_slice_planes(_images(tmp_path), limits=ReadLimits(max_voxels=100))
    assert err.value.code is ReasonCode.TOO_LARGE
    (tmp_path / "s_2.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ReaderError) as err:
        read_slice_planes(_images(tmp_path))
    assert err.value.code is ReasonCode.CORRUPT and err.value.path.endswith("s_2.tif")


@pytest.mark.realdata
def test_one_real_lgg_patient(shared_data):
    import tifffile

    folder = shared_data / "lgg" / "kaggle_3m" / "TCGA_CS_4941_19960909"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    images = _images(folder)
    masks = [p for p in folder.iterdir() if p.name.endswith("_mask.tif")]
    flair = read_slice_stack(images, plane=1)
    assert flair.shape_zyx == (len(images), 256, 256) == (23, 256, 256)
    mask = read_mask_stack(masks)
    # independent reference: every mask file read on its own with Pillow, counted
    from PIL import Image

    expected = sum(int((np.asarray(Image.open(p)) > 0).sum()) for p in masks)
    assert int(mask.array.sum()) == expected == 14379
    # slice 10 of the volume is file _10 (z = 9), checked against tifffile directly
    direct = tifffile.imread(folder / "TCGA_CS_4941_19960909_10.tif")
    assert np.array_equal(flair.array[9], direct[..., 1].astype(np.float32))
