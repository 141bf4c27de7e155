"""DICOM: find files by content, group them into series, assemble 3-D/4-D Volumes, sidecars.

Assembly follows dcm2niix (the reference converter):

* files are grouped by SeriesInstanceUID, then split into sub-series by orientation
  (ImageOrientationPatient), matrix (Rows, Columns), pixel spacing, echo (EchoNumbers /
  EchoTime), image type and storage kind (mosaic, enhanced multi-frame);
* slices are sorted by ImagePositionPatient projected on the slice normal
  ``n = row_cosine × column_cosine``; the slice spacing comes from those positions (never
  SliceThickness); a gap of ≳1.5× the median spacing is a missing slice (error), smaller
  irregularities a warning; duplicated positions within one temporal position are errors;
* several images at every position make a 4-D series ``[t, z, y, x]``, volumes ordered by
  (TemporalPositionIdentifier, AcquisitionNumber, AcquisitionTime, InstanceNumber);
* geometry: origin = IPP of the first sorted slice, direction columns = (row cosine,
  column cosine, normal), spacing = (PixelSpacing[1], PixelSpacing[0], slice spacing);
* Siemens mosaics are unpacked with nibabel's ``MosaicWrapper`` (CSA header), several
  mosaic files = 4-D; enhanced multi-frame files are assembled from their per-frame
  functional groups (PlanePosition / PlaneOrientation / PixelMeasures / PixelValueTransformation);
* RescaleSlope/Intercept are applied: identity everywhere keeps the stored integer dtype,
  one integral slope/intercept keeps an integer dtype, anything else gives float32.

Patient identifiers (PatientID, StudyInstanceUID) stay in memory on :class:`DicomSeries`;
they are never written by :func:`sidecar` nor put in error messages.

Example:
    >>> from pipeline.io.readers.dicom import find_dicom_files, scan_series, read_series  # doctest: +SKIP
    >>> series, errors = scan_series(find_dicom_files("study/"))                        # doctest: +SKIP
    >>> vol = read_series(series[0])                                                    # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.geometry import decompose_affine
from pipeline.core.limits import ReadLimits
from pipeline.core.volume import Volume
from pipeline.io.readers.dicom_pixels import (
    DICOMDIR_SOP_CLASS,
    RawPixels,
    declared_pixel_size,
    decode_pixels,
    dicom_time_seconds,
    dicom_value,
    header_truncated,
    raw_pixels,
    read_dataset,
    read_header_dataset,
    read_raw_pixels,
    to_float,
    to_floats,
    to_int,
    to_str,
)
from pipeline.io.readers.errors import ReaderError, ReasonCode
from pipeline.io.readers.limits import check_declared, check_file_count, resolve

__all__ = ["DicomSeries", "find_dicom_files", "scan_series", "read_series", "sidecar"]

IOP_TOL = 1e-3
"""Direction cosines closer than this are one orientation."""
POSITION_TOL = 0.01
"""Slices whose positions along the normal differ by less than this (mm) are one position."""
GAP_FACTOR = 1.5
"""A step larger than this × the median slice spacing means at least one missing slice."""
TILT_WARN_DEG = 0.05

# Non-identifying header attributes kept on DicomSeries.attributes (sidecar, modality rules).
ATTRIBUTE_KEYWORDS = (
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "MagneticFieldStrength",
    "ImagingFrequency", "BodyPartExamined", "PatientPosition", "MRAcquisitionType",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "SliceThickness", "SpacingBetweenSlices",
    "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle", "EchoTrainLength", "EchoNumbers",
    "PixelBandwidth", "PercentPhaseFieldOfView", "PercentSampling", "InPlanePhaseEncodingDirection",
    "ImageOrientationPatient", "ContrastBolusAgent", "KVP", "ConvolutionKernel", "StudyDescription",
    "AcquisitionMatrix", "NumberOfTemporalPositions", "PulseSequenceName",
)

# Every top-level attribute the header scan reads (:func:`_header_from_dataset`,
# :func:`_collect_attributes`, :func:`pipeline.io.readers.dicom_pixels.raw_pixels`): the scan
# parses only these (pydicom ``specific_tags``; sequences are read whole), which keeps large
# trees fast. A keyword read from a scanned header but missing here reads as absent.
HEADER_KEYWORDS = ATTRIBUTE_KEYWORDS + (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID",
    "SeriesNumber", "SeriesDescription", "ProtocolName", "SequenceName", "Modality", "ImageType",
    "Rows", "Columns", "NumberOfFrames", "ImagePositionPatient", "PixelSpacing",
    "RescaleSlope", "RescaleIntercept", "TemporalPositionIdentifier", "AcquisitionNumber",
    "AcquisitionTime", "InstanceNumber", "DirectoryRecordSequence",
    "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence",
    "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "StudyDate",
)


@functools.cache
def _header_tags() -> tuple[int, ...]:
    """:data:`HEADER_KEYWORDS` as tags, for pydicom's ``specific_tags``."""
    from pydicom.datadict import tag_for_keyword

    return tuple(sorted({tag_for_keyword(k) for k in HEADER_KEYWORDS}))


# DICOM keyword → DicomSeries attribute, for header_text
_FIELD_ATTRS = {
    "SeriesDescription": "series_description",
    "ProtocolName": "protocol_name",
    "SequenceName": "sequence_name",
    "Modality": "modality",
    "SeriesInstanceUID": "series_uid",
}


# =========================================================================== public types
@dataclass
class DicomSeries:
    """One reconstructable image series (a SeriesInstanceUID, or one part of a split UID).

    ``study_uid`` and ``patient_id`` are identifying: keep them in memory only.
    ``attributes`` holds non-identifying header values (for sidecars and modality rules).
    """

    key: str
    files: list[Path]
    study_uid: str = field(repr=False)
    patient_id: str = field(repr=False)
    series_uid: str
    series_number: int | None
    series_description: str
    protocol_name: str
    sequence_name: str
    image_type: tuple[str, ...]
    modality: str
    n_volumes: int
    is_mosaic: bool
    is_multiframe: bool
    warnings: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict, repr=False)
    study_date: str = field(default="", repr=False)  # DICOM StudyDate (YYYYMMDD): identifying, memory only (orders visits)
    # Per-file headers from the scan (geometry + where the pixels are): lets read_series skip
    # a second header parse. Not an init field, so ``dataclasses.replace`` drops it.
    _headers: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __repr__(self) -> str:  # short, and without identifiers: safe to log
        return (
            f"DicomSeries(key={self.key!r}, series_number={self.series_number}, "
            f"series_description={self.series_description!r}, modality={self.modality!r}, "
            f"files={len(self.files)}, n_volumes={self.n_volumes}, is_mosaic={self.is_mosaic}, "
            f"is_multiframe={self.is_multiframe}, warnings={self.warnings!r})"
        )

    def header_text(self, fields: Iterable[str]) -> str:
        """The listed attributes (DICOM keywords) joined with spaces, e.g. for regex rules.

        Known: SeriesDescription, ProtocolName, SequenceName, Modality, SeriesNumber,
        ImageType and every keyword in :data:`ATTRIBUTE_KEYWORDS`; others give ``""``.
        """
        parts: list[str] = []
        for name in fields:
            if name in _FIELD_ATTRS:
                value: Any = getattr(self, _FIELD_ATTRS[name])
            elif name == "SeriesNumber":
                value = "" if self.series_number is None else str(self.series_number)
            elif name == "ImageType":
                value = " ".join(self.image_type)
            else:
                value = self.attributes.get(name, "")
                if isinstance(value, (list, tuple)):
                    value = " ".join(str(v) for v in value)
            value = str(value).strip()
            if value:
                parts.append(value)
        return " ".join(parts)


