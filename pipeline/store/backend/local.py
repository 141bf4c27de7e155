"""Backend for a store on a local or shared POSIX file system: staging and atomic rename.

Commit protocol. A Zarr node (a whole case, or an array added later such as a patch index or a
prediction) is written completely under ``.staging/<entry>/`` and then moved to its place with
one rename, atomic on a POSIX file system, so a reader never sees a half-written node.

* Replacing an existing node exchanges the two atomically (Linux ``renameat2(RENAME_EXCHANGE)``),
  so a reader sees the old node or the new one, never a mix and never nothing; the old one is
  then deleted from staging. Where the file system cannot exchange (NFS, macOS), the old node is
  moved aside into staging first and the new one renamed in (the node is absent in between).
* Commits are idempotent and may race: when another writer commits the same node between our
  look and our rename (two ingests of one cohort), the rename that finds a node there replaces
  it instead of failing, so every writer's commit succeeds and the last one to rename wins. Two
  writers of one case from the same sources write the same bytes, so which one wins does not
  matter; with different content the later one wins whole.

Staging entries carry their owner in their name, ``<uuid>.<pid>.<start>.<host>``: the writing
process's id, its start (clock ticks since boot on Linux) and the host name. A crash leaves only
staging debris, which :meth:`LocalBackend.clean_staging` (run at the start of every ingest)
removes when its owner is dead: a process of this host that no longer exists, or whose pid now
belongs to a process started at another time. A live writer's staging is never removed. Entries
of other hosts (a shared file system) and entries without an owner (written by older versions)
cannot be checked from here and are removed only when older than the age guard.

Single files (catalog parts, tables, reports, JSON) are written to a unique temporary name in
their folder and renamed (:func:`pipeline.core.atomic.write_bytes_atomic`).

Because the rename is the commit, a case folder with a ``zarr.json`` is a committed case.

Example:
    >>> import tempfile
    >>> b = LocalBackend(tempfile.mkdtemp())
    >>> b.put("tables/x.csv", b"a\\n1\\n").name, b.read("tables/x.csv"), b.list("tables")
    ('x.csv', b'a\\n1\\n', ['x.csv'])
    >>> owner = StagingOwner.parse(new_staging_name())
    >>> owner.pid == os.getpid(), owner.alive()
    (True, True)
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import zarr

from pipeline.core.atomic import write_bytes_atomic
from pipeline.store.backend.base import Backend, NodeBuilder
from pipeline.store.layout import NODE_MARKER, STAGING

COMMIT_ATTEMPTS = 50
"""Renames tried before a commit gives up (each failed one means another writer committed the
same node in between; two writers settle in two)."""


# ------------------------------------------------------------------------------- staging owners
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def _process_start(pid: int) -> tuple[int, bool] | None:
    """``(start, zombie)`` of process ``pid``, None when there is no such process.

    ``start`` never changes for a process and differs for a later process given the same pid: on
    Linux its start in clock ticks since boot (``/proc/<pid>/stat``, immune to clock steps), else
    its start time in centiseconds since the epoch (psutil).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
    except OSError:
        pass
    else:
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
        return int(fields[19]), fields[0] in ("Z", "X")
    import psutil

    try:
        proc = psutil.Process(pid)
        return int(round(proc.create_time() * 100)), proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return None


@dataclass(frozen=True)
class StagingOwner:
    """The process that created a staging entry: pid, start (see :func:`_process_start`) and
    host, as written in the entry's name."""

    pid: int
    start: int
    host: str

    _NAME = re.compile(r"^(?:[a-z]+-)?[0-9a-f]{32}\.(?P<pid>\d+)\.(?P<start>\d+)\.(?P<host>[A-Za-z0-9._-]+)$")

    @classmethod
    def current(cls) -> StagingOwner:
        pid = os.getpid()
        return cls(pid, _own_start(pid), _host())

    @classmethod
    def parse(cls, name: str) -> StagingOwner | None:
        """The owner recorded in a staging entry's name; None for a name without one."""
        m = cls._NAME.match(name)
        return None if m is None else cls(int(m["pid"]), int(m["start"]), m["host"])

    def tag(self) -> str:
        return f"{self.pid}.{self.start}.{self.host}"

    def alive(self) -> bool | None:
        """True when the owner still runs, False when it is gone (or a zombie, or its pid now
        belongs to a process started at another time), None when this host cannot tell (the
        owner ran on another host)."""
        if self.host != _host():
            return None
        try:
            found = _process_start(self.pid)
        except OSError:
            return True  # it exists but cannot be inspected: assume it is the owner
        return found is not None and not found[1] and found[0] == self.start


@lru_cache(maxsize=8)
def _own_start(pid: int) -> int:
    found = _process_start(pid)
    return found[0] if found else 0


def new_staging_name(kind: str = "") -> str:
    """A fresh staging entry name owned by this process: ``[<kind>-]<uuid>.<pid>.<start>.<host>``."""
    return f"{kind + '-' if kind else ''}{uuid.uuid4().hex}.{StagingOwner.current().tag()}"


