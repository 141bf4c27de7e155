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
import os
import threading
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


def keep_lesion_free_background(store_root: str | Path, source: CaseSource) -> CaseSource:
    """Keep only ``source``'s background centres on slices (z) without lesion, when it has any there
    (a case with lesion on every slice keeps them all); in place, and returned."""
    if not len(source.background):
        return source
    label = np.asarray(_store.reference_label(_store.open_case(store_root, source.case_id))[...])
    free = ~label.reshape(label.shape[0], -1).any(axis=1)  # per z: no lesion voxel on the slice
    keep = free[source.background[:, 0]]
    if keep.any():
        source.background = source.background[keep]
    return source


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


# ----------------------------------------------------------------------------- the augmentation bank
@dataclass
class BankCase:
    """What :class:`BankDataset` needs about one case: its bank's lesion/background samples, or a fresh-only source."""

    case_id: str
    lesion: np.ndarray  # int64 sample indices of the bank centred on a lesion
    background: np.ndarray  # int64 sample indices centred on background
    bank_channels: tuple[int, ...]  # positions of the training channels in the bank's channel axis
    bank_patch: tuple[int, int, int]
    scale: float
    fresh: CaseSource | None = None  # for samples cut fresh from the raw volume

    @property
    def has_bank(self) -> bool:
        return len(self.lesion) + len(self.background) > 0


def bank_usable(store_root: str | Path, case_id: str, channels: Sequence[str], patch_zyx: Sequence[int], spatial_dims: int = 3,
                background_slices: str = "any") -> tuple[Any, str | None]:
    """``(AugmentBank, None)`` when the case's bank can feed a training run, else ``(None, reason)``.

    Usable: present and readable, built from the case as it is now (source fingerprint and pipeline
    config hash), a sample patch at least ``patch_zyx``, holding every channel in ``channels``, and
    of the run's ``spatial_dims`` (a 3-D bank's samples are rotated out of the slice plane; a 2-D
    bank's are single slices); for 2-D, with the run's ``background_slices`` (what "background" means).
    """
    from pipeline.prepare.bank import read_bank

    try:
        bank = read_bank(store_root, case_id)
        meta = _store.read_case_meta(store_root, case_id)
    except _store.StoreError as exc:
        return None, str(exc)
    if bank is None:
        return None, "no augmentation bank"
    if bank.source_fingerprint != meta.source_fingerprint or bank.case_config_hash != meta.config_hash:
        return None, "augmentation bank built from an older version of the case"
    if any(b < p for b, p in zip(bank.patch_zyx, patch_zyx)):
        return None, f"augmentation bank samples {tuple(bank.patch_zyx)} smaller than the patch {tuple(patch_zyx)}"
    missing = [c for c in channels if c not in bank.channels]
    if missing:
        return None, f"augmentation bank lacks channel(s) {missing}"
    bank_dims = int(bank.bank_config.get("spatial_dims", 3))
    if bank_dims != int(spatial_dims):
        return None, f"augmentation bank is {bank_dims}-D, training is {int(spatial_dims)}-D (prepare a bank with spatial_dims={int(spatial_dims)})"
    if bank_dims == 2 and bank.bank_config.get("background_slices") != background_slices:
        return None, (f"augmentation bank's background samples are from {bank.bank_config.get('background_slices')} slices, "
                      f"training asks for {background_slices}")
    return bank, None


