"""The single-file commit: pipeline.core.atomic (local) as used by the store's files and the writers."""

from __future__ import annotations

import os
import threading

import pytest

from pipeline import store
from pipeline.core import atomic


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.json"
    atomic.write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic.atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []
    with pytest.raises(RuntimeError), atomic.atomic_path(tmp_path / "new.json") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no partial file appears


def test_a_failed_rename_leaves_nothing_visible(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        store.put_bytes(tmp_path, "quality/summary.json", b"{}")
    assert store.read_bytes(tmp_path, "quality/summary.json") is None and _leftovers(tmp_path / "quality") == []


def test_temporary_names_are_unique(tmp_path):
    names = {atomic.temp_name(tmp_path / "model.pt", ".pt").name for _ in range(100)}
    assert len(names) == 100 and all(n.startswith(".model.pt.tmp-") and n.endswith(".pt") for n in names)


@pytest.mark.parametrize("write", [atomic.write_bytes_atomic, store.write_bytes_atomic])
def test_concurrent_writers_of_one_file_both_succeed_and_readers_see_whole_files(tmp_path, write):
    """Two threads rewrite one file over and over while a third reads it: no writer fails
    (a shared temporary name would make one rename the other's file away), every read is one
    complete payload, and the file ends as one of the two."""
    target = tmp_path / "shared.bin"
    payloads = [bytes([1]) * 300_000, bytes([2]) * 200_000]
    errors: list[BaseException] = []
    seen: set[bytes] = set()
    stop = threading.Event()

    def writer(data: bytes) -> None:
        try:
            for _ in range(40):
                write(target, data)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(target.read_bytes())
            except FileNotFoundError:
                pass

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert errors == []
    assert target.read_bytes() in payloads
    assert seen <= set(payloads)
    assert _leftovers(tmp_path) == []


def test_writers_use_the_shared_helper(tmp_path):
    """NIfTI and sidecar writes commit the same way: nothing but the final files remains."""
    import numpy as np

    from pipeline.core.volume import Volume
    from pipeline.io.writers import write_nifti, write_sidecar

    write_nifti(Volume(np.zeros((2, 3, 4), np.int16)), tmp_path / "a.nii.gz")
    write_sidecar({"SeriesNumber": 3}, tmp_path / "a.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.nii.gz"]
