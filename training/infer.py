"""Whole-volume inference: sliding-window prediction of lesion masks, written into the store.

:func:`predict_case` runs MONAI's ``sliding_window_inference`` (Gaussian blending of softmax
probabilities, windows of the training patch size by default) over a case's image and returns
the argmax mask. :func:`score_cases` does that for many cases with one model and stores each
mask as the case's NGFF label ``cases/<id>/labels/prediction-<model_version>/0`` (uint8 ``(Z, Y, X)``, 1 = lesion),
atomically, skipping cases already scored by that model unless ``overwrite=True``.

Example:
    >>> results = score_cases("store", "latest")  # doctest: +SKIP
    >>> results[0]["mask_path"]  # doctest: +SKIP
    'cases/sub-…_ses-…/labels/prediction-unet3d-20250101T120000-1a2b3c4d/0'
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import store as _store
from training.checkpoint import load_model, resolve_model_version
from training.data import check_case

log = logging.getLogger("lesionflow.training")

PREDICTION_KEY = "lesionflow_prediction"


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mask_path(case_id: str, model_version: str) -> str:
    """Store-relative path of a case's predicted mask (see :func:`pipeline.store.prediction_path`)."""
    return _store.prediction_path(case_id, model_version)


def has_prediction(store_root: str | Path, case_id: str, model_version: str) -> bool:
    """True when the case already holds this model's mask (either store layout)."""
    return _store.has_prediction(store_root, case_id, model_version)


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


@torch.inference_mode()
def predict_array(
    model: torch.nn.Module,
    image: np.ndarray,
    roi_zyx: Sequence[int],
    device: str | torch.device | None = None,
    overlap: float = 0.25,
    sw_batch_size: int = 2,
) -> np.ndarray:
    """Lesion probability ``(Z, Y, X)`` float32 of an image ``(C, Z, Y, X)`` (sliding window, Gaussian blending).

    The whole image stays on the CPU; only windows travel to ``device``.
    """
    from monai.inferers import sliding_window_inference

    device = torch.device(device) if device is not None else default_device()
    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        with _autocast(device):
            logits = model(window)
        return torch.softmax(logits.float(), dim=1)

    probs = sliding_window_inference(
        x,
        roi_size=tuple(int(r) for r in roi_zyx),
        sw_batch_size=int(sw_batch_size),
        predictor=predictor,
        overlap=float(overlap),
        mode="gaussian",
        sw_device=device,
        device=torch.device("cpu"),
    )
    return probs[0, 1].float().numpy()


def predict_probability(
    model: torch.nn.Module,
    info: dict[str, Any],
    store_root: str | Path,
    case_id: str,
    device: str | torch.device | None = None,
    roi_zyx: Sequence[int] | None = None,
    overlap: float = 0.25,
    sw_batch_size: int | None = None,
    restrict_to_foreground: bool = True,
) -> np.ndarray:
    """Lesion probability of a stored case: float32 ``(Z, Y, X)`` in [0, 1], 0 outside the foreground
    when ``restrict_to_foreground``. Arguments as :func:`predict_case`."""
    channels = list(info["channels"])
    channel_index, reason = check_case(store_root, case_id, channels, require_label=False)
    if channel_index is None:
        raise _store.StoreError(f"case {case_id}: cannot score with {info.get('model_version')}: {reason}")
    group = _store.open_case(store_root, case_id)
    image_arr = group["image"]
    shape = tuple(int(s) for s in image_arr.shape[1:])
    fg_arr = _store.foreground_mask(group) if restrict_to_foreground else None
    foreground = np.asarray(fg_arr[...]) != 0 if fg_arr is not None else None
    box = foreground_box(foreground, MARGIN) if foreground is not None else tuple(slice(0, n) for n in shape)
    image = np.stack([np.asarray(image_arr[(i, *box)], dtype=np.float32) for i in channel_index])
    roi = tuple(int(r) for r in (roi_zyx or info.get("patch_zyx") or (48, 48, 48)))
    if sw_batch_size is None:
        sw_batch_size = 16 if roi[0] == 1 else 2
    device = torch.device(device) if device is not None else next(model.parameters()).device
    prob = np.zeros(shape, np.float32)
    prob[box] = predict_array(model, image, roi, device=device, overlap=overlap, sw_batch_size=sw_batch_size)
    if foreground is not None:
        prob *= foreground
    return prob


