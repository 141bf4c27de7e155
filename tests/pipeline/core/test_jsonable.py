"""The one JSON sanitiser: strict JSON out of numpy, pandas, paths, dates, enums and pydicom values."""

from __future__ import annotations

import datetime as dt
import enum
import json
import math
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.jsonable import to_jsonable


class Colour(str, enum.Enum):  # noqa: UP042 - a (str, Enum) on purpose: the sanitiser must handle both kinds
    RED = "red"


def strict(value):
    return json.loads(json.dumps(to_jsonable(value), allow_nan=False))


def test_numpy_scalars_and_arrays_become_python():
    out = to_jsonable({"f": np.float32(0.5), "i": np.int16(-3), "b": np.bool_(True), "a": np.arange(4).reshape(2, 2)})
    assert out == {"f": 0.5, "i": -3, "b": True, "a": [[0, 1], [2, 3]]}
    assert type(out["f"]) is float and type(out["i"]) is int and type(out["b"]) is bool


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, np.float64("nan"), np.float32("inf"), pd.NA, pd.NaT, np.datetime64("NaT")])
def test_non_finite_and_missing_become_none(bad):
    assert to_jsonable(bad) is None
    assert strict([bad, {"k": bad}]) == [None, {"k": None}]
    assert to_jsonable(np.array([1.0, bad if isinstance(bad, float) else np.nan])) == [1.0, None]


def test_paths_dates_enums_decimals_bytes_and_containers():
    when = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    out = strict({
        "path": Path("/data/x.nii.gz"), "when": when, "day": dt.date(2026, 1, 2), "ts": pd.Timestamp("2026-01-02T03:04:05"),
        "colour": Colour.RED, "dec": Decimal("1.25"), "raw": b"\x00\x01", "tuple": (1, 2), "set": {3}, Path("k"): 1,
        "nested": {"deep": [np.float64(1.5), (np.int8(2),)]},
    })
    assert out == {
        "path": "/data/x.nii.gz", "when": "2026-11-29T12:00:00+00:00", "day": "2026-01-02", "ts": "2026-01-02T03:04:05",
        "colour": "red", "dec": 1.25, "raw": None, "tuple": [1, 2], "set": [3], "k": 1, "nested": {"deep": [1.5, [2]]},
    }


def test_str_int_float_subclasses_become_plain_types():
    from pydicom.multival import MultiValue
    from pydicom.uid import UID
    from pydicom.valuerep import IS, DSfloat

    out = to_jsonable({"uid": UID("1.2.3"), "is": IS("7"), "ds": DSfloat("0.5"), "mv": MultiValue(DSfloat, ["1", "0.5"])})
    assert out == {"uid": "1.2.3", "is": 7, "ds": 0.5, "mv": [1.0, 0.5]}
    assert [type(v) for v in (out["uid"], out["is"], out["ds"])] == [str, int, float]


def test_pydantic_models_and_unknown_objects():
    from storage_schemas.models import SourceFile

    assert to_jsonable(SourceFile(relpath="a", sha256="b", size_bytes=1)) == {"relpath": "a", "sha256": "b", "size_bytes": 1, "mtime_ns": None,
                                                                                 "stat_tag": None}

    class Thing:
        def __str__(self) -> str:
            return "thing"

    assert to_jsonable(Thing()) == "thing"


def test_pydantic_models_take_their_own_json_form():
    """A model becomes what its model_dump_json says (UTC as 'Z', bytes as text, sets as lists)."""
    from pydantic import BaseModel

    class Row(BaseModel):
        when: dt.datetime
        path: Path
        colour: Colour
        blob: bytes
        tags: set[int]

    row = Row(when=dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), path=Path("/a/b"), colour=Colour.RED, blob=b"ab", tags={2})
    assert to_jsonable(row) == json.loads(row.model_dump_json())
    assert to_jsonable(row)["when"] == "2026-01-02T03:04:05Z" and to_jsonable(row)["blob"] == "ab"


def test_sets_of_mixed_types_are_listed_in_a_stable_order():
    assert to_jsonable({"b", 1, 2.5, None}) == to_jsonable({None, 2.5, 1, "b"}) == ["b", 1, 2.5, None]  # sorted by repr


def test_numpy_dates_and_durations():
    assert to_jsonable(np.datetime64("2026-01-02T03:04:05")) == "2026-01-02T03:04:05"
    assert to_jsonable(np.timedelta64(1500, "ms")) == 1.5
    assert to_jsonable(np.timedelta64(2, "m")) == 120.0
    assert to_jsonable(np.timedelta64("NaT")) is None and to_jsonable(np.datetime64("NaT")) is None


def test_pandas_containers_are_lists_not_missing():
    assert to_jsonable(pd.Series([1.0, np.nan, 3.0])) == [1.0, None, 3.0]
    assert to_jsonable(pd.Index(["a", "b"])) == ["a", "b"]
    assert to_jsonable(pd.Timestamp("2026-01-02")) == "2026-01-02T00:00:00" and to_jsonable(pd.Timedelta(seconds=3)) == 3.0
