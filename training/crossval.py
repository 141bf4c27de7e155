"""Cross-validation by patient, and the "tumour present?" evaluation of a 2-D segmentation model.

:func:`patient_folds` splits a store's cases into k folds by subject (the pseudonymised patient),
so no patient is ever on both sides; :func:`evaluate_cases` runs a model over held-out cases and
derives from its lesion probability, per axial slice and per case:

* segmentation on slices with lesion (the brain-tumour write-up's figures): Dice and Tversky
  index (alpha 0.7 on false negatives, beta 0.3 on false positives) per slice, and pooled over
  each case's lesion slices;
* "is there a lesion?": the slice's score is its maximum probability (and, beside it, its predicted
  area in voxels), the case's the maximum over its slices; ROC AUC over slices and over cases, sensitivity and specificity at the operating
  point score >= ``threshold`` (0.5: the slice has at least one voxel the segmentation calls lesion).

:func:`summarise` pools the rows of every fold into the figures of a cross-validation table.
Sizes are voxels (a slice stack has no geometry). The rules themselves are
:mod:`pipeline.lesions.evaluation`'s (:func:`~pipeline.lesions.evaluation.tversky_index`,
:func:`~pipeline.lesions.evaluation.presence_metrics`).

Example:
    >>> patient_folds({"c1": "s1", "c2": "s2", "c3": "s3", "c4": "s3", "c5": "s4"}, 2, seed=0)
    [['c2', 'c3', 'c4'], ['c1', 'c5']]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import store as _store
from pipeline.lesions.evaluation import presence_metrics, slice_presence, tversky_index

__all__ = ["content_keys", "patient_folds", "subjects_of", "evaluate_cases", "run_fold", "summarise"]


def subjects_of(store_root: str | Path, case_ids: Sequence[str] | None = None) -> dict[str, str]:
    """``case_id -> subject`` (the pseudonymised patient) of the store's cases (or of ``case_ids``)."""
    ids = list(case_ids) if case_ids is not None else _store.list_cases(store_root)
    return {c: _store.read_case_meta(store_root, c).subject for c in ids}


def content_keys(store_root: str | Path, case_ids: Sequence[str] | None = None) -> dict[str, str]:
    """``subject -> key`` that does not depend on the pseudonymisation key: SHA-256 over the sorted
    content digests of the subject's source files (the smallest over its cases). Pseudonyms are
    keyed hashes, so folds dealt in pseudonym order would change with the key: the same data would
    give other folds, and other figures, at another site (seen: two keys, 4-fold LGG Dice 0.64 and
    0.55 with everything else equal)."""
    import hashlib

    ids = list(case_ids) if case_ids is not None else _store.list_cases(store_root)
    keys: dict[str, str] = {}
    for c in ids:
        meta = _store.read_case_meta(store_root, c)
        digests = sorted(src.sha256 for ch in meta.channel_info for src in ch.sources)
        key = hashlib.sha256("".join(digests).encode()).hexdigest()
        keys[meta.subject] = min(key, keys.get(meta.subject, key))
    return keys


def patient_folds(subject_of: Mapping[str, str], k: int, seed: int = 0, order: Mapping[str, str] | None = None) -> list[list[str]]:
    """``k`` disjoint folds of case ids, split by subject: the subjects, in the order of ``order``
    (subject -> sort key, e.g. :func:`content_keys`; default their pseudonyms), shuffled with
    ``seed``, are dealt round-robin (fold sizes in subjects differ by at most one); every case of a
    subject lands in the fold of its subject. Each fold lists its cases sorted."""
    subjects = sorted(set(subject_of.values()), key=lambda s: (order[s], s) if order is not None else ("", s))
    if not 1 <= k <= len(subjects):
        raise ValueError(f"{k} folds need at least {k} patients; the cases hold {len(subjects)}")
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    fold_of = {s: i % k for i, s in enumerate(order)}
    folds: list[list[str]] = [[] for _ in range(k)]
    for case, subject in sorted(subject_of.items()):
        folds[fold_of[subject]].append(case)
    return folds


