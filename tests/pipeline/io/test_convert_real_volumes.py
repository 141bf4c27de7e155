"""`convert` on DICOM series made from a REAL MRI volume, against the known grid and dcm2niix.

A real FLAIR (open_ms, MNI, 1 mm) is resampled through physical space onto the grid of each
acquisition below (axial, sagittal, coronal, oblique, double-oblique, descending, shuffled
files without extension, anisotropic 0.9x0.9x3 mm, RescaleSlope/Intercept, slices stacked
towards the feet, enhanced multi-frame), quantised to int16 and written with pydicom
(:mod:`real_volume_dicom`, :mod:`dicom_factory`). So the array and geometry in the files are
known exactly. For each acquisition:

* ``read_series`` gives back exactly the array written and the geometry within 1e-4 mm;
* ``convert_tree``'s NIfTI equals the known array + geometry in world space
  (``nib.as_closest_canonical``: same shape, identical values, affine within 1e-3 mm), and the
  anatomy sits where the source has it (resampled back onto the source grid);
* dcm2niix's NIfTI of the same files equals ours in world space (skipped when dcm2niix is absent).

One disagreement, dcm2niix's: for an enhanced multi-frame file whose frames are stored out of
spatial order, dcm2niix (v1.0.20260724) sorts the frames correctly but takes the slice spacing
from the first and last *stored* frames (see ``_dcm2niix_unsorted_frames_spacing``);
lesionflow has the spacing written. That comparison is an xfail naming the numbers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.io.convert import convert_tree
from pipeline.io.readers.dicom import find_dicom_files, read_series, scan_series
from tests import dicom_factory as fac
from tests import real_volume_dicom as rv

nib = pytest.importorskip("nibabel")

pytestmark = pytest.mark.realdata

_DOWN = fac.AXIAL.copy()
_DOWN[:, 2] *= -1  # slice k steps towards the feet: left-handed (row, col, −normal)

VARIANTS = [
    rv.Variant("axial", fac.AXIAL),
    rv.Variant("sagittal", fac.SAGITTAL),
    rv.Variant("coronal", fac.CORONAL),
    rv.Variant("oblique15", fac.rotation("x", 15.0) @ fac.AXIAL),  # axial tilted 15° about L-R
    rv.Variant("double_oblique", fac.rotation("z", 14.0) @ fac.rotation("y", -11.0) @ fac.SAGITTAL),
    rv.Variant("descending", fac.rotation("x", -9.0) @ fac.CORONAL, write=dict(descending=True)),
    rv.Variant("stacked_to_feet", _DOWN, write=dict(descending=True)),
    rv.Variant("shuffled_noext", fac.rotation("y", 12.0) @ fac.AXIAL, write=dict(shuffle=True, extension="", seed=5)),
    rv.Variant("aniso_0.9x0.9x3", fac.rotation("x", 8.0) @ fac.AXIAL, spacing=(0.9, 0.9, 3.0)),
    rv.Variant("rescale_slope", fac.CORONAL, slope=0.25, intercept=-8.0),
    # a Philips-like slope that float32 cannot hold: values agree to float32 rounding only
    rv.Variant("rescale_fractional", fac.rotation("z", 7.0) @ fac.SAGITTAL, slope=1.52381, intercept=-3.5),
    rv.Variant("enhanced_3d", fac.rotation("y", 10.0) @ fac.rotation("x", 20.0) @ fac.AXIAL, enhanced=True),
    rv.Variant("enhanced_sagittal_reversed", fac.SAGITTAL, spacing=(1.8, 1.8, 2.4), enhanced=True, frame_order="reversed"),
    rv.Variant("enhanced_shuffled_frames", fac.rotation("x", -9.0) @ fac.CORONAL, spacing=(1.8, 1.8, 2.4), enhanced=True,
               frame_order="shuffled"),
]
IDS = [v.name for v in VARIANTS]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def source(shared_data) -> sitk.Image:
    return rv.load_source(shared_data / rv.SOURCE_RELPATH)


def _dcm2niix_exe() -> str | None:
    exe = shutil.which("dcm2niix")
    if exe:
        return exe
    local = Path(sys.executable).parent / "dcm2niix"
    return str(local) if local.exists() else None


@pytest.fixture(scope="module", params=VARIANTS, ids=IDS)
def case(request, source, tmp_path_factory):
    """Write one acquisition, run convert_tree on it; dcm2niix runs lazily (``ref``)."""
    variant: rv.Variant = request.param
    root = tmp_path_factory.mktemp(variant.name.replace(".", "_"))
    written = rv.write_variant(source, variant, root / "dicom", series_number=3)
    summary = convert_tree(written.folder, root / "ours")
    assert summary.rejected == []
    assert len(summary.converted) == 1, summary.converted
    return {"written": written, "ours": Path(summary.converted[0]["output"]), "root": root, "summary": summary}


def _run_dcm2niix(case: dict) -> Path:
    exe = _dcm2niix_exe()
    if exe is None:
        pytest.skip("dcm2niix not installed (pip install dcm2niix): only the known-geometry checks ran")
    if "ref" not in case:
        ref_dir = case["root"] / "ref"
        ref_dir.mkdir()
        proc = subprocess.run([exe, "-z", "n", "-f", "ref", "-o", str(ref_dir), str(case["written"].folder)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        niftis = sorted(ref_dir.glob("*.nii"))
        assert len(niftis) == 1, (niftis, proc.stdout)
        case["ref"] = niftis[0]
        case["ref_log"] = proc.stdout
    return case["ref"]


# ----------------------------------------------------------------------------- helpers
def _reader_view(w: rv.Written) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(array, spacing, origin, direction) as read_series returns them: slices sorted along
    +normal (row × column); a stack written towards −normal comes back reversed (same world)."""
    g = w.grid
    direction = g.direction.copy()
    if np.linalg.det(direction) > 0:
        return w.values, np.asarray(g.spacing), np.asarray(g.origin), direction
    direction[:, 2] *= -1
    last = np.asarray(g.origin) - direction[:, 2] * g.spacing[2] * (g.size[2] - 1)
    return w.values[::-1], np.asarray(g.spacing), last, direction


