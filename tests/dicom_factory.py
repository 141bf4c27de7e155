"""Generate synthetic DICOM series with pydicom from a known array + geometry.

The geometry is given the lesionflow way (:class:`pipeline.core.volume.Volume` conventions):
``array`` is ``[z, y, x]`` (or ``[t, z, y, x]``), ``spacing``/``origin``/``direction`` in ITK
(x, y, z) order, LPS mm, ``direction[:, i]`` = voxel axis *i*. Each slice ``k`` becomes one
file with ``ImagePositionPatient = origin + direction[:, 2] * spacing[2] * k``,
``ImageOrientationPatient = direction[:, 0] + direction[:, 1]`` and
``PixelSpacing = [spacing[1], spacing[0]]``.

Example:
    >>> import numpy as np, tempfile
    >>> arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    >>> files = write_series(tempfile.mkdtemp(), arr, spacing=(1, 1, 2))
    >>> len(files)
    2
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def ds(value: float) -> DSfloat:
    """A DS value (≤ 16 characters) as close as possible to ``value``."""
    return DSfloat(float(value), auto_format=True)


def rotation(axis: str, degrees: float) -> np.ndarray:
    """3x3 rotation about the LPS x, y or z axis."""
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def frame(row: Sequence[float], col: Sequence[float]) -> np.ndarray:
    """Direction matrix with columns (row cosine, column cosine, row × column)."""
    r, c = np.asarray(row, float), np.asarray(col, float)
    return np.column_stack([r, c, np.cross(r, c)])


AXIAL = frame((1, 0, 0), (0, 1, 0))
"""Rows run L (x+), columns run P (y+), slices go S."""
SAGITTAL = frame((0, 1, 0), (0, 0, -1))
"""Row cosine +P, column cosine −S (image rows go down = inferior), normal = −L (towards R)."""
CORONAL = frame((1, 0, 0), (0, 0, -1))
"""Row cosine +L, column cosine −S, normal = +P."""


def _base_dataset(
    *,
    sop_class: str,
    series_uid: str,
    study_uid: str,
    frame_uid: str,
    series_number: int,
    description: str,
    rows: int,
    cols: int,
    dtype: np.dtype,
    extra: dict[str, Any] | None,
) -> Dataset:
    d = Dataset()
    d.SpecificCharacterSet = "ISO_IR 100"
    d.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    d.SOPClassUID = sop_class
    d.StudyDate = "20240101"
    d.SeriesDate = "20240101"
    d.StudyTime = "120000"
    d.Modality = "MR"
    d.Manufacturer = "SIEMENS"
    d.ManufacturerModelName = "Synthetic"
    d.SeriesDescription = description
    d.ProtocolName = description
    d.PatientName = "Test^Synthetic"
    d.PatientID = "SYNTH001"
    d.PatientBirthDate = "19700101"
    d.PatientSex = "O"
    d.MagneticFieldStrength = ds(3)
    d.StudyInstanceUID = study_uid
    d.SeriesInstanceUID = series_uid
    d.FrameOfReferenceUID = frame_uid
    d.StudyID = "1"
    d.SeriesNumber = series_number
    d.SamplesPerPixel = 1
    d.PhotometricInterpretation = "MONOCHROME2"
    d.Rows = rows
    d.Columns = cols
    d.BitsAllocated = 16
    d.BitsStored = 16
    d.HighBit = 15
    d.PixelRepresentation = 1 if np.dtype(dtype).kind == "i" else 0
    d.EchoTime = ds(90)
    d.RepetitionTime = ds(9000)
    d.FlipAngle = ds(150)
    d.SliceThickness = ds(99)  # deliberately wrong: spacing must come from positions
    d.EchoNumbers = 1
    for key, value in (extra or {}).items():
        setattr(d, key, value)
    return d


def _save(d: Dataset, path: Path, *, preamble: bool = True) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = d.SOPClassUID
    meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
    d.file_meta = meta
    if preamble:
        d.preamble = b"\0" * 128
        d.save_as(str(path), enforce_file_format=True)
    else:
        # no preamble and no file meta: a "raw" dataset only pydicom's force=True reads
        d.file_meta = FileMetaDataset()
        d.preamble = None
        pydicom.dcmwrite(str(path), d, enforce_file_format=False, implicit_vr=False, little_endian=True)


def write_series(
    folder: str | Path,
    array: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
    series_number: int = 1,
    description: str = "synthetic T2",
    series_uid: str | None = None,
    study_uid: str | None = None,
    extension: str = ".dcm",
    prefix: str = "IM",
    descending: bool = False,
    shuffle: bool = False,
    slope: float | Sequence[float] = 1.0,
    intercept: float | Sequence[float] = 0.0,
    write_rescale: bool = False,
    preamble: bool = True,
    temporal: str = "TemporalPositionIdentifier",
    extra: dict[str, Any] | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write ``array`` as a classic single-frame series; returns the files (in written order).

    ``array`` holds the *stored* values when ``slope``/``intercept`` are given (they are
    written as RescaleSlope/Intercept, scalars or one per slice). ``descending`` numbers
    the instances from the last slice down; ``shuffle`` writes file names in random order
    unrelated to position. A 4-D ``array`` ``[t, z, y, x]`` writes t×z files; the volumes
    are identified by ``temporal`` (TemporalPositionIdentifier, AcquisitionNumber,
    AcquisitionTime or InstanceNumber — the latter only numbering).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    if arr.ndim == 3:
        arr = arr[None]
    n_t, n_z, rows, cols = arr.shape
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    spacing = np.asarray(spacing, float)
    origin = np.asarray(origin, float)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    slopes = np.broadcast_to(np.asarray(slope, float), (n_z,))
    inters = np.broadcast_to(np.asarray(intercept, float), (n_z,))
    iop = [ds(v) for v in list(direction[:, 0]) + list(direction[:, 1])]
    items = [(t, k) for t in range(n_t) for k in range(n_z)]
    numbers = list(range(1, len(items) + 1))
    if descending:
        items = [(t, k) for t in range(n_t) for k in reversed(range(n_z))]
    names = [f"{prefix}{i:05d}{extension}" for i in numbers]
    if shuffle:
        random.Random(seed).shuffle(names)
    files = []
    for number, (t, k), name in zip(numbers, items, names):
        d = _base_dataset(
            sop_class=MR_IMAGE_STORAGE, series_uid=series_uid, study_uid=study_uid, frame_uid=frame_uid,
            series_number=series_number, description=description, rows=rows, cols=cols, dtype=arr.dtype, extra=extra,
        )
        d.SOPInstanceUID = generate_uid()
        d.InstanceNumber = number
        ipp = origin + direction[:, 2] * spacing[2] * k
        d.ImagePositionPatient = [ds(v) for v in ipp]
        d.ImageOrientationPatient = iop
        d.PixelSpacing = [ds(spacing[1]), ds(spacing[0])]
        d.SliceLocation = ds(float(ipp @ np.cross(direction[:, 0], direction[:, 1])))
        if n_t > 1:
            if temporal == "TemporalPositionIdentifier":
                d.TemporalPositionIdentifier = t + 1
                d.NumberOfTemporalPositions = n_t
            elif temporal == "AcquisitionNumber":
                d.AcquisitionNumber = t + 1
            elif temporal == "AcquisitionTime":
                d.AcquisitionNumber = 1
                d.AcquisitionTime = f"1200{t:02d}.500000"
        if write_rescale or np.any(slopes != 1) or np.any(inters != 0):
            d.RescaleSlope = ds(slopes[k])
            d.RescaleIntercept = ds(inters[k])
        d.PixelData = np.ascontiguousarray(arr[t, k]).astype(arr.dtype.newbyteorder("<")).tobytes()
        path = folder / name
        _save(d, path, preamble=preamble)
        files.append(path)
    return files


def write_enhanced(
    folder: str | Path,
    array: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
    series_number: int = 1,
    description: str = "synthetic enhanced",
    name: str = "enhanced.dcm",
    frame_order: Sequence[int] | None = None,
) -> Path:
    """Write ``array`` ([z, y, x] or [t, z, y, x]) as ONE Enhanced MR multi-frame file.

    ``frame_order`` permutes the stored frame order (geometry stays per frame).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array)
    if arr.ndim == 3:
        arr = arr[None]
    n_t, n_z, rows, cols = arr.shape
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    spacing = np.asarray(spacing, float)
    origin = np.asarray(origin, float)
    d = _base_dataset(
        sop_class=ENHANCED_MR_IMAGE_STORAGE, series_uid=generate_uid(), study_uid=generate_uid(), frame_uid=generate_uid(),
        series_number=series_number, description=description, rows=rows, cols=cols, dtype=arr.dtype, extra=None,
    )
    for kw in ("EchoTime", "RepetitionTime", "FlipAngle", "SliceThickness", "EchoNumbers"):
        delattr(d, kw)
    d.SOPInstanceUID = generate_uid()
    d.InstanceNumber = 1
    d.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    frames = [(t, k) for t in range(n_t) for k in range(n_z)]
    if frame_order is not None:
        frames = [frames[i] for i in frame_order]
    d.NumberOfFrames = len(frames)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [ds(spacing[1]), ds(spacing[0])]
    measures.SliceThickness = ds(99)
    shared.PixelMeasuresSequence = DicomSequence([measures])
    orient = Dataset()
    orient.ImageOrientationPatient = [ds(v) for v in list(direction[:, 0]) + list(direction[:, 1])]
    shared.PlaneOrientationSequence = DicomSequence([orient])
    echo = Dataset()
    echo.EffectiveEchoTime = ds(80)
    shared.MREchoSequence = DicomSequence([echo])
    timing = Dataset()
    timing.RepetitionTime = ds(5000)
    timing.FlipAngle = ds(90)
    shared.MRTimingAndRelatedParametersSequence = DicomSequence([timing])
    d.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for t, k in frames:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [ds(v) for v in origin + direction[:, 2] * spacing[2] * k]
        item.PlanePositionSequence = DicomSequence([pos])
        content = Dataset()
        content.InStackPositionNumber = k + 1
        content.TemporalPositionIndex = t + 1
        content.StackID = "1"
        content.DimensionIndexValues = [1, t + 1, k + 1]
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    d.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    dim_seq = []
    for pointer in ("StackID", "TemporalPositionIndex", "InStackPositionNumber"):
        dim = Dataset()
        dim.DimensionIndexPointer = pydicom.datadict.tag_for_keyword(pointer)
        dim.FunctionalGroupPointer = pydicom.datadict.tag_for_keyword("FrameContentSequence")
        dim_seq.append(dim)
    d.DimensionIndexSequence = DicomSequence(dim_seq)
    d.PixelData = np.ascontiguousarray(np.stack([arr[t, k] for t, k in frames])).astype(arr.dtype.newbyteorder("<")).tobytes()
    path = folder / name
    _save(d, path)
    return path


