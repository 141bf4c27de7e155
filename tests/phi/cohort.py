"""A source tree that carries a fake patient's identity everywhere a real export does, and the
search for it.

The patient: QUINTESSA ZYXWORT, MRN 88231977, born 1958-03-14, accession ACC7741209. The
identity is in:

* the ingest folder itself (``…/ZYXWORT^QUINTESSA_MRN88231977/``), the study folder
  (``19580314_ACC7741209``), series folders and file names (DICOM files named after the patient,
  a NIfTI session folder ``Zyxwort_Quintessa_1958-03-14``, a mask named after the patient);
* DICOM headers: PatientName, PatientID, PatientBirthDate, AccessionNumber, free text
  (SeriesDescription, StudyDescription, ProtocolName), a private tag, and UIDs (study, series,
  instance, frame of reference: each one searched);
* the NIfTI header's ``descrip``;
* a numbered TIFF slice stack (the LGG set's layout) whose folder and file names carry the MRN
  and the birth date (``TCGA_ZY_88231977_19580314/TCGA_ZY_88231977_19580314_<n>.tif``), and a
  stray TIFF named after the patient (rejected);
* inputs that are rejected or unused (their reasons name them): a non-DICOM ``.dcm``, an empty
  file, an unsupported ``.mgz``, a MetaImage whose data file is missing, a localizer and an
  unmapped series with identifying descriptions.

:func:`find_phi` searches a text for every needle in any case and with any separators
(``DOE^JANE``, ``doe_jane``, ``Jane Doe``, ``1958-03-14``, ``14.03.1958`` …): a needle with
letters is compared lower-case with everything but letters and digits removed from text and
needle; a number (MRN, date, UID) as a run of exactly its digits, any separators between them,
no digit right before or after (so that the digits of unrelated floats and hashes, run
together, do not count).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from pipeline.io.writers import write_nifti
from tests import dicom_factory as fac
from tests.session_factory import blob_image, lesion_mask_on

SURNAME, GIVEN = "Zyxwort", "Quintessa"
MRN = "MRN88231977"
BIRTH = "19580314"
ACCESSION = "ACC7741209"
STUDY_UID = "1.2.826.0.1.3680043.8.498.88231977.7741209"

HEADER_PHI = {
    "PatientName": f"{SURNAME.upper()}^{GIVEN.upper()}",
    "PatientID": MRN,
    "PatientBirthDate": BIRTH,
    "AccessionNumber": ACCESSION,
    "StudyDescription": f"MRI BRAIN {GIVEN} {SURNAME} {ACCESSION} born 14 Mar 1958",
    "ReferringPhysicianName": f"{SURNAME}^Dr",
    "InstitutionName": f"{SURNAME} Clinic",
}

NEEDLES = (
    SURNAME, GIVEN,  # every name variant holds one of these (DOE^JANE, doe_jane, Jane Doe, …)
    "88231977",  # the MRN (MRN88231977, mrn-88231977, …)
    "7741209",  # the accession number
    BIRTH, "14031958", "03141958", "14mar1958",  # the birth date, any separators (1958-03-14, 14.03.1958, 03/14/1958)
)


def squash(text: str) -> str:
    """Lower-case, letters and digits only: every separator variant of a needle becomes one string."""
    return re.sub(r"[^0-9a-z]+", "", text.lower())


_DIGIT_RUNS: dict[str, re.Pattern[str]] = {}


def _digit_run(needle: str) -> re.Pattern[str]:
    if needle not in _DIGIT_RUNS:
        _DIGIT_RUNS[needle] = re.compile(r"(?<!\d)" + r"[^0-9a-z]*".join(needle) + r"(?!\d)")
    return _DIGIT_RUNS[needle]


@dataclass
class PhiTree:
    root: Path  # the ingest folder (its own name carries the identity)
    uids: set[str] = field(default_factory=set)

    def needles(self) -> list[str]:
        """What must appear nowhere: name, MRN, birth date, accession number and every UID."""
        return [squash(n) for n in (*NEEDLES, *sorted(self.uids))]


def find_phi(text: str, needles: list[str]) -> list[str]:
    """The needles (squashed) found in ``text``: see the module docstring."""
    low = text.lower()
    flat = squash(low)
    # a long number (a UID) cannot occur by chance in digits run together: plain substring search
    return [n for n in needles if (_digit_run(n).search(low) if n.isdigit() and len(n) < 16 else n in flat)]


def _private_tag(files: list[Path]) -> None:
    for f in files:
        d = pydicom.dcmread(f)
        block = d.private_block(0x0011, "ACME PHI NOTES", create=True)
        block.add_new(0x10, "LO", f"{SURNAME}^{GIVEN} 03/14/1958 {MRN}")
        d.save_as(f)


def write_phi_tree(base: Path) -> PhiTree:
    """The tree (see the module docstring) under ``base``; returns it with every UID written."""
    root = base / f"{SURNAME.upper()}^{GIVEN.upper()}_{MRN}"
    tree = PhiTree(root)
    study = root / f"{BIRTH}_{ACCESSION}"
    flair = blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0), seed=1)
    series = (
        (3, f"AX FLAIR {SURNAME} 1958-03-14", f"FLAIR {MRN}", 1, None),
        (4, f"SAG T1 MPRAGE {GIVEN} 14.03.1958", "t1_mprage", 2, None),
        (5, f"AX T2 TSE {ACCESSION}", "t2_tse", 3, None),
        (1, f"SCOUT {SURNAME}", "localizer", 4, ["ORIGINAL", "PRIMARY", "LOCALIZER"]),
        (9, f"{GIVEN} {SURNAME} research notes", f"{MRN} notes", 5, None),
    )
    for number, desc, protocol, seed, itype in series:
        arr = blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0), seed=seed).array.astype(np.int16)
        extra = {**HEADER_PHI, "ProtocolName": protocol, **({"ImageType": itype} if itype else {})}
        files = fac.write_series(study / f"s{number}_{SURNAME}", arr, spacing=(1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0), series_number=number,
                                 description=desc, study_uid=STUDY_UID, series_uid=f"{STUDY_UID}.{number}", prefix=f"{SURNAME}_{MRN}_", extra=extra)
        _private_tag(files)
    # the study's lesion mask, next to its series folders (named after the patient)
    write_nifti(lesion_mask_on(flair), study / f"{SURNAME}_{GIVEN}_lesion_mask.nii.gz")

    # a NIfTI session in a folder named after the patient, with the identity in `descrip` too
    nifti = root / f"{SURNAME}_{GIVEN}_1958-03-14"
    nifti.mkdir(parents=True)
    vols = {"FLAIR": flair, "T1w": blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0), seed=7),
            "T2w": blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0), seed=8), "lesion_mask": lesion_mask_on(flair)}
    for suffix, vol in vols.items():
        path = nifti / f"{SURNAME}_{suffix}.nii.gz"
        write_nifti(vol, path)
        import nibabel as nib

        img = nib.load(path)
        img.header["descrip"] = f"{SURNAME}^{GIVEN} {MRN}".encode()
        nib.save(img, path)
    # a second T2 as MetaImage whose data file (named after the patient) is missing: rejected, its reason names the file
    (nifti / f"{SURNAME}_T2w.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
        f"ElementSpacing = 1 1 1\nElementDataFile = {GIVEN}_{BIRTH}_T2.raw\n")

    # a slice stack (LGG layout): the folder and every file name hold the MRN and the birth date
    from tests.slicestack_factory import write_stack

    stack = f"TCGA_ZY_{MRN[3:]}_{BIRTH}"
    write_stack(root / stack, stack, 6, size=32, tumour_slices=(3, 4))
    (root / stack / f"{SURNAME}_{GIVEN}_photo.tif").write_bytes(b"II*\x00 not a slice")

    # inputs rejected at discovery, named after the patient
    (root / f"notes_{SURNAME}_{BIRTH}.dcm").write_text(f"{GIVEN} {SURNAME} {MRN}: not DICOM")
    (root / f"{ACCESSION}.dcm").touch()  # empty
    (root / f"{GIVEN}_{MRN}.mgz").write_bytes(b"\0" * 64)  # unsupported format

    for f in study.rglob("*.dcm"):
        d = pydicom.dcmread(f, stop_before_pixels=True)
        tree.uids |= {str(d.StudyInstanceUID), str(d.SeriesInstanceUID), str(d.SOPInstanceUID), str(d.FrameOfReferenceUID)}
    return tree


def texts_of_file(path: Path) -> list[str]:
    """What a reader of ``path`` can see: its bytes as text, and decoded Parquet / JSON."""
    data = path.read_bytes()
    out = [data.decode("latin-1")]
    if path.suffix == ".parquet":
        out.append(pd.read_parquet(path).astype(str).to_csv())  # pages are compressed: read the values
    elif path.suffix == ".json":
        out.append(json.dumps(json.loads(data), ensure_ascii=False))  # \u escapes decoded
    return out


def scan_tree(folder: Path, needles: list[str]) -> list[str]:
    """``relative path: needle`` for every file under ``folder`` that holds a needle."""
    hits = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            for text in texts_of_file(path):
                hits += [f"{path.relative_to(folder)}: {n}" for n in find_phi(text, needles)]
    return sorted(set(hits))
