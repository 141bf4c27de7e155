"""The one exception type raised by every reader.

Example:
    >>> err = ReaderError("/data/a.dcm", "truncated pixel data", ReasonCode.TRUNCATED)
    >>> str(err)
    '/data/a.dcm: truncated pixel data'
    >>> err.path, err.reason, err.code
    ('/data/a.dcm', 'truncated pixel data', <ReasonCode.TRUNCATED: 'truncated'>)
    >>> ReaderError("/data/b.nii", "declares 8e9 voxels", "too_large").code
    <ReasonCode.TOO_LARGE: 'too_large'>
"""

from __future__ import annotations

import os

from storage_schemas.models import ReasonCode

__all__ = ["ReaderError", "ReasonCode"]


class ReaderError(Exception):
    """A file (or series) could not be read; always names the offending file and why.

    Attributes:
        path: the offending file, as a string.
        reason: a specific, human-readable reason (never contains patient identifiers).
        code: the same as a :class:`~storage_schemas.models.ReasonCode` (what the catalog records).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, code: ReasonCode = ReasonCode.UNREADABLE) -> None:
        self.path = os.fspath(path)
        self.reason = str(reason)
        self.code = ReasonCode(code)
        super().__init__(self.path, self.reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self):  # picklable across ProcessPoolExecutor boundaries
        return (type(self), (self.path, self.reason, self.code))
