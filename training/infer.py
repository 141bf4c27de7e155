"""Whole-volume inference: sliding-window prediction of lesion masks, written into the store.

:func:`predict_case` runs MONAI's ``sliding_window_inference`` (Gaussian blending of softmax
probabilities, windows of the training patch size by default) over a case's image and returns
the argmax mask. :func:`score_cases` does that for many cases with one model and stores each
mask as the case's NGFF label ``cases/<id>/labels/prediction-<model_version>/0`` (uint8 ``(Z, Y, X)``, 1 = lesion),
atomically, skipping cases already scored by that model unless ``overwrite=True``.

On one device (a GPU above all) :func:`score_cases` keeps it fed with a prefetching reader: the
next case is read (:func:`load_case`) in a reader thread and the previous case's mask written in a
writer thread while a case is inferred, at most 3 cases in flight (:func:`default_prefetch` says
where it is on; ``prefetch=False`` or ``$LESIONFLOW_SCORE_PREFETCH=0`` turn it off). The outputs
are those of the sequential path, byte for byte.

Example:
    >>> results = score_cases("store", "latest")  # doctest: +SKIP
    >>> results[0]["mask_path"]  # doctest: +SKIP
    'cases/sub-…_ses-…/labels/prediction-unet3d-20250101T120000-1a2b3c4d/0'
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
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


@dataclass
class LoadedCase:
    """A case read for scoring (:func:`load_case`): the channels ``image`` ``(C, z, y, x)`` float32 inside
    ``box`` (slices of the case grid ``shape`` ``(Z, Y, X)``) and the ``foreground`` mask (None when
    not restricting to it)."""

    case_id: str
    image: np.ndarray | None
    box: tuple[slice, ...]
    shape: tuple[int, ...]
    foreground: np.ndarray | None


def load_case(info: dict[str, Any], store_root: str | Path, case_id: str, restrict_to_foreground: bool = True) -> LoadedCase:
    """Read what scoring a stored case needs: the model's channels, in its order, within the foreground's
    bounding box plus :data:`MARGIN` voxels (the whole grid without ``restrict_to_foreground``).

    Raises:
        pipeline.store.StoreError: the case is missing or lacks a channel the model needs.
    """
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
    return LoadedCase(case_id, image, box, shape, foreground)


def _roi(info: dict[str, Any], roi_zyx: Sequence[int] | None) -> tuple[int, ...]:
    return tuple(int(r) for r in (roi_zyx or info.get("patch_zyx") or (48, 48, 48)))


def infer_loaded(model: torch.nn.Module, info: dict[str, Any], case: LoadedCase, device: str | torch.device | None = None,
                 roi_zyx: Sequence[int] | None = None, overlap: float = 0.25, sw_batch_size: int | None = None) -> np.ndarray:
    """Lesion probability inside ``case.box`` (float32, the box's shape) of a :func:`load_case` result."""
    roi = _roi(info, roi_zyx)
    if sw_batch_size is None:
        sw_batch_size = 16 if roi[0] == 1 else 2
    device = torch.device(device) if device is not None else next(model.parameters()).device
    return predict_array(model, case.image, roi, device=device, overlap=overlap, sw_batch_size=sw_batch_size)


def place_probability(case: LoadedCase, prob_box: np.ndarray) -> np.ndarray:
    """The probability on the whole case grid: ``prob_box`` inside the box, 0 outside it and outside the foreground."""
    prob = np.zeros(case.shape, np.float32)
    prob[case.box] = prob_box
    if case.foreground is not None:
        prob *= case.foreground
    return prob


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
    case = load_case(info, store_root, case_id, restrict_to_foreground)
    return place_probability(case, infer_loaded(model, info, case, device, roi_zyx, overlap, sw_batch_size))


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


PREFETCH_ENV = "LESIONFLOW_SCORE_PREFETCH"
"""Environment variable: ``0`` turns the prefetching reader off wherever :func:`score_cases` is not
told (``prefetch=None``), ``1`` turns it on wherever (see :func:`default_prefetch`)."""

def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


EVENTS = ("read_start", "read_end", "infer_start", "infer_end", "write_start", "write_end")
"""What the ``events`` hook of :func:`score_cases` is told, with the case id, by the thread doing it."""


def default_prefetch(device: str | torch.device) -> bool:
    """Whether :func:`score_cases` overlaps reading, inference and writing on ``device`` when not told.

    ``$LESIONFLOW_SCORE_PREFETCH`` (``0``/``1``) when set; else always on CUDA (the GPU infers, the
    cores read and write); on the CPU only when torch leaves a core free for the reader and the
    writer (``torch.get_num_threads()`` below the cores this process may use). Measured on 2 shared
    cores (``benchmarks/README.md``, ``bench_score.py --prefetch``): with 1 torch thread 0.93-1.26x
    the sequential cases/hour over three runs (7 of 9 pairs faster, median pair 1.11x); with torch
    on both cores inference is 95 % of the time (at most 1.06x to win) and the extra threads only
    compete with it, so it stays off there. Not measured on a GPU.
    """
    env = os.environ.get(PREFETCH_ENV, "").strip().lower()
    if env:
        return env not in ("0", "false", "no", "off")
    if torch.device(device).type == "cuda":
        return True
    return torch.get_num_threads() < _cores()


@dataclass
class _Read:
    """What the reading stage gives the inference: a finished row (``exists``/``skipped``) or a case."""

    row: dict[str, Any] | None = None
    case: LoadedCase | None = None
    seconds: float = 0.0


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
    prefetch: bool | None = None,
    events: Callable[[str, str], None] | None = None,
) -> list[dict[str, Any]]:
    """Predict and store a lesion mask for each case with one model.

    Each case goes through three stages: *read* (is it scored already? its channels within the
    foreground's box, :func:`load_case`), *infer* (sliding window, :func:`infer_loaded`) and *write*
    (the mask, atomically, with its provenance). With ``prefetch`` they overlap: while case n is
    inferred in the calling thread, case n+1 is read in a reader thread and case n-1 written in a
    writer thread (one of each, one task at a time: at most 3 cases in flight, so memory holds at
    most one case's channels waiting, one being inferred and one probability map being written).
    Outputs, rows and their order are the same either way; only ``seconds`` differs in meaning.

    Args:
        model_dir_or_version: a ``model_version`` in ``<store>/models``, ``"latest"``, or a path
            to a model directory / ``model.pt`` anywhere (re-scoring an archive with a new model).
        case_ids: cases to score; default every case in the store.
        progress: called with a dict after each case, in case order, from the calling thread
            (``event="score"``, ``case_id``, ``index``, ``total``, ``status``, ``seconds``).
        overwrite: re-score cases that already hold this model's prediction.
        cache_model: keep the loaded model in this process for the next call with the same
            model folder and device (a Dask worker scoring batch after batch).
        prefetch: overlap reading, inference and writing (above); None: :func:`default_prefetch`
            (on CUDA; on the CPU when torch leaves a core free; ``$LESIONFLOW_SCORE_PREFETCH=0`` turns it off).
        events: called ``events(what, case_id)`` at each stage's start and end (:data:`EVENTS`), from
            the thread doing it: a hook for tests and profiling (it must not block for long).

    Returns:
        One dict per case, in the order of ``case_ids``: ``case_id``, ``mask_path`` (store-relative;
        ``None`` when not scored), ``status`` (``"scored"``, ``"exists"`` or ``"skipped"``),
        ``model_version``, ``lesion_voxels`` (when scored), ``reason`` (when skipped) and
        ``seconds`` (the case's wall time; with ``prefetch``, the sum of its three stages).
        A case that is missing or lacks a channel the model needs, or that changed so that its mask
        cannot be written (:class:`pipeline.store.StoreError`), is skipped with a reason, not
        raised; the other cases go on. Any other error stops the run and is raised (with
        ``prefetch``, after the threads have finished what they were doing; the cases before it
        are written, none after it), as without.
    """
    dev = torch.device(device) if device is not None else default_device()
    if cache_model:
        model, info = _cached_model(str(model_dir_or_version), str(store_root), str(dev))
    else:
        model, info = load_model(model_dir_or_version, store_root=store_root, device=dev)
    version = info["model_version"]
    roi = _roi(info, roi_zyx)
    ids = list(case_ids) if case_ids is not None else _store.list_cases(store_root)
    tell = events if events is not None else (lambda what, case_id: None)
    results: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        results.append(row)
        if progress is not None:
            progress({"event": "score", "index": len(results), "total": len(ids), **row})

    def read(case_id: str) -> _Read:
        t0 = time.perf_counter()
        tell("read_start", case_id)
        try:
            if not overwrite and has_prediction(store_root, case_id, version):
                out = _Read(row={"case_id": case_id, "mask_path": mask_path(case_id, version), "status": "exists", "model_version": version})
            else:
                try:
                    out = _Read(case=load_case(info, store_root, case_id, restrict_to_foreground))
                except _store.StoreError as exc:
                    out = _Read(row=_skipped(case_id, version, exc))
        finally:
            tell("read_end", case_id)
        out.seconds = time.perf_counter() - t0
        return out

    def infer(case: LoadedCase) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        tell("infer_start", case.case_id)
        try:
            prob = infer_loaded(model, info, case, dev, roi, overlap, sw_batch_size)
        finally:
            tell("infer_end", case.case_id)
        case.image = None  # the channels are not needed any more: the writer holds only the probability
        return prob, time.perf_counter() - t0

    def write(case: LoadedCase, prob_box: np.ndarray) -> tuple[dict[str, Any], float]:
        t0 = time.perf_counter()
        tell("write_start", case.case_id)
        try:
            row = _write_mask(store_root, case, prob_box, version, info, roi, overlap, restrict_to_foreground)
        finally:
            tell("write_end", case.case_id)
        return row, time.perf_counter() - t0

    use_prefetch = default_prefetch(dev) if prefetch is None else bool(prefetch)
    if not use_prefetch or len(ids) < 2:
        for case_id in ids:
            t0 = time.perf_counter()
            got = read(case_id)
            if got.row is None:
                prob, _ = infer(got.case)
                got.row, _ = write(got.case, prob)
            got.row["seconds"] = round(time.perf_counter() - t0, 3)
            emit(got.row)
        return results
    _score_overlapped(ids, read, infer, write, emit)
    return results


