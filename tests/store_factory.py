"""Test helper: a tiny lesionflow store of synthetic cases, written with ``pipeline.store.write_case``.

Each case is an ellipsoidal "head" (the foreground) with smooth tissue contrast and noise, and
a few bright ellipsoidal "lesions" in channel 0 (FLAIR-like: lesions bright), dark in channel 1
(T1-like) and bright in channel 2 (T2-like). Channels are z-scored inside the foreground, as the
pipeline stores them. ``label`` is exactly the lesion mask.

Example (in a test)::

    from tests.store_factory import make_store
    case_ids = make_store(tmp_path / "store", n_cases=3, shape_zyx=(40, 56, 48), seed=0)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import __version__
from pipeline.core.volume import Volume
from pipeline.store import geometry_of, init_store, write_case
from storage_schemas.models import CaseMeta, ChannelInfo

DEFAULT_CHANNELS = ("FLAIR", "T1", "T2")
LESION_CONTRAST = {"FLAIR": 1.6, "T1": -0.8, "T2": 1.2}


def _ellipsoid(shape: Sequence[int], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 <= 1.0


def synthetic_case(
    shape_zyx: Sequence[int] = (40, 56, 48),
    n_lesions: int = 4,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    rng: np.random.Generator | None = None,
    noise: float = 0.15,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic case: ``(image float32 (C, Z, Y, X) z-scored, foreground uint8, label uint8)``.

    Lesions (radii 1.5–4 voxels, scaled down for small volumes) lie inside the foreground, at
    least 3 voxels from its border, and do not overlap.
    """
    rng = rng or np.random.default_rng(0)
    shape = tuple(int(s) for s in shape_zyx)
    centre = [s / 2 - 0.5 for s in shape]
    head_radii = [s * 0.42 for s in shape]
    foreground = _ellipsoid(shape, centre, head_radii)
    inner = _ellipsoid(shape, centre, [r - 3 for r in head_radii])

    label = np.zeros(shape, bool)
    rmax = max(1.5, min(4.0, min(shape) / 10))
    attempts = 0
    placed = 0
    while placed < n_lesions and attempts < 200:
        attempts += 1
        radii = rng.uniform(1.5, rmax, size=3)
        pos = [rng.uniform(0.2 * s + r, 0.8 * s - r) for r, s in zip(radii, shape)]
        blob = _ellipsoid(shape, pos, radii)
        if not blob.any() or not inner[blob].all():
            continue
        grown = _ellipsoid(shape, pos, radii + 2)
        if (grown & label).any():
            continue
        label |= blob
        placed += 1

    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    image = np.zeros((len(channels), *shape), np.float32)
    for c, name in enumerate(channels):
        phase = rng.uniform(0, np.pi, size=3)
        tissue = 0.3 * np.sin(3 * zz + phase[0]) * np.cos(2 * yy + phase[1]) + 0.2 * np.sin(2.5 * xx + phase[2])
        vol = np.where(foreground, 1.0 + tissue, 0.0)
        vol = vol + LESION_CONTRAST.get(name, 1.0) * label
        vol = vol + noise * rng.standard_normal(shape)
        mean, std = vol[foreground].mean(), vol[foreground].std() + 1e-6
        image[c] = np.where(foreground, (vol - mean) / std, 0.0).astype(np.float32)
    return image, foreground.astype(np.uint8), label.astype(np.uint8)


def make_store(
    root: str | Path,
    n_cases: int = 3,
    shape_zyx: Sequence[int] = (40, 56, 48),
    seed: int = 0,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    n_lesions: int = 4,
    spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
    with_label: bool = True,
    chunk_zyx: tuple[int, int, int] = (32, 32, 32),
    start: int = 0,
    noise: float = 0.15,
) -> list[str]:
    """Create (or add to) a store at ``root`` with ``n_cases`` synthetic cases; returns their ids.

    Case ids are ``sub-synthNN_ses-01``, NN counting from ``start`` (so a second call with another
    ``start`` adds cases, e.g. unlabelled ones with ``with_label=False``). Voxel spacing is ``spacing_xyz`` mm.
    ``noise`` is the Gaussian noise level relative to the tissue signal (lesion contrast on
    channel 0 is 1.6). Small chunks (32³ by default) so that patch reads cross chunk borders in tests.
    """
    root = init_store(root)
    rng = np.random.default_rng(seed)
    case_ids = []
    for i in range(start, start + n_cases):
        image, foreground, label = synthetic_case(shape_zyx, n_lesions=n_lesions, channels=channels, rng=rng, noise=noise)
        subject, session = f"sub-synth{i:02d}", "ses-01"
        case_id = f"{subject}_{session}"
        geometry = geometry_of(Volume(foreground, spacing=tuple(spacing_xyz)))
        infos = [
            ChannelInfo(
                modality=name,
                source_format="nifti",
                source_series=f"{case_id}_{name}",
                native_spacing=tuple(spacing_xyz),
                native_shape_zyx=tuple(int(s) for s in shape_zyx),
                native_orientation="LPS",
                sources=[],
                intensity_mean=float(image[c][foreground > 0].mean()),
                intensity_std=float(image[c][foreground > 0].std()),
                intensity_p01=float(np.percentile(image[c], 1)),
                intensity_p99=float(np.percentile(image[c], 99)),
            )
            for c, name in enumerate(channels)
        ]
        meta = CaseMeta(
            case_id=case_id,
            subject=subject,
            session=session,
            channels=list(channels),
            channel_info=infos,
            has_label=with_label,
            geometry=geometry,
            source_fingerprint=hashlib.sha256(f"synthetic-{seed}-{i}".encode()).hexdigest(),
            config_hash="synthetic",
            pipeline_version=__version__,
        )
        write_case(root, meta, image, foreground, label if with_label else None, chunk_zyx=chunk_zyx)
        case_ids.append(case_id)
    return case_ids
