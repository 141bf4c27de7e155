"""The augmentation bank: K augmented samples per case, seeded, recorded, stored beside the case.

::

    cases/<case_id>/augment/          group; attributes["lesionflow_bank"] = AugmentBank (storage_schemas.models)
        image   int16 (K, C, pz, py, px)   one chunk per sample (1, C, pz, py, px), Blosc-LZ4 level 5;
                                           value x AugmentBank.scale = z-scored intensity (float16: scale 1)
        label   uint8 (K, pz, py, px)      one chunk per sample, Blosc-zstd + bit shuffle; all-zero chunks not written

A sample is a patch-sized crop around a class-balanced centre after the costly transforms of
:mod:`pipeline.prepare.augment` (rotation, scaling, optional elastic deformation, low-resolution
simulation), so reading one sample is reading one chunk. ``lesion_share`` of the K samples are
centred on a lesion voxel (drawn per connected component, :func:`~pipeline.prepare.patches.build_patch_index`),
the rest on foreground background. A 2-D bank (``BankConfig.spatial_dims = 2``) holds axial slices,
``pz = 1``, transformed in their plane, its background samples on slices without lesion (see
:mod:`pipeline.prepare.augment`); same layout, record and contract. The group is written whole through
:func:`pipeline.store.write_case_group` (staging and rename; on an object store, marker last),
so a reader sees the old bank or the new one.

Reproducible: sample ``k`` of a case is a pure function of (the case's voxels, the
:class:`~pipeline.prepare.augment.BankConfig`, :func:`~pipeline.prepare.augment.sample_seed` of
(source fingerprint, config hash, ``k``)); its seed and drawn parameters are in the attributes and
:func:`regenerate_sample` rebuilds it bit for bit. Incremental: :func:`bank_status` says whether a
case's bank matches the config and the case (source fingerprint and pipeline config hash); the
flow ``prepare`` builds only the missing or stale ones.

Example:
    >>> import tempfile
    >>> from tests.store_factory import make_store
    >>> root = tempfile.mkdtemp() + "/s.zarr"
    >>> case = make_store(root, n_cases=1, shape_zyx=(24, 28, 26))[0]
    >>> cfg = BankConfig(samples_per_case=4, patch_zyx=(16, 16, 16))
    >>> bank_status(root, case, cfg)
    'missing'
    >>> info = build_bank(root, case, cfg)
    >>> info["n_samples"], bank_status(root, case, cfg), bank_status(root, case, cfg.model_copy(update={"seed": 1}))
    (4, 'up-to-date', 'stale-config')
    >>> image, label = read_sample(root, case, 0)
    >>> image.shape, image.dtype, label.shape
    ((3, 16, 16, 16), dtype('float32'), (16, 16, 16))
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline import __version__
from pipeline import store as _store
from pipeline.prepare.augment import (
    BankConfig,
    SampleParams,
    augment_patch,
    crop,
    crop_matrix,
    draw_params,
    int16_scale,
    is_plain,
    quantize,
    sample_seed,
)
from pipeline.prepare.patches import build_patch_index
from storage_schemas.models import AugmentBank, BankSample, CaseMeta

BANK = "augment"
BANK_KEY = "lesionflow_bank"
IMAGE_CODEC = "blosc-lz4-5"
"""Blosc with LZ4 at level 5, no shuffle (banks before 2026-11-30: Zstandard level 1; both read alike).

Measured on one core (2026-11-30, ``benchmarks/results/2026-11-30-bench_codecs.json``), eight real
MNI samples (4 x 112 x 160 x 128 int16, 18.4 MB raw): LZ4 8.0 MB, encoded in 8 ms, decoded in 2.7 ms;
Zstandard level 1 6.5 MB, 19 ms and 11 ms (a phantom sample: 4.6 against 3.8 MB, decoded in 1.0
against 5.4 ms). A sample is decoded every time training reads it, and z-scored, finely quantised
intensities leave little for either codec to find: 23 % more bytes buy a read 4x faster.
"""

Status = Literal["missing", "stale-config", "stale-case", "unreadable", "up-to-date"]


def _image_codecs() -> list[Any]:
    from zarr.codecs import BloscCodec, BloscShuffle

    return [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.noshuffle)]


def _label_codecs() -> list[Any]:
    from zarr.codecs import BloscCodec, BloscShuffle

    return [BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)]


def bank_relpath(case_id: str) -> str:
    """Store-relative path of a case's bank group."""
    return f"{_store.CASES}/{case_id}/{BANK}"


def has_bank(root: str | Path, case_id: str) -> bool:
    """True when the case has a committed bank group."""
    return _store.has_node(root, bank_relpath(case_id))