def _score_overlapped(ids: list[str], read: Callable[[str], _Read], infer: Callable[[LoadedCase], tuple[np.ndarray, float]],
                      write: Callable[[LoadedCase, np.ndarray], tuple[dict[str, Any], float]],
                      emit: Callable[[dict[str, Any]], None]) -> None:
    """:func:`score_cases`' stages with reading and writing in their own thread, inference in this one.

    The order of each step (case n) bounds what is in flight to 3 cases: take case n's read; start
    reading case n+1; infer case n; wait for case n-1's write (its row goes out: rows keep the
    order of ``ids``); start writing case n. Each thread does one task at a time and only this
    thread waits, on their futures, so nothing can deadlock; on an error here or in a stage, the
    read not yet started is cancelled, the ones running finish (a write is committed whole or not
    at all), and the error is raised after the earlier case's write, as the sequential order would.
    """
    reader = ThreadPoolExecutor(1, thread_name_prefix="lesionflow-score-read")
    writer = ThreadPoolExecutor(1, thread_name_prefix="lesionflow-score-write")
    pending: tuple[Future, float] | None = None  # the write in flight and its case's read + infer seconds

    def finish_write() -> None:
        nonlocal pending
        if pending is not None:
            fut, spent = pending
            pending = None
            row, seconds = fut.result()
            row["seconds"] = round(spent + seconds, 3)
            emit(row)

    try:
        next_read = reader.submit(read, ids[0])
        for i in range(len(ids)):
            try:
                got = next_read.result()
            except BaseException:
                finish_write()
                raise
            next_read = reader.submit(read, ids[i + 1]) if i + 1 < len(ids) else None
            if got.row is not None:
                finish_write()
                got.row["seconds"] = round(got.seconds, 3)
                emit(got.row)
                continue
            try:
                prob, infer_s = infer(got.case)
            except BaseException:
                finish_write()
                raise
            finish_write()
            pending = (writer.submit(write, got.case, prob), got.seconds + infer_s)
        finish_write()
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True, cancel_futures=True)


