"""Shared fixtures. Real scanner data lives in ../shared/data (beside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LESIONFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("LESIONFLOW_PSEUDONYM_KEY", "test-key-not-secret")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real scanner data not found at {SHARED_DATA} (set LESIONFLOW_SHARED_DATA)")
    return SHARED_DATA