# =========================================================================== internals
@dataclass
class _Slice:
    """One 2-D image: a single-frame file or one frame of an enhanced multi-frame file."""

    path: Path
    frame: int | None
    ipp: np.ndarray
    iop: np.ndarray  # (6,)
    pixel_spacing: tuple[float, float]  # (row spacing = y, column spacing = x)
    rows: int
    cols: int
    slope: float
    intercept: float
    tkey: tuple[float, float, float, float]
    echo: float | None = None
    array: np.ndarray | None = None


@dataclass
class _Plan:
    grid: list[list[_Slice]]  # [t][z]
    spacing_z: float
    origin: np.ndarray
    direction: np.ndarray
    warnings: list[str]


@dataclass
class _Header:
    path: Path
    sop_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    series_number: int | None
    series_description: str
    protocol_name: str
    sequence_name: str
    image_type: tuple[str, ...]
    modality: str
    rows: int
    cols: int
    iop: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    echo_number: int | None
    echo_time: float | None
    instance_number: int | None
    is_mosaic: bool
    is_multiframe: bool
    slices: list[_Slice]
    attributes: dict[str, Any]
    pixels: RawPixels | None = None  # set by the scan for plain native pixel data
    study_date: str = field(default="", repr=False)  # identifying (a date): memory only, orders visits


def _tkey(tpi: Any, acq_number: Any, acq_time: Any, instance: Any) -> tuple[float, float, float, float]:
    vals = (to_float(tpi), to_float(acq_number), dicom_time_seconds(acq_time), to_float(instance))
    return tuple(0.0 if v is None else v for v in vals)  # type: ignore[return-value]


def _slope_intercept(item: Any) -> tuple[float, float]:
    slope = to_float(item.get("RescaleSlope")) if item is not None else None
    inter = to_float(item.get("RescaleIntercept")) if item is not None else None
    return (1.0 if slope is None or slope == 0 else slope, 0.0 if inter is None else inter)


def _seq_item(container: Any, keyword: str) -> Any:
    seq = container.get(keyword) if container is not None else None
    if seq is None:
        return None
    try:
        return seq[0] if len(seq) else None
    except TypeError:
        return None