def read_bank(root: str | Path, case_id: str) -> AugmentBank | None:
    """The bank's record (config, hashes, per-sample seeds and parameters), or None without a bank.

    Raises :class:`pipeline.store.StoreError` when the group exists but its record does not validate.
    """
    if not has_bank(root, case_id):
        return None
    group = _store.open_case(root, case_id)[BANK]
    try:
        return AugmentBank.model_validate(group.attrs[BANK_KEY])
    except Exception as exc:  # a missing key or an invalid record
        raise _store.StoreError(f"case {case_id}: unreadable augmentation bank record ({exc}); rebuild it with `lesionflow prepare`") from exc


def bank_status(root: str | Path, case_id: str, cfg: BankConfig, meta: CaseMeta | None = None) -> Status:
    """``up-to-date``, ``missing``, ``stale-config`` (another BankConfig), ``stale-case`` (the case was
    re-ingested from other sources or with another pipeline config) or ``unreadable``."""
    try:
        bank = read_bank(root, case_id)
    except _store.StoreError:
        return "unreadable"
    if bank is None:
        return "missing"
    if bank.bank_config_hash != cfg.config_hash():
        return "stale-config"
    meta = meta or _store.read_case_meta(root, case_id)
    if bank.source_fingerprint != meta.source_fingerprint or bank.case_config_hash != meta.config_hash:
        return "stale-case"
    return "up-to-date"


# ----------------------------------------------------------------------------- drawing
def plan_samples(label: np.ndarray | None, foreground: np.ndarray, cfg: BankConfig, source_fingerprint: str,
                 n_channels: int) -> list[dict[str, Any]]:
    """Seeds, kinds, centres and parameters of every sample of a case (no voxels touched but the masks).

    ``round(K * lesion_share)`` samples are centred on lesion voxels when the case has lesions,
    the rest on foreground background voxels (see :func:`~pipeline.prepare.patches.build_patch_index`);
    in a 2-D bank with ``background_slices="lesion_free"`` only on slices without lesion (when the case has
    any; on foreground voxels of them when they hold any), so the samples are lesion and lesion-free slices.
    """
    k_total = cfg.samples_per_case
    has_lesion = label is not None and bool(np.any(label))
    k_lesion = int(round(k_total * cfg.lesion_share)) if has_lesion else 0
    config_hash = cfg.config_hash()
    if cfg.spatial_dims == 2 and cfg.background_slices == "lesion_free" and has_lesion:
        foreground = background_slice_mask(label, foreground)  # type: ignore[arg-type]
    index = build_patch_index(label, foreground, cfg.patch_zyx, n_lesion=k_lesion, n_background=k_total - k_lesion,
                              seed=sample_seed(source_fingerprint, config_hash, -1))
    centres = [("lesion", c) for c in index["lesion"]] + [("background", c) for c in index["background"]]
    plans = []
    for k, (kind, centre) in enumerate(centres):
        seed = sample_seed(source_fingerprint, config_hash, k)
        params = draw_params(np.random.default_rng(seed), cfg.spatial, n_channels, spatial_dims=cfg.spatial_dims)
        plans.append({"index": k, "seed": seed, "kind": kind, "centre_zyx": tuple(int(c) for c in centre), "params": params})
    return plans


