"""Sealed source paths: deterministic per key, opaque without it, refused with another key."""

from __future__ import annotations

import base64

import pytest

from pipeline.core.lineage import ROOT, WITHHELD, Lineage, LineageKeyError, is_sealed, lineage, scrub, stat_tag

PATHS = ["DOE^JANE_MRN123/20240101_ACC456/s3/IM0001.dcm", "DOE^JANE_MRN123/20240101_ACC456/s3/", "a", "ünïcödé/Straße.nii.gz",
         "bad\udcffname/x.dcm", "x" * 300]


def test_same_key_same_token_another_key_another_token():
    a, b = Lineage(b"key-a"), Lineage(b"key-b")
    tokens = [a.seal(p) for p in PATHS]
    assert tokens == [Lineage(b"key-a").seal(p) for p in PATHS]  # reruns match: incremental ingest keys on them
    assert not set(tokens) & {b.seal(p) for p in PATHS}
    assert len(set(tokens)) == len(PATHS)
    assert [a.open(t) for t in tokens] == PATHS


def test_a_token_shows_nothing_of_the_path():
    lin = lineage(b"k")
    token = lin.seal(PATHS[0])
    assert is_sealed(token) and token.startswith("src:")
    for part in ("DOE", "JANE", "MRN123", "ACC456", "20240101", "IM0001", "dcm"):
        assert part.lower() not in token.lower()
    # the length shows only in 16-byte steps (the path is padded before sealing)
    assert len(lin.seal("a")) == len(lin.seal("a" * 16))
    assert len(lin.seal("a" * 17)) > len(lin.seal("a" * 16))


def test_another_key_or_an_altered_token_is_refused_never_misread():
    token = Lineage(b"right").seal(PATHS[0])
    with pytest.raises(LineageKeyError, match="another pseudonymisation key"):
        Lineage(b"wrong").open(token)
    body = bytearray(base64.urlsafe_b64decode(token[4:] + "=" * (-len(token[4:]) % 4)))
    body[-1] ^= 1
    altered = "src:" + base64.urlsafe_b64encode(bytes(body)).rstrip(b"=").decode()
    with pytest.raises(LineageKeyError):
        Lineage(b"right").open(altered)
    # the kind is authenticated: a sealed file cannot pass for a sealed ingest folder
    with pytest.raises(LineageKeyError):
        Lineage(b"right").open(ROOT + token[4:])
    with pytest.raises(ValueError, match="not a sealed path"):
        Lineage(b"right").open("DOE^JANE/IM0001")


def test_the_key_is_derived_not_used_as_is():
    """The lineage key is HKDF-derived from the pseudonymisation key: equal keys, equal tokens; the
    empty key is refused."""
    assert Lineage(b"k").seal_root("/data/in") == lineage(b"k").seal_root("/data/in")
    with pytest.raises(ValueError, match="key"):
        Lineage(b"")


def test_file_times_are_stored_as_keyed_tags():
    a, b = Lineage(b"key-a").stat_key, Lineage(b"key-b").stat_key
    t = 1_704_067_200_000_000_000  # 2024-01-01, the day of a scan
    assert stat_tag(a, 10, t) == stat_tag(a, 10, t) and stat_tag(a, 10, t) != stat_tag(a, 10, t + 1) != stat_tag(a, 11, t)
    assert stat_tag(a, 10, t) != stat_tag(b, 10, t)
    assert "2024" not in stat_tag(a, 10, t) and str(t) not in stat_tag(a, 10, t)
    assert len(a) == 32 and a != b"key-a".ljust(32, b"\0")  # derived, a key of its own


def test_reveal_passes_plain_paths_through():
    lin = lineage(b"k")
    assert lin.reveal("a/b.nii.gz") == "a/b.nii.gz"  # stores before schema 1.4
    assert lin.reveal(lin.seal("a/b.nii.gz")) == "a/b.nii.gz"


def test_scrub_replaces_whole_names_and_withholds_other_paths():
    repl = {"/in/DOE^JANE/s3/IM0001": "src:A", "DOE^JANE/s3/IM0001": "src:A", "IM0001": "src:A", "1": "src:B"}
    assert scrub("cannot read /in/DOE^JANE/s3/IM0001: truncated", repl) == "cannot read src:A: truncated"
    assert scrub("duplicate slice: IM0001 and IM00011 (IM0001.bak) at 1 mm", repl) == "duplicate slice: src:A and IM00011 (IM0001.bak) at 1 mm"
    assert scrub("expected at /in/DOE^JANE;MRN123/x.raw (see /in, not /input)", {}, withhold=("/in",)) == f"expected at {WITHHELD} (see {WITHHELD}, not /input)"
    assert scrub("", repl) == ""
