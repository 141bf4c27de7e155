"""Class-balanced patch index: precomputed patch centres for lesion and background sampling.

Lesions are tiny (often < 0.5 % of the brain), so a sampler that draws patch positions
uniformly almost never shows the network a lesion. Instead of recomputing sampling maps
on every call (TorchIO's samplers do), ``prepare`` computes, once per case, two arrays of
patch centres and stores them next to the image:

* ``cases/<id>/patch_index/lesion``      int32 ``(N, 3)`` centres ``(z, y, x)`` on lesion voxels
* ``cases/<id>/patch_index/background``  int32 ``(M, 3)`` centres on foreground, non-lesion voxels

Conventions:

* A centre ``c`` (voxels, array order ``z, y, x``) denotes the patch
  ``[c - p // 2, c - p // 2 + p)`` along each axis, ``p`` being the patch size.
* Centres are clipped so that the patch lies inside the volume. Clipping moves a centre by
  less than ``p // 2``, so the voxel it was drawn from is still inside its patch: every
  lesion patch contains lesion. Where the volume is smaller than the patch along an axis the
  centre is the middle of the volume (``s // 2``) and the reader pads (see :func:`patch_bounds`).
* Lesion centres are drawn **per connected component** (26-connectivity): the ``n_lesion``
  centres are split evenly over the components, so a 3-voxel lesion is sampled as often as a
  3000-voxel one. When ``n_lesion`` is smaller than the number of components, ``n_lesion``
  components are drawn without replacement, one centre each.
* Sampling is deterministic for a given ``seed`` (numpy ``default_rng``).

Example:
    >>> import numpy as np
    >>> label = np.zeros((20, 20, 20), np.uint8); label[8:11, 8:11, 8:11] = 1
    >>> fg = np.ones_like(label)
    >>> idx = build_patch_index(label, fg, (8, 8, 8), n_lesion=4, n_background=4, seed=0)
    >>> idx["lesion"].shape, idx["background"].shape, idx["lesion"].dtype
    ((4, 3), (4, 3), dtype('int32'))
    >>> bool(label[tuple(idx["lesion"].T)].all())
    True
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline import store as _store

PATCH_INDEX = "patch_index"
PATCH_INDEX_KEY = "lesionflow_patch_index"
KINDS = ("lesion", "background")


def _as_patch(patch_zyx: Sequence[int] | int) -> tuple[int, int, int]:
    if isinstance(patch_zyx, (int, np.integer)):
        patch_zyx = (int(patch_zyx),) * 3
    patch = tuple(int(p) for p in patch_zyx)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch_zyx must be 3 positive voxel counts (z, y, x), got {patch_zyx}")
    return patch  # type: ignore[return-value]


def clip_centres(centres: np.ndarray, shape_zyx: Sequence[int], patch_zyx: Sequence[int]) -> np.ndarray:
    """Clip ``(N, 3)`` centres so that each patch fits inside ``shape_zyx`` (voxels).

    Along an axis where the volume is smaller than the patch, the centre becomes ``s // 2``.
    Returns int32 ``(N, 3)``.
    """
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3).copy()
    for ax, (s, p) in enumerate(zip(shape_zyx, _as_patch(patch_zyx))):
        if s >= p:
            lo, hi = p // 2, s - p + p // 2
        else:
            lo = hi = s // 2
        np.clip(centres[:, ax], lo, hi, out=centres[:, ax])
    return centres.astype(np.int32)


def patch_bounds(centre: Sequence[int], shape_zyx: Sequence[int], patch_zyx: Sequence[int]) -> tuple[tuple[slice, ...], tuple[tuple[int, int], ...]]:
    """Where a patch centred at ``centre`` reads from a volume, and how much to pad.

    Returns ``(slices, pad)``: ``volume[slices]`` is the part of the patch that lies inside
    the volume and ``np.pad(part, pad)`` gives the full ``patch_zyx`` block (zero padding).
    """
    slices, pad = [], []
    for c, s, p in zip(centre, shape_zyx, _as_patch(patch_zyx)):
        start = int(c) - p // 2
        stop = start + p
        lo, hi = min(max(start, 0), int(s)), max(min(stop, int(s)), 0)
        if hi <= lo:  # the patch lies wholly outside the volume along this axis: nothing read, all padding
            slices.append(slice(0, 0))
            pad.append((p, 0))
            continue
        slices.append(slice(lo, hi))
        pad.append((lo - start, stop - hi))
    return tuple(slices), tuple(pad)


def _split_evenly(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` non-negative counts summing to ``n``, as equal as possible (remainder spread at random)."""
    counts = np.full(k, n // k, dtype=np.int64)
    rest = n - counts.sum()
    if rest:
        counts[rng.choice(k, size=rest, replace=False)] += 1
    return counts


def _sample_flat(flat: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if n <= 0 or flat.size == 0:
        return flat[:0]
    return flat[rng.choice(flat.size, size=n, replace=flat.size < n)]


def build_patch_index(
    label: np.ndarray | None,
    foreground: np.ndarray,
    patch_zyx: Sequence[int] | int,
    n_lesion: int = 512,
    n_background: int = 512,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Patch centres for class-balanced sampling.

    Args:
        label: lesion mask ``(Z, Y, X)`` (non-zero = lesion) or ``None`` (no lesion centres).
        foreground: head/brain mask ``(Z, Y, X)``; background centres are drawn from
            ``foreground & ~label`` (from all non-lesion voxels when that is empty).
        patch_zyx: patch size in voxels ``(z, y, x)`` (or one int for a cube).
        n_lesion: lesion centres to draw, split evenly over connected components.
        n_background: background centres to draw.
        seed: seed of the random generator; the same inputs and seed give the same index.

    Returns:
        ``{"lesion": int32 (N, 3), "background": int32 (M, 3)}``, centres in voxel ``(z, y, x)``,
        clipped so the patch fits (see the module docstring). ``N`` is 0 without lesions.
    """
    patch = _as_patch(patch_zyx)
    foreground = np.asarray(foreground) != 0
    shape = foreground.shape
    if foreground.ndim != 3:
        raise ValueError(f"foreground must be 3-D (Z, Y, X), got shape {shape}")
    rng = np.random.default_rng(seed)
    lesion = np.zeros(shape, bool) if label is None else np.asarray(label) != 0
    if lesion.shape != shape:
        raise ValueError(f"label shape {lesion.shape} differs from foreground shape {shape}")

    lesion_flat = np.empty(0, np.int64)
    if lesion.any() and n_lesion > 0:
        components, n_comp = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
        flat_all = np.flatnonzero(components)
        comp_of = components.reshape(-1)[flat_all]
        order = np.argsort(comp_of, kind="stable")
        flat_all, comp_of = flat_all[order], comp_of[order]
        starts = np.searchsorted(comp_of, np.arange(1, n_comp + 2))
        if n_lesion >= n_comp:
            per_comp = _split_evenly(int(n_lesion), n_comp, rng)
        else:
            per_comp = np.zeros(n_comp, np.int64)
            per_comp[rng.choice(n_comp, size=int(n_lesion), replace=False)] = 1
        picks = [_sample_flat(flat_all[starts[i] : starts[i + 1]], int(per_comp[i]), rng) for i in range(n_comp)]
        lesion_flat = np.concatenate(picks) if picks else lesion_flat
        lesion_flat = lesion_flat[rng.permutation(lesion_flat.size)]

    candidates = np.flatnonzero(foreground & ~lesion)
    if candidates.size == 0:  # empty foreground mask: fall back to every non-lesion voxel
        candidates = np.flatnonzero(~lesion)
    background_flat = _sample_flat(candidates, int(n_background), rng)

    def to_centres(flat: np.ndarray) -> np.ndarray:
        zyx = np.stack(np.unravel_index(flat, shape), axis=1) if flat.size else np.zeros((0, 3), np.int64)
        return clip_centres(zyx, shape, patch)

    return {"lesion": to_centres(lesion_flat), "background": to_centres(background_flat)}


def write_patch_index(
    root: str | Path,
    case_id: str,
    patch_zyx: Sequence[int] | int,
    n_lesion: int = 512,
    n_background: int = 512,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the patch index of a stored case and write it under ``cases/<id>/patch_index/``.

    Reads ``label`` (if present) and ``foreground`` of the case, calls :func:`build_patch_index`
    and writes both centre arrays with :func:`pipeline.store.write_case_array` (each atomic).
    Both arrays carry the same attributes (``attrs["lesionflow_patch_index"]``), including an
    ``index_id`` that :func:`read_patch_index` checks so a half-replaced index is detected.

    Returns:
        The attributes written: seed, patch_zyx, requested and actual counts, number of lesion
        components, lesion/foreground voxel counts, lesion fraction (lesion voxels / foreground
        voxels), created_at, index_id.
    """
    patch = _as_patch(patch_zyx)
    group = _store.open_case(root, case_id)
    foreground = np.asarray(_store.foreground_mask(group)[...])
    label_arr = _store.reference_label(group)
    label = np.asarray(label_arr[...]) if label_arr is not None else None
    index = build_patch_index(label, foreground, patch, n_lesion=n_lesion, n_background=n_background, seed=seed)

    lesion_mask = None if label is None else label != 0
    n_components = 0
    if lesion_mask is not None and lesion_mask.any():
        n_components = int(ndimage.label(lesion_mask, structure=np.ones((3, 3, 3), bool))[1])
    lesion_voxels = 0 if lesion_mask is None else int(lesion_mask.sum())
    foreground_voxels = int((foreground != 0).sum())
    attrs: dict[str, Any] = {
        "index_id": uuid.uuid4().hex,
        "seed": int(seed),
        "patch_zyx": list(patch),
        "n_lesion_requested": int(n_lesion),
        "n_background_requested": int(n_background),
        "n_lesion": int(index["lesion"].shape[0]),
        "n_background": int(index["background"].shape[0]),
        "n_lesion_components": n_components,
        "has_label": label is not None,
        "lesion_voxels": lesion_voxels,
        "foreground_voxels": foreground_voxels,
        "lesion_fraction": (lesion_voxels / foreground_voxels) if foreground_voxels else 0.0,
        "shape_zyx": list(foreground.shape),
        "centre_convention": "voxel (z, y, x); patch = [c - p//2, c - p//2 + p); clipped to fit, padded where volume < patch",
        "created_at": datetime.now(UTC).isoformat(),
    }
    for kind in KINDS:
        data = index[kind]
        _store.write_case_array(
            root, case_id, f"{PATCH_INDEX}/{kind}", data, chunk_zyx=(max(len(data), 1), 3), attrs={PATCH_INDEX_KEY: attrs}
        )
    return attrs


def indexable_cases(root: str | Path, channels: Sequence[str] | None = None) -> list[str]:
    """The labelled cases to index; with ``channels``, only those whose image holds all of them.

    The index itself does not depend on channels, so None keeps every labelled case (also one
    whose source lacked a store channel). ``channels`` are checked against the store's
    (:func:`pipeline.store.resolve_channels`): one the store does not have raises
    :class:`pipeline.store.StoreError` naming both lists.
    """
    wanted = set(_store.resolve_channels(root, channels)) if channels else set()
    cases = []
    for case_id in _store.list_cases(root):
        meta = _store.read_case_meta(root, case_id)
        if meta.has_label and wanted <= set(meta.channels):
            cases.append(case_id)
    return cases


def has_patch_index(root: str | Path, case_id: str) -> bool:
    """True when both centre arrays of the case exist."""
    return all(_store.has_node(root, f"{_store.CASES}/{case_id}/{PATCH_INDEX}/{kind}") for kind in KINDS)


def read_patch_index_attrs(root: str | Path, case_id: str) -> dict[str, Any]:
    """The attributes :func:`write_patch_index` stored (seed, patch size, counts, ...)."""
    group = _store.open_case(root, case_id)
    try:
        return dict(group[f"{PATCH_INDEX}/lesion"].attrs[PATCH_INDEX_KEY])
    except KeyError as exc:
        raise _store.StoreError(f"case {case_id}: no patch index; run `lesionflow prepare` first") from exc


def read_patch_index(root: str | Path, case_id: str) -> dict[str, np.ndarray]:
    """``{"lesion": int32 (N, 3), "background": int32 (M, 3)}`` centres of a stored case.

    Raises :class:`pipeline.store.StoreError` when the index is missing or its two arrays
    come from different builds.
    """
    group = _store.open_case(root, case_id)
    out: dict[str, np.ndarray] = {}
    ids = set()
    for kind in KINDS:
        key = f"{PATCH_INDEX}/{kind}"
        try:
            arr = group[key]
        except KeyError as exc:
            raise _store.StoreError(f"case {case_id}: no patch index ({key}); run `lesionflow prepare` first") from exc
        ids.add(arr.attrs.get(PATCH_INDEX_KEY, {}).get("index_id"))
        out[kind] = np.asarray(arr[...], dtype=np.int32).reshape(-1, 3)
    if len(ids) != 1:
        raise _store.StoreError(f"case {case_id}: lesion and background patch indices come from different builds; rebuild it")
    return out
