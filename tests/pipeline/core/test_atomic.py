"""pipeline.core.atomic: the temporary name and the one-rename protocol (concurrency: tests/pipeline/store/test_commit.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.core.atomic import atomic_path, temp_name, write_bytes_atomic


def test_temporary_names_are_hidden_siblings_with_a_uuid_and_the_suffix():
    target = Path("/store/tables/case_volumes.parquet")
    tmp = temp_name(target)
    assert tmp.parent == target.parent
    assert re.fullmatch(r"\.case_volumes\.parquet\.tmp-[0-9a-f]{32}", tmp.name), tmp.name
    assert re.fullmatch(r"\.x\.nii\.gz\.tmp-[0-9a-f]{32}\.nii\.gz", temp_name(Path("x.nii.gz"), ".nii.gz").name)


def test_atomic_path_creates_the_folder_and_replaces_the_file(tmp_path):
    target = tmp_path / "a" / "b" / "x.txt"
    with atomic_path(target, ".txt") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".txt") and not target.exists()
        tmp.write_text("one")
    assert target.read_text() == "one"
    assert write_bytes_atomic(target, b"two") == target and target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.txt"]


def test_a_block_that_writes_nothing_leaves_the_target_alone(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(FileNotFoundError):
        with atomic_path(target):
            pass  # nothing written: the rename fails, the old file stays
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]