# ------------------------------------------------------------------------------- atomic exchange
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@lru_cache(maxsize=1)
def _renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` atomically (both must exist); False when this system or
    file system cannot (then nothing changed). Raises ``FileNotFoundError`` when one is missing."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ENOENT:
        raise FileNotFoundError(err, os.strerror(err), str(b))
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


class LocalBackend(Backend):
    """A store in the folder ``root``."""

    remote = False
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.exchange_supported: bool | None = None
        """Whether the store's file system swaps two folders atomically (known after the first replacement)."""

    def __repr__(self) -> str:
        return f"LocalBackend({str(self.root)!r})"

    # ---------------------------------------------------------------- single files
    def location(self, relpath: str = "") -> Path:
        relpath = relpath.strip("/")
        return self.root / relpath if relpath else self.root

    def read(self, relpath: str) -> bytes | None:
        try:
            return self.location(relpath).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def put(self, relpath: str, data: bytes) -> Path:
        return write_bytes_atomic(self.location(relpath), bytes(data))

    def isfile(self, relpath: str) -> bool:
        return self.location(relpath).is_file()

    def list(self, relpath: str = "") -> list[str]:
        try:
            return sorted(p.name for p in self.location(relpath).iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, relpath: str) -> None:
        try:
            os.remove(self.location(relpath))
        except FileNotFoundError:
            pass

    def remove_prefix(self, relpath: str) -> None:
        path = self.location(relpath)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            self.remove(relpath)

    # ---------------------------------------------------------------- Zarr nodes
    def zarr_store(self, relpath: str, read_only: bool = False) -> Any:
        return str(self.location(relpath))

    def commit_node(self, relpath: str, build: NodeBuilder) -> Path:
        """Build the node in a staging entry of this process, then rename it onto ``relpath``.

        Idempotent under races: a node that another writer committed at ``relpath`` meanwhile is
        replaced like an old version (the last rename wins); never fails because the target exists.
        """
        staging = self.root / STAGING / new_staging_name()
        staging.mkdir(parents=True)
        try:
            build(zarr.open_group(self._scratch_store(staging), mode="w", zarr_format=3), "node")
            target = self.location(relpath)
            self._move_into_place(staging / "node", target, staging)
            return target
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _scratch_store(self, staging: Path) -> Any:
        """What the node is built into (a seam: tests slow the chunk writes down to crash mid-write)."""
        return str(staging)

    def _commit_point(self, target: Path) -> None:
        """Called right before each rename attempt of a commit (a seam: tests hold two writers here
        to make them collide)."""

    def _move_into_place(self, new: Path, target: Path, staging: Path) -> None:
        for attempt in range(COMMIT_ATTEMPTS):
            self._commit_point(target)
            if self.exchange_supported is not False:
                try:
                    swapped = exchange(new, target)  # old node now at `new`, removed with the staging entry
                except FileNotFoundError:
                    swapped = False  # no node at target yet: a plain rename below
                else:
                    self.exchange_supported = swapped
                    if swapped:
                        return
            try:
                os.replace(new, target)  # target absent (or an empty folder): the commit
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            # a node is there: an older version, or one another writer committed a moment ago;
            # move it aside into our staging entry (removed with it) and try again
            try:
                os.replace(target, staging / f"old-{attempt}")
            except FileNotFoundError:
                pass  # another writer moved it first
        raise OSError(errno.EBUSY, f"could not commit {target} after {COMMIT_ATTEMPTS} attempts: other writers keep replacing it")

    def committed_children(self, relpath: str, marker_key: str) -> list[str]:
        folder = self.location(relpath)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / NODE_MARKER).exists())

    def committed_attrs(self, relpath: str, marker_key: str) -> dict[str, Any] | None:
        return self.node_attrs(relpath)  # the rename was the commit: any zarr.json counts

    # ---------------------------------------------------------------- housekeeping
    def makedirs(self, *relpaths: str) -> None:
        for relpath in relpaths or ("",):
            self.location(relpath).mkdir(parents=True, exist_ok=True)

    def clean_staging(self, older_than_s: float) -> int:
        """Remove staging entries whose owner is dead (see the module docstring); entries whose
        owner this host cannot check (another host, or no owner recorded) only when older than
        ``older_than_s``. Returns how many entries went."""
        staging = self.root / STAGING
        n = 0
        if not staging.exists():
            return 0
        now = time.time()
        for entry in staging.iterdir():
            owner = StagingOwner.parse(entry.name)
            alive = owner.alive() if owner is not None else None
            if alive:
                continue
            if alive is None:
                try:
                    if now - entry.stat().st_mtime < older_than_s:
                        continue
                except FileNotFoundError:
                    continue
            shutil.rmtree(entry, ignore_errors=True)
            if entry.is_file():
                entry.unlink(missing_ok=True)
            n += 1
        return n

    def dataset_source(self, relpaths: list[str]) -> tuple[list[str], Any]:
        return [str(self.location(p)) for p in relpaths], None