def predict_case(
    model: torch.nn.Module,
    info: dict[str, Any],
    store_root: str | Path,
    case_id: str,
    device: str | torch.device | None = None,
    roi_zyx: Sequence[int] | None = None,
    overlap: float = 0.25,
    sw_batch_size: int | None = None,
    restrict_to_foreground: bool = True,
) -> np.ndarray:
    """Predicted lesion mask of a stored case: uint8 ``(Z, Y, X)``, 1 = lesion.

    Args:
        model, info: from :func:`training.checkpoint.load_model` (``info`` gives the channels,
            in order, and the training patch size; ``(1, y, x)`` for a 2-D network).
        roi_zyx: sliding-window size in voxels; defaults to the training patch size.
        overlap: fraction of window overlap (0–1).
        sw_batch_size: windows per forward pass; default 2, or 16 for 2-D slices.
        restrict_to_foreground: predict only inside the bounding box of the case's ``foreground``
            (head/brain) mask plus :data:`MARGIN` voxels, and zero the mask outside the foreground
            (a skull-stripped 182x218x182 MNI brain is a 125x156x125 box: 2.5x fewer voxels to predict).

    Raises:
        pipeline.store.StoreError: the case is missing or lacks a channel the model needs.
    """
    prob = predict_probability(model, info, store_root, case_id, device=device, roi_zyx=roi_zyx, overlap=overlap,
                               sw_batch_size=sw_batch_size, restrict_to_foreground=restrict_to_foreground)
    return (prob > 0.5).astype(np.uint8)  # 2 classes: argmax == probability of lesion > 0.5


MARGIN = 4
"""Voxels kept around the foreground's bounding box when predicting."""


def foreground_box(foreground: np.ndarray, margin: int = MARGIN) -> tuple[slice, ...]:
    """The bounding box (slices) of a mask's non-zero voxels grown by ``margin`` voxels and clipped to
    the array; the whole array when the mask is empty."""
    if not foreground.any():
        return tuple(slice(0, n) for n in foreground.shape)
    out = []
    for axis, n in enumerate(foreground.shape):
        hit = np.flatnonzero(foreground.any(axis=tuple(a for a in range(foreground.ndim) if a != axis)))
        out.append(slice(max(0, int(hit[0]) - margin), min(n, int(hit[-1]) + 1 + margin)))
    return tuple(out)


