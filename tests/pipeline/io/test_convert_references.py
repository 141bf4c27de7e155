"""convert_tree on synthetic DICOM, checked against references computed here from the tags.

No ``../shared/data``: every series is written by :mod:`tests.dicom_factory`, converted with
:func:`pipeline.io.convert.convert_tree`, and the NIfTI it writes is read back with nibabel
(never with lesionflow's own readers). The expected values come from the DICOM files alone,
read with pydicom, without any lesionflow code:

* affine: DICOM PS3.3 C.7.6.2.1.1. With row cosine ``X`` and column cosine ``Y``
  (ImageOrientationPatient), ``PixelSpacing = [Δrow, Δcol]`` and ``S`` = ImagePositionPatient,
  pixel (column ``i``, row ``j``) of a slice lies at ``S + X·Δcol·i + Y·Δrow·j`` (LPS mm).
  Slices are ordered by their position along the normal ``X × Y``; the slice step is
  ``(S_last − S_first) / (N − 1)``. NIfTI voxel axes follow nibabel's (and dcm2niix's)
  convention: x = column, y = row, z = slice; RAS = diag(−1, −1, 1) · LPS.
* voxels: ``PixelData`` bytes as little-endian (u)int16 (PixelRepresentation), shaped
  ``(Rows, Columns)``, times RescaleSlope plus RescaleIntercept.

The reference itself is checked against nibabel's DICOM wrapper (``nibabel.nicom``), which
maps (row, column) indices, so a mistake in the hand formula does not pass silently.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from pipeline.io.convert import convert_tree
from tests import dicom_factory as fac

SHAPE = (7, 12, 10)  # z (slices), y (rows), x (columns): all different, so any transposition shows
SPACING = (0.9, 1.1, 3.0)  # column spacing, row spacing, slice step (mm): PixelSpacing = [1.1, 0.9]
ORIGIN = (-100.5, 20.25, 30.0)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

CASES: dict[str, dict] = {
    "axial": dict(direction=fac.AXIAL),
    "sagittal": dict(direction=fac.SAGITTAL),
    "coronal": dict(direction=fac.CORONAL),
    "oblique": dict(direction=fac.rotation("y", 10.0) @ fac.rotation("x", 20.0)),
    "double-oblique": dict(direction=fac.rotation("z", 25.0) @ fac.rotation("y", -15.0) @ fac.rotation("x", 35.0)),
    # normal = (0, 1, 0) × (1, 0, 0) = (0, 0, −1): slices stacked towards the feet
    "axial-transposed": dict(direction=fac.frame((0, 1, 0), (1, 0, 0))),
    # InstanceNumber 1 is the last position along the normal; file names unrelated to position
    "descending": dict(direction=fac.SAGITTAL, descending=True, shuffle=True),
    "descending-oblique": dict(direction=fac.rotation("x", -30.0), descending=True),
    "rescale-fractional": dict(direction=fac.CORONAL, slope=0.25, intercept=-10.5),
    "rescale-per-slice": dict(direction=fac.AXIAL, slope=np.linspace(0.5, 2.0, SHAPE[0]), intercept=3.0, shuffle=True),
    "rescale-integral": dict(direction=fac.AXIAL, slope=2.0, intercept=-1024.0, extra={"Modality": "CT"}),
    "unsigned": dict(direction=fac.SAGITTAL, dtype=np.uint16, write_rescale=True),
}


def _stored_array(name: str, dtype) -> np.ndarray:
    seed = sorted(CASES).index(name)
    return np.random.default_rng(seed).integers(0, 3000, size=SHAPE).astype(dtype)


# ----------------------------------------------------------------------------- the reference
def reference_from_tags(files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.dtype]:
    """(data (x, y, z) float64, RAS affine, stored dtype) computed from the files' tags alone."""
    datasets = [pydicom.dcmread(str(f)) for f in files]
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    datasets.sort(key=lambda d: float(np.dot([float(v) for v in d.ImagePositionPatient], normal)))
    ipp = np.array([[float(v) for v in d.ImagePositionPatient] for d in datasets])
    d_row, d_col = (float(v) for v in datasets[0].PixelSpacing)  # [row spacing, column spacing]
    lps = np.eye(4)
    lps[:3, 0] = row_cos * d_col  # i: column index, moves along the row
    lps[:3, 1] = col_cos * d_row  # j: row index, moves down the column
    lps[:3, 2] = (ipp[-1] - ipp[0]) / (len(ipp) - 1)
    lps[:3, 3] = ipp[0]
    planes = []
    stored = None
    for d in datasets:
        stored = np.dtype("<i2") if int(d.PixelRepresentation) == 1 else np.dtype("<u2")
        assert int(d.BitsAllocated) == 16
        raw = np.frombuffer(d.PixelData, dtype=stored).reshape(int(d.Rows), int(d.Columns))
        slope = float(d.RescaleSlope) if "RescaleSlope" in d else 1.0
        intercept = float(d.RescaleIntercept) if "RescaleIntercept" in d else 0.0
        planes.append(raw.astype(np.float64) * slope + intercept)
        _check_against_nibabel_wrapper(d, lps, planes[-1], len(planes) - 1)
    data = np.stack(planes).transpose(2, 1, 0)  # [slice, row, column] → (x=column, y=row, z=slice)
    return data, LPS_TO_RAS @ lps, stored


