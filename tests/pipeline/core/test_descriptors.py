"""Clean descriptors: acquisition words kept, names, IDs, dates and free words dropped."""

from __future__ import annotations

import pytest

from pipeline.core.descriptors import clean_descriptor


@pytest.mark.parametrize("raw, clean", [
    ("AX FLAIR", "AX FLAIR"),
    ("t1_mprage_sag_p2_iso", "t1 mprage sag p2 iso"),
    ("T1+C MPRAGE POST GAD", "T1 +C MPRAGE POST GAD"),
    ("AX T2 TSE FS", "AX T2 TSE FS"),
    ("ep2d_diff_mddw_20_p2 b1000", "ep2d diff mddw 20 p2 b1000"),
    ("Sag CUBE T2 FLAIR 1.2mm", "Sag CUBE T2 FLAIR 1.2mm"),
    ("3D T1 TFE", "3D T1 TFE"),
    ("3-Plane Loc", "3 Plane Loc"),
])
def test_acquisition_words_are_kept(raw, clean):
    assert clean_descriptor(raw) == clean


@pytest.mark.parametrize("raw", [
    "AX FLAIR DOE^JANE", "Jane Doe T1", "T1 MRN123", "FLAIR 19700101", "FLAIR 1970-01-01", "FLAIR 01.01.1970", "T2 01/01/1970",
    "T1 ACC456789", "FLAIR 12:30:05", "Dr Smith protocol T1", "T2 Müller",
])
def test_identifying_words_are_dropped(raw):
    cleaned = clean_descriptor(raw).lower()
    for word in ("doe", "jane", "mrn", "123", "1970", "acc", "456789", "12:30", "smith", "müller", "dr"):
        assert word not in cleaned.split() and word not in cleaned.replace(" ", ""), (raw, cleaned)


def test_a_known_identifier_is_dropped_even_when_it_looks_technical():
    assert clean_descriptor("FLAIR T2 p2", identifiers=["P2"]) == "FLAIR T2"
    assert clean_descriptor(None) is None and clean_descriptor("") == ""
