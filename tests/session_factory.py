"""NIfTI sessions for ingest tests: a bright ellipsoid 'head' defined in world space (so every
grid samples the same anatomy), a spherical lesion, and a FLAIR/T1/T2(/mask) session writer.

Example (in a test)::

    from tests.session_factory import write_session
    write_session(tmp_path / "sub-01", "sub-01_", seed=1)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.volume import Volume
from pipeline.io.writers import write_nifti


def rot_x(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def blob_image(shape_zyx, spacing, origin=(0.0, 0.0, 0.0), direction=np.eye(3), seed=0) -> Volume:
    """A bright ellipsoid 'head' with structure, defined in world space so any grid samples it."""
    z, y, x = np.indices(shape_zyx).astype(float)
    v = Volume(np.zeros(shape_zyx, np.float32), spacing=spacing, origin=origin, direction=direction)
    idx = np.stack([x, y, z], -1).reshape(-1, 3)
    w = v.index_to_world(idx).reshape(*shape_zyx, 3)
    r = np.sqrt(((w[..., 0] - 20) / 18) ** 2 + ((w[..., 1] - 20) / 18) ** 2 + ((w[..., 2] - 15) / 12) ** 2)
    img = np.where(r < 1, 100 + 20 * np.sin(w[..., 0] / 3.0) + 10 * np.cos(w[..., 2] / 2.0), 0).astype(np.float32)
    img += np.random.default_rng(seed).normal(0, 1, shape_zyx).astype(np.float32)
    return v.with_array(img)


def lesion_mask_on(grid: Volume) -> Volume:
    z, y, x = np.indices(grid.shape_zyx).astype(float)
    w = grid.index_to_world(np.stack([x, y, z], -1).reshape(-1, 3)).reshape(*grid.shape_zyx, 3)
    m = (((w[..., 0] - 22) ** 2 + (w[..., 1] - 18) ** 2 + (w[..., 2] - 15) ** 2) <= 16).astype(np.uint8)
    return grid.with_array(m)


def write_session(folder: Path, prefix: str, seed: int, label: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    flair = blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0), seed=seed)
    t1 = blob_image((36, 44, 44), (1.0, 1.0, 1.0), origin=(-1.0, -1.0, -1.0), direction=rot_x(10), seed=seed + 1)
    t2 = blob_image((18, 20, 20), (2.0, 2.0, 2.0), seed=seed + 2)
    write_nifti(flair, folder / f"{prefix}FLAIR.nii.gz")
    write_nifti(t1, folder / f"{prefix}T1w.nii.gz")
    write_nifti(t2, folder / f"{prefix}T2w.nii.gz")
    if label:
        write_nifti(lesion_mask_on(flair), folder / f"{prefix}lesion_mask.nii.gz")


def convert_or_poison(plan, ctx, victims: dict[str, str]):
    """``convert_session``, except for the sessions whose folder names are keys of ``victims``:
    they kill the Dask worker converting them, ``"oom"`` by allocating (and touching) memory until
    the worker's nanny kills it for passing its memory limit, ``"crash"`` by exiting the process
    at once as a segfault in a native library would; ``"slow"`` sessions are converted after a
    3 s pause (a good session still running when a neighbour kills the worker). For tests of
    poisoned sessions::

        monkeypatch.setattr(cluster, "convert_session", functools.partial(convert_or_poison, victims={"p2": "oom"}))
    """
    import os
    import time

    from pipeline.ingest.session import convert_session

    how = victims.get(Path(plan.root_relpath).name)
    if how == "slow":
        time.sleep(3)
    if how in (None, "slow"):
        return convert_session(plan, ctx)
    if how == "crash":
        os._exit(139)
    hoard = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # 16 MiB every 20 ms: the nanny checks every 500 ms
        hoard.append(np.ones(16 * 2**20, np.uint8))
        time.sleep(0.02)
    os._exit(70)  # never reached while the worker has a memory limit
