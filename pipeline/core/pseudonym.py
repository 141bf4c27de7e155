"""Keyed-hash pseudonyms for subject, session and series identifiers.

The raw identifier (e.g. a DICOM PatientID) is read in memory only; what is stored is
``prefix + HMAC-SHA256(key, value)[:n]``. The same key gives the same pseudonym on every run.

Example:
    >>> pseudonymise("PAT-0001", b"secret", "sub-")
    'sub-4a133905e944'
"""

from __future__ import annotations

import hashlib
import hmac


def pseudonymise(value: str, key: bytes, prefix: str = "", length: int = 12) -> str:
    """Return ``prefix`` + the first ``length`` hex digits of HMAC-SHA256(key, value)."""
    if not key:
        raise ValueError("pseudonymisation key must not be empty")
    digest = hmac.new(key, value.strip().encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}{digest[:length]}"