def _collect_attributes(ds: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for kw in ATTRIBUTE_KEYWORDS:
        elem = ds.get(kw)
        if elem is None or elem == "":
            continue
        value = dicom_value(elem)
        if value not in (None, "", []):
            attrs[kw] = value
    # Enhanced MR keeps acquisition parameters inside the functional groups.
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = _seq_item(ds, "SharedFunctionalGroupsSequence")
        frames = ds.get("PerFrameFunctionalGroupsSequence")
        first = frames[0] if frames else None
        for group in (shared, first):
            if group is None:
                continue
            echo = _seq_item(group, "MREchoSequence")
            if echo is not None and "EchoTime" not in attrs and echo.get("EffectiveEchoTime") is not None:
                attrs["EchoTime"] = dicom_value(echo.EffectiveEchoTime)
            timing = _seq_item(group, "MRTimingAndRelatedParametersSequence")
            if timing is not None:
                for kw in ("RepetitionTime", "FlipAngle", "EchoTrainLength"):
                    if kw not in attrs and timing.get(kw) is not None:
                        attrs[kw] = dicom_value(timing.get(kw))
            measures = _seq_item(group, "PixelMeasuresSequence")
            if measures is not None:
                for kw in ("SliceThickness", "SpacingBetweenSlices"):
                    if kw not in attrs and measures.get(kw) is not None:
                        attrs[kw] = dicom_value(measures.get(kw))
            orient = _seq_item(group, "PlaneOrientationSequence")
            if orient is not None and "ImageOrientationPatient" not in attrs and orient.get("ImageOrientationPatient") is not None:
                attrs["ImageOrientationPatient"] = dicom_value(orient.ImageOrientationPatient)
    return attrs


def _frame_slices(ds: Any, path: Path, rows: int, cols: int) -> list[_Slice]:
    """Per-frame geometry of an enhanced multi-frame dataset."""
    shared = _seq_item(ds, "SharedFunctionalGroupsSequence")
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    n_frames = to_int(ds.get("NumberOfFrames")) or len(frames)
    if len(frames) != n_frames:
        raise ReaderError(path, f"PerFrameFunctionalGroupsSequence has {len(frames)} items but NumberOfFrames is {n_frames}", ReasonCode.GEOMETRY_UNKNOWN)
    top_slope = _slope_intercept(ds) if "RescaleSlope" in ds or "RescaleIntercept" in ds else None
    out: list[_Slice] = []
    for i, frame in enumerate(frames):
        def find(keyword: str, frame: Any = frame) -> Any:
            item = _seq_item(frame, keyword)
            return item if item is not None else _seq_item(shared, keyword)

        pos, orient, measures = find("PlanePositionSequence"), find("PlaneOrientationSequence"), find("PixelMeasuresSequence")
        ipp = to_floats(pos.get("ImagePositionPatient") if pos is not None else None, 3)
        iop = to_floats(orient.get("ImageOrientationPatient") if orient is not None else None, 6)
        ps = to_floats(measures.get("PixelSpacing") if measures is not None else None, 2)
        if ipp is None or iop is None:
            raise ReaderError(path, f"frame {i + 1}: no PlanePosition/PlaneOrientation (ImagePositionPatient/ImageOrientationPatient): slice geometry unknown", ReasonCode.GEOMETRY_UNKNOWN)
        if ps is None:
            raise ReaderError(path, f"frame {i + 1}: no PixelMeasuresSequence PixelSpacing: voxel size unknown", ReasonCode.GEOMETRY_UNKNOWN)
        pvt = find("PixelValueTransformationSequence")
        slope, inter = _slope_intercept(pvt) if pvt is not None else (top_slope or (1.0, 0.0))
        content = _seq_item(frame, "FrameContentSequence")
        tpi = content.get("TemporalPositionIndex") if content is not None else None
        echo_item = find("MREchoSequence")
        echo = to_float(echo_item.get("EffectiveEchoTime")) if echo_item is not None else None
        acq_time = None
        if content is not None and content.get("FrameAcquisitionDateTime"):
            text = to_str(content.FrameAcquisitionDateTime)
            acq_time = text[8:] if len(text) > 8 else None
        tkey = _tkey(tpi, None, acq_time, i + 1)
        out.append(_Slice(path, i, np.asarray(ipp), np.asarray(iop), (ps[0], ps[1]), rows, cols, slope, inter, tkey, echo))
    return out


def _read_header(path: Path, ds: Any | None = None, attr_cache: dict | None = None) -> _Header | None:
    """Header of one file (``None`` for DICOMDIR); ReaderError when it cannot be an image.

    ``attr_cache`` shares the (non-identifying) attribute dict between files of one
    acquisition (same UID, matrix, echo, image type) to keep large scans fast.
    """
    loc = None
    if ds is None:
        ds, loc = read_header_dataset(path, _header_tags())
    try:
        header = _header_from_dataset(path, ds, attr_cache)
        if header is not None and loc is not None:
            header.pixels = raw_pixels(ds, loc)
        return header
    except ReaderError as exc:
        if header_truncated(path):
            raise ReaderError(path, f"truncated DICOM file: ends inside the header ({path.stat().st_size} bytes); {exc.reason}", ReasonCode.TRUNCATED) from exc
        raise


def _header_from_dataset(path: Path, ds: Any, attr_cache: dict | None) -> _Header | None:
    meta = getattr(ds, "file_meta", None)
    media_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return None
    if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds and "Rows" not in ds:
        raise ReaderError(path, "not a DICOM image file (no SOPClassUID, SeriesInstanceUID or Rows)", ReasonCode.NOT_AN_IMAGE)
    rows, cols = to_int(ds.get("Rows")), to_int(ds.get("Columns"))
    if not rows or not cols:
        sop = ds.get("SOPClassUID")
        name = getattr(sop, "name", str(sop)) if sop is not None else "unknown SOP class"
        raise ReaderError(path, f"not an image (no Rows/Columns; SOP Class: {name})", ReasonCode.NOT_AN_IMAGE)
    series_uid = to_str(ds.get("SeriesInstanceUID"))
    if not series_uid:
        raise ReaderError(path, "no SeriesInstanceUID (0020,000E): cannot be grouped into a series", ReasonCode.NO_SERIES_UID)
    image_type = tuple(v.strip().upper() for v in to_str(ds.get("ImageType")).split("\\") if v.strip())
    is_multiframe = "PerFrameFunctionalGroupsSequence" in ds
    n_frames = to_int(ds.get("NumberOfFrames")) or 1
    is_mosaic = "MOSAIC" in image_type and not is_multiframe
    echo_number = to_int(ds.get("EchoNumbers"))
    echo_time = to_float(ds.get("EchoTime"))
    if is_multiframe:
        slices = _frame_slices(ds, path, rows, cols)
        iop = slices[0].iop if slices else None
        pixel_spacing = slices[0].pixel_spacing if slices else None
        echoes = {s.echo for s in slices}
        if len(echoes) > 1:
            raise ReaderError(path, f"enhanced multi-frame file with {len(echoes)} echo times: multi-echo multi-frame files are not supported", ReasonCode.UNSUPPORTED_IMAGE)
        if echo_time is None and slices:
            echo_time = slices[0].echo
    else:
        if n_frames > 1:
            raise ReaderError(path, f"multi-frame image ({n_frames} frames) without per-frame functional groups: frame geometry unknown", ReasonCode.GEOMETRY_UNKNOWN)
        ipp = to_floats(ds.get("ImagePositionPatient"), 3)
        iop_t = to_floats(ds.get("ImageOrientationPatient"), 6)
        if ipp is None or iop_t is None:
            missing = " and ".join(k for k, v in (("ImagePositionPatient", ipp), ("ImageOrientationPatient", iop_t)) if v is None)
            raise ReaderError(path, f"no {missing}: slice geometry unknown", ReasonCode.GEOMETRY_UNKNOWN)
        ps = to_floats(ds.get("PixelSpacing"), 2)
        if ps is None:
            raise ReaderError(path, "no PixelSpacing (0028,0030): voxel size unknown", ReasonCode.GEOMETRY_UNKNOWN)
        iop = np.asarray(iop_t)
        pixel_spacing = (ps[0], ps[1])
        slope, inter = _slope_intercept(ds)
        tkey = _tkey(ds.get("TemporalPositionIdentifier"), ds.get("AcquisitionNumber"), ds.get("AcquisitionTime"), ds.get("InstanceNumber"))
        slices = [_Slice(path, None, np.asarray(ipp), iop, pixel_spacing, rows, cols, slope, inter, tkey, echo_time)]
    series_number = to_int(ds.get("SeriesNumber"))
    cache_key = (series_uid, rows, cols, echo_number, echo_time, image_type)
    if attr_cache is not None and cache_key in attr_cache:
        attributes = attr_cache[cache_key]
    else:
        attributes = _collect_attributes(ds)
        if attr_cache is not None:
            attr_cache[cache_key] = attributes
    return _Header(
        path=path,
        sop_uid=to_str(ds.get("SOPInstanceUID")),
        series_uid=series_uid,
        study_uid=to_str(ds.get("StudyInstanceUID")),
        study_date=to_str(ds.get("StudyDate")),
        patient_id=to_str(ds.get("PatientID")),
        series_number=series_number,
        series_description=to_str(ds.get("SeriesDescription")),
        protocol_name=to_str(ds.get("ProtocolName")),
        sequence_name=to_str(ds.get("SequenceName")) or to_str(ds.get("PulseSequenceName")),
        image_type=image_type,
        modality=to_str(ds.get("Modality")),
        rows=rows,
        cols=cols,
        iop=iop,
        pixel_spacing=pixel_spacing,
        echo_number=echo_number,
        echo_time=echo_time,
        instance_number=to_int(ds.get("InstanceNumber")),
        is_mosaic=is_mosaic,
        is_multiframe=is_multiframe,
        slices=slices,
        attributes=attributes,
    )


# --------------------------------------------------------------------------- geometry plan
def _fmt(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".") if abs(x) < 1e6 else f"{x:g}"


def _normal(iop: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if nr < 0.5 or nc < 0.5:
        raise ReaderError(path, f"invalid ImageOrientationPatient {list(map(float, iop))}: zero-length direction cosine", ReasonCode.GEOMETRY_UNKNOWN)
    row, col = row / nr, col / nc
    if abs(float(row @ col)) > 1e-3:
        raise ReaderError(path, f"ImageOrientationPatient row and column cosines are not orthogonal (dot product {float(row @ col):.4f})", ReasonCode.GEOMETRY_UNKNOWN)
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def _plan(slices: Sequence[_Slice], fallback_dz: float | None) -> _Plan:
    """Sort slices into ``[t][z]`` and derive geometry; ReaderError for inconsistent input."""
    if not slices:
        raise ReaderError("<empty series>", "series has no images", ReasonCode.EMPTY_SERIES)
    first = slices[0]
    first_iop, first_ps = first.iop.tobytes(), first.pixel_spacing
    for s in slices[1:]:
        if s.iop.tobytes() == first_iop and (s.rows, s.cols) == (first.rows, first.cols) and s.pixel_spacing == first_ps:
            continue  # identical: the common case, without the tolerance checks below
        if not np.allclose(s.iop, first.iop, atol=IOP_TOL):
            raise ReaderError(s.path, f"mixed orientations in one series: ImageOrientationPatient {np.round(s.iop, 4).tolist()} differs from {np.round(first.iop, 4).tolist()} ({first.path.name})", ReasonCode.INCONSISTENT_SERIES)
        if (s.rows, s.cols) != (first.rows, first.cols):
            raise ReaderError(s.path, f"mixed matrix sizes in one series: {s.rows}x{s.cols} vs {first.rows}x{first.cols} ({first.path.name})", ReasonCode.INCONSISTENT_SERIES)
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, atol=1e-3):
            raise ReaderError(s.path, f"mixed PixelSpacing in one series: {list(s.pixel_spacing)} vs {list(first.pixel_spacing)} ({first.path.name})", ReasonCode.INCONSISTENT_SERIES)
    row, col, normal = _normal(first.iop, first.path)
    proj = np.array([float(s.ipp @ normal) for s in slices])
    order = np.lexsort(np.array([s.tkey for s in slices], float).T[::-1].tolist() + [proj])
    ordered = [slices[i] for i in order]
    pos_sorted = proj[order]
    # cluster by position along the normal
    clusters: list[list[_Slice]] = [[ordered[0]]]
    centres: list[list[float]] = [[pos_sorted[0]]]
    for s, p in zip(ordered[1:], pos_sorted[1:]):
        if p - centres[-1][-1] <= POSITION_TOL:
            clusters[-1].append(s)
            centres[-1].append(p)
        else:
            clusters.append([s])
            centres.append([p])
    clusters = [sorted(c, key=lambda s: s.tkey) for c in clusters]
    positions = np.array([float(np.mean(c)) for c in centres])
    counts = np.array([len(c) for c in clusters])

    def where(i: int) -> str:
        return f"{_fmt(positions[i])} mm"

    # duplicates: two images with the same temporal key at one position
    for i, cluster in enumerate(clusters):
        seen: dict[tuple, _Slice] = {}
        for s in cluster:
            if s.tkey in seen:
                a, b = seen[s.tkey], s
                names = f"{_name(a)} and {_name(b)}"
                raise ReaderError(b.path, f"duplicate slice at position {where(i)}: {names} have the same position and the same temporal position", ReasonCode.DUPLICATE_SLICE)
            seen[s.tkey] = s
    if len(set(counts.tolist())) > 1:
        values, freq = np.unique(counts, return_counts=True)
        mode = int(values[np.argmax(freq)])
        over = [i for i, c in enumerate(counts) if c > mode]
        if over:
            i = over[0]
            names = ", ".join(_name(s) for s in clusters[i])
            raise ReaderError(clusters[i][-1].path, f"duplicate slice position {where(i)}: {counts[i]} images ({names}) where the other positions have {mode}", ReasonCode.DUPLICATE_SLICE)
        under = [i for i, c in enumerate(counts) if c < mode]
        i = under[0] if under else int(np.argmin(counts))
        raise ReaderError(clusters[i][0].path, f"incomplete 4-D series: position {where(i)} has {counts[i]} of {mode} temporal positions (slice missing from {mode - counts[i]} volume(s))", ReasonCode.INCOMPLETE_4D)
    n_t = int(counts[0])
    nz = len(clusters)
    warnings: list[str] = []
    if nz >= 2:
        steps = np.diff(positions)
        # reference step: the median (≥ 3 steps), else the smaller step (with 2 steps the
        # median is the mean and would hide a gap)
        median = float(np.median(steps)) if len(steps) >= 3 else float(steps.min())
        for i, step in enumerate(steps):
            if step > GAP_FACTOR * median:
                missing = max(1, int(round(step / median)) - 1)
                raise ReaderError(
                    clusters[i + 1][0].path,
                    f"slice missing between positions {where(i)} and {where(i + 1)} "
                    f"(step {_fmt(step)} mm, {_fmt(step / median)}x the typical {_fmt(median)} mm; about {missing} slice(s) absent; "
                    f"neighbours {_name(clusters[i][0])} and {_name(clusters[i + 1][0])})",
                    ReasonCode.MISSING_SLICE,
                )
        spread_tol = max(POSITION_TOL, 1e-3 * median)
        if float(steps.max() - steps.min()) > spread_tol:
            warnings.append(f"non-uniform slice spacing ({_fmt(float(steps.min()))}–{_fmt(float(steps.max()))} mm); using the mean")
        dz = float((positions[-1] - positions[0]) / (nz - 1))
        travel = clusters[-1][0].ipp - clusters[0][0].ipp
        length = float(np.linalg.norm(travel))
        if length > 0:
            tilt = math.degrees(math.acos(min(1.0, abs(float(travel @ normal)) / length)))
            if tilt > TILT_WARN_DEG:
                warnings.append(f"gantry tilt {tilt:.1f}° (slices sheared; geometry uses the slice normal, in-plane shift of {_fmt(length * math.sin(math.radians(tilt)))} mm over the stack ignored)")
    else:
        dz = fallback_dz if fallback_dz and fallback_dz > 0 else 1.0
        warnings.append(f"single slice: slice spacing {_fmt(dz)} mm taken from the header")
    grid = [[clusters[z][t] for z in range(nz)] for t in range(n_t)]
    direction = np.column_stack([row, col, normal])
    return _Plan(grid=grid, spacing_z=dz, origin=np.asarray(grid[0][0].ipp, float), direction=direction, warnings=warnings)


def _name(s: _Slice) -> str:
    return s.path.name if s.frame is None else f"{s.path.name}[frame {s.frame + 1}]"


def _fallback_dz(attrs: dict[str, Any]) -> float | None:
    for kw in ("SpacingBetweenSlices", "SliceThickness"):
        v = to_float(attrs.get(kw))
        if v and v > 0:
            return v
    return None


# =========================================================================== discovery
def find_dicom_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every DICOM file under ``root`` (recursively, hidden entries skipped), by content."""
    from pipeline.io.readers import is_dicom_file, walk_files

    root = Path(root)
    if root.is_file():
        return [root] if is_dicom_file(root) else []
    return [p for p in walk_files(root) if is_dicom_file(p)]


def _plane(iop: np.ndarray | None) -> str:
    if iop is None:
        return "x"
    n = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:]))
    return ("sag", "cor", "ax")[int(np.argmax(np.abs(n)))]


def _group_headers(headers: list[_Header]) -> list[list[_Header]]:
    """Split one UID's headers into sub-series (orientation, matrix, spacing, echo, type, kind)."""
    groups: list[tuple[tuple, np.ndarray | None, tuple[float, float] | None, list[_Header]]] = []
    for h in headers:
        key = (h.rows, h.cols, h.echo_number, None if h.echo_time is None else round(h.echo_time, 2), h.image_type, h.is_mosaic, h.is_multiframe)
        for gkey, giop, gps, members in groups:
            if gkey != key:
                continue
            if giop is not None and h.iop is not None and h.pixel_spacing == gps and giop.tobytes() == h.iop.tobytes():
                members.append(h)  # identical orientation and spacing: the common case
                break
            if (giop is None) != (h.iop is None) or (giop is not None and not np.allclose(giop, h.iop, atol=IOP_TOL)):
                continue
            if gps is not None and h.pixel_spacing is not None and not np.allclose(gps, h.pixel_spacing, atol=1e-3):
                continue
            members.append(h)
            break
        else:
            groups.append((key, h.iop, h.pixel_spacing, [h]))
    return [g[3] for g in groups]


def _split_tokens(groups: list[list[_Header]]) -> tuple[list[str], list[str]]:
    """Key suffixes for the sub-series of one UID, and the names of the splitting attributes."""
    reps = [g[0] for g in groups]
    reasons: list[str] = []
    tokens: list[list[str]] = [[] for _ in groups]

    def differs(values: list[Any]) -> bool:
        return len({repr(v) for v in values}) > 1

    orient = [None if h.iop is None else tuple(np.round(h.iop, 3)) for h in reps]
    if differs(orient):
        reasons.append("orientation")
        for i, h in enumerate(reps):
            tokens[i].append(_plane(h.iop))
    if differs([(h.rows, h.cols) for h in reps]):
        reasons.append("matrix")
        for i, h in enumerate(reps):
            tokens[i].append(f"{h.rows}x{h.cols}")
    if differs([None if h.pixel_spacing is None else tuple(np.round(h.pixel_spacing, 3)) for h in reps]):
        reasons.append("pixel spacing")
        for i, h in enumerate(reps):
            tokens[i].append("ps" + "x".join(_fmt(v) for v in (h.pixel_spacing or ())))
    if differs([(h.echo_number, None if h.echo_time is None else round(h.echo_time, 2)) for h in reps]):
        reasons.append("echo")
        for i, h in enumerate(reps):
            tokens[i].append(f"e{h.echo_number}" if h.echo_number is not None else f"te{_fmt(h.echo_time or 0)}")
    if differs([h.image_type for h in reps]):
        reasons.append("image type")
        for i, h in enumerate(reps):
            tokens[i].append("t" + "-".join(h.image_type[2:4]).lower() if len(h.image_type) > 2 else f"t{i + 1}")
    if differs([(h.is_mosaic, h.is_multiframe) for h in reps]):
        reasons.append("storage")
        for i, h in enumerate(reps):
            tokens[i].append("mosaic" if h.is_mosaic else "mf" if h.is_multiframe else "single")
    suffixes = ["_".join(t) or str(i + 1) for i, t in enumerate(tokens)]
    seen: dict[str, int] = defaultdict(int)
    for s in suffixes:
        seen[s] += 1
    count: dict[str, int] = defaultdict(int)
    for i, s in enumerate(suffixes):
        if seen[s] > 1:
            count[s] += 1
            suffixes[i] = f"{s}{count[s]}"
    return suffixes, reasons


def _series_from(headers: list[_Header], key: str, warnings: list[str]) -> DicomSeries:
    headers = sorted(headers, key=lambda h: (h.instance_number if h.instance_number is not None else 1 << 30, str(h.path)))
    h0 = headers[0]
    attrs = dict(h0.attributes)
    warnings = list(warnings)
    if h0.is_mosaic:
        n_volumes = len(headers)
    else:
        plan = _plan([s for h in headers for s in h.slices], _fallback_dz(attrs))
        n_volumes = len(plan.grid)
        warnings.extend(w for w in plan.warnings if not w.startswith("single slice"))
    series = DicomSeries(
        key=key,
        files=[h.path for h in headers],
        study_uid=h0.study_uid,
        patient_id=h0.patient_id,
        series_uid=h0.series_uid,
        series_number=h0.series_number,
        series_description=h0.series_description,
        protocol_name=h0.protocol_name,
        sequence_name=h0.sequence_name,
        image_type=h0.image_type,
        modality=h0.modality,
        n_volumes=n_volumes,
        is_mosaic=h0.is_mosaic,
        is_multiframe=h0.is_multiframe,
        warnings=warnings,
        attributes=attrs,
        study_date=h0.study_date,
    )
    series._headers = tuple(headers)
    return series


def scan_series(files: Iterable[str | os.PathLike[str]]) -> tuple[list[DicomSeries], list[ReaderError]]:
    """Group DICOM files into series from their headers only (pixel data is not read).

    Unreadable files, non-image objects and series that cannot be assembled (missing or
    duplicated slices, incomplete 4-D) become :class:`ReaderError` entries; DICOMDIR index
    files are skipped silently. Series are returned sorted by (SeriesNumber, key).
    """
    headers, errors = scan_headers(files)
    return group_series(headers, errors)


def scan_headers(files: Iterable[str | os.PathLike[str]]) -> tuple[list[_Header], list[ReaderError]]:
    """First half of :func:`scan_series`: per-file headers (picklable; parallelisable by chunks)."""
    errors: list[ReaderError] = []
    headers: list[_Header] = []
    cache: dict = {}
    for f in files:
        path = Path(f)
        try:
            header = _read_header(path, attr_cache=cache)
        except ReaderError as exc:
            errors.append(exc)
            continue
        except Exception as exc:  # never let one odd file stop a scan
            errors.append(ReaderError(path, f"unreadable DICOM header: {type(exc).__name__}: {exc}", ReasonCode.UNREADABLE))
            continue
        if header is not None:
            headers.append(header)
    return headers, errors


PARALLEL_SCAN_MIN_FILES = 400
"""Header scans of at least this many files are split over a pool's workers (pydicom parses
~1-1.3k headers/s per process; starting workers and shipping headers back costs too)."""
SCAN_CHUNKS_PER_WORKER = 4
"""Chunks of files per worker in a parallel scan (several, so that a slow chunk does not hold up the rest)."""


def scan_series_parallel(files: Sequence[str | os.PathLike[str]], pool: Any = None, n_workers: int | None = None) -> tuple[list[DicomSeries], list[ReaderError]]:
    """:func:`scan_series`, with the header reads split over ``pool`` for large scans.

    Args:
        files: the DICOM files.
        pool: ``None`` (this process), a ``concurrent.futures.Executor`` (``ProcessPoolExecutor``)
            or a ``dask.distributed.Client``; used only for at least :data:`PARALLEL_SCAN_MIN_FILES` files.
        n_workers: the pool's workers (default: the Dask client's workers, the executor's
            ``max_workers``); the files go out in :data:`SCAN_CHUNKS_PER_WORKER` chunks per worker.

    Returns:
        The same series and errors as ``scan_series(files)``.
    """
    files = list(files)
    if pool is None or len(files) < PARALLEL_SCAN_MIN_FILES:
        return scan_series(files)
    workers = max(1, n_workers or _pool_workers(pool))
    size = -(-len(files) // (SCAN_CHUNKS_PER_WORKER * workers))
    chunks = [files[i : i + size] for i in range(0, len(files), size)]
    if _is_dask_client(pool):
        results = pool.gather(pool.map(scan_headers, chunks, pure=False))
    else:
        results = pool.map(scan_headers, chunks)
    headers: list[_Header] = []
    errors: list[ReaderError] = []
    for h, e in results:
        headers.extend(h)
        errors.extend(e)
    return group_series(headers, errors)


def _is_dask_client(pool: Any) -> bool:
    return hasattr(pool, "gather") and hasattr(pool, "scheduler_info")


def _pool_workers(pool: Any) -> int:
    if _is_dask_client(pool):
        return len(pool.scheduler_info().get("workers", {})) or 1
    return int(getattr(pool, "_max_workers", 1) or 1)


def group_series(headers: list[_Header], errors: list[ReaderError] | None = None) -> tuple[list[DicomSeries], list[ReaderError]]:
    """Second half of :func:`scan_series`: group headers into (sub-)series and check them."""
    errors = list(errors or [])
    by_uid: dict[str, list[_Header]] = defaultdict(list)
    for header in headers:
        by_uid[header.series_uid].append(header)
    out: list[DicomSeries] = []
    for uid, headers in by_uid.items():
        groups = _group_headers(headers)
        if len(groups) == 1:
            keyed = [(uid, groups[0], [])]
        else:
            suffixes, reasons = _split_tokens(groups)
            note = f"SeriesInstanceUID holds {len(groups)} sub-series differing in {', '.join(reasons) or 'header'}: split"
            if "orientation" in reasons:
                note = "mixed orientations under one SeriesInstanceUID: " + note
            keyed = [(f"{uid}_{sfx}", g, [note]) for sfx, g in zip(suffixes, groups)]
        for key, group, warns in keyed:
            try:
                out.append(_series_from(group, key, warns))
            except ReaderError as exc:
                errors.append(exc)
    out.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.key))
    return out, errors


