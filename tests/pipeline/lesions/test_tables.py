"""pipeline.lesions.tables over a store: the defaults (26-connectivity, no minimum size) reach the tables."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from pipeline.core.config import PipelineConfig
from pipeline.lesions import components, tables
from pipeline.store import read_table, write_case_array
from tests.store_factory import make_store

SHAPE = (12, 14, 16)
VOXEL_MM3 = 0.001  # 0.1 mm voxels: any positive minimum size drops a one-voxel lesion


def _prediction() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[2, 2, 2] = m[3, 3, 3] = 1  # corner-touching: one lesion at 26-connectivity, two at 6 or 18
    m[8, 10, 12] = 1  # one voxel
    return m


@pytest.fixture()
def scored(tmp_path):
    root = tmp_path / "store.zarr"
    (case_id,) = make_store(root, n_cases=1, shape_zyx=SHAPE, spacing_xyz=(0.1, 0.1, 0.1), n_lesions=1)
    write_case_array(root, case_id, "predictions/m1/mask", _prediction())
    return root, case_id


def test_write_lesion_tables_defaults(scored):
    root, case_id = scored
    out = tables.write_lesion_tables(root, "m1")
    (row,) = read_table(root, "case_volumes").to_dict(orient="records")
    assert row["case_id"] == case_id and row["model_version"] == "m1"
    assert (row["connectivity"], row["min_lesion_mm3"]) == (26, 0.0)
    assert row["lesion_count"] == 2
    assert row["total_volume_ml"] == pytest.approx(3 * VOXEL_MM3 / 1000, rel=1e-9)
    assert row["voxel_volume_mm3"] == pytest.approx(VOXEL_MM3)
    assert read_table(root, "lesions")["voxels"].tolist() == [2, 1]
    assert out["case_volumes"].to_dict(orient="records") == [row]
    # the same store with other settings gives other counts: the defaults above are what decided
    six = tables.write_lesion_tables(root, "m1", connectivity=6)["case_volumes"].iloc[0]
    assert (six["lesion_count"], six["connectivity"]) == (3, 6)
    dropped = tables.write_lesion_tables(root, "m1", min_size_mm3=0.0015)["case_volumes"].iloc[0]
    assert (dropped["lesion_count"], dropped["min_lesion_mm3"]) == (1, 0.0015)


def test_case_lesion_rows_defaults(scored):
    root, case_id = scored
    case_row, rows = tables.case_lesion_rows(root, case_id, "m1")
    assert (case_row["connectivity"], case_row["min_lesion_mm3"], case_row["lesion_count"]) == (26, 0.0, 2)
    assert [r["voxels"] for r in rows] == [2, 1] and [r["lesion_id"] for r in rows] == [1, 2]
    assert tables.case_lesion_rows(root, case_id, "other-model") is None


def test_every_entry_point_defaults_to_the_configuration():
    """lesion_table, the store tables and PipelineConfig agree: 26-connectivity, no minimum size."""
    cfg = PipelineConfig()
    assert (cfg.connectivity, cfg.min_lesion_mm3) == (26, 0.0)
    for fn in (components.lesion_table, tables.case_lesion_rows, tables.write_lesion_tables):
        params = inspect.signature(fn).parameters
        assert params["connectivity"].default == cfg.connectivity, fn.__name__
        assert params["min_size_mm3"].default == cfg.min_lesion_mm3, fn.__name__
