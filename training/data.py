"""Patch sampling from a lesionflow store for training.

:class:`PatchDataset` draws class-balanced patches: with probability ``lesion_fraction`` a
centre from the case's precomputed lesion centres (``cases/<id>/patch_index/lesion``),
otherwise a background centre. Only the patch is read from Zarr (array slicing; opened arrays
are cached per process/worker), never the whole volume. Random flips along each spatial axis
(probability ``flip_prob``) are the only augmentation.

Every sample is a pure function of ``(seed, index)``: ``dataset[i]`` always returns the same
patch, whichever worker reads it, so a run is reproducible from its seed.

Example:
    >>> ds = PatchDataset("store", ["sub-01_ses-01"])  # the store's channels; or channels=("FLAIR", "T2")  # doctest: +SKIP
    >>> image, label = ds[0]  # doctest: +SKIP
    >>> image.shape, label.shape  # (C, pz, py, px) float32, (1, pz, py, px) int64  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline import store as _store
from pipeline.prepare.patches import build_patch_index, clip_centres, has_patch_index, patch_bounds, read_patch_index
from pipeline.store import resolve_channels

log = logging.getLogger("lesionflow.training")

@dataclass
class CaseSource:
    """What the sampler needs about one usable case."""

    case_id: str
    channel_index: tuple[int, ...]
    shape_zyx: tuple[int, int, int]
    lesion: np.ndarray  # int32 (N, 3) centres, clipped for the training patch size
    background: np.ndarray  # int32 (M, 3)
    index_source: str  # "store" or "built-in-memory"


def check_case(root: str | Path, case_id: str, channels: Sequence[str], require_label: bool = True) -> tuple[tuple[int, ...] | None, str | None]:
    """``(channel indices, None)`` when the case can be used, else ``(None, reason)``.

    A case is unusable when it is not in the store, lacks a requested channel (absent from the
    image or marked ``present=False`` in its metadata) or, with ``require_label``, has no label.
    """
    try:
        group = _store.open_case(root, case_id)
    except _store.StoreError as exc:
        return None, str(exc)
    if "image" not in group:
        return None, "no image array"
    stored = list(group["image"].attrs.get("channels", []))
    missing = [c for c in channels if c not in stored]
    if missing:
        return None, f"missing channel(s) {missing} (stored: {stored})"
    try:
        meta = _store.read_case_meta(root, case_id)
        absent = [ci.modality for ci in meta.channel_info if ci.modality in channels and not ci.present]
        if absent:
            return None, f"channel(s) {absent} absent in the source (filled, not measured)"
    except _store.StoreError:
        pass  # metadata problems are not a reason to refuse a readable image
    if require_label and _store.reference_label(group) is None:
        return None, "no reference label"
    return tuple(stored.index(c) for c in channels), None


class PatchDataset(Dataset):
    """Class-balanced random patches from stored cases.

    Args:
        store_root: the lesionflow store (a local path or an fsspec URL such as ``s3://bucket/store``).
        case_ids: cases to sample from; unusable ones are skipped (see :attr:`skipped`).
        channels: modalities fed to the network, in this order; None = the store's channels.
        patch_zyx: patch size in voxels ``(z, y, x)``.
        lesion_fraction: probability that a sample is centred on a lesion voxel (class balance).
            Cases without lesions always give background patches.
        samples_per_epoch: ``len(self)``; sampling is with replacement, so any value works.
        flip_prob: probability of a flip along each spatial axis.
        seed: base seed; sample ``i`` uses ``numpy.random.default_rng([seed, i])``.
        build_missing_index: build a patch index in memory for cases that have none (else skip).

    Each item is ``(image float32 [C, pz, py, px], label int64 [1, pz, py, px])``.
    Regions outside the volume (volume smaller than the patch) are zero-padded.
    """

    def __init__(
        self,
        store_root: str | Path,
        case_ids: Sequence[str],
        channels: Sequence[str] | None = None,
        patch_zyx: Sequence[int] = (48, 48, 48),
        lesion_fraction: float = 0.5,
        samples_per_epoch: int = 1000,
        flip_prob: float = 0.5,
        seed: int = 0,
        build_missing_index: bool = True,
    ) -> None:
        if not 0.0 <= lesion_fraction <= 1.0:
            raise ValueError(f"lesion_fraction must be in [0, 1], got {lesion_fraction}")
        self.store_root = _store.location(store_root)  # a local Path or the store's URL
        self.channels = tuple(resolve_channels(store_root, channels))
        self.patch_zyx = tuple(int(p) for p in patch_zyx)
        self.lesion_fraction = float(lesion_fraction)
        self.samples_per_epoch = int(samples_per_epoch)
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self.cases: list[CaseSource] = []
        self.skipped: list[dict[str, str]] = []
        for case_id in case_ids:
            source, reason = self._load_case(case_id, build_missing_index)
            if source is None:
                log.warning("training: skipping case %s: %s", case_id, reason)
                self.skipped.append({"case_id": case_id, "reason": str(reason)})
            else:
                self.cases.append(source)
        self._arrays: dict[str, tuple[Any, Any]] = {}

    # ------------------------------------------------------------------ setup
    def _load_case(self, case_id: str, build_missing_index: bool) -> tuple[CaseSource | None, str | None]:
        channel_index, reason = check_case(self.store_root, case_id, self.channels, require_label=True)
        if channel_index is None:
            return None, reason
        group = _store.open_case(self.store_root, case_id)
        shape = tuple(int(s) for s in _store.reference_label(group).shape)
        if has_patch_index(self.store_root, case_id):
            try:
                index = read_patch_index(self.store_root, case_id)
                origin = "store"
            except _store.StoreError as exc:
                if not build_missing_index:
                    return None, str(exc)
                index, origin = None, "built-in-memory"
        else:
            if not build_missing_index:
                return None, "no patch index (run `lesionflow prepare`)"
            index, origin = None, "built-in-memory"
        if index is None:
            log.info("training: case %s has no usable patch index; building one in memory", case_id)
            index = build_patch_index(_store.reference_label(group)[...], _store.foreground_mask(group)[...], self.patch_zyx, seed=self.seed)
        lesion = clip_centres(index["lesion"], shape, self.patch_zyx)
        background = clip_centres(index["background"], shape, self.patch_zyx)
        if len(lesion) == 0 and len(background) == 0:
            return None, "empty patch index (no foreground and no lesion)"
        return CaseSource(case_id, channel_index, shape, lesion, background, origin), None  # type: ignore[arg-type]

    @property
    def case_ids(self) -> list[str]:
        """Ids of the usable cases, in sampling order."""
        return [c.case_id for c in self.cases]

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _open(self, case_id: str) -> tuple[Any, Any]:
        arrays = self._arrays.get(case_id)
        if arrays is None:
            group = _store.open_case(self.store_root, case_id)
            arrays = (group["image"], _store.reference_label(group))
            self._arrays[case_id] = arrays
        return arrays

    def __getstate__(self) -> dict[str, Any]:  # zarr handles are reopened in each worker
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    # ------------------------------------------------------------------ sampling
    def sample_spec(self, index: int) -> dict[str, Any]:
        """Which case, kind, centre and flips sample ``index`` uses (deterministic)."""
        if not self.cases:
            raise IndexError("PatchDataset has no usable cases")
        rng = np.random.default_rng([self.seed, int(index)])
        case = self.cases[int(rng.integers(len(self.cases)))]
        want_lesion = rng.random() < self.lesion_fraction
        kind = "lesion" if (want_lesion and len(case.lesion)) or not len(case.background) else "background"
        centres = case.lesion if kind == "lesion" else case.background
        centre = centres[int(rng.integers(len(centres)))]
        flips = tuple(ax for ax in range(3) if rng.random() < self.flip_prob)
        return {"case_id": case.case_id, "kind": kind, "centre": tuple(int(c) for c in centre), "flips": flips, "_case": case}

    def read_patch(self, case: CaseSource, centre: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(image (C, pz, py, px) float32, label (pz, py, px) uint8)`` around ``centre``, zero-padded."""
        image_arr, label_arr = self._open(case.case_id)
        slices, pad = patch_bounds(centre, case.shape_zyx, self.patch_zyx)
        idx = list(case.channel_index)
        contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
        if contiguous:
            image = np.asarray(image_arr[(slice(idx[0], idx[0] + len(idx)), *slices)], dtype=np.float32)
        else:
            image = np.stack([np.asarray(image_arr[(i, *slices)], dtype=np.float32) for i in idx])
        label = np.asarray(label_arr[slices], dtype=np.uint8)
        if any(p != (0, 0) for p in pad):
            image = np.pad(image, ((0, 0), *pad))
            label = np.pad(label, pad)
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.sample_spec(index)
        image, label = self.read_patch(spec["_case"], spec["centre"])
        for ax in spec["flips"]:
            image = np.flip(image, axis=ax + 1)
            label = np.flip(label, axis=ax)
        image_t = torch.from_numpy(np.ascontiguousarray(image))
        label_t = torch.from_numpy(np.ascontiguousarray(label[None]).astype(np.int64))
        return image_t, label_t


def usable_cases(store_root: str | Path, case_ids: Sequence[str] | None, channels: Sequence[str], require_label: bool = True) -> tuple[list[str], list[dict[str, str]]]:
    """Split ``case_ids`` (default: every case in the store) into usable ids and skipped ``{case_id, reason}``."""
    ids = list(case_ids) if case_ids is not None else _store.list_cases(store_root)
    ok, skipped = [], []
    for case_id in ids:
        channel_index, reason = check_case(store_root, case_id, channels, require_label=require_label)
        if channel_index is None:
            skipped.append({"case_id": case_id, "reason": str(reason)})
        else:
            ok.append(case_id)
    return ok, skipped