# =========================================================================== reading
def _apply_rescale(stack: np.ndarray, slopes: np.ndarray, inters: np.ndarray) -> np.ndarray:
    """Apply per-image slope/intercept to ``stack[..., y, x]`` (slopes shaped like stack[..., 0, 0])."""
    if np.all(slopes == 1.0) and np.all(inters == 0.0):
        return stack
    uniform = np.all(slopes == slopes.flat[0]) and np.all(inters == inters.flat[0])
    s, b = float(slopes.flat[0]), float(inters.flat[0])
    if uniform and np.issubdtype(stack.dtype, np.integer) and s.is_integer() and b.is_integer():
        out = stack.astype(np.int64) * int(s) + int(b)
        lo, hi = (int(out.min()), int(out.max())) if out.size else (0, 0)
        for dt in (stack.dtype, np.int16, np.int32, np.int64):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max:
                return out.astype(dt)
    scaled = stack.astype(np.float64) * slopes[..., None, None] + inters[..., None, None]
    return scaled.astype(np.float32)


def _read_full(path: Path) -> Any:
    return read_dataset(path, header_only=False)


class _Budget:
    """Running total of the voxels / bytes a series' files declare, checked before each decode."""

    def __init__(self, series: DicomSeries, limits: ReadLimits) -> None:
        self.n_files, self.limits = len(series.files), limits
        self.voxels = self.nbytes = self.files = 0

    def add(self, path: Path, ds: Any) -> None:
        voxels, nbytes, _ = declared_pixel_size(ds)
        self.voxels, self.nbytes, self.files = self.voxels + voxels, self.nbytes + nbytes, self.files + 1
        if self.files == 1:
            return  # one file alone: decode_pixels checks it, naming its own attributes
        what = f"{self.files} of the series' {self.n_files} files together"
        check_declared(path, self.limits, voxels=self.voxels, nbytes=self.nbytes, what=what)


