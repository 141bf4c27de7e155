"""Two visits of one phantom subject: a textured head, planted lesion changes, a known rigid motion.

The follow-up is the baseline anatomy moved by :data:`MOTION` (an Euler transform about the
grid centre): a point ``x`` of the baseline is at ``MOTION(x)`` at follow-up, so the follow-up
image is the baseline resampled with ``MOTION⁻¹`` (resampling maps output points into the input).
Registration of the follow-up onto the baseline must find ``MOTION`` itself.

Lesions (baseline anatomy, voxel boxes on a 48³ grid of 1.5 mm): stable, enlarging (x2),
shrinking (÷3), disappeared, and one new lesion at follow-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.volume import Volume

SHAPE = (48, 48, 48)
SPACING = (1.5, 1.5, 1.5)
ORIGIN = (-35.25, -35.25, -35.25)  # centre of the grid at 0 mm
ANGLES_RAD = (0.03, -0.05, 0.06)
TRANSLATION_MM = (2.5, -1.5, 1.0)

# (z, y, x, dz, dy, dx) boxes in voxels of the baseline grid
BASELINE_LESIONS = {
    "stable": (14, 14, 14, 4, 4, 4),
    "enlarging": (14, 30, 14, 3, 3, 3),
    "shrinking": (30, 14, 14, 4, 4, 6),
    "disappeared": (30, 30, 30, 3, 3, 3),
}
FOLLOWUP_LESIONS = {
    "stable": (14, 14, 14, 4, 4, 4),
    "enlarging": (14, 30, 14, 3, 3, 6),
    "shrinking": (30, 14, 14, 4, 4, 2),
    "new": (20, 32, 30, 4, 3, 3),
}


def motion():
    """The follow-up's rigid motion (SimpleITK Euler3DTransform, centre 0 mm)."""
    import SimpleITK as sitk

    tx = sitk.Euler3DTransform()
    tx.SetCenter((0.0, 0.0, 0.0))
    tx.SetRotation(*ANGLES_RAD)
    tx.SetTranslation(TRANSLATION_MM)
    return tx


def _mask(boxes: dict[str, tuple[int, ...]]) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    for z, y, x, dz, dy, dx in boxes.values():
        m[z:z + dz, y:y + dy, x:x + dx] = 1
    return m


def anatomy(seed: int = 0) -> np.ndarray:
    """A FLAIR-like head: smooth texture in an ellipsoid 'brain' inside a bright 'skull' shell."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE, float)
    c = (np.asarray(SHAPE) - 1) / 2
    r = np.sqrt(((z - c[0]) / 20) ** 2 + ((y - c[1]) / 18) ** 2 + ((x - c[2]) / 16) ** 2)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, SHAPE), 2.0)
    texture /= texture.std()
    img = np.where(r < 0.85, 100 + 15 * texture, 0.0)
    img = np.where((r >= 0.85) & (r < 1.0), 160.0, img)
    img[int(c[0]) - 3:int(c[0]) + 3, int(c[1]) - 8:int(c[1]) - 2, int(c[2]) - 4:int(c[2]) + 4] = 30.0  # a dark 'ventricle'
    return img.astype(np.float32)


def grid(array: np.ndarray) -> Volume:
    return Volume(array, spacing=SPACING, origin=ORIGIN)


def visits(seed: int = 0, noise: float = 2.0) -> dict[str, Volume]:
    """``flair_b``, ``flair_f`` (moved), ``lesions_b``, ``lesions_f`` (moved), ``lesions_f_anat``
    (follow-up lesions in the baseline's space) and ``expert`` (new, gained, lost and vanished voxels: the
    symmetric difference, in the baseline's space)."""
    from scipy import ndimage

    from pipeline.ingest.resample import resample_to_grid

    rng = np.random.default_rng(seed + 1)
    base = anatomy(seed)
    mb, mf = _mask(BASELINE_LESIONS), _mask(FOLLOWUP_LESIONS)
    # lesions with soft edges (as on a real scan): resampling them moves little intensity
    flair_b = base + 120.0 * ndimage.gaussian_filter(mb.astype(float), 0.7) + rng.normal(0, noise, SHAPE)
    flair_f_anat = base + 120.0 * ndimage.gaussian_filter(mf.astype(float), 0.7)
    inverse = motion().GetInverse()
    flair_f = resample_to_grid(grid(flair_f_anat.astype(np.float32)), grid(flair_f_anat), "linear", transform=inverse).array
    flair_f = flair_f + rng.normal(0, noise, SHAPE)
    lesions_f = resample_to_grid(grid(mf), grid(mf), "label", transform=inverse).array
    expert = ((mf > 0) ^ (mb > 0)).astype(np.uint8)  # change both ways, as the shared database's expert masks
    return {"flair_b": grid(flair_b.astype(np.float32)), "flair_f": grid(flair_f.astype(np.float32)), "lesions_b": grid(mb),
            "lesions_f": grid(lesions_f), "lesions_f_anat": grid(mf), "expert": grid(expert)}


def write_source(folder: Path, seed: int = 0, transforms: bool = False, subject: str = "DOE^JANE_19700101") -> dict[str, Volume]:
    """A longitudinal source folder like the shared MS database: ``<subject>/study1_FLAIR.nii.gz``,
    ``study2_FLAIR.nii.gz`` and ``gt.nii.gz`` (the expert change, on the baseline grid, which is
    then the common space). With ``transforms``, ``study<n>_FLAIR_to_common_space.txt`` too: the
    identity for the baseline and :func:`motion` for the follow-up (common-space points into the visit)."""
    import SimpleITK as sitk

    from pipeline.io.writers import write_nifti

    v = visits(seed)
    sub = folder / subject
    sub.mkdir(parents=True, exist_ok=True)
    write_nifti(v["flair_b"], sub / "study1_FLAIR.nii.gz")
    write_nifti(v["flair_f"], sub / "study2_FLAIR.nii.gz")
    write_nifti(v["expert"], sub / "gt.nii.gz")
    if transforms:
        sitk.WriteTransform(sitk.AffineTransform(3), str(sub / "study1_FLAIR_to_common_space.txt"))
        m = motion()
        aff = sitk.AffineTransform(3)
        aff.SetMatrix(m.GetMatrix())
        aff.SetTranslation(m.GetTranslation())
        aff.SetCenter(m.GetCenter())
        sitk.WriteTransform(aff, str(sub / "study2_FLAIR_to_common_space.txt"))
    return v