def _known_nifti(w: rv.Written):
    """The written array + geometry as a NIfTI image (affine computed in real_volume_dicom)."""
    return nib.Nifti1Image(np.asarray(w.values).transpose(2, 1, 0), w.grid.affine_ras)


def _assert_same_world(a, b, what: str, rtol: float = 0.0) -> None:
    """Same shape, affine within 1e-3 mm and voxel values (identical unless ``rtol``) after
    reorienting both to the closest RAS+ axes."""
    a, b = nib.as_closest_canonical(a), nib.as_closest_canonical(b)
    assert a.shape == b.shape, what
    np.testing.assert_allclose(a.affine, b.affine, rtol=0, atol=1e-3, err_msg=what)
    if rtol:
        np.testing.assert_allclose(a.get_fdata(), b.get_fdata(), rtol=rtol, atol=0, err_msg=what)
    else:
        np.testing.assert_array_equal(a.get_fdata(), b.get_fdata(), err_msg=what)


def _dcm2niix_rtol(v: rv.Variant) -> float:
    """dcm2niix keeps int16 + scl_slope/scl_inter (float32 in the NIfTI header), lesionflow
    writes float32(stored × slope + intercept): identical when slope and intercept are exact in
    float32, else equal to float32 rounding (≤ 2 ulp)."""
    exact = all(float(np.float32(x)) == x for x in (v.slope, v.intercept))
    return 0.0 if exact else 2.5e-7


# ----------------------------------------------------------------------------- tests
def test_read_series_reproduces_written_array_and_geometry(case):
    w: rv.Written = case["written"]
    series, errors = scan_series(find_dicom_files(w.folder))
    assert errors == [] and len(series) == 1
    s = series[0]
    assert s.is_multiframe == w.variant.enhanced and s.n_volumes == 1
    assert s.warnings == []
    vol = read_series(s)
    array, spacing, origin, direction = _reader_view(w)
    assert vol.array.dtype == array.dtype
    np.testing.assert_array_equal(vol.array, array)
    np.testing.assert_allclose(vol.spacing, spacing, rtol=0, atol=1e-4)
    np.testing.assert_allclose(vol.origin, origin, rtol=0, atol=1e-4)
    np.testing.assert_allclose(vol.direction, direction, rtol=0, atol=1e-4)


