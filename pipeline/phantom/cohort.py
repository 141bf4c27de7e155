"""A synthetic multi-format cohort with lesions of known volume (``lesionflow phantom``).

Layout written under ``OUT``::

    cohort/                                  the raw source a user would ingest
      dicom/PHxxx_<date>/                    subjects i % 3 == 0, one folder per study
          s300_loc/ s301_flair/ s302_t1/ s303_t2/   one file per slice (.dcm or no extension)
          lesion_mask.nii.gz                 truth mask on the FLAIR series' grid
      metaimage/PHxxx/                       subjects i % 3 == 1
          PHxxx_FLAIR.mhd + .raw, PHxxx_T1.mha, PHxxx_T2.mha, PHxxx_lesion_mask.mha
      bids/sub-PHxxx/ses-01/anat/            subjects i % 3 == 2
          sub-PHxxx_ses-01_{FLAIR,T1w,T2w}.nii.gz, sub-PHxxx_ses-01_label-lesion_mask.nii.gz
    truth/truth_cases.csv                    subject_label, format, session_dir, total_volume_ml,
                                             lesion_count, voxel_volume_mm3, mask_relpath
    truth/truth_lesions.csv                  subject_label, lesion_id, voxels, volume_mm3, centroid_{x,y,z}_mm (LPS)
    phantom.json                             parameters, seed, planted faults

Modalities of a subject are acquired on different grids, as on a scanner (FLAIR axial, some
anisotropic, some oblique; T1 sagittal; T2 coronal). The truth is analytic: every lesion is an
ellipsoid placed apart from the others, and the mask is its membership at voxel centres, so the
truth volume is ``voxels x voxel volume`` and the count is the number of placed lesions.
The same seed gives byte-identical files.

Faults that a data-quality check must find can be planted: ``thick_slices`` (5 mm FLAIR among
thin ones), ``missing_flair``, ``label_offgrid`` (mask written on a shifted grid), ``noisy``
(SNR about 3).

Lesion-free subjects (``lesion_free=n``: an all-zero mask, ``lesion_count`` 0) are what a
case-level "is there a lesion?" score is evaluated against.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.phantom import anatomy as A
from pipeline.phantom.writers import uid, write_dicom_series, write_metaimage

PHANTOM_VERSION = "1"
FAULTS = ("thick_slices", "missing_flair", "label_offgrid", "noisy")
FORMATS = ("dicom", "metaimage", "bids")


@dataclass
class CohortInfo:
    """Where a phantom cohort was written and its truth table."""

    out: Path
    cohort_dir: Path
    truth_cases_csv: Path
    truth_lesions_csv: Path
    truth: Any  # pandas DataFrame of truth_cases.csv
    faults: dict[str, str] = field(default_factory=dict)  # fault → subject label
    lesion_free: list[str] = field(default_factory=list)  # labels of the subjects without lesions


def _fault_subjects(n_subjects: int, faults: Sequence[str]) -> dict[str, int]:
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown phantom fault(s) {sorted(unknown)}; choose from {list(FAULTS)}")
    if faults and n_subjects < len(faults) + 1:
        raise ValueError(f"{len(faults)} fault(s) need at least {len(faults) + 1} subjects (one stays clean)")
    # faults go to the last subjects, one each, so subject 0 (DICOM) stays a clean reference
    return {f: n_subjects - 1 - k for k, f in enumerate(faults)}


def _grids(i: int, params: A.SubjectParams, s: float, fmt: str, thick: bool) -> dict[str, A.Grid]:
    """Acquisition grids of subject ``i``: FLAIR axial (anisotropic for odd i, oblique for some
    DICOM subjects), T1 sagittal isotropic, T2 coronal."""
    flair_z = 5.0 if thick else (2.0 * s if i % 2 else s)
    tilt = 12.0 if (fmt == "dicom" and i % 2 == 0) else 0.0
    return {
        "FLAIR": A.make_grid("ax", (s, s, flair_z), params, tilt_deg=tilt, tilt_axis=(1.0, 0.0, 0.0)),
        "T1": A.make_grid("sag", (s, s, s), params, tilt_deg=6.0 if i % 3 == 1 else 0.0, tilt_axis=(0.0, 0.0, 1.0)),
        "T2": A.make_grid("cor", (s, s, min(3.0, 1.5 * s)), params),
    }


def _truth_rows(label: str, params: A.SubjectParams, grid: A.Grid) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Mask on ``grid`` and one row per lesion, computed from the analytic lesion ids."""
    ids = A.lesion_ids(params, grid)
    rows = []
    for k in range(1, len(params.lesions) + 1):
        zyx = np.argwhere(ids == k)
        centre = grid.index_to_world(zyx[:, ::-1].mean(axis=0))
        rows.append({
            "subject_label": label, "lesion_id": k, "voxels": int(len(zyx)),
            "volume_mm3": round(len(zyx) * grid.voxel_volume_mm3, 6),
            "centroid_x_mm": round(float(centre[0]), 4), "centroid_y_mm": round(float(centre[1]), 4), "centroid_z_mm": round(float(centre[2]), 4),
        })
    return (ids > 0).astype(np.uint8), rows


