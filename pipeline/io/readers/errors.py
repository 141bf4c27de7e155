"""The one exception type raised by every reader.

Example:
    >>> err = ReaderError("/data/a.dcm", "truncated pixel data")
    >>> str(err)
    '/data/a.dcm: truncated pixel data'
    >>> err.path, err.reason, err.code
    ('/data/a.dcm', 'truncated pixel data', 'unreadable')
    >>> ReaderError("/data/b.nii", "declares 8e9 voxels", code="too_large").code
    'too_large'
"""

from __future__ import annotations

import os

REASON_CODES: dict[str, str] = {
    "unreadable": "the file could not be read or understood (the default)",
    "truncated": "the file holds less data than its header declares",
    "too_large": "the header declares more voxels, bytes or files than a reader limit allows (ReadLimits)",
    "outside_source": "a header names a data file outside the header's own folder",
    "not_regular_file": "a device, FIFO, socket or folder where a regular file was expected",
    "no_decoder": "compressed pixel data in a transfer syntax that no installed decoder reads",
}
"""Machine-readable :attr:`ReaderError.code` values and what each means."""


class ReaderError(Exception):
    """A file (or series) could not be read; always names the offending file and why.

    Attributes:
        path: the offending file, as a string.
        reason: a specific, human-readable reason (never contains patient identifiers).
        code: a short snake_case kind of failure, one of :data:`REASON_CODES`
            (``"unreadable"`` unless the raiser says otherwise).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, code: str = "unreadable") -> None:
        if code not in REASON_CODES:
            raise ValueError(f"unknown ReaderError code {code!r}; known: {', '.join(REASON_CODES)}")
        self.path = os.fspath(path)
        self.reason = str(reason)
        self.code = code
        super().__init__(self.path, self.reason)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self):  # picklable across ProcessPoolExecutor boundaries
        return (type(self), (self.path, self.reason, self.code))