def _check_series_size(series: DicomSeries, limits: ReadLimits) -> None:
    """Refuse, before any pixel is read, a series of too many files or declared voxels/bytes.

    The totals come from the scan's headers (``Rows x Columns`` x images per file; bytes
    where the scan saw native pixels). Without them (a series built by hand) the per-file
    :class:`_Budget` still bounds the reading.
    """
    check_file_count(series.files[0], limits, len(series.files))
    headers = series._headers
    if not headers:
        return
    images = sum(max(len(h.slices), 1) for h in headers)
    voxels = sum(h.rows * h.cols * max(len(h.slices), 1) for h in headers)
    nbytes = sum(h.rows * h.cols * max(len(h.slices), 1) * (np.dtype(h.pixels.dtype).itemsize if h.pixels is not None else 1) for h in headers)
    h0 = headers[0]
    what = f"a series of {len(headers)} files, {images} images of {h0.rows}x{h0.cols}"
    check_declared(series.files[0], limits, voxels=voxels, nbytes=nbytes, what=what)


def _read_mosaic(series: DicomSeries, limits: ReadLimits) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import warnings as _warnings

    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")  # nibabel.nicom announces itself as experimental
        from nibabel.nicom import csareader
        from nibabel.nicom.dicomwrappers import MosaicWrapper, WrapperError

    vols: list[tuple[tuple, np.ndarray, np.ndarray, float, float, Path]] = []
    warnings: list[str] = []
    budget = _Budget(series, limits)
    for path in series.files:
        ds = _read_full(path)
        header = _read_header(path, ds)
        if header is None or not header.is_mosaic:
            raise ReaderError(path, "expected a Siemens mosaic (ImageType MOSAIC) like the rest of the series", ReasonCode.INCONSISTENT_SERIES)
        budget.add(path, ds)
        stored = decode_pixels(ds, path, limits=limits)
        try:
            wrapper = MosaicWrapper(ds)
            data = np.asarray(wrapper.get_unscaled_data())  # [rows, cols, slices]
            affine = np.asarray(wrapper.affine, float)  # (row idx, col idx, slice) → LPS
        except (WrapperError, csareader.CSAError, KeyError, ValueError, AssertionError) as exc:
            raise ReaderError(path, f"Siemens mosaic could not be unpacked (CSA header): {type(exc).__name__}: {exc}", ReasonCode.DECODE_FAILED) from exc
        if data.dtype != stored.dtype:
            data = data.astype(stored.dtype)
        if "SpacingBetweenSlices" not in ds:
            warnings.append("mosaic without SpacingBetweenSlices: slice spacing from SliceThickness")
        slope, inter = header.slices[0].slope, header.slices[0].intercept
        vols.append((header.slices[0].tkey, data, affine, slope, inter, path))
    vols.sort(key=lambda v: v[0])
    for a, b in zip(vols, vols[1:]):
        if a[0] == b[0]:
            raise ReaderError(b[5], f"duplicate mosaic volume: {a[5].name} and {b[5].name} have the same temporal position", ReasonCode.DUPLICATE_SLICE)
        if not np.allclose(a[2], b[2], atol=1e-3):
            raise ReaderError(b[5], f"mosaic geometry differs from {a[5].name} (position/orientation changed within the series)", ReasonCode.INCONSISTENT_SERIES)
        if a[1].shape != b[1].shape:
            raise ReaderError(b[5], f"mosaic slice count/matrix {b[1].shape} differs from {a[1].shape} ({a[5].name})", ReasonCode.INCONSISTENT_SERIES)
    stack = np.stack([v[1].transpose(2, 0, 1) for v in vols])  # [t, z, y, x]
    slopes = np.array([[v[3]] * stack.shape[1] for v in vols], float)
    inters = np.array([[v[4]] * stack.shape[1] for v in vols], float)
    array = _apply_rescale(stack, slopes, inters)
    aff = vols[0][2][:, [1, 0, 2, 3]]  # our voxel order is (x = column, y = row, z)
    return array, aff, sorted(set(warnings))


