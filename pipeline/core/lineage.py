"""Sealed source paths: lineage that finds the source again without revealing it.

Real exports name folders after the patient (``DOE^JANE_MRN123/20240101_ACC456/…``), so a
source path is identifying. What lesionflow stores, prints and logs instead of a path is a
*sealed path*, a token that only the holder of the pseudonymisation key can open::

    src:<base64url(AES-SIV(k, relpath))>     a file or folder, relative to the ingest folder
    root:<base64url(AES-SIV(k, folder))>     an ingest folder (absolute)

* ``k`` = HKDF-SHA256(pseudonymisation key, salt ``lesionflow-lineage``, info
  ``lesionflow lineage v1 AES-SIV-512``): 64 bytes, a key of its own (the key's other use, the
  HMAC pseudonyms of :mod:`pipeline.core.pseudonym`, never sees it).
* AES-SIV (RFC 5297) is *deterministic* authenticated encryption: one key and one path give one
  token on every run, so incremental ingest can match files by their token, and two paths give
  the same token only when they are equal. The token's prefix is authenticated with it (a
  ``src:`` token cannot pass for a ``root:`` one), and a token opened with another key fails
  authentication: :class:`LineageKeyError`, never a wrong path.
* Without the key a token shows its kind and the path's length rounded up to 16 bytes (the
  plaintext is padded), nothing else.

A file's modification time, which incremental ingest compares to know a file is unchanged, can be
close to the day of the scan, so it is not stored either: :func:`stat_tag` is an HMAC of (size,
mtime) under a third derived key (:attr:`Lineage.stat_key`, which can verify a guessed (size, mtime)
and nothing else: it travels to the Dask workers, the pseudonymisation key does not).

Example:
    >>> lin = Lineage(b"secret")
    >>> token = lin.seal("DOE^JANE_MRN123/20240101_ACC456/IM0001")
    >>> token.startswith("src:"), "DOE" in token.upper(), lin.seal("DOE^JANE_MRN123/20240101_ACC456/IM0001") == token
    (True, False, True)
    >>> lin.open(token)
    'DOE^JANE_MRN123/20240101_ACC456/IM0001'
    >>> Lineage(b"another key").open(token)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    pipeline.core.lineage.LineageKeyError: this key does not open the sealed path
    >>> scrub("cannot read /in/DOE^JANE/IM0001: bad", {"/in/DOE^JANE/IM0001": "src:x"})
    'cannot read src:x: bad'
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ROOT", "SRC", "WITHHELD", "Lineage", "LineageKeyError", "is_sealed", "lineage", "scrub", "source_relpaths", "stat_tag"]

SRC = "src:"
"""Prefix of a sealed path relative to the ingest folder."""
ROOT = "root:"
"""Prefix of a sealed ingest folder (an absolute path)."""

_KINDS = (SRC, ROOT)
_INFO = b"lesionflow lineage v1 AES-SIV-512"
_STAT_INFO = b"lesionflow file-stat tag v1 HMAC-SHA256"
_SALT = b"lesionflow-lineage"
_BLOCK = 16
_TOKEN = re.compile(r"^(src|root):[A-Za-z0-9_-]{43,}$")


class LineageKeyError(ValueError):
    """A sealed path that the given key does not open: another key sealed it (or it was altered)."""


def is_sealed(value: object) -> bool:
    """True when ``value`` is a sealed path token (``src:…`` / ``root:…``), not a plain path.

    >>> is_sealed("src:" + "A" * 43), is_sealed("sub-01/flair.nii.gz"), is_sealed(None)
    (True, False, False)
    """
    return isinstance(value, str) and _TOKEN.match(value) is not None


class Lineage:
    """Seals and opens source paths with a key derived from the pseudonymisation key.

    Args:
        key: the pseudonymisation key (:func:`pipeline.core.config.pseudonym_key`), never empty.
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("pseudonymisation key must not be empty")
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESSIV
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        derived = HKDF(algorithm=hashes.SHA256(), length=64, salt=_SALT, info=_INFO).derive(bytes(key))
        self._aead = AESSIV(derived)
        self.stat_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_STAT_INFO).derive(bytes(key))
        """The key of :func:`stat_tag` (derived; it opens no sealed path)."""

    def seal(self, relpath: str, kind: str = SRC) -> str:
        """The token of ``relpath`` (POSIX, relative to the ingest folder; a folder ends in ``/``)."""
        if kind not in _KINDS:
            raise ValueError(f"unknown sealed-path kind {kind!r}")
        data = relpath.encode("utf-8", "surrogateescape")
        if b"\0" in data:
            raise ValueError("a path cannot contain NUL")
        data += b"\0" * (-len(data) % _BLOCK)
        ct = self._aead.encrypt(data, [kind.encode()])
        return kind + base64.urlsafe_b64encode(ct).rstrip(b"=").decode("ascii")

    def seal_root(self, folder: str) -> str:
        """The token of an ingest folder (an absolute path)."""
        return self.seal(folder, ROOT)

    def open(self, token: str) -> str:
        """The path sealed in ``token``. Raises :class:`LineageKeyError` when this key did not
        seal it, ``ValueError`` when ``token`` is not a sealed path."""
        from cryptography.exceptions import InvalidTag

        if not is_sealed(token):
            raise ValueError(f"not a sealed path: {token[:60]!r}")
        kind, _, body = token.partition(":")
        try:
            ct = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"malformed sealed path {token[:60]!r}") from exc
        try:
            data = self._aead.decrypt(ct, [f"{kind}:".encode()])
        except InvalidTag:
            raise LineageKeyError(
                "this key does not open the sealed path: it was sealed with another pseudonymisation key "
                "(LESIONFLOW_PSEUDONYM_KEY is not the key the store was ingested with) or altered") from None
        return data.rstrip(b"\0").decode("utf-8", "surrogateescape")

    def reveal(self, value: str) -> str:
        """``value`` opened when it is a token, else as it is (paths stored before schema 1.4)."""
        return self.open(value) if is_sealed(value) else value