def test_convert_matches_known_geometry(case):
    w: rv.Written = case["written"]
    info = case["summary"].converted[0]
    assert info["shape"] == list(w.grid.size) and info["warnings"] == []
    ours = nib.load(case["ours"])
    assert ours.get_data_dtype() == np.dtype(np.int16 if w.values.dtype == np.int16 else np.float32)
    _assert_same_world(ours, _known_nifti(w), f"{w.variant.name}: lesionflow vs the geometry written")


def test_convert_puts_the_anatomy_where_the_source_has_it(case, source):
    """Read our NIfTI with SimpleITK (its own RAS→LPS path) and resample it back onto a 2 mm
    copy of the source grid: it matches the source (up to two linear interpolations), much
    better than the same data mirrored along any axis (brains are nearly L-R symmetric, so the
    L-R margin is the smallest)."""
    w: rv.Written = case["written"]
    ours = sitk.ReadImage(str(case["ours"]), sitk.sitkFloat32)
    ref = sitk.Resample(source, [91, 109, 91], sitk.Transform(), sitk.sitkLinear, source.GetOrigin(),
                        (2.0, 2.0, 2.0), source.GetDirection(), 0.0, sitk.sitkFloat32)
    truth = sitk.GetArrayFromImage(ref)
    back = (rv.sample_world(ours, ref) - w.variant.intercept) / w.variant.slope / rv.QUANT
    ones = sitk.Image(ours.GetSize(), sitk.sitkFloat32) + 1.0
    ones.CopyInformation(ours)
    inside = rv.sample_world(ones, ref) > 0.999  # within our field of view
    assert inside.sum() > 100_000

    def mae(a: np.ndarray) -> float:
        return float(np.mean(np.abs(a - truth)[inside]))

    corr = float(np.corrcoef(back[inside], truth[inside])[0, 1])
    err = mae(back)
    mirrored = {name: mae(np.flip(back, i)) for i, name in enumerate(("S-I", "A-P", "L-R"))}
    assert corr > 0.95 and err < 5.0, (corr, err)
    for name, other in mirrored.items():
        assert err < 0.8 * other, (name, err, other)


def _dcm2niix_unsorted_frames_spacing(w: rv.Written) -> float | None:
    """The slice spacing dcm2niix (v1.0.20260724) writes for an enhanced file whose frames are
    not stored in spatial order: |position of the LAST stored frame − position of the FIRST
    stored frame| / (n − 1), although it does sort the frames themselves correctly.
    ``None`` when the frames are stored in (either) spatial order (then the two agree)."""
    order = w.frame_order
    if order is None or len(order) < 2:
        return None
    n = len(order)
    if order in (list(range(n)), list(range(n))[::-1]):
        return None
    return abs(order[-1] - order[0]) * w.grid.spacing[2] / (n - 1)


def test_convert_matches_dcm2niix(case):
    ref_path = _run_dcm2niix(case)
    w: rv.Written = case["written"]
    ref = nib.load(ref_path)
    ours = nib.load(case["ours"])
    wrong_dz = _dcm2niix_unsorted_frames_spacing(w)
    ref_dz = float(ref.header.get_zooms()[2])  # dcm2niix keeps the slices on its 3rd axis
    if wrong_dz is not None and abs(ref_dz - wrong_dz) < 1e-3:
        # dcm2niix's known deviation (see above): everything else must still match, and
        # lesionflow must have the written slice spacing (checked against the known grid).
        fixed = ref.affine.copy()
        fixed[:3, 2] *= w.grid.spacing[2] / ref_dz
        _assert_same_world(nib.Nifti1Image(np.asarray(ref.dataobj), fixed), ours,
                           f"{w.variant.name}: dcm2niix (slice spacing corrected) vs lesionflow")
        _assert_same_world(ours, _known_nifti(w), f"{w.variant.name}: lesionflow vs the geometry written")
        pytest.xfail(
            f"dcm2niix bug, not ours: enhanced multi-frame file with frames stored out of spatial order: dcm2niix sorts the "
            f"frames but takes the slice spacing from the first and last STORED frames ({ref_dz:.4f} mm instead of the "
            f"{w.grid.spacing[2]} mm written); lesionflow writes {w.grid.spacing[2]} mm"
        )
    rtol = _dcm2niix_rtol(w.variant)
    _assert_same_world(ref, _known_nifti(w), f"{w.variant.name}: dcm2niix vs the geometry written", rtol)
    _assert_same_world(ours, ref, f"{w.variant.name}: lesionflow vs dcm2niix", rtol)
