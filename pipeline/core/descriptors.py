"""Clean descriptors: free-text header fields reduced to words that cannot identify anyone.

DICOM PS3.15 (Annex E, the basic application-level confidentiality profile) removes
identifying attributes; its *Clean Descriptors Option* keeps descriptive text such as
SeriesDescription or ProtocolName only once identifying information is removed from it. Text
typed at the scanner carries names ("T1 post Dr Smith"), IDs, dates and accession numbers, and
no rule can recognise every one of them, so :func:`clean_descriptor` works the other way round:
it keeps only the words of an acquisition vocabulary (sequence names and families, planes,
contrast and acquisition words, BIDS suffixes) and small numbers (``3``, ``1.5mm``, ``p2``,
``b1000``), and drops every other word, and every date or time (``14.03.1958``, ``12:30``). A word equal to a known identifier of the same header
(PatientID and its parts) is dropped even when it looks technical.

The raw text still drives the modality rules, in memory (:mod:`pipeline.ingest.modality`); the
cleaned text is what is stored (``ChannelInfo.series_description``) and what messages show.

Example:
    >>> clean_descriptor("AX FLAIR DOE^JANE 19700101 MRN123 fs")
    'AX FLAIR fs'
    >>> clean_descriptor("t1_mprage_sag_p2_iso_1.0mm POST GAD")
    't1 mprage sag p2 iso 1.0mm POST GAD'
    >>> clean_descriptor("Smith research protocol"), clean_descriptor(None)
    ('', None)
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["VOCABULARY", "clean_descriptor"]

VOCABULARY = frozenset("""
t1 t1w t2 t2w t2s t2star pd pdw flair dir stir tirm ir se gre fse tse spgr fspgr bravo mprage mp2rage
mpr mprg space spc cube vista tfe ffe tfl tfl3d fl2d fl3d flash fl vibe lava thrive starvibe dixon
haste blade propeller frfse fiesta ciss trufi dess medic swi swan swip sw epi dwi dti adc trace
ep2d diff diffusion mddw tracew fa md bold asl pcasl pasl perf perfusion dsc dce tof mra pc angio venous arterial mip minip
ax axial sag sagittal cor coronal tra trans transverse obl oblique 2d 3d 4d plane planes
pre post gad gd c ce contrast enhanced enh fs fatsat fat sat water in out opp phase phases mag
magnitude real imag imaginary map maps derived reformat mpr recon mpv norm nd dis2d dis3d moco
iso hr hires high low res resolution fast thin thick slice slices slab mm ms sec ref reference
loc localizer localiser scout survey calibration cal aahead aascout head brain neck spine cspine
tspine lspine orbit orbits iac pituitary whole std standard routine fov grappa sense asset arc
cs accel nex avg average sub subtraction mask lesion seg label gt roi
ct cta ctp bone soft tissue lung mediastinum stnd helical spiral kernel
mr mri mra t1c t1ce t1gd t1post flair3d
""".split())
"""Words kept by :func:`clean_descriptor` (compared lower-case)."""

_DATE_TIME = re.compile(r"(?<![A-Za-z0-9])(?:\d{1,4}[-./]\d{1,2}[-./]\d{1,4}|\d{1,2}:\d{2}(?::\d{2})?)(?![0-9])")
_WORD = re.compile(r"[A-Za-z0-9]+(?:\.[0-9]+)?(?:mm|ms|s)?|\+[Cc]\b")
_SMALL = re.compile(r"^(?:\d{1,3}(?:\.\d{1,2})?(?:mm|ms|s)?|[a-z]\d{1,2}|b\d{1,4}|\d{1,2}[a-z]{1,2})$", re.IGNORECASE)


def clean_descriptor(text: str | None, identifiers: Iterable[str] = ()) -> str | None:
    """The words of ``text`` that are in :data:`VOCABULARY` or small numbers, joined by spaces
    (``None`` stays ``None``; nothing kept gives ``""``).

    Args:
        text: a free-text header value (SeriesDescription, ProtocolName, a file-name stem).
        identifiers: values known to identify the patient in the same header (e.g. PatientID);
            a word equal to one of them, or to one of their words, is always dropped.
    """
    if text is None:
        return None
    banned = {w.lower() for ident in identifiers if ident for w in (str(ident), *_WORD.findall(str(ident)))}
    kept = []
    for word in _WORD.findall(_DATE_TIME.sub(" ", str(text))):
        low = word.lower()
        if low in banned:
            continue
        if low in VOCABULARY or low == "+c" or _SMALL.match(low):
            kept.append(word)
    return " ".join(kept)
