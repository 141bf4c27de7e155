"""``lesionflow segment``: one session's folder in, a lesion mask and its lesion table out, no store.

The way LST-AI is used: point it at a session's images (DICOM series, NIfTI, MetaImage, BIDS, a
numbered TIFF slice stack such as one LGG patient folder; the
modality rules of ingest), get ``MASK.nii.gz`` in the session's reference geometry (the
reference modality's own grid, FLAIR by default) and ``MASK_lesions.csv`` beside it.

The session goes through ingest itself (:func:`pipeline.ingest.run_ingest` into a
temporary store that is deleted afterwards, with a throw-away pseudonymisation key): the same
discovery, modality rules, resampling onto the reference grid and normalisation as every
stored case, so the model sees what it saw in training. The model's sliding window
(:func:`training.infer.predict_array`) gives the lesion probability; lesion = probability >
0.5 inside the head, as scoring does. With a target spacing in the pipeline configuration the
probability is resampled (linear) onto the reference image's own grid before thresholding.

Example::

    from lesionflow.segment import segment_session
    segment_session("incoming/PH001", "work/train-ms/model", "PH001_lesions.nii.gz")
    # {"mask": "PH001_lesions.nii.gz", "lesions_csv": "PH001_lesions_lesions.csv", "lesion_count": 7, ...}
"""

from __future__ import annotations

import logging
import secrets
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("lesionflow.segment")

LESION_COLUMNS = ["lesion_id", "voxels", "volume_mm3", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "bbox_min_zyx", "bbox_max_zyx"]
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class SegmentError(RuntimeError):
    """The session cannot be segmented with this model; the message says why and what to do."""


def lesion_csv_path(mask_path: str | Path) -> Path:
    """``out/MASK.nii.gz`` → ``out/MASK_lesions.csv``."""
    p = Path(mask_path)
    name = p.name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return p.with_name(f"{name}_lesions.csv")


def _config(model_info: dict[str, Any], config_path: str | Path | None) -> Any:
    """The pipeline configuration: the file given, else the defaults with the model's channels."""
    from pipeline.core.config import PipelineConfig

    if config_path is not None:
        return PipelineConfig.from_file(config_path)
    channels = tuple(model_info["channels"])
    base = PipelineConfig()
    reference = base.reference_modality if base.reference_modality in channels else channels[0]
    return base.model_copy(update={"channels": channels, "reference_modality": reference})


def _reference_volume(plan: Any, cfg: Any) -> Any:
    """The session's reference image as read from its source (its own grid)."""
    from pipeline.ingest.session import read_item

    items = [i for i in plan.items if not i.unused_reason and i.modality in cfg.channels]
    # ingest keeps, per modality, the first readable input with the highest DICOM series number
    items.sort(key=lambda i: (i.series.series_number or 0) if i.series is not None else 0, reverse=True)
    mods = [i.modality for i in items]
    ref = cfg.reference_modality if cfg.reference_modality in mods else next(m for m in cfg.channels if m in mods)
    return read_item(next(i for i in items if i.modality == ref), cfg.read_limits)


