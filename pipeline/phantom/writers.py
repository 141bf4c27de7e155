"""Write phantom images as real files: DICOM series (pydicom), MetaImage (SimpleITK), NIfTI.

The DICOM writer produces classic MR Image Storage files, one per slice, explicit VR little
endian, with the identifying tags a scanner fills (fake values) so that de-identification is
exercised, and geometry tags that describe the grid exactly:
``ImagePositionPatient`` = LPS centre of the slice's first voxel, ``ImageOrientationPatient`` =
voxel x then y axis, ``PixelSpacing`` = [row spacing (y), column spacing (x)].
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.volume import Volume

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def uid(*parts: Any) -> str:
    """A deterministic DICOM UID derived from ``parts`` (same parts → same UID)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _ds(value: float) -> Any:
    from pydicom.valuerep import DSfloat

    return DSfloat(float(value), auto_format=True)


def write_dicom_series(
    folder: str | Path,
    volume: Volume,
    *,
    patient: dict[str, str],
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    series_number: int,
    description: str,
    study_date: str = "20240115",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    sequence_name: str = "",
    echo_time_ms: float = 90.0,
    repetition_time_ms: float = 9000.0,
    extension: str = ".dcm",
    shuffle_seed: int | None = 0,
) -> list[Path]:
    """Write a 3-D float volume as one DICOM file per slice; returns the files.

    Intensities are stored as int16 with a ``RescaleSlope`` so that ``stored * slope`` equals the
    quantised image (the reader applies the slope). Files are written in shuffled order when
    ``shuffle_seed`` is given: file ``IM<n>`` holds the n-th slice of a seeded permutation, so
    neither file names nor write times follow position (readers must sort by position).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(volume.array, dtype=np.float64)
    top = float(np.abs(arr).max()) or 1.0
    slope = float(f"{top / 30000.0:.6g}")
    stored = np.round(arr / slope).astype(np.int16)
    nz, ny, nx = stored.shape
    d = volume.direction
    row, col, normal = d[:, 0], d[:, 1], d[:, 2]
    order = list(range(nz))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    files = []
    for n, k in enumerate(order):  # file n holds slice k: names do not follow position
        ipp = np.asarray(volume.origin) + normal * volume.spacing[2] * k
        sop = uid(series_uid, "slice", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = list(image_type)
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = study_date
        ds.StudyTime = "101500"
        ds.SeriesTime = ds.AcquisitionTime = f"10{20 + series_number % 30:02d}00"
        ds.AccessionNumber = patient["AccessionNumber"]
        ds.Modality = "MR"
        ds.Manufacturer = "LESIONFLOW PHANTOM"
        ds.ManufacturerModelName = "Synthetic 3T"
        ds.InstitutionName = "Phantom Hospital"
        ds.ReferringPhysicianName = "Referrer^Fake"
        ds.StudyDescription = "MRI BRAIN MS PROTOCOL"
        ds.SeriesDescription = description
        ds.ProtocolName = description
        ds.SequenceName = sequence_name
        ds.PatientName = patient["PatientName"]
        ds.PatientID = patient["PatientID"]
        ds.PatientBirthDate = patient["PatientBirthDate"]
        ds.PatientSex = patient.get("PatientSex", "O")
        ds.MagneticFieldStrength = _ds(3.0)
        ds.EchoTime = _ds(echo_time_ms)
        ds.RepetitionTime = _ds(repetition_time_ms)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in ipp]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.PixelSpacing = [_ds(volume.spacing[1]), _ds(volume.spacing[0])]
        ds.SliceThickness = _ds(volume.spacing[2])
        ds.SpacingBetweenSlices = _ds(volume.spacing[2])
        ds.SliceLocation = _ds(float(ipp @ normal))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(0.0)
        ds.RescaleType = "US"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / f"IM{n + 1:05d}{extension}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files


def write_metaimage(volume: Volume, path: str | Path, compress: bool = True) -> None:
    """``.mhd`` (+ ``.raw``) or ``.mha`` through SimpleITK, geometry exact."""
    import SimpleITK as sitk

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume.to_sitk(), str(path), useCompression=compress and str(path).endswith(".mha"))
