"""pipeline.store.backend.local: paths under the root, listings, and commit_node's replacement
of an existing node (new content in place, nothing left in staging)."""

from __future__ import annotations

import numpy as np
import zarr

from pipeline.store.backend.local import LocalBackend
from pipeline.store.layout import STAGING


def _array_node(values):
    def build(group: zarr.Group, name: str) -> None:
        group.create_array(name, data=np.asarray(values, np.int16))

    return build


def _read(root, relpath):
    return zarr.open_array(str(root / relpath), mode="r")[...]


def test_location_stays_under_the_root(tmp_path):
    b = LocalBackend(tmp_path)
    assert b.location() == tmp_path and b.location("") == tmp_path and b.location("/") == tmp_path
    assert b.location("/cases/x/") == tmp_path / "cases" / "x"  # a leading slash is not the file-system root
    assert b.location("cases/x") == tmp_path / "cases" / "x"
    assert b.location("X/sub-X/") == tmp_path / "X" / "sub-X"  # only slashes are stripped
    assert repr(b) == f"LocalBackend({str(tmp_path)!r})"


def test_list_makedirs_and_remove(tmp_path):
    root = tmp_path / "new" / "store"
    b = LocalBackend(root)
    assert b.list() == []
    b.makedirs()  # no argument: the root itself, parents included
    assert root.is_dir()
    b.makedirs("cases/a", "tables")
    b.makedirs("cases/a", "tables")  # again: fine
    b.put("tables/t.csv", b"x")
    assert b.list() == ["cases", "tables"] and b.list("cases") == ["a"] and b.list("tables") == ["t.csv"]
    assert b.list("nope") == [] and b.list("tables/t.csv") == []
    b.remove_prefix("tables/t.csv")  # a file
    b.remove_prefix("cases")  # a folder, recursively
    b.remove_prefix("missing")  # nothing there: fine
    b.remove("missing.txt")
    assert b.list() == ["tables"] and b.list("tables") == []


def test_committed_children_are_visible_folders_with_a_zarr_json(tmp_path):
    b = LocalBackend(tmp_path)
    b.makedirs("cases/done", "cases/half", "cases/.hidden")
    (tmp_path / "cases/done/zarr.json").write_text("{}")
    (tmp_path / "cases/.hidden/zarr.json").write_text("{}")
    (tmp_path / "cases/file").write_text("{}")
    assert b.committed_children("cases", "meta") == ["done"]
    assert b.committed_children("nothing", "meta") == []


def test_commit_node_replaces_an_existing_node_and_leaves_no_staging(tmp_path):
    b = LocalBackend(tmp_path)
    b.makedirs("cases/c1")
    first = b.commit_node("cases/c1/mask", _array_node([1, 2, 3]))
    assert first == tmp_path / "cases/c1/mask"
    np.testing.assert_array_equal(_read(tmp_path, "cases/c1/mask"), [1, 2, 3])
    assert list((tmp_path / STAGING).iterdir()) == []
    b.commit_node("cases/c1/mask", _array_node([7, 8]))
    np.testing.assert_array_equal(_read(tmp_path, "cases/c1/mask"), [7, 8])
    assert sorted(p.name for p in (tmp_path / "cases/c1").iterdir()) == ["mask"]
    assert list((tmp_path / STAGING).iterdir()) == []  # neither the build folder nor the old node is left


def test_commit_node_on_a_store_whose_staging_folder_is_gone(tmp_path):
    b = LocalBackend(tmp_path / "s")
    b.makedirs("cases")  # no .staging yet
    b.commit_node("cases/x", _array_node([5]))
    np.testing.assert_array_equal(_read(tmp_path / "s", "cases/x"), [5])
    assert list((tmp_path / "s" / STAGING).iterdir()) == []
