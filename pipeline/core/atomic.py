"""Atomic single-file commit on a local file system: write a temporary file, then rename it.

A file is written under a temporary name in its own folder and moved onto its final name with
one ``os.replace``, which is atomic on a POSIX file system: a reader sees the old file or the
new one, never a part of either. The temporary name is unique per call
(``.<name>.tmp-<uuid><suffix>``), so two writers of one file never share it: each renames its
own complete file and the last rename wins. On failure the temporary file is removed and the
target is left as it was.

This is the one implementation of the protocol: the NIfTI/JSON writers (:mod:`pipeline.io.writers`)
and the store's local backend (:mod:`pipeline.store.backend.local`) use it. Standard library only,
so any layer may import it.

Example:
    >>> import json, os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> target = write_bytes_atomic(os.path.join(d, "a", "x.json"), b'{"k": 1}')
    >>> json.loads(target.read_bytes())
    {'k': 1}
    >>> with atomic_path(target) as tmp:  # any writer that takes a path
    ...     _ = tmp.write_text('{"k": 2}')
    >>> json.loads(target.read_bytes()), sorted(os.listdir(target.parent))
    ({'k': 2}, ['x.json'])
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: Path, suffix: str = "") -> Path:
    """A fresh temporary path next to ``path``: ``.<name>.tmp-<uuid hex><suffix>``.

    ``suffix`` keeps an extension that a writer looks at (``.nii.gz`` for nibabel).
    """
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}{suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on normal exit it replaces ``path`` in one rename.

    The parent folder is created. When the block raises, the temporary file is removed, the
    exception propagates and ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final, suffix)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` whole (temporary file + rename); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