class BankDataset(Dataset):
    """Class-balanced samples read from the cases' augmentation banks: one chunk read per sample.

    Args:
        store_root: the store (path or URL).
        case_ids: cases to sample from; those without a usable label/channels are skipped
            (:attr:`skipped`), those without a usable bank are cut fresh from their volumes
            (:attr:`fresh_only`), or skipped with ``require_bank``.
        channels: modalities fed to the network, in order; None = the store's.
        patch_zyx: training patch; a larger bank sample gives a crop at a random offset that keeps its centre voxel.
        lesion_fraction: probability that a sample is a lesion-centred one (class balance).
        samples_per_epoch: ``len(self)``.
        seed: sample ``i`` is a pure function of ``(seed, i)``.
        fresh_fraction: probability that a sample is cut fresh from the raw volume with the bank's
            spatial transforms drawn anew (:func:`pipeline.prepare.augment.augment_patch`).
        transform: a :class:`training.augment.BatchAugment` to apply here (in the loader's workers)
            instead of on the training device; items are then float32.
        require_bank: skip cases without a usable bank instead of cutting their samples fresh.
        spatial_dims: 2 for axial slices (``patch_zyx`` ``(1, y, x)``): only 2-D banks are used, fresh
            samples are drawn in-plane, centred as :class:`training.slices.SliceDataset` centres them.
        background_slices: 2-D: the banks' and the fresh samples' background (``any`` or ``lesion_free`` slices).

    Items are ``(image, label uint8 (1, p...), scale float32)``: ``image`` is the stored type
    (int16 or float16) and ``image * scale`` the z-scored intensities; with ``transform`` it is
    already float32 and augmented (scale 1). :class:`BankLoader` turns batches into what
    :func:`training.loop.train_step` takes.
    """

    def __init__(
        self,
        store_root: str | Path,
        case_ids: Sequence[str],
        channels: Sequence[str] | None = None,
        patch_zyx: Sequence[int] = (48, 48, 48),
        lesion_fraction: float = 0.5,
        samples_per_epoch: int = 1000,
        seed: int = 0,
        fresh_fraction: float = 0.0,
        transform: Any = None,
        require_bank: bool = False,
        spatial_dims: int = 3,
        background_slices: str = "any",
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if spatial_dims == 2 and int(patch_zyx[0]) != 1:
            raise ValueError(f"2-D samples are axial slices: patch_zyx must be (1, y, x), got {tuple(patch_zyx)}")
        self.spatial_dims = int(spatial_dims)
        self.background_slices = background_slices
        if not 0.0 <= lesion_fraction <= 1.0 or not 0.0 <= fresh_fraction <= 1.0:
            raise ValueError(f"lesion_fraction and fresh_fraction must be in [0, 1], got {lesion_fraction}, {fresh_fraction}")
        self.store_root = _store.location(store_root)
        self.channels = tuple(resolve_channels(store_root, channels))
        self.patch_zyx = tuple(int(p) for p in patch_zyx)
        self.lesion_fraction = float(lesion_fraction)
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.fresh_fraction = float(fresh_fraction)
        self.transform = transform
        self.cases: list[BankCase] = []
        self.skipped: list[dict[str, str]] = []
        self.fresh_only: list[dict[str, str]] = []
        self.spatial: Any = None  # the bank's SpatialAugmentConfig, for fresh samples
        self._fresh_source: PatchDataset | None = None
        fresh_ids: list[str] = []
        dtypes: set[str] = set()
        for case_id in case_ids:
            channel_index, reason = check_case(self.store_root, case_id, self.channels, require_label=True)
            if channel_index is None:
                self.skipped.append({"case_id": case_id, "reason": str(reason)})
                continue
            bank, reason = bank_usable(self.store_root, case_id, self.channels, self.patch_zyx, self.spatial_dims, background_slices)
            if bank is None:
                if require_bank:
                    self.skipped.append({"case_id": case_id, "reason": str(reason)})
                    continue
                self.fresh_only.append({"case_id": case_id, "reason": str(reason)})
                fresh_ids.append(case_id)
                self.cases.append(BankCase(case_id, np.zeros(0, np.int64), np.zeros(0, np.int64), (), self.patch_zyx, 1.0))
                continue
            kinds = np.array([s.kind == "lesion" for s in bank.samples], bool)
            dtypes.add(bank.dtype)
            if self.spatial is None:
                from pipeline.prepare.augment import BankConfig

                self.spatial = BankConfig.model_validate(bank.bank_config).spatial
            self.cases.append(BankCase(case_id, np.flatnonzero(kinds), np.flatnonzero(~kinds),
                                       tuple(bank.channels.index(c) for c in self.channels), tuple(bank.patch_zyx), float(bank.scale)))
        for entry in self.skipped:
            log.warning("training: skipping case %s: %s", entry["case_id"], entry["reason"])
        for entry in self.fresh_only:
            log.warning("training: case %s has no usable augmentation bank (%s); its samples are cut fresh from the volume",
                        entry["case_id"], entry["reason"])
        self.stored_dtype = np.dtype(dtypes.pop() if len(dtypes) == 1 else ("int16" if not dtypes else "float32"))
        if self.spatial is None:
            from pipeline.prepare.augment import SpatialAugmentConfig

            self.spatial = SpatialAugmentConfig()
        needs_fresh = [c.case_id for c in self.cases] if self.fresh_fraction > 0 else fresh_ids
        if needs_fresh:
            # the raw-volume side: PatchDataset's case checks and patch indices (built in memory where missing)
            self._fresh_source = PatchDataset(self.store_root, needs_fresh, channels=self.channels, patch_zyx=self.patch_zyx,
                                              lesion_fraction=self.lesion_fraction, samples_per_epoch=1, flip_prob=0.0, seed=self.seed)
            if self.spatial_dims == 2 and background_slices == "lesion_free":  # as SliceDataset samples them
                for source in self._fresh_source.cases:
                    keep_lesion_free_background(self.store_root, source)
            by_id = {c.case_id: c for c in self._fresh_source.cases}
            for case in self.cases:
                case.fresh = by_id.get(case.case_id)
            for entry in self._fresh_source.skipped:
                self.cases = [c for c in self.cases if c.case_id != entry["case_id"] or c.has_bank]
                if not any(c.case_id == entry["case_id"] for c in self.cases):
                    self.skipped.append(entry)
        self._arrays: dict[str, tuple[Any, Any]] = {}

    @property
    def case_ids(self) -> list[str]:
        """Ids of the usable cases, in sampling order."""
        return [c.case_id for c in self.cases]

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getstate__(self) -> dict[str, Any]:  # zarr handles are reopened in each worker
        state = dict(self.__dict__)
        state["_arrays"] = {}
        state.pop("_buffers", None)
        return state

    def _scratch(self, arr: Any) -> np.ndarray:
        """This thread's reusable buffer for one sample of ``arr`` (a fresh 18 MB array per read costs its page faults)."""
        local = self.__dict__.get("_buffers")
        if local is None:
            local = self.__dict__.setdefault("_buffers", threading.local())
        key = (tuple(arr.shape[1:]), np.dtype(arr.dtype).str)
        cache = getattr(local, "cache", None)
        if cache is None:
            cache = local.cache = {}
        if key not in cache:
            cache[key] = np.empty(key[0], np.dtype(arr.dtype))
        return cache[key]

    def _open(self, case_id: str) -> tuple[Any, Any]:
        arrays = self._arrays.get(case_id)
        if arrays is None:
            from pipeline.prepare.bank import BANK

            group = _store.open_case(self.store_root, case_id)[BANK]
            arrays = (group["image"], group["label"])
            self._arrays[case_id] = arrays
        return arrays

    # ------------------------------------------------------------------ sampling
    def sample_spec(self, index: int) -> dict[str, Any]:
        """Which case, kind, source (bank sample or fresh) and crop offset sample ``index`` uses (deterministic)."""
        if not self.cases:
            raise IndexError("BankDataset has no usable cases")
        rng = np.random.default_rng([self.seed, int(index)])
        case = self.cases[int(rng.integers(len(self.cases)))]
        want_lesion = rng.random() < self.lesion_fraction
        fresh = rng.random() < self.fresh_fraction or not case.has_bank
        pick = rng.random()
        offsets = rng.random(3)
        spec: dict[str, Any] = {"case_id": case.case_id, "_case": case, "fresh": fresh, "seed": int(rng.integers(2**62))}
        if fresh:
            source = case.fresh
            if source is None:
                raise IndexError(f"case {case.case_id}: no raw-volume source for a fresh sample")
            kind = "lesion" if (want_lesion and len(source.lesion)) or not len(source.background) else "background"
            centres = source.lesion if kind == "lesion" else source.background
            spec.update(kind=kind, centre=tuple(int(c) for c in centres[int(pick * len(centres))]))
        else:
            kind = "lesion" if (want_lesion and len(case.lesion)) or not len(case.background) else "background"
            pool = case.lesion if kind == "lesion" else case.background
            # a crop of a larger bank sample at a random offset that keeps the sample's centre voxel
            offset = []
            for b, p, f in zip(case.bank_patch, self.patch_zyx, offsets):
                lo, hi = max(0, b // 2 - p + 1), min(b - p, b // 2)
                offset.append(lo + int(f * (hi - lo + 1)) if hi >= lo else (b - p) // 2)
            spec.update(kind=kind, sample=int(pool[int(pick * len(pool))]), offset=tuple(offset))
        return spec

    def _bank_item(self, case: BankCase, sample: int, offset: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Bank sample ``sample`` of ``case`` (its training channels, cut at ``offset`` to the training patch).
        A whole sample comes back in this thread's buffers (:meth:`_scratch`): valid until the thread's next read."""
        image_arr, label_arr = self._open(case.case_id)
        if case.bank_patch == self.patch_zyx:
            image, label = self._scratch(image_arr), self._scratch(label_arr)
            if read_into(image_arr, sample, image) and read_into(label_arr, sample, label):
                if tuple(case.bank_channels) != tuple(range(image.shape[0])):
                    image = image[list(case.bank_channels)]
                return image, label
        image = np.asarray(image_arr[sample])
        label = np.asarray(label_arr[sample])
        if tuple(case.bank_channels) != tuple(range(image.shape[0])):
            image = image[list(case.bank_channels)]
        if case.bank_patch != self.patch_zyx:
            window = tuple(slice(o, o + p) for o, p in zip(offset, self.patch_zyx))
            image, label = image[(slice(None), *window)], label[window]
        return image, label

    def _fresh_item(self, case: BankCase, centre: Sequence[int], seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        """A sample cut from the raw volume now, with the bank's spatial transforms drawn from ``seed``."""
        from pipeline.prepare.augment import augment_patch, draw_params, int16_scale, quantize, source_block

        source, reader = case.fresh, self._fresh_source
        assert source is not None and reader is not None
        params = draw_params(np.random.default_rng(seed), self.spatial, len(self.channels), spatial_dims=self.spatial_dims)
        block = source_block(self.patch_zyx, params)  # every source voxel the transformed patch reads
        image_arr, label_arr = reader._open(case.case_id)
        slices, pad = patch_bounds(centre, source.shape_zyx, block)
        image = np.stack([np.asarray(image_arr[(i, *slices)], dtype=np.float32) for i in source.channel_index])
        label = np.asarray(label_arr[slices], dtype=np.uint8)
        if any(p != (0, 0) for p in pad):
            image, label = np.pad(image, ((0, 0), *pad)), np.pad(label, pad)
        out, out_label, _ = augment_patch(image, label, tuple(b // 2 for b in block), self.patch_zyx, params)
        out_label = out_label if out_label is not None else np.zeros(self.patch_zyx, np.uint8)
        if self.stored_dtype == np.int16:
            scale = int16_scale(float(np.abs(out).max()) if out.size else 0.0)
            return quantize(out, "int16", scale), out_label, scale
        return out.astype(self.stored_dtype), out_label, 1.0

    @property
    def item_dtype(self) -> np.dtype:
        """Type of the items' image: float32 with ``transform``, else the banks' stored type (float32 when they differ)."""
        return np.dtype(np.float32) if self.transform is not None else self.stored_dtype

    def fill(self, index: int, image_out: np.ndarray, label_out: np.ndarray) -> float:
        """Write sample ``index`` into ``image_out`` ``(C, p...)`` (:attr:`item_dtype`) and ``label_out``
        ``(p...)`` uint8 (e.g. slots of a batch buffer, so no copy is made to collate); returns its scale."""
        spec = self.sample_spec(index)
        case: BankCase = spec["_case"]
        if self.transform is None and not spec["fresh"] and case.bank_patch == self.patch_zyx:
            image_arr, label_arr = self._open(case.case_id)  # the stored sample as it is: decoded straight into the slots
            if (tuple(case.bank_channels) == tuple(range(image_arr.shape[1])) and label_out.shape == tuple(label_arr.shape[1:])
                    and read_into(image_arr, spec["sample"], image_out) and read_into(label_arr, spec["sample"], label_out)):
                return float(case.scale)
        if spec["fresh"]:
            image, label, scale = self._fresh_item(case, spec["centre"], spec["seed"])
        else:
            image, label = self._bank_item(case, spec["sample"], spec["offset"])
            scale = case.scale
        if self.transform is None:
            label_out[...] = label
            if image.dtype == image_out.dtype:
                image_out[...] = image
                return float(scale)
            np.multiply(image, np.float32(scale), out=image_out, dtype=np.float32)  # banks of different types: float32
            return 1.0
        # the per-batch transforms, here in the loader's worker
        seed = (self.seed, int(index))
        params = self.transform.draw(1, image.shape[0], seed, spatial_shape=self.patch_zyx)
        flips = tuple(params[0]["flips"])
        if flips:  # mirrored in the stored type, folded into the float conversion (no extra pass)
            image, label = np.flip(image, flips), np.flip(label, tuple(f - 1 for f in flips))
        np.multiply(image, np.float32(scale), out=image_out, dtype=np.float32)
        label_out[...] = label
        self.transform(torch.from_numpy(image_out)[None], None, seed=seed, params=params, mirrored=True, inplace=True)
        return 1.0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = np.empty((len(self.channels), *self.patch_zyx), self.item_dtype)
        label = np.empty(self.patch_zyx, np.uint8)
        scale = self.fill(index, image, label)
        return torch.from_numpy(image), torch.from_numpy(label[None]), torch.tensor(scale, dtype=torch.float32)


def read_into(arr: Any, index: int, out: np.ndarray) -> bool:
    """Decode ``arr[index]`` (one chunk of a bank array) straight into ``out`` with Zarr's ``out=``, without
    an intermediate array (a real MNI sample: 6.5 against 8.6-11.6 ms, 2026-11-30); False, nothing read,
    when ``out`` does not match the sample's shape and type."""
    if out.dtype != arr.dtype or out.shape != tuple(arr.shape[1:]) or not out.flags.c_contiguous:
        return False
    from zarr.core.buffer.cpu import NDBuffer

    arr.get_basic_selection((int(index),), out=NDBuffer.from_numpy_array(out))
    return True


def dequantize_batch(image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Stored batch ``(B, C, ...)`` (int16/float16/float32, any device) times per-sample ``scale`` ``(B,)``
    (on the CPU) → float32 on the image's device."""
    out = image.float()
    if bool((scale != 1).any()):
        out.mul_(scale.to(torch.float32).view(-1, *([1] * (out.ndim - 1))).to(out.device, non_blocking=True))
    return out


# ----------------------------------------------------------------------------- the loader
_TORCH_DTYPES = {np.dtype(np.int16): torch.int16, np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}


class _ThreadBatches:
    """Batches of ``dataset[i]`` read by a pool of threads, in order, ``prefetch`` batches ahead.

    Zarr's chunk decoding (Blosc-LZ4; Zstandard in older banks) and torch's copies release the GIL, so threads read
    samples in parallel without the worker processes' pickling and shared-memory copies.
    """

    def __init__(self, dataset: Dataset, batch_size: int, threads: int, prefetch: int, pin: bool) -> None:
        self.dataset, self.batch_size, self.threads, self.prefetch, self.pin = dataset, batch_size, max(1, threads), max(1, prefetch), pin

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)  # type: ignore[arg-type]

    def __iter__(self) -> Any:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        from torch.utils.data import default_collate

        n = len(self.dataset)  # type: ignore[arg-type]
        starts = iter(range(0, n, self.batch_size))
        with ThreadPoolExecutor(self.threads, thread_name_prefix="lesionflow-loader") as pool:
            pending: deque[list[Any]] = deque()

            def submit() -> bool:
                start = next(starts, None)
                if start is None:
                    return False
                indices = range(start, min(start + self.batch_size, n))
                fill = getattr(self.dataset, "fill", None)
                if fill is None:
                    pending.append(([pool.submit(self.dataset.__getitem__, i) for i in indices], None))
                    return True
                # each thread writes its sample straight into the batch (pinned for CUDA): no collate copy
                ds: Any = self.dataset
                image = torch.empty((len(indices), len(ds.channels), *ds.patch_zyx), dtype=_TORCH_DTYPES[ds.item_dtype], pin_memory=self.pin)
                label = torch.empty((len(indices), 1, *ds.patch_zyx), dtype=torch.uint8, pin_memory=self.pin)
                futures = [pool.submit(fill, i, image[j].numpy(), label[j, 0].numpy()) for j, i in enumerate(indices)]
                pending.append((futures, (image, label)))
                return True

            for _ in range(self.prefetch):
                if not submit():
                    break
            while pending:
                futures, buffers = pending.popleft()
                results = [f.result() for f in futures]
                submit()
                if buffers is not None:
                    yield [*buffers, torch.tensor(results, dtype=torch.float32)]
                    continue
                batch = default_collate(results)
                yield [t.pin_memory() for t in batch] if self.pin else batch


WORKER_KIND_NOTE = """Threads, by measurement (benchmarks/results/2026-11-30-bench_loader.json, quiet 2-core machine,
batch 2): bank samples with mirroring and the intensity transforms applied in the workers, 2 threads
vs 2 worker processes 23.9 vs 20.4 patches/s at 0.9 vs 1.6 GB peak (real MNI cases 4 x 112 x 160 x
128), 56.7 vs 47.2 at 0.9 vs 1.4 GB (20 phantom cases). Before the in-place transforms (2026-11-29,
shared machine) 11.4 vs 12.0 and 20.5 vs 19.9: the same speed. Blosc-LZ4 decoding, SciPy's blur,
numpy and torch release the GIL; processes pay for pickling and a shared-memory copy of every batch,
and hold a copy of the interpreter each."""


class BankLoader:
    """Batches for :func:`training.loop.train_step`: ``(image float32 (B, C, p...), label int64 (B, 1, p...))`` on ``device``.

    Samples are read by worker processes (``kind="processes"``, a torch ``DataLoader``) or threads
    (``kind="threads"``, the default ``auto``: :data:`WORKER_KIND_NOTE`). On CUDA batches are pinned and copied without blocking on a side stream,
    one batch ahead of the one being trained on, then turned into float32 and augmented there
    (:class:`training.augment.BatchAugment`, seeded by ``(seed, batch number)``). On the CPU the
    transforms run in the workers instead (``transform`` of :class:`BankDataset`) unless told otherwise.
    """

    def __init__(self, dataset: BankDataset, batch_size: int, device: torch.device | str = "cpu", workers: int = 2,
                 kind: str = "auto", augment: Any = None, seed: int = 0, prefetch: int = 2) -> None:
        self.dataset, self.batch_size, self.device = dataset, int(batch_size), torch.device(device)
        if kind == "auto":  # measured (benchmarks/bench_loader.py): see WORKER_KIND_NOTE
            kind = "threads"
        self.augment, self.seed, self.workers, self.kind = augment, int(seed), int(workers), kind
        pin = self.device.type == "cuda"
        if kind == "threads" and workers > 0:
            self.batches: Any = _ThreadBatches(dataset, self.batch_size, workers, prefetch, pin)
        else:
            self.batches = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=workers, pin_memory=pin,
                                                       persistent_workers=workers > 0, prefetch_factor=prefetch if workers > 0 else None)

    def __len__(self) -> int:
        return len(self.batches)

    def _finish(self, batch: Sequence[torch.Tensor], number: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label, scale = batch  # scale stays on the CPU: deciding whether to multiply must not wait for the device
        image = dequantize_batch(image, scale)
        label = label.long()
        if self.augment is not None:
            image, label = self.augment(image, label, seed=(self.seed, "batch", number))
        return image, label

    def __iter__(self) -> Any:
        if self.device.type != "cuda":
            for number, (image, label, scale) in enumerate(self.batches):
                yield self._finish([image.to(self.device), label.to(self.device), scale], number)
            return
        stream = torch.cuda.Stream(self.device)
        ahead: list[torch.Tensor] | None = None
        for number, (image, label, scale) in enumerate(self.batches):
            with torch.cuda.stream(stream):  # copy batch n + 1 (pinned, int16: half of float32) while batch n trains
                copied = [image.to(self.device, non_blocking=True), label.to(self.device, non_blocking=True)]
            if ahead is not None:
                yield self._finish(ahead, number - 1)
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(stream)
            for t in copied:
                t.record_stream(current)  # the caching allocator must not reuse them before the main stream is done
            ahead = [*copied, scale]
        if ahead is not None:
            yield self._finish(ahead, number)


def bank_dataset(store_root: str | Path, case_ids: Sequence[str], cfg: Any, device: torch.device) -> BankDataset | None:
    """The bank dataset ``cfg`` (a :class:`training.config.TrainConfig`, channels resolved) asks for, or None for :class:`PatchDataset`.

    ``cfg.augmentation.bank``: ``off`` → None (raw volumes, flips only); ``auto`` → a
    :class:`BankDataset` when every usable case has a usable bank (else None, with a warning naming
    the cases without one); ``require`` → a BankDataset over the cases with one (the others skipped).
    """
    aug = cfg.augmentation
    if aug.bank == "off":
        return None
    if aug.bank == "auto":
        ok, _ = usable_cases(store_root, case_ids, cfg.channels, require_label=True)
        missing = {c: r for c in ok for _, r in [bank_usable(store_root, c, cfg.channels, cfg.patch_zyx, cfg.spatial_dims, cfg.background_slices)]
                   if r is not None}
        if not ok or missing:
            if missing:
                log.warning("training: no usable augmentation bank for %s; training from the raw volumes with flips only "
                            "(run `lesionflow prepare` with the training patch size)", "; ".join(f"{c} ({r})" for c, r in missing.items()))
            return None
    transform = None
    if _transforms_in_workers(aug, device):
        from training.augment import BatchAugment

        transform = BatchAugment(aug.intensity, flip_prob=cfg.flip_prob)
    return BankDataset(store_root, case_ids, channels=cfg.channels, patch_zyx=cfg.patch_zyx, lesion_fraction=cfg.lesion_fraction,
                       samples_per_epoch=cfg.iterations * int(cfg.batch_size or 1), seed=cfg.seed, fresh_fraction=aug.fresh_fraction,
                       transform=transform, require_bank=aug.bank == "require", spatial_dims=cfg.spatial_dims,
                       background_slices=cfg.background_slices)


def _transforms_in_workers(aug: Any, device: torch.device) -> bool:
    return aug.where == "workers" or (aug.where == "auto" and device.type != "cuda")


GPU_LOADER_NOTE = """Loader threads on CUDA, by measurement on one H200 (benchmarks/results/2026-11-29-gpu_check.json,
the default 3-D U-Net, patch 128^3 x 3 channels, bank samples int16): with the loader's 2 threads the
step got 79 samples/s at batch 2 and 78 at batch 4 (39.7 / 19.5 it/s, GPU busy 71 % / 57 %): the
threads, not the GPU, set the pace; one batch trained over and over ran at 60.4 it/s (121 samples/s,
GPU busy 98 %). So on CUDA the default is one thread per two cores, 4 to 8: enough for about 1.5x
that ceiling if decoding scales with threads as it does on the CPU. That scaling was not measured
on the GPU machine (its time ran out): pass ``num_workers`` to set it, and measure with
``benchmarks/bench_loader.py --feed``. Those banks were Zstandard-coded; since 2026-11-30 they are
Blosc-LZ4, decoded 4x faster on the CPU, also not yet measured on a GPU."""


def loader_threads(cfg: Any, device: torch.device) -> int:
    """Bank-loader workers for a run: ``cfg.num_workers`` when set; else 2 on the CPU (:data:`WORKER_KIND_NOTE`)
    and one per two cores, 4 to 8, on CUDA (:data:`GPU_LOADER_NOTE`)."""
    if cfg.num_workers:
        return int(cfg.num_workers)
    if device.type != "cuda":
        return 2
    return max(4, min(8, (os.cpu_count() or 2) // 2))


def bank_loader(dataset: BankDataset, cfg: Any, device: torch.device) -> BankLoader:
    """The :class:`BankLoader` for a training run: :func:`loader_threads` workers (threads or processes, see
    :data:`WORKER_KIND_NOTE`), transforms where ``cfg.augmentation.where`` says."""
    augment = None
    if dataset.transform is None:
        from training.augment import BatchAugment

        augment = BatchAugment(cfg.augmentation.intensity, flip_prob=cfg.flip_prob)
    return BankLoader(dataset, int(cfg.batch_size or 1), device=device, workers=loader_threads(cfg, device), kind="auto", augment=augment,
                      seed=cfg.seed)
