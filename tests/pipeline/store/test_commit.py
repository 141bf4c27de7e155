"""The commits of the local backend: single files (pipeline.core.atomic, as used by the store's
files and the writers) and Zarr nodes (staging owned by its writer, idempotent under races)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from pipeline import store
from pipeline.core import atomic
from pipeline.core.volume import Volume
from pipeline.store.backend import local as local_backend
from storage_schemas.models import CaseMeta


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
        except BaseException as exc:  # reported by the assertion below
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


# ------------------------------------------------------------------------------- node commits
# The local backend's node commit (a whole case, or an array added later): staging entries owned
# by their writer, removed by owner liveness; two writers of one node colliding on purpose.

CASE = "sub-a_ses-b"


def _case(seed: int, label: bool, shape=(6, 7, 8)) -> tuple[CaseMeta, np.ndarray, np.ndarray, np.ndarray | None]:
    vol = Volume(np.zeros(shape, np.float32))
    rng = np.random.default_rng(seed)
    meta = CaseMeta(case_id=CASE, subject="sub-a", session="ses-b", channels=["FLAIR"], channel_info=[], has_label=label,
                    geometry=store.geometry_of(vol), source_fingerprint=f"f{seed}", config_hash=f"c{seed}", pipeline_version="0")
    image = rng.random((1, *shape)).astype(np.float32)
    lab = (image[0] > 0.5).astype(np.uint8) if label else None
    return meta, image, np.ones(shape, np.uint8), lab


def _staging(root) -> list[str]:
    return sorted(p.name for p in (root / ".staging").iterdir())


def _collide(monkeypatch, writers, order_later_second: bool = False):
    """Run ``writers`` (callables) in threads held at the commit's rename until all are there.

    With ``order_later_second`` the second writer renames only after the first has returned, so
    it is the later one."""
    barrier = threading.Barrier(len(writers), timeout=30)
    first_done = threading.Event()
    held: set[int] = set()
    original = local_backend.LocalBackend._commit_point

    def commit_point(self, target):
        me = threading.get_ident()
        if me not in held:  # the first attempt of each writer: everyone has built, nobody has renamed
            held.add(me)
            barrier.wait()
            if order_later_second and me == idents[1]:
                assert first_done.wait(30)
        original(self, target)

    monkeypatch.setattr(local_backend.LocalBackend, "_commit_point", commit_point)
    errors: list[BaseException] = []
    results: list = [None] * len(writers)

    def run(i):
        try:
            results[i] = writers[i]()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            if i == 0:
                first_done.set()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(writers))]
    for t in threads:
        t.start()
    idents = [t.ident for t in threads]
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a writer hangs"
    return results, errors


@pytest.fixture(params=["exchange", "move-aside"])
def commit_kind(request, monkeypatch):
    """Both ways a node replaces another: the atomic exchange, and the move-aside fallback of
    file systems that cannot exchange."""
    if request.param == "move-aside":
        monkeypatch.setattr(local_backend, "exchange", lambda a, b: False)
    return request.param


def test_two_writers_of_one_new_case_both_commit(tmp_path, monkeypatch, commit_kind):
    """Both writers are past the point where the case did not exist yet; neither fails
    ("Directory not empty"), and the case is committed whole."""
    root = store.init_store(tmp_path / "s.zarr")
    meta, image, fg, lab = _case(0, label=True)
    results, errors = _collide(monkeypatch, [lambda: store.write_case(root, meta, image, fg, lab)] * 2)
    assert errors == [] and results == [root / "cases" / CASE] * 2
    assert store.list_cases(root) == [CASE]
    g = store.open_case(root, CASE)
    np.testing.assert_array_equal(g["image"][:], image)
    np.testing.assert_array_equal(store.reference_label(g)[:], lab)
    assert _staging(root) == []


@pytest.mark.parametrize("existing", [False, True], ids=["new case", "replacing a case"])
def test_the_later_of_two_different_writers_wins_whole(tmp_path, monkeypatch, commit_kind, existing):
    """Different content: the writer that renames last wins, with nothing of the other left (no
    label array of the first in a case that has none)."""
    root = store.init_store(tmp_path / "s.zarr")
    if existing:
        store.write_case(root, *_case(9, label=True))
    first, later = _case(1, label=True), _case(2, label=False)
    _, errors = _collide(monkeypatch, [lambda: store.write_case(root, *first), lambda: store.write_case(root, *later)],
                         order_later_second=True)
    assert errors == []
    g = store.open_case(root, CASE)
    assert store.read_case_meta(root, CASE).source_fingerprint == "f2"
    np.testing.assert_array_equal(g["image"][:], later[1])
    assert sorted(g.array_keys()) == ["image"] and store.foreground_mask(g) is not None and store.reference_label(g) is None
    assert _staging(root) == []


def test_arrays_added_later_collide_cleanly(tmp_path, monkeypatch, commit_kind):
    root = store.init_store(tmp_path / "s.zarr")
    store.write_case(root, *_case(0, label=False))
    masks = [np.zeros((6, 7, 8), np.uint8), np.ones((6, 7, 8), np.uint8)]
    _, errors = _collide(monkeypatch, [lambda: store.write_case_array(root, CASE, "predictions/m/mask", masks[0]),
                                       lambda: store.write_case_array(root, CASE, "predictions/m/mask", masks[1])],
                         order_later_second=True)
    assert errors == []
    assert int(store.prediction_mask(store.open_case(root, CASE), "m")[:].sum()) == masks[1].size


# ------------------------------------------------------------------------------- staging owners
def _dead_process() -> tuple[int, int]:
    """(pid, start) of a process that has exited, as its staging entries would name it."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = local_backend._process_start(proc.pid)[0]
    finally:
        proc.kill()
        proc.wait()
    return proc.pid, start


