import numpy as np
import pytest

from pipeline.core.volume import Volume
from pipeline.lesions.components import dice, lesion_table


def two_touching_diagonally() -> np.ndarray:
    m = np.zeros((8, 8, 8), np.uint8)
    m[2, 2, 2] = 1
    m[3, 3, 3] = 1  # touches the first only through a corner (26-connected, not 6/18)
    m[6, 6, 6] = 1
    return m


@pytest.mark.parametrize("connectivity,count", [(26, 2), (18, 3), (6, 3)])
def test_connectivity_changes_count(connectivity, count):
    summary, rows = lesion_table(Volume(two_touching_diagonally()), connectivity=connectivity)
    assert summary["lesion_count"] == count
    assert sum(r["voxels"] for r in rows) == 3


def test_volumes_use_voxel_size_and_min_size_filter():
    m = np.zeros((10, 10, 10), np.uint8)
    m[1:4, 1:4, 1:4] = 1  # 27 voxels
    m[8, 8, 8] = 1  # 1 voxel
    v = Volume(m, spacing=(0.5, 0.5, 2.0))  # 0.5 mm³ per voxel
    summary, rows = lesion_table(v)
    assert summary["total_volume_ml"] == pytest.approx(28 * 0.5 / 1000)
    assert [r["volume_mm3"] for r in rows] == [13.5, 0.5]
    summary, rows = lesion_table(v, min_size_mm3=1.0)
    assert summary["lesion_count"] == 1 and rows[0]["voxels"] == 27


def test_centroid_is_in_world_coordinates():
    m = np.zeros((10, 10, 10), np.uint8)
    m[4:7, 2:5, 6:9] = 1  # centre at (z, y, x) = (5, 3, 7)
    d = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    v = Volume(m, spacing=(2.0, 3.0, 4.0), origin=(100.0, 50.0, -10.0), direction=d)
    _, rows = lesion_table(v)
    expected = v.index_to_world((7, 3, 5))
    assert (rows[0]["centroid_x_mm"], rows[0]["centroid_y_mm"], rows[0]["centroid_z_mm"]) == pytest.approx(tuple(expected))
    assert rows[0]["bbox_min_zyx"] == "4,2,6" and rows[0]["bbox_max_zyx"] == "6,4,8"


def test_empty_mask_and_bad_connectivity():
    summary, rows = lesion_table(Volume(np.zeros((4, 4, 4), np.uint8)))
    assert summary == {**summary, "lesion_count": 0, "total_volume_ml": 0.0} and rows == []
    with pytest.raises(ValueError, match="^connectivity must be 6, 18 or 26, got 8$"):
        lesion_table(Volume(np.zeros((4, 4, 4), np.uint8)), connectivity=8)
    with pytest.raises(ValueError, match="^lesion_table needs a 3-D mask; got a 4-D volume$"):
        lesion_table(Volume(np.zeros((2, 4, 4, 4), np.uint8)))


def test_dice():
    a = np.zeros((4, 4, 4))
    a[:2] = 1
    b = np.zeros((4, 4, 4))
    b[1:3] = 1
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def test_defaults_are_26_connectivity_and_no_minimum_size():
    """Called without options: corner-touching voxels are one lesion (26-connectivity) and a
    single voxel of 0.001 mm³ still counts (no minimum size), and the summary says so."""
    m = two_touching_diagonally()
    summary, rows = lesion_table(Volume(m, spacing=(0.1, 0.1, 0.1)))
    assert summary["connectivity"] == 26 and summary["min_lesion_mm3"] == 0.0
    assert summary["lesion_count"] == 2
    assert [r["voxels"] for r in rows] == [2, 1]
    assert summary["total_volume_ml"] == pytest.approx(3 * 0.001 / 1000, rel=1e-9)
    assert (summary, rows) == lesion_table(Volume(m, spacing=(0.1, 0.1, 0.1)), connectivity=26, min_size_mm3=0.0)


def test_min_size_keeps_a_lesion_of_exactly_that_size_and_drops_small_ones_anywhere():
    """Smaller than the minimum is dropped, equal is kept; a small lesion met first in scan
    order does not stop the count (the large ones after it are still there)."""
    m = np.zeros((10, 10, 10), np.uint8)
    m[0, 0, 0] = 1  # 1 voxel, first in scan order
    m[2:4, 2:4, 2:4] = 1  # 8 voxels
    m[6, 6:8, 6] = 1  # 2 voxels
    m[8:10, 8:10, 8] = 1  # 4 voxels
    v = Volume(m, spacing=(0.5, 1.0, 2.0))  # 1 mm³ per voxel
    summary, rows = lesion_table(v, min_size_mm3=2.0)
    assert [r["voxels"] for r in rows] == [8, 4, 2]
    assert summary["lesion_count"] == 3 and summary["total_volume_ml"] == pytest.approx(14 / 1000)
    assert [r["voxels"] for r in lesion_table(v, min_size_mm3=2.5)[1]] == [8, 4]


def test_centroids_keep_fractions_of_a_millimetre():
    """A two-voxel lesion's centroid lies between voxel centres: not rounded to whole mm."""
    m = np.zeros((6, 6, 6), np.uint8)
    m[1, 2, 3:5] = 1  # x = 3.5 (index), y = 2, z = 1
    v = Volume(m, spacing=(0.7, 0.3, 1.3), origin=(0.11, 0.22, 0.33))
    (row,) = lesion_table(v)[1]
    expected = v.index_to_world((3.5, 2.0, 1.0))  # 0.11 + 2.45, 0.22 + 0.6, 0.33 + 1.3
    np.testing.assert_allclose(expected, (2.56, 0.82, 1.63))
    assert (row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]) == pytest.approx((2.56, 0.82, 1.63), abs=1e-9)
