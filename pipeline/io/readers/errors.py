"""The one exception type raised by every reader.

Example:
    >>> err = ReaderError("/data/a.dcm", "truncated pixel data")
    >>> str(err)
    '/data/a.dcm: truncated pixel data'
    >>> err.path, err.reason
    ('/data/a.dcm', 'truncated pixel data')
"""

from __future__ import annotations

import os


class ReaderError(Exception):
    """A file (or series) could not be read; always names the offending file and why.

    Attributes:
        path: the offending file, as a string.
        reason: a specific, human-readable reason (never contains patient identifiers).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = str(reason)
        super().__init__(self.path, self.reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self):  # picklable across ProcessPoolExecutor boundaries
        return (type(self), (self.path, self.reason))