def _read_parsed(series: DicomSeries, limits: ReadLimits) -> tuple[np.ndarray, _Plan, list[_Slice]]:
    """Parse every file again with pydicom (headers + pixels): ``[t, z, y, x]`` stack."""
    slices: list[_Slice] = []
    cache: dict = {}
    budget = _Budget(series, limits)
    for path in series.files:
        ds = _read_full(path)
        header = _read_header(path, ds, cache)
        if header is None:
            raise ReaderError(path, "DICOMDIR index file in an image series", ReasonCode.NOT_AN_IMAGE)
        n_frames = len(header.slices) if header.is_multiframe else 1
        budget.add(path, ds)
        pixels = decode_pixels(ds, path, n_frames=n_frames, limits=limits)
        if header.is_multiframe:
            if pixels.ndim == 2:
                pixels = pixels[None]
            for s in header.slices:
                s.array = pixels[s.frame]
        else:
            header.slices[0].array = pixels
        slices.extend(header.slices)
    plan = _plan(slices, _fallback_dz(series.attributes))
    dtypes = {s.array.dtype for s in slices}  # type: ignore[union-attr]
    if len(dtypes) > 1:
        raise ReaderError(series.files[-1], f"mixed pixel types in one series: {sorted(map(str, dtypes))}", ReasonCode.INCONSISTENT_SERIES)
    stack = np.stack([np.stack([s.array for s in vol]) for vol in plan.grid])  # [t, z, y, x]
    return stack, plan, slices