def source_relpaths(meta: Any, key: bytes | None = None) -> list[str]:
    """A case's source paths (``meta``: its CaseMeta, every channel's files) relative to the ingested
    folder: stored sealed (schema 1.4), opened with ``key`` (default: the environment's
    pseudonymisation key); plain paths of older stores as they are. Reads nothing but ``meta``."""
    rels = [s.relpath for ch in meta.channel_info for s in ch.sources]
    if any(is_sealed(r) for r in rels):
        from pipeline.core.config import pseudonym_key

        lin = lineage(key or pseudonym_key())
        rels = [lin.reveal(r) for r in rels]
    return rels


def stat_tag(stat_key: bytes, size: int, mtime_ns: int) -> str:
    """The stored stand-in of a file's (size, modification time): 32 hex digits of
    HMAC-SHA256(``stat_key``, "size:mtime_ns"). Equal tags mean an unchanged file; the time itself
    is not recoverable (``stat_key``: :attr:`Lineage.stat_key`).

    >>> k = Lineage(b"secret").stat_key
    >>> stat_tag(k, 10, 1) == stat_tag(k, 10, 1) != stat_tag(k, 10, 2)
    True
    """
    return hmac.new(stat_key, f"{int(size)}:{int(mtime_ns)}".encode(), hashlib.sha256).hexdigest()[:32]


@functools.lru_cache(maxsize=8)
def lineage(key: bytes) -> Lineage:
    """The :class:`Lineage` of ``key`` (cached: deriving the key costs a few microseconds, but it is
    asked for once per file)."""
    return Lineage(key)


WITHHELD = "[a path in the source]"
"""What :func:`scrub` writes for a path under a withheld folder that it has no token for."""
ELSEWHERE = "[a path]"
"""What :func:`scrub` writes, with ``any_path``, for any other absolute or ``../`` path."""
_OTHER_PATH = re.compile(r"(?<![\w.:/\-])(?:/|\.\./)[^\s'\"()\[\]<>]*")


def scrub(text: str, replacements: Mapping[str, str], min_len: int = 5, withhold: tuple[str, ...] = (), any_path: bool = False) -> str:
    """``text`` with every occurrence of a key of ``replacements`` (a path, a relpath or a file
    name) replaced by its value (a token), longest first. A key matches only as a whole name
    (not inside a longer word or path component); keys shorter than ``min_len`` characters (a
    file named ``1``) are left alone, as they cannot name a patient and would garble the text.
    Then any other path under a folder of ``withhold`` (absolute ingest folders) becomes
    :data:`WITHHELD`, up to the next blank, quote or bracket (punctuation in between goes with it:
    it may belong to a folder's name). With ``any_path``, every other absolute path and every
    path starting ``../`` becomes :data:`ELSEWHERE` too: a header may name a file outside the
    ingest folder (``ElementDataFile = ../../DOE^JANE/t1.raw``), whose folders are as identifying.

    >>> scrub("duplicate slice: IM0001, IM00010 at z=3", {"IM0001": "src:a", "3": "src:b"})
    'duplicate slice: src:a, IM00010 at z=3'
    >>> scrub("data file missing (expected at /in/DOE^JANE/x.raw)", {}, withhold=("/in",))
    'data file missing (expected at [a path in the source])'
    >>> scrub("data file ../../DOE^JANE/x.raw resolves to /data/DOE^JANE/x.raw, no FLAIR/T1", {}, any_path=True)
    'data file [a path] resolves to [a path] no FLAIR/T1'
    """
    if not text:
        return text
    keys = sorted((k for k in replacements if len(k) >= min_len and k in text), key=len, reverse=True)
    if keys:
        pattern = re.compile("|".join(rf"(?<![\w.\-]){re.escape(k)}(?![\w\-]|\.\w)" for k in keys))
        text = pattern.sub(lambda m: replacements[m.group(0)], text)
    for folder in withhold:
        folder = folder.rstrip("/")
        if folder and folder in text:
            text = re.sub(rf"{re.escape(folder)}(?![\w.\-])(?:/[^\s'\"()\[\]<>]*)?", WITHHELD, text)
    if any_path:
        text = _OTHER_PATH.sub(ELSEWHERE, text)
    return text
