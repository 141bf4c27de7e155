"""Patches from cases held in memory, and axial slices for 2-D networks.

:class:`CachedPatchDataset` is :class:`training.data.PatchDataset` with each case's image and
label read whole from Zarr the first time a worker needs them and kept in memory (numpy), so a
patch is a slice of an array rather than a read of every chunk it touches. It pays when cases
are few and patches many: a 1-voxel-thick axial slice of a 182x218x182 case touches 12 chunks of
64^3 per channel, about 36 MB decoded for 0.5 MB of patch. Memory: one float32 copy of each
training case per loader worker (87 MB for a 3-channel 182x218x182 case).

:class:`SliceDataset` samples axial slices for ``spatial_dims=2`` (nnU-Net's "2d"
configuration on the same store): a patch ``(1, y, x)`` centred on a lesion voxel (with
probability ``lesion_fraction``) or a foreground voxel, from the same patch index; items are
``(C, 1, y, x)`` so the loop, the losses and sliding-window inference treat them like 3-D patches
one slice thick (the network is wrapped in :class:`training.model.AxialSlices`). Flips act on y
and x. "Axial" is the store's z axis, the slice axis of the reference grid. With
``background_slices="lesion_free"`` the other samples come only from slices without lesion
(when a case has any), so ``lesion_fraction`` is the share of lesion slices in training: 0.5
balances tumour and non-tumour slices 50/50, as the brain-tumour write-up does.

Every sample is still a pure function of ``(seed, index)``.

Example:
    >>> ds = SliceDataset("store", ["sub-01_ses-01"], patch_yx=(160, 192))  # doctest: +SKIP
    >>> image, label = ds[0]  # doctest: +SKIP
    >>> image.shape, label.shape  # (C, 1, 160, 192), (1, 1, 160, 192)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import store as _store
from training.data import PatchDataset, keep_lesion_free_background


class CachedPatchDataset(PatchDataset):
    """:class:`PatchDataset` reading each case whole into memory on first use (per process)."""

    def _open(self, case_id: str) -> tuple[Any, Any]:
        arrays = self._arrays.get(case_id)
        if arrays is None:
            group = _store.open_case(self.store_root, case_id)
            arrays = (np.asarray(group["image"][...], dtype=np.float32), np.asarray(_store.reference_label(group)[...], dtype=np.uint8))
            self._arrays[case_id] = arrays
        return arrays


class SliceDataset(CachedPatchDataset):
    """Axial slices ``(C, 1, y, x)`` for 2-D training; see the module docstring.

    Args:
        patch_yx: in-plane patch size in voxels (``patch_zyx`` ``(1, y, x)`` is accepted too).
        Others as :class:`training.data.PatchDataset`.
    """

    def __init__(self, store_root: str | Path, case_ids: Sequence[str], channels: Sequence[str] | None = None,
                 patch_yx: Sequence[int] = (160, 192), background_slices: str = "any", **kwargs: Any) -> None:
        if background_slices not in ("any", "lesion_free"):
            raise ValueError(f"background_slices must be 'any' or 'lesion_free', got {background_slices!r}")
        self.background_slices = background_slices
        patch = tuple(int(p) for p in patch_yx)
        if len(patch) == 3:
            if patch[0] != 1:
                raise ValueError(f"axial slices are 1 voxel thick; got patch_zyx {patch}")
            patch = patch[1:]
        if len(patch) != 2:
            raise ValueError(f"patch_yx needs 2 sides (y, x), got {patch_yx}")
        kwargs.pop("patch_zyx", None)
        super().__init__(store_root, case_ids, channels=channels, patch_zyx=(1, *patch), **kwargs)

    def _load_case(self, case_id: str, build_missing_index: bool) -> tuple[Any, str | None]:
        source, reason = super()._load_case(case_id, build_missing_index)
        if source is None or self.background_slices == "any":
            return source, reason
        return keep_lesion_free_background(self.store_root, source), reason

    def sample_spec(self, index: int) -> dict[str, Any]:
        spec = super().sample_spec(index)
        spec["flips"] = tuple(ax for ax in spec["flips"] if ax != 0)  # a 1-slice patch has no z to flip
        return spec