def background_slice_mask(label: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Where a 2-D bank's background samples are centred: ``foreground`` on the slices (z) without lesion;
    every voxel of those slices when they hold no foreground; ``foreground`` when every slice has lesion.

    >>> label = np.zeros((3, 4, 4), np.uint8); label[1, 2, 2] = 1
    >>> background_slice_mask(label, np.ones_like(label)).any(axis=(1, 2)).tolist()
    [True, False, True]
    """
    free = ~(np.asarray(label) != 0).reshape(label.shape[0], -1).any(axis=1)
    if not free.any():
        return foreground
    mask = (np.asarray(foreground) != 0) & free[:, None, None]
    return mask if mask.any() else np.broadcast_to(free[:, None, None], label.shape).copy()


def render_sample(image: np.ndarray, label: np.ndarray | None, plan: dict[str, Any], cfg: BankConfig,
                  scale: float, stored_image: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, BankSample]:
    """One planned sample: ``(stored image (C, p...), label uint8 (p...), its record)``.

    ``stored_image``: ``image`` already in the stored type (:func:`quantize` is elementwise and maps 0 to 0),
    from which a sample that is only cropped (:func:`~pipeline.prepare.augment.is_plain`, about half of
    them with nnU-Net's probabilities) is cut: the same bytes without a float copy and its quantisation.
    """
    params: SampleParams = plan["params"]
    if stored_image is not None and is_plain(params):
        centre = plan["centre_zyx"]
        stored = crop(stored_image, centre, cfg.patch_zyx)
        lab = np.zeros(cfg.patch_zyx, np.uint8) if label is None else crop(label, centre, cfg.patch_zyx).astype(np.uint8, copy=False)
        return stored, lab, _record(plan, params, crop_matrix(centre, cfg.patch_zyx), lab)
    out, lab, matrix = augment_patch(image, label, plan["centre_zyx"], cfg.patch_zyx, params)
    if lab is None:
        lab = np.zeros(cfg.patch_zyx, np.uint8)
    return quantize(out, cfg.dtype, scale), lab, _record(plan, params, matrix, lab)


def _record(plan: dict[str, Any], params: SampleParams, matrix: np.ndarray, lab: np.ndarray) -> BankSample:
    return BankSample(
        index=plan["index"], seed=plan["seed"], kind=plan["kind"], centre_zyx=plan["centre_zyx"],
        rotation_rad=params.rotation_rad, scale=params.scale, elastic=params.elastic,
        lowres_zoom=list(params.lowres_zoom), matrix_zyx=tuple(float(v) for v in matrix.reshape(-1)),
        lesion_voxels=int(np.count_nonzero(lab)),
    )


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _case_arrays(root: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[str]]:
    group = _store.open_case(root, case_id)
    image = np.asarray(group["image"][...], dtype=np.float32)
    label_arr, fg_arr = _store.reference_label(group), _store.foreground_mask(group)
    label = np.asarray(label_arr[...]) if label_arr is not None else None
    foreground = np.asarray(fg_arr[...])
    return image, label, foreground, list(group["image"].attrs.get("channels", []))


def _scale_for(image: np.ndarray, cfg: BankConfig) -> float:
    return 1.0 if cfg.dtype == "float16" else int16_scale(float(np.max(np.abs(image))) if image.size else 0.0)


# ----------------------------------------------------------------------------- building
def build_bank(root: str | Path, case_id: str, cfg: BankConfig, threads: int | None = 1) -> dict[str, Any]:
    """Build (or rebuild) the bank of one case and commit it; returns a summary row.

    Args:
        root: the store.
        case_id: a committed case with a label (without one, every sample is background).
        cfg: the bank configuration.
        threads: torch threads while resampling (1: one core per Dask worker); None leaves it.

    Returns:
        ``{case_id, status: "built", n_samples, n_lesion, image_bytes, label_bytes, bytes_per_sample,
        seconds, bank_config_hash}``; sizes are compressed bytes.
    """
    t0 = time.perf_counter()
    meta = _store.read_case_meta(root, case_id)
    image, label, foreground, channels = _case_arrays(root, case_id)
    scale = _scale_for(image, cfg)
    plans = plan_samples(label, foreground, cfg, meta.source_fingerprint, image.shape[0])
    k_total, n_channels = len(plans), image.shape[0]
    patch = tuple(cfg.patch_zyx)
    out: dict[str, Any] = {}

    def build(group: Any) -> None:
        img_arr = group.create_array("image", shape=(k_total, n_channels, *patch), chunks=(1, n_channels, *patch),
                                     dtype=np.dtype(cfg.dtype), compressors=_image_codecs(), fill_value=0)
        lab_arr = group.create_array("label", shape=(k_total, *patch), chunks=(1, *patch), dtype=np.uint8,
                                     compressors=_label_codecs(), fill_value=0, config={"write_empty_chunks": False})
        records = []
        # the plain crops are cut from the volume quantised once
        stored_image = quantize(image, cfg.dtype, scale) if any(is_plain(p["params"]) for p in plans) else None
        with _torch_threads(threads):
            for plan in plans:
                q, lab, record = render_sample(image, label, plan, cfg, scale, stored_image)
                img_arr[plan["index"]] = q
                lab_arr[plan["index"]] = lab
                records.append(record)
        image_bytes, label_bytes = int(img_arr.nbytes_stored()), int(lab_arr.nbytes_stored())
        bank = AugmentBank(
            bank_id=uuid.uuid4().hex, case_id=case_id, bank_config=cfg.model_dump(mode="json"), bank_config_hash=cfg.config_hash(),
            source_fingerprint=meta.source_fingerprint, case_config_hash=meta.config_hash, channels=channels, patch_zyx=patch,
            n_samples=k_total, n_lesion=sum(r.kind == "lesion" for r in records), dtype=cfg.dtype, scale=scale,
            compressor=IMAGE_CODEC, image_bytes=image_bytes, label_bytes=label_bytes,
            build_seconds=round(time.perf_counter() - t0, 3), pipeline_version=__version__, samples=records,
        )
        group.attrs[BANK_KEY] = bank.model_dump(mode="json")  # last: the record describes a complete group
        out["bank"] = bank

    _store.write_case_group(root, case_id, BANK, build)
    bank: AugmentBank = out["bank"]
    return {
        "case_id": case_id, "status": "built", "n_samples": bank.n_samples, "n_lesion": bank.n_lesion,
        "image_bytes": bank.image_bytes, "label_bytes": bank.label_bytes,
        "bytes_per_sample": round(bank.bytes_stored / max(bank.n_samples, 1)), "seconds": round(time.perf_counter() - t0, 3),
        "bank_config_hash": bank.bank_config_hash,
    }


def ensure_bank(root: str | Path, case_id: str, cfg: BankConfig, force: bool = False, threads: int | None = 1) -> dict[str, Any]:
    """Build the case's bank unless it is up to date (or ``force``); returns a summary row with ``status``
    ``built`` (and ``was``: what it replaced) or ``up-to-date``."""
    status = bank_status(root, case_id, cfg)
    if status == "up-to-date" and not force:
        bank = read_bank(root, case_id)
        assert bank is not None
        return {"case_id": case_id, "status": "up-to-date", "n_samples": bank.n_samples, "n_lesion": bank.n_lesion,
                "image_bytes": bank.image_bytes, "label_bytes": bank.label_bytes,
                "bytes_per_sample": round(bank.bytes_stored / max(bank.n_samples, 1)), "seconds": 0.0,
                "bank_config_hash": bank.bank_config_hash}
    return {**build_bank(root, case_id, cfg, threads=threads), "was": status}


def plan_banks(root: str | Path, cfg: BankConfig, case_ids: Sequence[str], force: bool = False) -> tuple[list[str], list[str]]:
    """``(to build, up to date)`` among ``case_ids``: one read of each case's bank record and metadata."""
    todo, fresh = [], []
    for case_id in case_ids:
        (fresh if not force and bank_status(root, case_id, cfg) == "up-to-date" else todo).append(case_id)
    return todo, fresh


# ----------------------------------------------------------------------------- reading
def open_bank(root: str | Path, case_id: str) -> tuple[Any, Any, AugmentBank]:
    """``(image array, label array, record)`` of a case's bank (Zarr arrays: index them per sample)."""
    bank = read_bank(root, case_id)
    if bank is None:
        raise _store.StoreError(f"case {case_id}: no augmentation bank; run `lesionflow prepare`")
    group = _store.open_case(root, case_id)[BANK]
    return group["image"], group["label"], bank


def dequantize(stored: np.ndarray, scale: float) -> np.ndarray:
    """Stored sample values → z-scored float32 intensities."""
    out = stored.astype(np.float32)
    if scale != 1.0:
        out *= np.float32(scale)
    return out


def read_sample(root: str | Path, case_id: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of a case's bank: ``(image float32 (C, p...), label uint8 (p...))``."""
    image_arr, label_arr, bank = open_bank(root, case_id)
    return dequantize(np.asarray(image_arr[int(index)]), bank.scale), np.asarray(label_arr[int(index)])


def regenerate_sample(root: str | Path, case_id: str, index: int) -> tuple[np.ndarray, np.ndarray, BankSample]:
    """Rebuild sample ``index`` from the case and the bank's recorded config alone (stored type, not read from the bank).

    Equal, byte for byte, to the stored sample while the bank is up to date.
    """
    bank = read_bank(root, case_id)
    if bank is None:
        raise _store.StoreError(f"case {case_id}: no augmentation bank; run `lesionflow prepare`")
    cfg = BankConfig.model_validate(bank.bank_config)
    meta = _store.read_case_meta(root, case_id)
    image, label, foreground, _ = _case_arrays(root, case_id)
    plans = plan_samples(label, foreground, cfg, meta.source_fingerprint, image.shape[0])
    with _torch_threads(1):
        return render_sample(image, label, plans[int(index)], cfg, _scale_for(image, cfg))


def bank_table(root: str | Path, case_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per case with a bank: samples, lesion samples, patch, dtype, compressed MB and bytes per sample."""
    rows = []
    for case_id in case_ids if case_ids is not None else _store.list_cases(root):
        try:
            bank = read_bank(root, case_id)
        except _store.StoreError:
            rows.append({"case_id": case_id, "status": "unreadable"})
            continue
        if bank is None:
            continue
        rows.append({"case_id": case_id, "n_samples": bank.n_samples, "n_lesion": bank.n_lesion, "patch_zyx": list(bank.patch_zyx),
                     "dtype": bank.dtype, "mb": round(bank.bytes_stored / 1e6, 2),
                     "bytes_per_sample": round(bank.bytes_stored / max(bank.n_samples, 1)),
                     "bank_config_hash": bank.bank_config_hash[:12], "build_seconds": bank.build_seconds})
    return rows
