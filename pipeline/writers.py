"""NIfTI and JSON-sidecar writers.

:func:`write_nifti` stores the Volume's geometry as both sform and qform (code 1, "scanner
anatomical") computed by :func:`pipeline.geometry.affine_ras` — the only LPS→RAS path.
A 4-D Volume ``[t, z, y, x]`` is written 4-D (NIfTI axes x, y, z, t). Integer data keeps its
dtype; anything else is written as float32. Both writers replace the target atomically.

Note that NIfTI stores the sform in float32: geometry round-trips to ~1e-5 mm for
typical coordinates (exactly for values representable in float32).

Example:
    >>> import numpy as np, tempfile, os
    >>> from pipeline.volume import Volume
    >>> d = tempfile.mkdtemp()
    >>> write_nifti(Volume(np.zeros((2, 3, 4), np.int16), spacing=(1, 1, 2)), os.path.join(d, "a.nii.gz"))
    >>> write_sidecar({"SeriesNumber": 3}, os.path.join(d, "a.json"))
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.geometry import affine_ras
from pipeline.volume import Volume


def _nifti_dtype(array: np.ndarray) -> np.dtype:
    if array.dtype == bool:
        return np.dtype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return array.dtype
    return np.dtype(np.float32)


def _tmp_path(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def write_nifti(volume: Volume, path: str | os.PathLike[str]) -> None:
    """Write ``volume`` to ``path`` (``.nii`` or ``.nii.gz``) with sform and qform set.

    ``volume.meta["RepetitionTime"]`` (seconds), when present, becomes the 4th zoom of a
    4-D image.
    """
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = _nifti_dtype(volume.array)
    arr = np.asarray(volume.array)
    data = arr.transpose(tuple(range(arr.ndim))[::-1]).astype(dtype, copy=False)  # [z,y,x] → (x,y,z)
    affine = affine_ras(volume)
    img = nib.Nifti1Image(data, affine)
    hdr = img.header
    hdr.set_data_dtype(dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    if data.ndim == 4:
        tr = volume.meta.get("RepetitionTime") if isinstance(volume.meta, dict) else None
        zooms = list(hdr.get_zooms()[:3]) + [float(tr) if tr and float(tr) > 0 else 1.0]
        hdr.set_zooms(zooms)
    # unscaled data: scl_slope 1, scl_inter 0 (no float→int rescaling by nibabel)
    hdr["scl_slope"] = 1.0
    hdr["scl_inter"] = 0.0
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    tmp = _tmp_path(path, suffix)
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_sidecar(payload: dict, path: str | os.PathLike[str]) -> None:
    """Write ``payload`` as indented JSON (numpy values converted), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path, ".json")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(_jsonable(payload), fh, indent=2, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
