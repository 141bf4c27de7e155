"""Schema 1.2: reason codes and numeric grids on catalog rows; 1.1 catalogs and case metadata still read."""

from __future__ import annotations

import pickle
import typing
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline.io.readers.errors import ReaderError
from pipeline.store import append_catalog, catalog_arrow_schema, init_store, query_catalog, read_catalog
from storage_schemas.models import SCHEMA_VERSION, CaseMeta, CatalogRow, ReasonCode, ReasonCodeValue

FIELDS_1_2 = ["reason_code", "shape_x", "shape_y", "shape_z", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "label_on_grid"]


def _row(**kw) -> CatalogRow:
    base = dict(status="rejected", source_relpath="a/IM0001", pipeline_version="0", config_hash="c", run_id="r")
    return CatalogRow(**{**base, **kw})


def test_reason_codes_are_one_string_typed_column():
    assert tuple(int(x) for x in SCHEMA_VERSION.split(".")) >= (1, 2)  # reason codes since 1.2
    assert set(typing.get_args(ReasonCodeValue)) == {c.value for c in ReasonCode}
    assert all(c.value == c.name.lower() for c in ReasonCode)  # snake_case values, one per member
    row = _row(reason="zero-byte file", reason_code=ReasonCode.EMPTY_FILE)
    assert row.reason_code == "empty_file" and ReasonCode(row.reason_code) is ReasonCode.EMPTY_FILE
    with pytest.raises(ValidationError):
        _row(reason_code="not-a-code")
    schema = catalog_arrow_schema()
    assert schema.field("reason_code").type == pa.string()
    assert schema.field("shape_x").type == pa.int64() and schema.field("spacing_z_mm").type == pa.float64()
    assert schema.field("label_on_grid").type == pa.bool_()


def test_reader_errors_carry_a_code_across_processes():
    err = ReaderError("/x/a.dcm", "truncated pixel data", ReasonCode.TRUNCATED)
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason, back.code) == ("/x/a.dcm", "truncated pixel data", ReasonCode.TRUNCATED)
    assert ReaderError("/x/b", "whatever").code is ReasonCode.UNREADABLE  # a reader that says nothing more


def _part_1_1(folder, rows: list[dict]) -> None:
    """A catalog part as lesionflow 1.1 wrote it: the 1.1 columns only."""
    names = [n for n in catalog_arrow_schema().names if n not in FIELDS_1_2]
    schema = pa.schema([catalog_arrow_schema().field(n) for n in names])
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "part-20260101T000000-0a1b2c3d.parquet")


def test_a_1_1_catalog_reads_into_the_1_2_schema(tmp_path):
    root = init_store(tmp_path / "s.zarr")
    when = datetime(2026, 1, 1, tzinfo=UTC)
    common = dict(schema_version="1.1", pipeline_version="0.1.0", config_hash="c", run_id="old", recorded_at=when)
    _part_1_1(root / "catalog", [
        {**common, "case_id": "sub-a_ses-b", "modality": "FLAIR", "status": "converted", "source_relpath": "a/flair.nii.gz",
         "shape_zyx": "12x40x40", "spacing_mm": "1x1x3"},
        {**common, "case_id": "sub-a_ses-b", "modality": "MASK", "status": "rejected", "source_relpath": "a/mask.nii.gz",
         "reason": "label grid does not match any image of the session"},
    ])
    append_catalog(root, [_row(reason="zero-byte file", reason_code=ReasonCode.EMPTY_FILE, source_relpath="b/IM0001")])
    cat = read_catalog(root).set_index("source_relpath")
    assert list(cat.columns) == [n for n in catalog_arrow_schema().names if n != "source_relpath"]
    old = cat.loc["a/mask.nii.gz"]
    assert old["schema_version"] == "1.1" and old["reason"].startswith("label grid")
    assert all(old[f] is None or old[f] != old[f] for f in FIELDS_1_2)  # None / NaN: unknown, not guessed from the words
    assert cat.loc["b/IM0001", "reason_code"] == "empty_file"
    counts = query_catalog(root, "SELECT reason_code, count(*) AS n FROM catalog WHERE status = 'rejected' GROUP BY reason_code ORDER BY n")
    assert len(counts) == 2 and counts["reason_code"].isna().sum() == 1 and "empty_file" in set(counts["reason_code"])


def test_a_1_1_case_meta_with_its_catalog_rows_still_validates():
    row = {"schema_version": "1.1", "status": "unused", "reason": "localizer/scout series", "source_relpath": "a/loc/",
           "pipeline_version": "0.1.0", "config_hash": "c", "run_id": "old", "recorded_at": "2026-01-01T00:00:00Z"}
    geometry = {"shape_zyx": [1, 2, 3], "spacing": [1, 1, 1], "origin": [0, 0, 0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                "affine_lps": [1] * 16, "affine_ras": [1] * 16, "orientation": "LPS"}
    meta = CaseMeta.model_validate({"schema_version": "1.1", "case_id": "sub-a_ses-b", "subject": "sub-a", "session": "ses-b",
                                    "channels": [], "channel_info": [], "has_label": False, "geometry": geometry,
                                    "source_fingerprint": "f", "config_hash": "c", "pipeline_version": "0.1.0", "catalog_rows": [row]})
    assert meta.catalog_rows[0].reason_code is None and meta.catalog_rows[0].label_on_grid is None


def test_a_1_2_case_meta_with_plain_source_paths_still_validates():
    """Schema 1.4 seals source paths and adds source_root; 1.2 metadata (plain paths, no root) reads as it is."""
    source = {"relpath": "DOE^JANE/s3/IM0001", "sha256": "0" * 64, "size_bytes": 1, "mtime_ns": 1}
    channel = {"modality": "FLAIR", "source_format": "dicom", "source_series": "series-3", "series_description": "AX FLAIR",
               "native_spacing": [1, 1, 1], "native_shape_zyx": [1, 2, 3], "native_orientation": "LPS", "sources": [source],
               "intensity_mean": 0, "intensity_std": 1, "intensity_p01": 0, "intensity_p99": 1}
    geometry = {"shape_zyx": [1, 2, 3], "spacing": [1, 1, 1], "origin": [0, 0, 0], "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1],
                "affine_lps": [1] * 16, "affine_ras": [1] * 16, "orientation": "LPS"}
    meta = CaseMeta.model_validate({"schema_version": "1.2", "case_id": "sub-a_ses-b", "subject": "sub-a", "session": "ses-b",
                                    "channels": ["FLAIR"], "channel_info": [channel], "has_label": False, "geometry": geometry,
                                    "source_fingerprint": "f", "config_hash": "c", "pipeline_version": "0.1.0"})
    assert meta.source_root is None and meta.channel_info[0].sources[0].relpath == "DOE^JANE/s3/IM0001"
    assert _row(schema_version="1.2").source_root is None