def _read_scanned(series: DicomSeries) -> tuple[np.ndarray, _Plan, list[_Slice]] | None:
    """The stack from the scan's headers, reading only pixel bytes (no second header parse).

    ``None`` (→ :func:`_read_parsed`) unless the series comes straight from a scan, every
    file holds plain native pixels and no file changed since the scan; so errors and
    results are those of the full parse.
    """
    headers = series._headers
    if not headers or [h.path for h in headers] != list(series.files):
        return None
    raws = [h.pixels for h in headers]
    if any(r is None for r in raws) or len({r.dtype for r in raws}) != 1:  # type: ignore[union-attr]
        return None
    if not all(r.unchanged(h.path) for h, r in zip(headers, raws)):  # type: ignore[union-attr]
        return None
    for h, r in zip(headers, raws):
        if r.frames != len(h.slices) or (r.rows, r.cols) != (h.rows, h.cols):  # type: ignore[union-attr]
            return None
    slices = [s for h in headers for s in h.slices]
    plan = _plan(slices, _fallback_dz(series.attributes))
    where = {id(s): (t, z) for t, vol in enumerate(plan.grid) for z, s in enumerate(vol)}
    first = raws[0]
    stack = np.empty((len(plan.grid), len(plan.grid[0]), first.rows, first.cols), np.dtype(first.dtype))  # type: ignore[union-attr]
    for h, raw in zip(headers, raws):
        if raw.frames == 1 and not h.is_multiframe:  # type: ignore[union-attr]
            t, z = where[id(h.slices[0])]
            if read_raw_pixels(h.path, raw, out=stack[t, z]) is None:  # type: ignore[arg-type]
                return None
            continue
        frames = read_raw_pixels(h.path, raw)  # type: ignore[arg-type]
        if frames is None:
            return None
        for s in h.slices:
            t, z = where[id(s)]
            stack[t, z] = frames[s.frame if s.frame is not None else 0]
    return stack, plan, slices