def expected_world(array_shape_zyx: Sequence[int], spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray) -> np.ndarray:
    """LPS world coordinates (N, 3) of every voxel centre, in array order [z, y, x]."""
    z, y, x = array_shape_zyx
    kk, jj, ii = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float)
    return ijk @ (np.asarray(direction) * np.asarray(spacing)[None, :]).T + np.asarray(origin)


# JPEG process name in GDCM for the syntaxes that pydicom cannot encode itself
_GDCM_SYNTAX = {
    "1.2.840.10008.1.2.4.50": "JPEGBaselineProcess1",
    "1.2.840.10008.1.2.4.51": "JPEGExtendedProcess2_4",
    "1.2.840.10008.1.2.4.57": "JPEGLosslessProcess14",
    "1.2.840.10008.1.2.4.70": "JPEGLosslessProcess14_1",
}


def encoder_missing(syntax: str) -> str | None:
    """Why ``syntax`` cannot be encoded here (``None`` when :func:`recompress` can do it)."""
    from pydicom.pixels import get_encoder
    from pydicom.uid import UID

    if syntax in _GDCM_SYNTAX:
        try:
            import gdcm  # noqa: F401
        except ImportError:
            return f"{UID(syntax).name}: pydicom has no encoder for it and python-gdcm is not installed"
        return None
    try:
        encoder = get_encoder(syntax)
    except NotImplementedError:
        return f"{UID(syntax).name}: pydicom has no encoder for it"
    if not encoder.is_available:
        return f"{UID(syntax).name}: no encoder plugin installed ({encoder.missing_dependencies})"
    return None


def recompress(path: str | Path, syntax: str, **kwargs: Any) -> Path:
    """Re-encode the pixel data of the DICOM file ``path`` in place with transfer syntax ``syntax``.

    pydicom's own encoders (``Dataset.compress``: RLE natively, JPEG-LS with pyjpegls,
    JPEG 2000 with pylibjpeg-openjpeg; ``kwargs`` go to it) are used when they exist; the JPEG
    processes pydicom cannot encode (baseline .50, extended .51, lossless .57/.70) go through
    GDCM's ``ImageChangeTransferSyntax``.
    """
    path = Path(path)
    if syntax not in _GDCM_SYNTAX:
        d = pydicom.dcmread(path)
        d.compress(syntax, **kwargs)
        d.save_as(path, enforce_file_format=True)
        return path
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"GDCM could not read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, _GDCM_SYNTAX[syntax])))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM could not encode {path} as {syntax}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(path))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM could not write {path}")
    return path