def _skipped(case_id: str, version: str, exc: Exception) -> dict[str, Any]:
    log.warning("score: skipping %s: %s", case_id, exc)
    return {"case_id": case_id, "mask_path": None, "status": "skipped", "model_version": version, "reason": str(exc)}


def _write_mask(store_root: str | Path, case: LoadedCase, prob_box: np.ndarray, version: str, info: dict[str, Any],
                roi: tuple[int, ...], overlap: float, restrict_to_foreground: bool) -> dict[str, Any]:
    """Threshold the probability and store the case's mask with its provenance; the case's row
    (``skipped`` when the store refuses the mask: the case was removed or regridded since it was read)."""
    mask = (place_probability(case, prob_box) > 0.5).astype(np.uint8)  # 2 classes: argmax == probability > 0.5
    voxels = int(mask.sum())
    attrs = {
        PREDICTION_KEY: {
            "model_version": version,
            "channels": list(info["channels"]),
            "roi_zyx": list(roi),
            "overlap": float(overlap),
            "blending": "gaussian",
            "restrict_to_foreground": bool(restrict_to_foreground),
            "lesion_voxels": voxels,
            "created_at": datetime.now(UTC).isoformat(),
        }
    }
    try:
        _store.write_label(store_root, case.case_id, _store.prediction_label(version), mask, attrs=attrs)
    except _store.StoreError as exc:
        return _skipped(case.case_id, version, exc)
    return {"case_id": case.case_id, "mask_path": mask_path(case.case_id, version), "status": "scored", "model_version": version,
            "lesion_voxels": voxels}


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
    prefetch: bool | None = None,
) -> dict[str, Any]:
    """Score ``case_ids`` with one model and measure their masks: the unit of work of a re-scoring run
    (one Dask task). Returns ``results`` (:func:`score_cases`' rows), ``case_rows`` and
    ``lesion_rows`` (the lesion tables' rows of every case that holds the model's mask, newly
    scored or found already there), for the caller to append as table parts.

    ``threads``: torch CPU threads in this process (one per Dask worker: workers, not threads,
    are what scales); None leaves torch's setting. The model stays loaded in the process for the
    next batch. ``connectivity`` (6/18/26) and ``min_lesion_mm3`` (mm³) shape the lesion rows.
    ``prefetch``: overlap reading, inference and writing (:func:`score_cases`; None: its default).
    """
    from pipeline.lesions.tables import lesion_rows

    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(int(threads))
    results = score_cases(store_root, model_dir, case_ids=case_ids, overwrite=overwrite, device=device, cache_model=True,
                          prefetch=prefetch)
    measured = [r["case_id"] for r in results if r["status"] in ("scored", "exists")]
    version = results[0]["model_version"] if results else resolve_model_version(model_dir, store_root)
    case_rows, rows = lesion_rows(store_root, version, measured, connectivity, min_lesion_mm3)
    return {"results": results, "case_rows": case_rows, "lesion_rows": rows}