def segment_session(
    session_dir: str | Path,
    model: str | Path,
    out: str | Path,
    config: str | Path | None = None,
    device: str | None = None,
    connectivity: int = 26,
    min_size_mm3: float = 0.0,
    probability_out: str | Path | None = None,
) -> dict[str, Any]:
    """Segment the lesions of one session folder with a model folder; write the mask and its table.

    Args:
        session_dir: the folder of ONE session (several sessions inside are refused).
        model: a model folder (``model.json`` + ``model.pt``) or its ``model.pt``.
        out: the mask to write, ``.nii`` or ``.nii.gz`` (uint8, 1 = lesion), in the geometry of
            the session's reference image.
        config: pipeline configuration JSON (as given to ingest); default: the defaults with
            the model's channels. A configuration other than the model's training store's is
            allowed, with a warning in the result.
        device: ``cuda`` / ``cpu``; default CUDA when available.
        connectivity, min_size_mm3: how lesions are counted in the table (as ``lesionflow lesions``).
        probability_out: optionally also write the lesion probability (float32) there.

    Returns:
        ``mask``, ``lesions_csv``, ``probability`` (or None), ``model_version``, ``channels``,
        ``reference_modality``, ``total_volume_ml``, ``lesion_count``, ``max_probability``,
        ``shape_xyz``, ``spacing_mm``, ``warnings``.

    Raises:
        SegmentError: nothing usable in the folder, several sessions, a channel the model needs
            is missing, or an output name that is not NIfTI.
    """
    import pandas as pd
    import torch

    from pipeline.core.volume import Volume
    from pipeline.ingest import run_ingest
    from pipeline.ingest.resample import resample_to_grid
    from pipeline.io.writers import write_nifti
    from pipeline.lesions.components import lesion_table
    from pipeline.store import foreground_mask, list_cases, open_case, read_case_meta, volume_from_geometry
    from training.checkpoint import load_model
    from training.data import check_case
    from training.infer import default_device, predict_array

    session_dir = Path(session_dir)
    out = Path(out)
    for target in (out, probability_out):
        if target is not None and not str(target).lower().endswith(NIFTI_SUFFIXES):
            raise SegmentError(f"{target}: give a NIfTI file name (.nii.gz or .nii)")
    if not session_dir.is_dir():
        raise SegmentError(f"{session_dir} is not a folder; give the folder holding one session's images")
    dev = torch.device(device) if device else default_device()
    net, info = load_model(model, device=dev)
    cfg = _config(info, config)
    channels = list(info["channels"])
    warnings: list[str] = []
    missing = [c for c in channels if c not in cfg.channels]
    if missing:
        raise SegmentError(f"the model needs {channels}; the configuration {config} stacks {list(cfg.channels)} (missing {missing})")
    if info.get("config_hash") and info["config_hash"] != cfg.processing_hash():
        warnings.append(f"the model was trained on a store ingested with another pipeline configuration (hash {info['config_hash']}, "
                        f"this one {cfg.processing_hash()}); pass that configuration with --config to resample and normalise as in training")
    key = secrets.token_hex(32).encode()  # nothing of this run is kept: pseudonyms need no stable key
    from pipeline.ingest.discover import discover

    found = discover(session_dir, cfg, key).sessions
    if len(found) > 1:
        raise SegmentError(f"{session_dir} holds {len(found)} sessions ({', '.join(p.root_relpath or '.' for p in found[:5])}); "
                           "give the folder of one session")
    with tempfile.TemporaryDirectory(prefix="lesionflow-segment-") as tmp:
        store = str(Path(tmp) / "session.zarr")
        summary = run_ingest(session_dir, store, cfg, key).as_dict()
        cases = list_cases(store)
        problems = "; ".join(f"{r['path']}: {r['reason']}" for r in summary["rejected_inputs"] + summary["unused_inputs"])
        if len(cases) > 1:
            raise SegmentError(f"{session_dir} holds {len(cases)} sessions; give the folder of one session")
        if not cases:
            raise SegmentError(f"no usable images in {session_dir}" + (f" ({problems})" if problems else "")
                               + f"; the model needs {channels}, named by the modality rules (e.g. *_FLAIR.nii.gz)")
        case_id = cases[0]
        index, reason = check_case(store, case_id, channels, require_label=False)
        if index is None:
            raise SegmentError(f"{session_dir}: cannot segment with {info['model_version']}: {reason}" + (f" ({problems})" if problems else ""))
        meta = read_case_meta(store, case_id)
        group = open_case(store, case_id)
        image = np.stack([np.asarray(group["image"][i], dtype=np.float32) for i in index])
        roi = tuple(int(r) for r in (info.get("patch_zyx") or (48, 48, 48)))
        prob = predict_array(net, image, roi, device=dev)
        prob = prob * (np.asarray(foreground_mask(group)[...]) != 0)
        grid = volume_from_geometry(meta.geometry, prob.astype(np.float32))
        ref_mod = cfg.reference_modality if cfg.reference_modality in meta.channels else meta.channels[0]
        slice_probability = _classify_slices(model, store, case_id, warnings)
    if cfg.target_spacing is not None:  # the stored grid is resampled: back onto the reference image's own grid
        native = _reference_volume(found[0], cfg)
        grid = resample_to_grid(grid, native, "linear")
    prob_vol: Volume = grid
    mask_vol = prob_vol.with_array((prob_vol.array > 0.5).astype(np.uint8))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(mask_vol, out)
    if probability_out is not None:
        Path(probability_out).parent.mkdir(parents=True, exist_ok=True)
        write_nifti(prob_vol.with_array(prob_vol.array.astype(np.float32)), probability_out)
    totals, rows = lesion_table(mask_vol, connectivity=connectivity, min_size_mm3=min_size_mm3)
    known = meta.geometry.source != "unknown"  # a slice stack without a configured spacing: sizes in voxels only
    if not known:
        rows = [{**r, "volume_mm3": None} for r in rows]
        warnings.append("the session's geometry is unknown (a 2-D slice stack): the mask has unit spacing and sizes are in voxels")
    csv = lesion_csv_path(out)
    pd.DataFrame(rows, columns=LESION_COLUMNS).to_csv(csv, index=False)
    for w in warnings:
        log.warning("segment: %s", w)
    return {
        "mask": str(out), "lesions_csv": str(csv), "probability": str(probability_out) if probability_out else None,
        "model_version": info["model_version"], "channels": channels, "reference_modality": ref_mod,
        "total_volume_ml": totals["total_volume_ml"] if known else None, "lesion_count": totals["lesion_count"],
        "total_voxels": int(mask_vol.array.sum()), "geometry_source": meta.geometry.source,
        "connectivity": connectivity, "min_lesion_mm3": min_size_mm3,
        "max_probability": round(float(prob_vol.array.max(initial=0.0)), 6),
        "shape_xyz": list(mask_vol.shape_xyz), "spacing_mm": [round(s, 6) for s in mask_vol.spacing], "warnings": warnings,
        # the model folder's slice classifier (training.classify), when it has one: P(lesion) per stored axial slice, in z order
        "slice_lesion_probability": slice_probability,
        "lesion_present": None if slice_probability is None else bool(max(slice_probability, default=0.0) >= 0.5),
    }


def _classify_slices(model: str | Path, store: str, case_id: str, warnings: list[str]) -> list[float] | None:
    """The slice classifier's probability per axial slice when the model folder holds one (``classifier/``), else None."""
    from training.classify import CLASSIFIER_DIR, classify_slices, load_classifier

    folder = Path(model) if Path(model).is_dir() else Path(model).parent
    if not (folder / CLASSIFIER_DIR / "classifier.json").is_file():
        return None
    net, info = load_classifier(folder / CLASSIFIER_DIR)
    try:
        return [round(float(p), 6) for p in classify_slices(net, info, store, case_id)]
    except ValueError as exc:
        warnings.append(f"the slice classifier was not run: {exc}")
        return None
