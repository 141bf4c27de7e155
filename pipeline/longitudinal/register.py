"""A subject's visits in one space: supplied transforms, or SimpleITK rigid-then-affine registration.

Convention (ITK's, as :func:`pipeline.ingest.resample.resample_to_grid` takes it): a transform
maps points of the *fixed* space (the pair grid, the baseline) into the *moving* image (the
follow-up), in LPS mm; resampling the follow-up with it puts it on the fixed grid.

* :func:`register_rigid_affine`: Mattes mutual information (32 bins) on the FLAIR images, a rigid
  (Euler) stage and, with ``affine=True``, an affine one after it, each multi-resolution with
  regular-step gradient descent and scales from physical shifts, initialised by the images'
  geometric centres. Returns an affine (12 parameters) and the final metric value.

  Rigid only is the default, by measurement (2026-11-29): on the two-visit phantom
  (``tests/longitudinal_factory.py``, a known rigid motion) the rigid stage recovers the motion
  to 0.11 mm at worst over head points and the affine stage then shrinks the map by 3.5 % (a
  better mutual information, a worse geometry: 0.77 mm); on the shared longitudinal patient the
  rigid result agrees with the dataset's own transforms (its authors' registration through their
  common space) to 0.30 mm median, 0.56 mm at worst over brain points, rigid then affine to
  0.34 / 0.71 mm (``benchmarks/bench_change.py``). The visits of one head differ by a rigid motion; the affine stage is there for
  scanners whose gradients scale the images differently.
* transforms as 4 x 4 matrices (:func:`affine_matrix`, :func:`sitk_affine`) so that supplied
  transforms compose exactly: baseline grid → follow-up = ``C_f ∘ C_b⁻¹`` for transforms ``C`` from
  a common space into each visit (:func:`pair_transforms`).
* :func:`ncc`: the normalised cross-correlation of two images within a mask, the registration-
  quality figure stored with every pair (1 = identical up to a linear intensity change).

Example:
    >>> import numpy as np, SimpleITK as sitk
    >>> t = sitk.AffineTransform(3); t.SetTranslation((1.0, 2.0, 3.0)); t.SetCenter((5.0, 0.0, 0.0))
    >>> m = affine_matrix(t)
    >>> m[:3, 3].tolist()
    [1.0, 2.0, 3.0]
    >>> np.allclose(affine_matrix(sitk_affine(m)), m)
    True
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.volume import Volume


@dataclass
class RegistrationResult:
    """The outcome of :func:`register_rigid_affine`: the affine (fixed → moving points), Mattes MI
    at the end (lower is better), seconds."""

    transform: Any
    mattes_mi: float
    seconds: float


def affine_matrix(tx: Any) -> np.ndarray:
    """4 x 4 matrix (LPS mm, homogeneous) of an affine-like SimpleITK transform: ``x ↦ A(x - c) + t + c``.

    Accepts AffineTransform, Euler3DTransform, the MatrixOffsetTransformBase that ``ReadTransform``
    returns, and a CompositeTransform of one such transform.
    """
    import SimpleITK as sitk

    if tx is None:
        return np.eye(4)
    if tx.GetName() == "CompositeTransform":
        if tx.GetNumberOfTransforms() != 1:
            raise ValueError(f"a composite of {tx.GetNumberOfTransforms()} transforms is not one affine")
        tx = tx.GetNthTransform(0)
    params, fixed = np.asarray(tx.GetParameters(), float), np.asarray(tx.GetFixedParameters(), float)
    if tx.GetName() == "Euler3DTransform":
        e = sitk.Euler3DTransform(tx)
        a, t, c = np.asarray(e.GetMatrix()).reshape(3, 3), np.asarray(e.GetTranslation()), np.asarray(e.GetCenter())
    elif params.size == 12 and fixed.size == 3:
        a, t, c = params[:9].reshape(3, 3), params[9:], fixed
    else:
        raise ValueError(f"not an affine transform: {tx.GetName()} with {params.size} parameters")
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + c - a @ c
    return m


def sitk_affine(matrix: np.ndarray) -> Any:
    """A SimpleITK AffineTransform (centre 0) of a 4 x 4 matrix."""
    import SimpleITK as sitk

    m = np.asarray(matrix, float)
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(m[:3, :3].ravel()))
    tx.SetTranslation(tuple(m[:3, 3]))
    return tx


def transform_to_json(tx: Any) -> str | None:
    """JSON of an affine (``{"type": "AffineTransform", "parameters", "fixed_parameters"}``); None for identity/None."""
    if tx is None:
        return None
    m = affine_matrix(tx)
    return json.dumps({"type": "AffineTransform", "parameters": [*m[:3, :3].ravel().tolist(), *m[:3, 3].tolist()],
                       "fixed_parameters": [0.0, 0.0, 0.0]})


def transform_from_json(text: str | None) -> Any:
    """The SimpleITK affine of :func:`transform_to_json` or of a ``visits`` row's ``common_transform``; None stays None."""
    import SimpleITK as sitk

    if not text:
        return None
    doc = json.loads(text)
    params, fixed = doc["parameters"], doc["fixed_parameters"]
    if len(params) != 12 or len(fixed) != 3:
        raise ValueError(f"not an affine transform: {doc.get('type')} with {len(params)} parameters")
    tx = sitk.AffineTransform(3)
    tx.SetFixedParameters(fixed)
    tx.SetParameters(params)
    return tx