def read_series(series: DicomSeries, limits: ReadLimits | None = None) -> Volume:
    """Assemble a series into a 3-D (``[z, y, x]``) or 4-D (``[t, z, y, x]``) Volume.

    ``limits`` (default :data:`~pipeline.core.limits.DEFAULT_READ_LIMITS`) bounds the number
    of files and the voxels / bytes the headers declare, checked before pixels are read.

    Raises:
        ReaderError: naming a file and the reason (truncated file, no pixel data, missing
            decoder, missing/duplicated slice, mixed orientation, beyond the limits, …).
    """
    if not series.files:
        raise ReaderError(series.key, "series has no files", ReasonCode.EMPTY_SERIES)
    limits = resolve(limits)
    _check_series_size(series, limits)
    if series.is_mosaic:
        array, aff, warns = _read_mosaic(series, limits)
        try:
            spacing, origin, direction = decompose_affine(aff)
        except ValueError as exc:
            raise ReaderError(series.files[0], f"mosaic affine unusable: {exc}", ReasonCode.GEOMETRY_UNKNOWN) from exc
        warnings = list(series.warnings) + warns
    else:
        fast = _read_scanned(series)
        if fast is not None:
            stack, plan, slices = fast
        else:
            stack, plan, slices = _read_parsed(series, limits)
        slopes = np.array([[s.slope for s in vol] for vol in plan.grid], float)
        inters = np.array([[s.intercept for s in vol] for vol in plan.grid], float)
        array = _apply_rescale(stack, slopes, inters)
        ps = slices[0].pixel_spacing
        spacing = (ps[1], ps[0], plan.spacing_z)
        origin, direction = plan.origin, plan.direction
        warnings = list(dict.fromkeys(list(series.warnings) + [w for w in plan.warnings if not w.startswith("single slice")]))
    if array.shape[0] == 1:
        array = array[0]
    meta = {
        "source_format": "dicom",
        "SeriesNumber": series.series_number,
        "SeriesDescription": series.series_description,
        "ProtocolName": series.protocol_name,
        "Modality": series.modality,
        "warnings": warnings,
    }
    tr = to_float(series.attributes.get("RepetitionTime"))
    if tr:
        meta["RepetitionTime"] = tr / 1000.0
    try:
        return Volume(array=np.ascontiguousarray(array), spacing=spacing, origin=origin, direction=direction, meta=meta)
    except ValueError as exc:
        raise ReaderError(series.files[0], f"invalid geometry: {exc}", ReasonCode.GEOMETRY_UNKNOWN) from exc


# =========================================================================== sidecar
_MANUFACTURERS = (("siemens", "Siemens"), ("ge ", "GE"), ("ge medical", "GE"), ("philips", "Philips"), ("toshiba", "Canon"), ("canon", "Canon"), ("hitachi", "Hitachi"), ("fujifilm", "Fujifilm"), ("united imaging", "UIH"), ("uih", "UIH"), ("bruker", "Bruker"))


def _manufacturer(raw: Any) -> str | None:
    if not raw:
        return None
    text = str(raw).strip()
    low = text.lower() + " "
    for needle, name in _MANUFACTURERS:
        if low.startswith(needle) or needle.strip() in low.split():
            return name
    return text


def sidecar(series: DicomSeries, volume: Volume) -> dict:
    """dcm2niix-style JSON sidecar without patient identifiers (no names, IDs, dates, UIDs).

    Times are in seconds (BIDS), like dcm2niix.
    """
    from pipeline import __version__

    a = series.attributes

    def ms_to_s(kw: str) -> float | None:
        v = to_float(a.get(kw))
        return None if v is None else round(v / 1000.0, 9)

    payload: dict[str, Any] = {
        "Modality": series.modality or None,
        "MagneticFieldStrength": a.get("MagneticFieldStrength"),
        "ImagingFrequency": a.get("ImagingFrequency"),
        "Manufacturer": _manufacturer(a.get("Manufacturer")),
        "ManufacturersModelName": a.get("ManufacturerModelName"),
        "SoftwareVersions": a.get("SoftwareVersions") if not isinstance(a.get("SoftwareVersions"), list) else "\\".join(map(str, a["SoftwareVersions"])),
        "BodyPart": a.get("BodyPartExamined"),
        "PatientPosition": a.get("PatientPosition"),
        "MRAcquisitionType": a.get("MRAcquisitionType"),
        "SeriesDescription": series.series_description or None,
        "ProtocolName": series.protocol_name or None,
        "ScanningSequence": _joined(a.get("ScanningSequence")),
        "SequenceVariant": _joined(a.get("SequenceVariant")),
        "ScanOptions": _joined(a.get("ScanOptions")),
        "SequenceName": series.sequence_name or None,
        "ImageType": list(series.image_type) or None,
        "SeriesNumber": series.series_number,
        "SliceThickness": a.get("SliceThickness"),
        "SpacingBetweenSlices": a.get("SpacingBetweenSlices"),
        "EchoNumber": a.get("EchoNumbers") if not isinstance(a.get("EchoNumbers"), list) else a["EchoNumbers"][0],
        "EchoTime": ms_to_s("EchoTime"),
        "RepetitionTime": ms_to_s("RepetitionTime"),
        "InversionTime": ms_to_s("InversionTime"),
        "FlipAngle": a.get("FlipAngle"),
        "EchoTrainLength": a.get("EchoTrainLength"),
        "PercentPhaseFOV": a.get("PercentPhaseFieldOfView"),
        "PercentSampling": a.get("PercentSampling"),
        "PixelBandwidth": a.get("PixelBandwidth"),
        "ContrastBolusAgent": a.get("ContrastBolusAgent"),
        "KVP": a.get("KVP"),
        "ConvolutionKernel": _joined(a.get("ConvolutionKernel")),
        "ImageOrientationPatientDICOM": a.get("ImageOrientationPatient"),
        "InPlanePhaseEncodingDirectionDICOM": a.get("InPlanePhaseEncodingDirection"),
        "Dimensions": list(volume.shape_xyz) + ([int(volume.array.shape[0])] if volume.is_4d else []),
        "VoxelSize": [round(v, 6) for v in volume.spacing],
        "NumberOfVolumes": int(volume.array.shape[0]) if volume.is_4d else 1,
        "IsMosaic": series.is_mosaic,
        "IsEnhancedMultiFrame": series.is_multiframe,
        "ConversionWarnings": list(volume.meta.get("warnings", series.warnings)) or None,
        "ConversionSoftware": "lesionflow",
        "ConversionSoftwareVersion": __version__,
    }
    return {k: v for k, v in payload.items() if v is not None and v != ""}


def _joined(value: Any) -> Any:
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return value
