"""Open the sealed source paths (``src:…``) that ingest writes, for tests that check which file a
row or a message is about. The key is the test session's (``LESIONFLOW_PSEUDONYM_KEY``, set in
``tests/conftest.py``) unless given.

Example (in a test)::

    from tests.sealed import reveal
    rejected = {reveal(r["path"]): r for r in summary["rejected_inputs"]}
"""

from __future__ import annotations

import os
import re

from pipeline.core.lineage import lineage


def reveal(value: str, key: str | None = None) -> str:
    """``value`` opened when it is a sealed path (with ``key``, default the environment's), else as it is."""
    return lineage((key or os.environ["LESIONFLOW_PSEUDONYM_KEY"]).encode()).reveal(value)


def reveal_text(text: str, key: str | None = None) -> str:
    """``text`` with every sealed path in it opened (e.g. a reason naming a file)."""
    lin = lineage((key or os.environ["LESIONFLOW_PSEUDONYM_KEY"]).encode())
    return re.sub(r"(?:src|root):[A-Za-z0-9_-]{43,}", lambda m: lin.open(m.group(0)), text)


def revealed_catalog(store, key: str | None = None):
    """The store's catalog (``read_catalog``) with ``source_relpath`` opened."""
    from pipeline.store import read_catalog

    cat = read_catalog(store)
    cat["source_relpath"] = [reveal(p, key) for p in cat["source_relpath"]]
    return cat
