"""Bounded reading: the checks every reader makes before it allocates or decompresses.

:class:`ReadLimits` (defined in :mod:`pipeline.core.limits`, where
:class:`~pipeline.core.config.PipelineConfig` can carry it, and re-exported here) holds the
ceilings; the helpers below raise :class:`~pipeline.io.readers.errors.ReaderError` naming the
file, with a machine-readable ``code``:

* :func:`check_declared` — ``too_large``: a header declares more voxels or bytes than allowed
  (the reason names the limit and the configuration value that would allow the file);
* :func:`check_file_count` — ``too_large``: a DICOM series of more files than allowed;
* :func:`regular_file` — ``not_regular_file``: a device (``/dev/zero``), FIFO, socket or
  folder where a file was expected (opening a FIFO would block for ever);
* :func:`inside_folder` — ``outside_source``: a data file named by a header (MetaImage
  ``ElementDataFile``) that lies, after resolving symlinks, outside the header's folder;
* :func:`gzip_can_hold` — whether a gzip file of a given size can possibly inflate to the
  bytes a header declares (deflate never exceeds 1032:1), so that a small file declaring
  gigabytes is refused before a buffer of that size is allocated.

Example:
    >>> limits = ReadLimits(max_voxels=1000)
    >>> try:
    ...     check_declared("/data/a.nii", limits, voxels=8000, nbytes=16000, what="10x20x40 int16 voxels")
    ... except ReaderError as err:
    ...     print(err.code)
    ...     print(err.reason.replace(" (to", "\\n(to"))
    too_large
    header declares 10x20x40 int16 voxels = 8,000 voxels, more than the reader limit read_limits.max_voxels = 1,000
    (to read it, raise the limit in the pipeline configuration: {"read_limits": {"max_voxels": 8000}})
    >>> gzip_can_hold(60_000, 50 * 2**20), gzip_can_hold(60_000, 4 * 2**30)
    (True, False)
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from pipeline.core.limits import DEFAULT_READ_LIMITS, ReadLimits
from pipeline.io.readers.errors import ReaderError

__all__ = [
    "DEFAULT_READ_LIMITS",
    "ReadLimits",
    "check_declared",
    "check_file_count",
    "gzip_can_hold",
    "inside_folder",
    "regular_file",
    "resolve",
    "too_large",
]

MAX_DEFLATE_RATIO = 1032
"""Deflate's largest possible expansion (258-byte matches coded in ~2 bits): 1032:1."""
GZIP_SLACK_BYTES = 64 * 1024
"""Allowance for gzip headers/trailers and block overheads in :func:`gzip_can_hold`."""


def resolve(limits: ReadLimits | None) -> ReadLimits:
    """``limits``, or the module default :data:`DEFAULT_READ_LIMITS` when ``None``."""
    return DEFAULT_READ_LIMITS if limits is None else limits


def human_bytes(n: int) -> str:
    """``1536`` → ``'1.5 KiB'`` (binary units, one decimal)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def too_large(path: str | os.PathLike[str], text: str, field: str, value: int, limits: ReadLimits | None) -> ReaderError:
    """The ``too_large`` ReaderError for ``text`` (what was declared) beyond ``limits.<field>``."""
    limit = getattr(resolve(limits), field)
    shown = human_bytes(limit) if field == "max_bytes" else f"{limit:,}"
    raise_to = json.dumps({"read_limits": {field: value}})
    return ReaderError(
        path,
        f"{text}, more than the reader limit read_limits.{field} = {shown} (to read it, raise the limit in the pipeline configuration: {raise_to})",
        code="too_large",
    )


def check_declared(path: str | os.PathLike[str], limits: ReadLimits | None, *, voxels: int, nbytes: int, what: str) -> None:
    """Raise ``too_large`` when ``voxels`` or ``nbytes`` (what a header declares) exceed the limits.

    ``what`` describes the declaration in the reason, e.g. ``"2000x2000x2000 float32 voxels"``.
    """
    limits = resolve(limits)
    if voxels > limits.max_voxels:
        raise too_large(path, f"header declares {what} = {voxels:,} voxels", "max_voxels", voxels, limits)
    if nbytes > limits.max_bytes:
        raise too_large(path, f"header declares {what} = {human_bytes(nbytes)} of voxel data", "max_bytes", nbytes, limits)


def check_file_count(path: str | os.PathLike[str], limits: ReadLimits | None, n_files: int) -> None:
    """Raise ``too_large`` when a DICOM series has more than ``limits.max_files`` files."""
    limits = resolve(limits)
    if n_files > limits.max_files:
        raise too_large(path, f"DICOM series of {n_files:,} files", "max_files", n_files, limits)


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def regular_file(path: str | os.PathLike[str], *, report: str | os.PathLike[str] | None = None, role: str = "") -> os.stat_result:
    """``os.stat(path)`` (symlinks followed) when ``path`` is a regular file, else a ReaderError.

    ``report`` is the file named by the error (default ``path``; e.g. the header that names
    ``path`` as its data file) and ``role`` a prefix for the reason (e.g. ``"data file x.raw"``).
    """
    report = path if report is None else report
    who = f"{role} " if role else ""
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise ReaderError(report, f"{who}not found" if role else "file not found") from exc
    except OSError as exc:
        raise ReaderError(report, f"{who}cannot be opened: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        target = f" ({os.path.realpath(path)})" if os.path.islink(path) else ""
        raise ReaderError(report, f"{who or 'path '}is {kind}{target}, not a regular file: refused", code="not_regular_file")
    return st


def inside_folder(header: str | os.PathLike[str], target: str | os.PathLike[str], role: str) -> Path:
    """The real path of ``target`` when it lies inside the real folder of ``header``.

    Raises ``outside_source`` (naming ``header``) when ``target`` — after resolving ``..`` and
    symlinks, the header's folder resolved likewise — escapes that folder.
    """
    folder = Path(os.path.realpath(Path(header).parent))
    real = Path(os.path.realpath(target))
    if real != folder and folder not in real.parents:
        raise ReaderError(
            header,
            f"{role} resolves to {real}, outside the header's folder {folder}: refused (a header may only name files beside it)",
            code="outside_source",
        )
    return real


def gzip_can_hold(gz_size: int, nbytes: int) -> bool:
    """Whether a gzip file of ``gz_size`` bytes can possibly inflate to ``nbytes`` bytes."""
    return nbytes <= gz_size * MAX_DEFLATE_RATIO + GZIP_SLACK_BYTES
