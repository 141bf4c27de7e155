"""Tables as partitioned Parquet datasets (pipeline/store/tables.py): keyed replacement, concurrent
writers, compaction, exports, tables written whole by older versions; on a folder and on memory://."""

from __future__ import annotations

import io
import threading
import uuid

import pandas as pd
import pytest

from pipeline import store
from pipeline.store import tables as store_tables

KEYS = ("model_version", "case_id")


@pytest.fixture(params=["local", "memory"])
def root(request, tmp_path):
    if request.param == "local":
        yield store.init_store(tmp_path / "s.zarr")
        return
    url = f"memory://lf-{uuid.uuid4().hex[:12]}/s.zarr"
    yield store.init_store(url)
    store.open_store(url).backend.remove_prefix("")


def lesions(model: str, case: str, n: int, volume: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame({"model_version": model, "case_id": case, "lesion_id": range(1, n + 1), "volume_mm3": volume})


def current(root, name="lesions") -> list[tuple]:
    df = store.read_table(root, name)
    return [] if df is None else list(df.itertuples(index=False, name=None))


def exported(root, name="lesions") -> list[tuple]:
    csv = pd.read_csv(io.BytesIO(store.read_bytes(root, f"tables/{name}.csv")))
    parquet = pd.read_parquet(io.BytesIO(store.read_bytes(root, f"tables/{name}.parquet")))
    assert list(csv.itertuples(index=False, name=None)) == list(parquet.itertuples(index=False, name=None))
    return list(csv.itertuples(index=False, name=None))


def test_a_part_replaces_the_key_groups_it_covers(root):
    store.append_table(root, "lesions", pd.concat([lesions("m1", "a", 2), lesions("m1", "b", 3)]), keys=KEYS)
    store.append_table(root, "lesions", lesions("m2", "a", 1), keys=KEYS)  # another model: kept beside
    store.append_table(root, "lesions", lesions("m1", "b", 1, volume=9.0), keys=KEYS)  # b re-scored: 1 lesion now
    store.append_table(root, "lesions", lesions("m1", "a", 0), keys=KEYS, covers=[{"model_version": "m1", "case_id": "a"}])  # none left
    assert current(root) == [("m1", "b", 1, 9.0), ("m2", "a", 1, 1.0)]
    assert exported(root) == current(root)
    assert len(store.list_dir(root, "tables/lesions")) == 4  # one part per write, none rewritten


def test_write_table_replaces_the_whole_table(root):
    store.append_table(root, "t", pd.DataFrame({"a": [1]}))
    store.write_table(root, "t", pd.DataFrame({"a": [2, 3]}))
    store.append_table(root, "t", pd.DataFrame({"a": [4]}))
    assert store.read_table(root, "t")["a"].tolist() == [2, 3, 4]


def test_concurrent_writers_keep_every_row(root, monkeypatch):
    """Eight writers (scoring runs of eight models) add their parts at the same moment: nobody
    fails, every row of every writer is in the table and in its exports."""
    n = 8
    barrier = threading.Barrier(n, timeout=30)
    put_part = store_tables._put_part

    def held(*args, **kwargs):
        barrier.wait()  # every writer has computed its rows; nobody has written
        return put_part(*args, **kwargs)

    monkeypatch.setattr(store_tables, "_put_part", held)
    errors: list[BaseException] = []

    def score(i: int) -> None:
        try:
            store.append_table(root, "lesions", pd.concat([lesions(f"m{i}", "a", i + 1), lesions(f"m{i}", "b", 1)]), keys=KEYS)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=score, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    rows = current(root)
    assert len(rows) == sum(i + 2 for i in range(n))
    assert {(m, c) for m, c, *_ in rows} == {(f"m{i}", c) for i in range(n) for c in "ab"}
    assert exported(root) == rows  # the last export holds every part
    if not store.is_remote(root):
        assert [p.name for p in (root / "tables").rglob("*") if ".tmp-" in p.name] == []


def test_compaction_keeps_the_current_rows(root, monkeypatch):
    monkeypatch.setattr(store_tables, "TABLE_COMPACT_MIN_PARTS", 4)
    expected: dict[tuple[str, str], int] = {}
    for i in range(11):
        model, case, n = f"m{i % 2}", "abc"[i % 3], i % 4
        store.append_table(root, "lesions", lesions(model, case, n), keys=KEYS, covers=[{"model_version": model, "case_id": case}])
        expected[(model, case)] = n
        assert len(store.list_dir(root, "tables/lesions")) < 4  # merged whenever it reached 4
    rows = current(root)
    assert sorted(rows) == sorted((m, c, k, 1.0) for (m, c), n in expected.items() for k in range(1, n + 1))
    assert exported(root) == rows


def test_a_crash_between_merged_part_and_deletions_leaves_no_duplicate(root, monkeypatch):
    for i in range(3):
        store.append_table(root, "lesions", lesions("m", f"c{i}", 2), keys=KEYS)
    before = current(root)
    backend = store.open_store(root).backend
    monkeypatch.setattr(backend, "remove", lambda relpath: None)  # the merged part lands, the old parts stay
    assert store.compact_table(root, "lesions", min_parts=2) == 3
    assert len(store.list_dir(root, "tables/lesions")) == 4
    assert current(root) == before
    monkeypatch.undo()
    assert store.compact_table(root, "lesions", min_parts=2) == 4  # and a later compaction tidies up
    assert current(root) == before and len(store.list_dir(root, "tables/lesions")) == 1


def test_a_part_landing_after_a_compaction_still_wins_by_its_time(root, monkeypatch):
    """The current rows follow each part's time, not file names or merge order: a slow writer's
    part that lands after a compaction replaces the older rows the merged part holds."""
    # the clock as each call reads it: part a, part b, the merge, then the slow writer's part
    times = iter(["20260101T000001.000000Z", "20260101T000003.000000Z", "20260101T000005.000000Z", "20260101T000004.000000Z"])
    monkeypatch.setattr(store_tables, "_now", lambda: next(times))
    store.append_table(root, "lesions", lesions("m", "a", 3), keys=KEYS)  # t1
    store.append_table(root, "lesions", lesions("m", "b", 2), keys=KEYS)  # t3
    assert store.compact_table(root, "lesions", min_parts=2) == 2  # at t5
    store.append_table(root, "lesions", lesions("m", "a", 1, volume=5.0), keys=KEYS)  # started at t4, lands last
    assert current(root) == [("m", "a", 1, 5.0), ("m", "b", 1, 1.0), ("m", "b", 2, 1.0)]


def test_a_table_written_whole_by_an_older_version_is_read_and_kept(root):
    """Stores written before tables were datasets hold ``tables/<name>.parquet`` only."""
    buf = io.BytesIO()
    pd.concat([lesions("m1", "a", 2), lesions("m1", "b", 1)]).to_parquet(buf, index=False)
    store.put_bytes(root, "tables/lesions.parquet", buf.getvalue())
    assert current(root) == [("m1", "a", 1, 1.0), ("m1", "a", 2, 1.0), ("m1", "b", 1, 1.0)]
    store.append_table(root, "lesions", lesions("m1", "b", 2, volume=3.0), keys=KEYS)
    assert current(root) == [("m1", "a", 1, 1.0), ("m1", "a", 2, 1.0), ("m1", "b", 1, 3.0), ("m1", "b", 2, 3.0)]
    assert exported(root) == current(root)