def score_cases(
    store_root: str | Path,
    model_dir_or_version: str | Path,
    case_ids: Sequence[str] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    roi_zyx: Sequence[int] | None = None,
    overlap: float = 0.25,
    sw_batch_size: int | None = None,
    restrict_to_foreground: bool = True,
    cache_model: bool = False,
) -> list[dict[str, Any]]:
    """Predict and store a lesion mask for each case with one model.

    Args:
        model_dir_or_version: a ``model_version`` in ``<store>/models``, ``"latest"``, or a path
            to a model directory / ``model.pt`` anywhere (re-scoring an archive with a new model).
        case_ids: cases to score; default every case in the store.
        progress: called with a dict after each case (``event="score"``, ``case_id``, ``index``,
            ``total``, ``status``, ``seconds``).
        overwrite: re-score cases that already hold this model's prediction.
        cache_model: keep the loaded model in this process for the next call with the same
            model folder and device (a Dask worker scoring batch after batch).

    Returns:
        One dict per case: ``case_id``, ``mask_path`` (store-relative; ``None`` when not scored),
        ``status`` (``"scored"``, ``"exists"`` or ``"skipped"``), ``model_version``,
        ``lesion_voxels`` (when scored) and ``reason`` (when skipped).
        Cases lacking a channel the model needs are skipped with a reason, not raised.
    """
    dev = torch.device(device) if device is not None else default_device()
    if cache_model:
        model, info = _cached_model(str(model_dir_or_version), str(store_root), str(dev))
    else:
        model, info = load_model(model_dir_or_version, store_root=store_root, device=dev)
    version = info["model_version"]
    roi = tuple(int(r) for r in (roi_zyx or info.get("patch_zyx") or (48, 48, 48)))
    ids = list(case_ids) if case_ids is not None else _store.list_cases(store_root)
    results: list[dict[str, Any]] = []
    for i, case_id in enumerate(ids):
        t0 = time.perf_counter()
        rel = mask_path(case_id, version)
        if not overwrite and has_prediction(store_root, case_id, version):
            row: dict[str, Any] = {"case_id": case_id, "mask_path": rel, "status": "exists", "model_version": version}
        else:
            try:
                mask = predict_case(model, info, store_root, case_id, device=dev, roi_zyx=roi, overlap=overlap, sw_batch_size=sw_batch_size, restrict_to_foreground=restrict_to_foreground)
            except _store.StoreError as exc:
                log.warning("score: skipping %s: %s", case_id, exc)
                row = {"case_id": case_id, "mask_path": None, "status": "skipped", "model_version": version, "reason": str(exc)}
            else:
                attrs = {
                    PREDICTION_KEY: {
                        "model_version": version,
                        "channels": list(info["channels"]),
                        "roi_zyx": list(roi),
                        "overlap": float(overlap),
                        "blending": "gaussian",
                        "restrict_to_foreground": bool(restrict_to_foreground),
                        "lesion_voxels": int(mask.sum()),
                        "created_at": datetime.now(UTC).isoformat(),
                    }
                }
                _store.write_label(store_root, case_id, _store.prediction_label(version), mask, attrs=attrs)
                row = {"case_id": case_id, "mask_path": rel, "status": "scored", "model_version": version, "lesion_voxels": int(mask.sum())}
        row["seconds"] = round(time.perf_counter() - t0, 3)
        results.append(row)
        if progress is not None:
            progress({"event": "score", "index": i + 1, "total": len(ids), **row})
    return results


@functools.lru_cache(maxsize=2)
def _cached_model(model: str, store_root: str, device: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    return load_model(model, store_root=store_root, device=torch.device(device))


def score_batch(
    store_root: str | Path,
    model_dir: str | Path,
    case_ids: Sequence[str],
    overwrite: bool = False,
    connectivity: int = 26,
    min_lesion_mm3: float = 0.0,
    threads: int | None = 1,
    device: str | None = None,
) -> dict[str, Any]:
    """Score ``case_ids`` with one model and measure their masks: the unit of work of a re-scoring run
    (one Dask task). Returns ``results`` (:func:`score_cases`' rows), ``case_rows`` and
    ``lesion_rows`` (the lesion tables' rows of every case that holds the model's mask, newly
    scored or found already there), for the caller to append as table parts.

    ``threads``: torch CPU threads in this process (one per Dask worker: workers, not threads,
    are what scales); None leaves torch's setting. The model stays loaded in the process for the
    next batch. ``connectivity`` (6/18/26) and ``min_lesion_mm3`` (mm³) shape the lesion rows.
    """
    from pipeline.lesions.tables import lesion_rows

    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(int(threads))
    results = score_cases(store_root, model_dir, case_ids=case_ids, overwrite=overwrite, device=device, cache_model=True)
    measured = [r["case_id"] for r in results if r["status"] in ("scored", "exists")]
    version = results[0]["model_version"] if results else resolve_model_version(model_dir, store_root)
    case_rows, rows = lesion_rows(store_root, version, measured, connectivity, min_lesion_mm3)
    return {"results": results, "case_rows": case_rows, "lesion_rows": rows}