_OUTPUTS = ("phantom.json", "cohort", "truth")


def _clear_output(out: Path) -> None:
    """Empty ``out`` of an earlier phantom; refuse a folder holding anything else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise NotADirectoryError(f"{out} is a file; give a folder for the phantom cohort")
    entries = [e for e in out.iterdir() if not e.name.startswith(".")]
    if not entries:
        return
    others = sorted(e.name for e in entries if e.name not in _OUTPUTS)
    if others or not (out / "phantom.json").is_file():
        shown = ", ".join(others[:5]) or ", ".join(sorted(e.name for e in entries)[:5])
        raise FileExistsError(f"{out} is not empty and is not an earlier phantom output (it holds {shown}); "
                              "give a new or empty folder, so that nothing of yours is overwritten")
    for name in ("cohort", "truth"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "phantom.json").unlink()


def make_cohort(out: str | Path, n_subjects: int = 6, seed: int = 0, spacing_mm: float = 1.5, faults: Sequence[str] = (),
                lesion_free: int = 0) -> CohortInfo:
    """Write a phantom cohort of ``n_subjects`` into ``out`` (see the module docstring).

    Args:
        out: output folder: new, empty, or an earlier phantom output (whose ``cohort/`` and
            ``truth/`` are then replaced, so a smaller cohort leaves no stale subjects behind).
            Any other non-empty folder is refused.
        n_subjects: subjects, cycling through DICOM, MetaImage and BIDS-NIfTI.
        seed: random seed; the same seed writes identical files.
        spacing_mm: base voxel size (mm); thick FLAIRs use twice this.
        faults: planted faults (see ``FAULTS``), one subject each.
        lesion_free: this many subjects get no lesion (the last ones before the faulty
            subjects; subject 0 always has lesions). Every other subject is the same as
            without this option (each subject draws from its own seed).
    """
    import pandas as pd

    from pipeline.io.writers import write_nifti

    out = Path(out)
    cohort = out / "cohort"
    truth_dir = out / "truth"
    _clear_output(out)
    truth_dir.mkdir(parents=True, exist_ok=True)
    fault_of = {v: k for k, v in _fault_subjects(n_subjects, faults).items()}
    if lesion_free < 0 or n_subjects - len(fault_of) - lesion_free < 1:
        raise ValueError(f"lesion_free={lesion_free}: needs 0 <= lesion_free <= {n_subjects - len(fault_of) - 1} "
                         f"with {n_subjects} subjects and {len(fault_of)} fault(s) (subject 0 keeps its lesions)")
    free = set(range(n_subjects - len(fault_of) - lesion_free, n_subjects - len(fault_of)))
    cases: list[dict[str, Any]] = []
    lesions: list[dict[str, Any]] = []
    subjects_json = []
    for i in range(n_subjects):
        label = f"PH{i:03d}"
        fmt = FORMATS[i % 3]
        fault = fault_of.get(i)
        rng = np.random.default_rng([seed, i])
        params = A.random_subject(rng, label, snr=3.0 if fault == "noisy" else None)
        grids = _grids(i, params, spacing_mm, fmt, thick=(fault == "thick_slices"))
        mask_grid = grids["T2"] if fault == "missing_flair" else grids["FLAIR"]
        n_lesions = int(rng.integers(3, 9))
        params = A.place_lesions(params, rng, 0 if i in free else n_lesions, mask_grid)
        if fault == "label_offgrid":
            mask_grid = mask_grid.shifted((3.0, -2.0, 1.0), (4, 0, -2))
        mask, rows = _truth_rows(label, params, mask_grid)
        images = {m: A.sample(params, m, g) for m, g in grids.items() if not (m == "FLAIR" and fault == "missing_flair")}
        vol = {m: grids[m].to_volume(a) for m, a in images.items()}
        mask_vol = mask_grid.to_volume(mask)

        if fmt == "dicom":
            date = f"2024{1 + i % 12:02d}{10 + i % 18:02d}"
            session_dir = Path("dicom") / f"{label}_{date}"
            study = uid(seed, label, "study")
            frame = uid(seed, label, "frame")
            patient = {"PatientName": f"DOE^JANE^{label}", "PatientID": f"{label}-MRN-{10000 + 37 * i}",
                       "PatientBirthDate": f"19{50 + i % 40:02d}0{1 + i % 9}1{i % 9}", "AccessionNumber": f"ACC{700000 + 13 * i}",
                       "PatientSex": "F" if i % 2 else "M"}
            loc_grid = A.make_grid("ax", (2.0 * spacing_mm, 2.0 * spacing_mm, 10.0), params, n_slices=3)
            write_dicom_series(cohort / session_dir / "s300_loc", loc_grid.to_volume(A.sample(params, "T1", loc_grid)), patient=patient,
                               study_uid=study, series_uid=uid(seed, label, 300), frame_uid=frame, series_number=300,
                               description="3-Plane Loc", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), shuffle_seed=seed)
            specs = {"FLAIR": (301, "AX T2 FLAIR", "*tir2d1rs", 90.0, 9000.0, ""),
                     "T1": (302, "SAG T1 MPRAGE", "*tfl3d1_16ns", 2.5, 2300.0, ".dcm"),
                     "T2": (303, "COR T2 TSE", "*tse2d1_15", 100.0, 6000.0, ".dcm")}
            for m, v in vol.items():
                number, desc, seq, te, tr, ext = specs[m]
                write_dicom_series(cohort / session_dir / f"s{number}_{m.lower()}", v, patient=patient, study_uid=study,
                                   series_uid=uid(seed, label, number), frame_uid=frame, series_number=number, description=desc,
                                   sequence_name=seq, echo_time_ms=te, repetition_time_ms=tr, extension=ext, shuffle_seed=seed + number)
            mask_rel = session_dir / "lesion_mask.nii.gz"
            write_nifti(mask_vol, cohort / mask_rel)
        elif fmt == "metaimage":
            session_dir = Path("metaimage") / label
            for m, v in vol.items():
                write_metaimage(v, cohort / session_dir / (f"{label}_{m}.mhd" if m == "FLAIR" else f"{label}_{m}.mha"))
            mask_rel = session_dir / f"{label}_lesion_mask.mha"
            write_metaimage(mask_vol, cohort / mask_rel)
        else:
            session_dir = Path("bids") / f"sub-{label}" / "ses-01" / "anat"
            names = {"FLAIR": "FLAIR", "T1": "T1w", "T2": "T2w"}
            for m, v in vol.items():
                write_nifti(v.with_array(v.array.astype(np.float32)), cohort / session_dir / f"sub-{label}_ses-01_{names[m]}.nii.gz")
            mask_rel = session_dir / f"sub-{label}_ses-01_label-lesion_mask.nii.gz"
            write_nifti(mask_vol, cohort / mask_rel)

        voxel_mm3 = mask_grid.voxel_volume_mm3
        cases.append({
            "subject_label": label, "format": fmt, "session_dir": session_dir.as_posix(),
            "total_volume_ml": round(int(mask.sum()) * voxel_mm3 / 1000.0, 6), "lesion_count": len(params.lesions),
            "voxel_volume_mm3": voxel_mm3, "mask_relpath": mask_rel.as_posix(), "fault": fault or "",
        })
        lesions.extend(rows)
        subjects_json.append({"label": label, "format": fmt, "fault": fault, "grids": {m: g.to_json() for m, g in grids.items()},
                              "mask_grid": mask_grid.to_json(), "params": params.to_json()})

    truth = pd.DataFrame(cases)
    truth_cases = truth_dir / "truth_cases.csv"
    truth_lesions = truth_dir / "truth_lesions.csv"
    truth.to_csv(truth_cases, index=False)
    pd.DataFrame(lesions).to_csv(truth_lesions, index=False)
    faults_by_label = {f: f"PH{i:03d}" for f, i in _fault_subjects(n_subjects, faults).items()}
    (out / "phantom.json").write_text(json.dumps({
        "phantom_version": PHANTOM_VERSION, "seed": seed, "n_subjects": n_subjects, "spacing_mm": spacing_mm,
        "faults": faults_by_label, "lesion_free": [f"PH{i:03d}" for i in sorted(free)], "subjects": subjects_json}, indent=1))
    return CohortInfo(out, cohort, truth_cases, truth_lesions, truth, faults_by_label, [f"PH{i:03d}" for i in sorted(free)])