def evaluate_cases(store_root: str | Path, model: str | Path, case_ids: Sequence[str], threshold: float = 0.5,
                   device: str | None = None, fold: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(slice rows, case rows)`` of ``model`` (a model folder, ``model.pt`` or a version in the store)
    on labelled ``case_ids``; see the module docstring. Voxel counts, probabilities in [0, 1]."""
    import torch

    from training.checkpoint import load_model
    from training.infer import default_device, predict_probability

    dev = torch.device(device) if device else default_device()
    net, info = load_model(model, store_root=store_root, device=dev)
    slice_rows: list[dict[str, Any]] = []
    case_rows: list[dict[str, Any]] = []
    for case_id in case_ids:
        group = _store.open_case(store_root, case_id)
        ref = np.asarray(_store.reference_label(group)[...]) != 0
        prob = predict_probability(net, info, store_root, case_id, device=dev)
        rows = slice_presence(ref, prob, threshold)
        subject = _store.read_case_meta(store_root, case_id).subject
        for r in rows:
            slice_rows.append({"case_id": case_id, "subject": subject, "fold": fold, **r})
        lesion_z = [r["z"] for r in rows if r["has_lesion"]]
        pred = prob >= threshold
        case_rows.append({
            "case_id": case_id, "subject": subject, "fold": fold, "model_version": info["model_version"],
            "slices": len(rows), "lesion_slices": len(lesion_z),
            "ref_voxels": int(ref.sum()), "pred_voxels": int(pred.sum()),
            "has_lesion": bool(ref.any()), "score": float(prob.max(initial=0.0)), "predicted_present": bool(pred.any()),
            # pooled over the case's lesion slices (the write-up's figures are on tumour slices)
            "dice_lesion_slices": tversky_index(ref[lesion_z], pred[lesion_z], 0.5, 0.5) if lesion_z else float("nan"),
            "tversky_lesion_slices": tversky_index(ref[lesion_z], pred[lesion_z]) if lesion_z else float("nan"),
            "dice": tversky_index(ref, pred, 0.5, 0.5),
        })
    return slice_rows, case_rows


def run_fold(store_root: str | Path, config: Mapping[str, Any], train_ids: Sequence[str], test_ids: Sequence[str], fold: int,
             progress: Any = None, classifier: Mapping[str, Any] | None = None, classifier_dir: str | Path | None = None) -> dict[str, Any]:
    """One fold of a cross-validation: train on ``train_ids`` (no validation cases: nothing of the
    held-out patients steers training), then :func:`evaluate_cases` on ``test_ids`` with the last weights.

    With ``classifier`` (a :class:`training.classify.SliceClassifierConfig` dict) a slice classifier
    is trained on the same cases too, and each held-out slice and case row gets its
    ``classifier_score`` (the case's: the maximum over its slices); ``classifier_dir`` keeps it
    (:func:`training.classify.save_classifier`; the final model's, trained with no case held out).

    Returns ``fold``, ``model_version``, ``checkpoint``, ``train_seconds``, ``it_per_s``,
    ``samples_from``, ``seconds`` (training and evaluation), the evaluation's ``slices`` and
    ``cases`` rows, and ``classifier`` (its info, or None). A plain function, so it runs the same in
    this process or on a Dask worker.
    """
    import time

    from training.loop import train

    if set(train_ids) & set(test_ids):
        raise ValueError(f"fold {fold}: cases on both sides: {sorted(set(train_ids) & set(test_ids))}")
    t0 = time.perf_counter()
    result = train(store_root, dict(config), case_ids=list(train_ids), val_case_ids=[], progress=progress)
    # the final model holds nothing out: no model load for an empty evaluation
    slices, cases = evaluate_cases(store_root, result.checkpoint_path, list(test_ids), fold=fold) if test_ids else ([], [])
    classifier_info = None
    if classifier is not None:
        from training.classify import SliceClassifierConfig, classify_slices, save_classifier, train_slice_classifier

        channels = list(dict(config).get("channels") or []) or None
        net, classifier_info = train_slice_classifier(store_root, list(train_ids), SliceClassifierConfig.model_validate(dict(classifier)),
                                                      channels=channels, progress=progress)
        if classifier_dir is not None:
            save_classifier(net, classifier_info, classifier_dir)
        scores = {case["case_id"]: classify_slices(net, classifier_info, store_root, case["case_id"]) for case in cases}
        for case in cases:
            case["classifier_score"] = float(scores[case["case_id"]].max(initial=0.0))
        for row in slices:
            row["classifier_score"] = float(scores[row["case_id"]][row["z"]])
    return {"fold": fold, "model_version": result.model_version, "checkpoint": str(result.checkpoint_path),
            "train_seconds": result.metrics["train_seconds"], "it_per_s": result.metrics["it_per_s"],
            "samples_from": result.metrics["samples_from"], "seconds": round(time.perf_counter() - t0, 1),
            "slices": slices, "cases": cases, "classifier": classifier_info}


def _mean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    return float(arr.mean()) if arr.size else float("nan")


def summarise(slice_rows: Sequence[Mapping[str, Any]], case_rows: Sequence[Mapping[str, Any]], threshold: float = 0.5) -> dict[str, Any]:
    """The cross-validation figures over every held-out slice and case (all folds pooled).

    Returns ``dice_slices`` / ``tversky_slices`` (means over slices with lesion), ``dice_patients`` /
    ``tversky_patients`` (means over cases of the figure pooled over each case's lesion slices),
    ``slice`` and ``patient`` (:func:`~pipeline.lesions.evaluation.presence_metrics` of the maximum
    probability), ``slice_area`` (the same with the predicted area in voxels as the slice's score),
    ``patients_correct`` (cases whose presence call matches the reference) and the counts; when the
    rows carry a slice classifier's ``classifier_score`` (:func:`run_fold`), also ``slice_classifier``,
    ``patient_classifier`` and ``patients_correct_classifier``, the same figures for its probability.
    """
    lesion_slices = [r for r in slice_rows if r["has_lesion"]]
    patient = presence_metrics([r["has_lesion"] for r in case_rows], [r["score"] for r in case_rows], threshold)
    return {
        "dice_slices": _mean([r["dice"] for r in lesion_slices]),
        "tversky_slices": _mean([r["tversky"] for r in lesion_slices]),
        "dice_patients": _mean([r["dice_lesion_slices"] for r in case_rows]),
        "tversky_patients": _mean([r["tversky_lesion_slices"] for r in case_rows]),
        "slice": presence_metrics([r["has_lesion"] for r in slice_rows], [r["score"] for r in slice_rows], threshold),
        # the same call scored by the predicted area (voxels at the threshold): same operating point (>= 1 voxel), other ranking
        "slice_area": presence_metrics([r["has_lesion"] for r in slice_rows], [r["pred_voxels"] for r in slice_rows], 1),
        "patient": patient,
        "patients_correct": sum(bool(r["predicted_present"]) == bool(r["has_lesion"]) for r in case_rows),
        "n_patients": len(case_rows), "n_slices": len(slice_rows), "n_lesion_slices": len(lesion_slices),
        **_classifier_figures(slice_rows, case_rows, threshold),
    }


def _classifier_figures(slice_rows: Sequence[Mapping[str, Any]], case_rows: Sequence[Mapping[str, Any]], threshold: float) -> dict[str, Any]:
    """:func:`summarise`'s figures of the slice classifier, when every row has its score."""
    if not slice_rows or not all("classifier_score" in r for r in (*slice_rows, *case_rows)):
        return {}
    return {
        "slice_classifier": presence_metrics([r["has_lesion"] for r in slice_rows], [r["classifier_score"] for r in slice_rows], threshold),
        "patient_classifier": presence_metrics([r["has_lesion"] for r in case_rows], [r["classifier_score"] for r in case_rows], threshold),
        "patients_correct_classifier": sum((r["classifier_score"] >= threshold) == bool(r["has_lesion"]) for r in case_rows),
    }