def _check_against_nibabel_wrapper(d: pydicom.Dataset, lps: np.ndarray, plane: np.ndarray, k: int) -> None:
    """nibabel's per-slice wrapper (voxel order row, column) agrees with the hand formula."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel.nicom announces itself as experimental
        from nibabel.nicom.dicomwrappers import wrapper_from_data

        w = wrapper_from_data(d)
        nib_aff = np.asarray(w.affine)
        nib_plane = np.asarray(w.get_data(), float)
    np.testing.assert_allclose(nib_aff[:3, 0], lps[:3, 1], atol=1e-6)  # nibabel's axis 0 = rows
    np.testing.assert_allclose(nib_aff[:3, 1], lps[:3, 0], atol=1e-6)  # nibabel's axis 1 = columns
    np.testing.assert_allclose(nib_aff[:3, 3], lps[:3, 3] + k * lps[:3, 2], atol=1e-4)
    np.testing.assert_allclose(nib_plane, plane, rtol=1e-12)


# ----------------------------------------------------------------------------- one conversion
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("out")
    files = {}
    for number, (name, opts) in enumerate(CASES.items(), start=1):
        opts = dict(opts)
        arr = _stored_array(name, opts.pop("dtype", np.int16))
        files[name] = fac.write_series(src / name, arr, spacing=SPACING, origin=ORIGIN, series_number=number, description=name, **opts)
    summary = convert_tree(src, out)
    assert summary.rejected == []
    outputs = {Path(item["source"]).name: Path(item["output"]) for item in summary.converted}
    assert sorted(outputs) == sorted(CASES)
    return files, outputs


@pytest.mark.parametrize("name", list(CASES))
def test_nifti_voxels_and_affine_match_the_tags(converted, name):
    files, outputs = converted
    data, affine, stored = reference_from_tags(files[name])
    img = nib.load(outputs[name])
    assert img.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
    # geometry: sform and qform (scanner anatomical), both equal to the reference
    sform, sform_code = img.get_sform(coded=True)
    qform, qform_code = img.get_qform(coded=True)
    assert (int(sform_code), int(qform_code)) == (1, 1)
    np.testing.assert_allclose(sform, affine, atol=1e-4)
    np.testing.assert_allclose(qform, affine, atol=1e-3)  # quaternion in float32
    np.testing.assert_allclose(img.header.get_zooms(), np.linalg.norm(affine[:3, :3], axis=0), atol=1e-5)
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(affine)
    # voxels: the stored dtype when the rescale is identity or integral, float32 otherwise
    values = np.asanyarray(img.dataobj)
    if np.allclose(data, np.round(data)) and data.min() >= np.iinfo(stored).min and data.max() <= np.iinfo(stored).max:
        assert values.dtype == stored.newbyteorder("=")
    elif np.allclose(data, np.round(data)):
        assert np.issubdtype(values.dtype, np.integer)
    else:
        assert values.dtype == np.float32
    np.testing.assert_allclose(values.astype(np.float64), data, rtol=1e-6, atol=0)


def test_world_positions_agree_in_any_voxel_order(converted):
    """Every reference voxel, mapped through its world (RAS) position into the converted image,
    lands on a whole voxel index holding the same value.

    The check above compares whole arrays in one voxel order; this one compares in world space,
    so it would hold for any voxel order a converter may choose and fails for any wrong geometry."""
    files, outputs = converted
    for name in ("oblique", "double-oblique", "descending-oblique", "axial-transposed"):
        data, affine, _ = reference_from_tags(files[name])
        img = nib.load(outputs[name])
        values = np.asanyarray(img.dataobj).astype(np.float64)
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in data.shape], indexing="ij"), axis=-1).reshape(-1, 3)
        world = nib.affines.apply_affine(affine, ijk)
        ours = nib.affines.apply_affine(np.linalg.inv(img.affine.astype(np.float64)), world)
        np.testing.assert_allclose(ours, np.round(ours), atol=1e-3, err_msg=name)
        ours = np.round(ours).astype(int)
        assert ours.min() >= 0 and np.all(ours.max(axis=0) < values.shape), name
        np.testing.assert_allclose(values[tuple(ours.T)], data[tuple(ijk.T)], rtol=1e-6, err_msg=name)
