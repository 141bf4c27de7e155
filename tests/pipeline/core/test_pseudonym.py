"""Keyed pseudonyms: the key matters, and the same key gives the same pseudonym."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.core.pseudonym import pseudonymise


def test_same_key_same_pseudonym_different_key_different_pseudonym():
    ids = [f"PAT-{i:04d}" for i in range(200)]
    a = [pseudonymise(i, b"key-a", "sub-") for i in ids]
    assert a == [pseudonymise(i, b"key-a", "sub-") for i in ids]
    b = [pseudonymise(i, b"key-b", "sub-") for i in ids]
    assert not set(a) & set(b), "a pseudonym that does not depend on the key can be reversed by anyone with a list of IDs"
    assert len(set(a)) == len(ids)


def test_pseudonym_is_not_a_plain_hash_of_the_identifier():
    """Reversible by hashing a list of candidate IDs: what an unkeyed SHA-256 would allow."""
    value = "PAT-0001"
    plain = hashlib.sha256(value.encode()).hexdigest()
    assert pseudonymise(value, b"secret", length=64) != plain
    assert pseudonymise(value, b"secret", "sub-") == "sub-4a133905e944"  # HMAC-SHA256, fixed by the docstring example


def test_empty_key_is_refused():
    with pytest.raises(ValueError, match="key"):
        pseudonymise("PAT-0001", b"")


def test_no_prefix_by_default_and_the_length_is_the_number_of_hex_digits():
    plain = pseudonymise("PAT-0001", b"secret")
    assert plain == "4a133905e944" and pseudonymise("PAT-0001", b"secret", "sub-") == "sub-" + plain
    assert pseudonymise(" PAT-0001 ", b"secret") == plain  # surrounding blanks are not part of the identifier
    assert len(pseudonymise("PAT-0001", b"secret", length=20)) == 20


def test_empty_key_message():
    with pytest.raises(ValueError, match="^pseudonymisation key must not be empty$"):
        pseudonymise("PAT-0001", b"")