def _entry(root, name: str, age_s: float = 0.0):
    path = root / ".staging" / name
    (path / "node" / "image").mkdir(parents=True)
    (path / "node" / "image" / "c").write_bytes(b"chunk")
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def test_staging_of_dead_writers_goes_at_once_and_of_live_writers_never(tmp_path):
    root = store.init_store(tmp_path / "s.zarr")
    me = local_backend.StagingOwner.current()
    host = me.host
    dead_pid, dead_start = _dead_process()
    uid = "0123456789abcdef0123456789abcdef"
    live_old = _entry(root, f"{uid}.{me.pid}.{me.start}.{host}", age_s=7 * 24 * 3600)  # a live writer, a week old
    live_trash = _entry(root, f"old-{uid}.{me.pid}.{me.start}.{host}", age_s=7 * 24 * 3600)
    dead_new = _entry(root, f"{uid[::-1]}.{dead_pid}.{dead_start}.{host}")  # a writer killed a moment ago
    reused = _entry(root, f"{'a' * 32}.{me.pid}.{me.start - 500}.{host}")  # our pid, but another process's start
    foreign_new = _entry(root, f"{'b' * 32}.{dead_pid}.{dead_start}.other-host.example")
    foreign_old = _entry(root, f"{'c' * 32}.{dead_pid}.{dead_start}.other-host.example", age_s=7 * 3600)
    legacy_new, legacy_old = _entry(root, "d" * 32), _entry(root, "e" * 32, age_s=7 * 3600)
    assert store.clean_staging(root) == 4
    left = set(_staging(root))
    assert left == {live_old.name, live_trash.name, foreign_new.name, legacy_new.name}
    assert {dead_new.name, reused.name, foreign_old.name, legacy_old.name}.isdisjoint(left)


def test_commits_stage_under_their_owner(tmp_path, monkeypatch):
    root = store.init_store(tmp_path / "s.zarr")
    seen: list[str] = []
    original = local_backend.LocalBackend._commit_point

    def commit_point(self, target):
        seen.extend(_staging(root))
        original(self, target)

    monkeypatch.setattr(local_backend.LocalBackend, "_commit_point", commit_point)
    store.write_case(root, *_case(0, label=False))
    (name,) = seen
    owner = local_backend.StagingOwner.parse(name)
    assert owner == local_backend.StagingOwner.current() and owner.alive()
    assert _staging(root) == []


def test_replacing_a_case_never_hides_it(tmp_path, monkeypatch):
    """Where the file system exchanges folders atomically, the case is there at every step of its
    replacement (the move-aside fallback leaves a moment without it: at the rename after the old
    case went aside)."""
    root = store.init_store(tmp_path / "s.zarr")
    store.write_case(root, *_case(0, label=False))
    seen: list[bool] = []
    original = local_backend.LocalBackend._commit_point

    def commit_point(self, target):
        seen.append((target / "zarr.json").is_file())
        original(self, target)

    monkeypatch.setattr(local_backend.LocalBackend, "_commit_point", commit_point)
    store.write_case(root, *_case(1, label=True))
    if store.open_store(root).backend.exchange_supported is False:
        pytest.skip("this file system cannot exchange folders atomically (the move-aside fallback is used)")
    assert seen and all(seen)
    assert store.read_case_meta(root, CASE).source_fingerprint == "f1" and _staging(root) == []