def pair_transforms(common_baseline: Any, common_followup: Any, grid: str) -> tuple[Any, Any]:
    """Pair grid → baseline and pair grid → follow-up transforms from the supplied transforms of a
    common space into each visit. ``grid`` ``"expert"``: the pair grid is the common space (the
    supplied transforms as they are); ``"baseline"``: the baseline grid (identity, and
    ``C_f ∘ C_b⁻¹``)."""
    if grid == "expert":
        return common_baseline, common_followup
    cb, cf = affine_matrix(common_baseline), affine_matrix(common_followup)
    return None, sitk_affine(cf @ np.linalg.inv(cb))


def _shrink_levels(shape_xyz: tuple[int, int, int]) -> tuple[list[int], list[float]]:
    """Multi-resolution schedule: halve while the smallest side stays >= 24 voxels (at most 3 levels)."""
    shrink = [1]
    while len(shrink) < 3 and min(shape_xyz) / (shrink[0] * 2) >= 24:
        shrink.insert(0, shrink[0] * 2)
    return shrink, [float(s // 2) for s in shrink]


def _run(fixed: Any, moving: Any, tx: Any, mask: Any, levels: tuple[list[int], list[float]], sampling: float, seed: int,
         iterations: int) -> float:
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    if sampling < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(sampling, seed)
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
                                                 gradientMagnitudeTolerance=1e-8, relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(levels[0])
    reg.SetSmoothingSigmasPerLevel(levels[1])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(fixed, moving)
    return float(reg.GetMetricValue())


def register_rigid_affine(fixed: Volume, moving: Volume, fixed_mask: np.ndarray | None = None, affine: bool = False,
                          max_samples: int = 200_000, seed: int = 0, iterations: int = 200) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` (FLAIR onto FLAIR): rigid, then optionally affine (see module docstring).

    Args:
        fixed, moving: 3-D images with their geometry (any grids; physical space is what counts).
        fixed_mask: optional uint8 mask on ``fixed``'s grid restricting the metric (a brain or head mask).
        affine: add the affine stage after the rigid one (default False: rigid only, returned as an affine).
        max_samples: voxels the metric samples at most (random, seeded; all voxels below it).
        seed: sampling seed (the result is reproducible for one seed).
        iterations: per level and stage.

    Returns:
        :class:`RegistrationResult` with an AffineTransform mapping fixed points → moving points (LPS mm).
    """
    import SimpleITK as sitk

    t0 = time.perf_counter()
    f = sitk.Cast(fixed.to_sitk(), sitk.sitkFloat32)
    m = sitk.Cast(moving.to_sitk(), sitk.sitkFloat32)
    mask = None
    if fixed_mask is not None:
        mask = sitk.Cast(fixed.with_array(np.asarray(fixed_mask, np.uint8)).to_sitk(), sitk.sitkUInt8)
    n = int(np.prod(fixed.shape_zyx)) if fixed_mask is None else int(np.count_nonzero(fixed_mask))
    sampling = min(1.0, max_samples / max(n, 1))
    levels = _shrink_levels(fixed.shape_xyz)
    rigid = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                                                    sitk.CenteredTransformInitializerFilter.GEOMETRY))
    metric = _run(f, m, rigid, mask, levels, sampling, seed, iterations)
    result = sitk.AffineTransform(3)
    result.SetCenter(rigid.GetCenter())
    result.SetMatrix(rigid.GetMatrix())
    result.SetTranslation(rigid.GetTranslation())
    if affine:
        metric = _run(f, m, result, mask, levels, sampling, seed, iterations)
    return RegistrationResult(transform=result, mattes_mi=metric, seconds=time.perf_counter() - t0)


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` over ``mask`` (-1..1; NaN when either is constant there)."""
    sel = np.asarray(mask) != 0
    x, y = np.asarray(a, float)[sel], np.asarray(b, float)[sel]
    if x.size < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else float("nan")
