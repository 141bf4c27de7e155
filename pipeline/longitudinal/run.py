"""Lesion change of every visit pair of a store: pairs, common space, change masks, tables.

:func:`visit_pairs` reads the ``visits`` table (written by ingest, :mod:`pipeline.ingest.visits`)
and pairs each subject's consecutive visits (baseline = the earlier). :func:`change_pair` does one
pair:

1. **the pair grid**: the expert change mask's grid when one was ingested (the common space of
   the shared longitudinal data), else the baseline case's grid;
2. **the common space**: both visits' supplied transforms into a common space when the ingest
   found them (``visits.common_transform``), composed exactly
   (:func:`~pipeline.longitudinal.register.pair_transforms`); otherwise the follow-up FLAIR is
   registered onto the baseline FLAIR (:func:`~pipeline.longitudinal.register.register_rigid_affine`);
   (rigid by default, see that module for why), the transforms and the FLAIR images' normalised
   cross-correlation in the common brain mask are stored in ``PairMeta.registration``;
3. **the change**: ``method="model"`` resamples both visits' predictions of ``model_version``
   onto the pair grid (label interpolation) and classifies every lesion
   (:func:`~pipeline.lesions.change.classify_change`); ``method="subtraction"`` thresholds the
   FLAIR difference (:mod:`pipeline.longitudinal.subtraction`);
4. **the outputs**: the change mask ``pairs/<pair_id>/change-<method>[-<model>]``, one
   ``change_pairs`` row (counts and volumes per class, registration, and against the expert
   mask, when there is one, voxel Dice and lesion-wise sensitivity and false positives per true
   change by the MSSEG-1 rules, for every changed voxel: the shared database's expert masks mark
   lesions that appeared or grew and lesions that shrank or vanished) and ``change_lesions``
   rows (one per tracked lesion; for the subtraction method a "lesion" is a component of one
   kind of detected change and its volumes are the change's).

Example::

    from pipeline.longitudinal import run_change
    out = run_change("/data/ms.zarr", method="subtraction")
    out["pairs"][0]["n_new"], out["pairs"][0]["change_sensitivity"]
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.core.volume import Volume
from pipeline.ingest.resample import resample_to_grid
from pipeline.ingest.visits import VISITS_TABLE
from pipeline.lesions.change import CHANGE_CODES, CLASSES, ChangeResult, ChangeRules, classify_change, evaluate_change
from pipeline.longitudinal.register import ncc, pair_transforms, register_rigid_affine, transform_from_json, transform_to_json
from pipeline.longitudinal.subtraction import SubtractionConfig, subtraction_change
from pipeline.store import (
    EXPERT,
    StoreError,
    append_table,
    change_mask_name,
    foreground_mask,
    geometry_of,
    list_cases,
    open_case,
    pair_id_of,
    pair_mask_attrs,
    prediction_mask,
    read_case_meta,
    read_pair_mask,
    read_pair_meta,
    read_table,
    volume_from_geometry,
    write_pair_mask,
    write_pair_meta,
)
from storage_schemas.models import ChangeLesionRow, ChangePairRow, PairMeta, Registration

log = logging.getLogger("lesionflow.change")

PAIRS_TABLE = "change_pairs"
LESIONS_TABLE = "change_lesions"
METHODS = ("model", "subtraction")

__all__ = ["LESIONS_TABLE", "METHODS", "PAIRS_TABLE", "PairPlan", "change_pair", "pair_grid", "pairs_scored_by", "run_change", "visit_pairs"]


class PairPlan(dict):
    """One pair to compute: ``pair_id``, ``subject``, ``baseline``, ``followup`` (case ids),
    ``interval_days``, ``baseline_transform``/``followup_transform`` (JSON of the supplied
    common-space transforms or None)."""


def visit_pairs(store: str, subjects: Sequence[str] | None = None) -> tuple[list[PairPlan], list[dict[str, str]]]:
    """Consecutive visit pairs of every subject with two or more committed cases in the ``visits``
    table, and the subjects left out with the reason (``{"subject", "reason"}``)."""
    visits = read_table(store, VISITS_TABLE)
    cases = set(list_cases(store))
    skipped: list[dict[str, str]] = []
    if visits is None or visits.empty:
        subjects_in_store = sorted({c.split("_", 1)[0] for c in cases})
        counts = {s: sum(c.startswith(s + "_") for c in cases) for s in subjects_in_store}
        return [], [{"subject": s, "reason": "visit order unknown (the store has no visits table: ingest again with this lesionflow)"}
                    for s, n in counts.items() if n > 1]
    visits = visits[visits["case_id"].isin(cases)]
    plans: list[PairPlan] = []
    for subject, group in visits.groupby("subject", sort=True):
        if subjects and subject not in subjects:
            continue
        group = group.sort_values(["visit_index", "case_id"])
        rows = group.to_dict("records")
        if len(rows) < 2:
            continue
        if group["visit_index"].duplicated().any():
            skipped.append({"subject": str(subject), "reason": "two sessions share a visit index (ordered by different ingest runs): "
                                                               "ingest the subject's folder again with --force"})
            continue
        for b, f in zip(rows, rows[1:]):
            db, df = b.get("days_since_first"), f.get("days_since_first")
            interval = None if _missing(db) or _missing(df) else int(df) - int(db)
            plans.append(PairPlan(pair_id=pair_id_of(str(subject), b["session"], f["session"]), subject=str(subject),
                                  baseline=b["case_id"], followup=f["case_id"], interval_days=interval,
                                  baseline_transform=None if _missing(b.get("common_transform")) else b["common_transform"],
                                  followup_transform=None if _missing(f.get("common_transform")) else f["common_transform"]))
    return plans, skipped


def pairs_scored_by(store: str, plans: Sequence[PairPlan], model_version: str | None) -> tuple[list[str], list[str]]:
    """The ids of the pairs whose two cases both hold a prediction of ``model_version`` and of
    the others (all of them when ``model_version`` is None): how the chain's ``method="auto"``
    splits pairs between the model and subtraction. Reads the cases' label listings only.

    Example:
        >>> pairs_scored_by("/nonexistent.zarr", [], "unet3d-x")
        ([], [])
    """
    from pipeline.store import has_prediction

    scored, other = [], []
    for plan in plans:
        ok = model_version is not None and all(has_prediction(store, plan[k], model_version) for k in ("baseline", "followup"))
        (scored if ok else other).append(plan["pair_id"])
    return scored, other


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _flair(store: str, case_id: str) -> tuple[Volume, np.ndarray]:
    """The case's FLAIR (its first channel when it has none) and foreground mask, with the case geometry."""
    meta = read_case_meta(store, case_id)
    group = open_case(store, case_id)
    c = meta.channels.index("FLAIR") if "FLAIR" in meta.channels else 0
    image = volume_from_geometry(meta.geometry, np.asarray(group["image"][c], np.float32))
    fg = foreground_mask(group)
    return image, (np.ones(image.shape_zyx, np.uint8) if fg is None else np.asarray(fg[...], np.uint8))


def pair_grid(store: str, plan: PairPlan) -> tuple[Volume, str, PairMeta | None]:
    """The pair grid (an empty volume with its geometry), ``"expert"`` or ``"baseline"``, and the stored pair meta."""
    meta = read_pair_meta(store, plan["pair_id"])
    if meta is not None and meta.grid == "expert":
        return volume_from_geometry(meta.geometry, np.zeros(meta.geometry.shape_zyx, np.uint8)), "expert", meta
    base = read_case_meta(store, plan["baseline"])
    return volume_from_geometry(base.geometry, np.zeros(base.geometry.shape_zyx, np.uint8)), "baseline", meta


def _common_space(store: str, plan: PairPlan, grid: Volume, kind: str, affine: bool = False) -> tuple[dict[str, Any], Registration]:
    """Both FLAIR images and foregrounds on the pair grid, and how they got there."""
    t0 = time.perf_counter()
    fb, mb = _flair(store, plan["baseline"])
    ff, mf = _flair(store, plan["followup"])
    mattes = None
    if plan["baseline_transform"] and plan["followup_transform"]:
        method = "supplied"
        tb, tf = pair_transforms(transform_from_json(plan["baseline_transform"]), transform_from_json(plan["followup_transform"]), kind)
    else:  # register the follow-up onto the baseline; the pair grid lies in the baseline's space
        reg = register_rigid_affine(fb, ff, fixed_mask=mb, affine=affine)
        method = "rigid+affine" if affine else "rigid"
        tb, tf, mattes = None, reg.transform, reg.mattes_mi
    on = {
        "flair_b": resample_to_grid(fb, grid, "linear", transform=tb).array,
        "flair_f": resample_to_grid(ff, grid, "linear", transform=tf).array,
        "fg_b": resample_to_grid(fb.with_array(mb), grid, "nearest", transform=tb).array,
        "fg_f": resample_to_grid(ff.with_array(mf), grid, "nearest", transform=tf).array,
        "tb": tb, "tf": tf,
    }
    brain = (on["fg_b"] > 0) & (on["fg_f"] > 0)
    on["brain"] = brain
    reg_meta = Registration(method=method, baseline_transform=transform_to_json(tb), followup_transform=transform_to_json(tf),
                            mattes_mi=mattes, ncc=round(ncc(on["flair_b"], on["flair_f"], brain), 6), seconds=round(time.perf_counter() - t0, 2))
    return on, reg_meta


def _prediction_on_grid(store: str, case_id: str, model_version: str, grid: Volume, tx: Any) -> np.ndarray:
    meta = read_case_meta(store, case_id)
    arr = prediction_mask(open_case(store, case_id), model_version)
    if arr is None:
        raise StoreError(f"case {case_id} has no prediction of model {model_version}: `lesionflow score --model {model_version}` first")
    vol = volume_from_geometry(meta.geometry, (np.asarray(arr[...]) != 0).astype(np.uint8))
    return resample_to_grid(vol, grid, "label", transform=tx).array


def _subtraction_result(change: np.ndarray, grid: Volume) -> ChangeResult:
    """Tracks of a subtraction mask: each 26-connected component of one change code is one
    "lesion" of that class, its volume the change's (gained: follow-up and delta; lost: baseline
    and minus delta), for the same tables as the model."""
    from scipy import ndimage

    from pipeline.lesions.components import connected_lesions

    voxel_mm3 = grid.voxel_volume_mm3
    tracks = []
    for cls, code in CHANGE_CODES.items():
        labels, sizes = connected_lesions(change == code, 26, 1)
        if not len(sizes):
            continue
        centres = np.asarray(ndimage.center_of_mass(labels > 0, labels, np.arange(1, len(sizes) + 1)), float).reshape(-1, 3)
        gained = cls in ("new", "enlarging")
        for k, n in enumerate(sizes):
            w = grid.index_to_world(centres[k][::-1])
            mm3 = round(int(n) * voxel_mm3, 6)
            tracks.append({"track_id": len(tracks) + 1, "change": cls, "baseline_lesions": 0 if cls == "new" else 1,
                           "followup_lesions": 0 if cls == "disappeared" else 1, "baseline_voxels": 0 if gained else int(n),
                           "followup_voxels": int(n) if gained else 0, "baseline_mm3": 0.0 if gained else mm3,
                           "followup_mm3": mm3 if gained else 0.0, "delta_mm3": mm3 if gained else -mm3, "relative_change": float("nan"),
                           "centroid_x_mm": round(float(w[0]), 4), "centroid_y_mm": round(float(w[1]), 4), "centroid_z_mm": round(float(w[2]), 4)})
    return ChangeResult(tracks=tracks, mask=change.astype(np.uint8), voxel_mm3=voxel_mm3, rules=ChangeRules(connectivity=26))


def inputs_key(store: str, plan: PairPlan, method: str, model_version: str | None, rules: ChangeRules | None,
               subtraction: SubtractionConfig | None, affine: bool) -> str:
    """sha256 over everything a pair's change depends on: both cases' source fingerprints and
    configuration hashes and creation times (a re-ingested case changes them), the predictions'
    records (method ``model``), the supplied transforms, the expert mask's digest, the method, model,
    rules and settings. Stored with the change mask; an equal key means the stored result holds."""
    import hashlib

    from pipeline.store import read_pair_meta as _meta

    metas = [read_case_meta(store, plan[k]) for k in ("baseline", "followup")]
    pair = _meta(store, plan["pair_id"])
    doc = {"cases": [(m.case_id, m.source_fingerprint, m.config_hash, str(m.created_at)) for m in metas],
           "transforms": [plan["baseline_transform"], plan["followup_transform"]],
           "expert": pair.expert_source.sha256 if pair is not None and pair.expert_source else None,
           "method": method, "model": model_version, "rules": repr(rules or ChangeRules()),
           "subtraction": (subtraction or SubtractionConfig()).as_dict() if method == "subtraction" else None, "affine": affine,
           "code": 1}
    if method == "model":  # a prediction re-scored in place (score --overwrite) records when it was made
        preds = [prediction_mask(open_case(store, m.case_id), model_version) for m in metas]
        doc["predictions"] = [None if a is None else dict(a.attrs) for a in preds]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def change_pair(store: str, plan: PairPlan, method: str = "subtraction", model_version: str | None = None,
                rules: ChangeRules | None = None, subtraction: SubtractionConfig | None = None, affine: bool = False) -> dict[str, Any]:
    """Compute, store and return the change of one pair (see the module docstring): the
    ``change_pairs`` row as a dict, with ``lesions`` (the ``change_lesions`` rows)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "model" and not model_version:
        raise ValueError("method 'model' needs a model_version")
    key = inputs_key(store, plan, method, model_version, rules, subtraction, affine)
    grid, kind, old = pair_grid(store, plan)
    on, registration = _common_space(store, plan, grid, kind, affine)
    if method == "model":
        pb = _prediction_on_grid(store, plan["baseline"], model_version, grid, on["tb"])
        pf = _prediction_on_grid(store, plan["followup"], model_version, grid, on["tf"])
        result = classify_change(grid.with_array(pb), grid.with_array(pf), rules)
    else:
        change = subtraction_change(on["flair_b"], on["flair_f"], on["brain"], grid.spacing, subtraction)
        result = _subtraction_result(change, grid)
    version = model_version if method == "model" else "subtraction"
    meta = PairMeta(pair_id=plan["pair_id"], subject=plan["subject"], baseline_case=plan["baseline"], followup_case=plan["followup"],
                    interval_days=plan["interval_days"], geometry=geometry_of(grid), grid=kind,
                    expert_source=old.expert_source if old is not None else None, registration=registration)
    write_pair_meta(store, meta)
    write_pair_mask(store, plan["pair_id"], change_mask_name(method, model_version), result.mask,
                    attrs={"lesionflow_change": {"method": method, "model_version": version, "codes": CHANGE_CODES, "inputs": key,
                                                 "rules": result.summary(), "subtraction": (subtraction or SubtractionConfig()).as_dict()
                                                 if method == "subtraction" else None}})
    summary = result.summary()
    row: dict[str, Any] = {
        "pair_id": plan["pair_id"], "subject": plan["subject"], "baseline_case": plan["baseline"], "followup_case": plan["followup"],
        "interval_days": plan["interval_days"], "method": method, "model_version": version,
        **{k: summary[k] for k in (*(f"n_{c}" for c in CLASSES), "n_new_or_enlarging", *(f"{c}_ml" for c in CLASSES),
                                    "connectivity", "min_size_mm3", "enlarge_fraction")},
        "registration_method": registration.method, "registration_ncc": registration.ncc, "registration_mattes_mi": registration.mattes_mi,
        "has_expert": False,
    }
    expert = read_pair_mask(store, plan["pair_id"], EXPERT)
    if expert is not None:
        ev = evaluate_change(expert, result.mask > 0, grid.voxel_volume_mm3)  # change in both directions, as the expert marks it
        row.update(has_expert=True, dice=ev["dice"], change_sensitivity=ev["change_sensitivity"], fp_per_true_change=ev["fp_per_true_change"],
                   expert_changes=ev["expert_changes"], detected_changes=ev["detected_changes"], change_fp=ev["change_fp"])
    ChangePairRow.model_validate(row)
    lesions = [ChangeLesionRow(pair_id=plan["pair_id"], method=method, model_version=version, **t).model_dump(mode="json")
               for t in result.tracks]
    row["lesions"] = lesions
    row["registration_seconds"] = registration.seconds
    return row


def run_change(store: str, method: str = "subtraction", model_version: str | None = None, rules: ChangeRules | None = None,
               subtraction: SubtractionConfig | None = None, subjects: Sequence[str] | None = None, affine: bool = False,
               force: bool = False, pair_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Every visit pair of ``store`` (or of ``subjects``, or the pairs ``pair_ids``): :func:`change_pair`, then the
    ``change_pairs`` and ``change_lesions`` tables (rows of the same pair, method and model replaced).

    Incremental: a pair whose stored change mask was computed from the same inputs
    (:func:`inputs_key`) keeps its result (its stored ``change_pairs`` row is returned, nothing is
    recomputed) unless ``force``; a new visit, a re-ingested or re-scored case, other rules or
    another model compute anew.

    Returns ``{"pairs": [row, ...], "computed": [pair_id, ...], "up_to_date": [pair_id, ...], "skipped": [{"subject", "reason"}],
    "tables": {...}}``; a run with nothing new computes nothing and writes nothing (``computed`` empty).
    """
    import pandas as pd

    plans, skipped = visit_pairs(store, subjects)
    if pair_ids is not None:
        wanted = set(pair_ids)
        plans = [p for p in plans if p["pair_id"] in wanted]
    rows, reused = [], []
    version = model_version if method == "model" else "subtraction"
    stored = read_table(store, PAIRS_TABLE) if not force else None
    for plan in plans:
        try:
            if stored is not None and len(stored):
                attrs = pair_mask_attrs(store, plan["pair_id"], change_mask_name(method, model_version)) or {}
                old = stored[(stored["pair_id"] == plan["pair_id"]) & (stored["method"] == method) & (stored["model_version"] == version)]
                done = (attrs.get("lesionflow_change") or {}).get("inputs")
                if len(old) and done == inputs_key(store, plan, method, model_version, rules, subtraction, affine):
                    reused.append({k: v for k, v in old.iloc[-1].to_dict().items() if not k.startswith("_")})
                    continue
            rows.append(change_pair(store, plan, method, model_version, rules, subtraction, affine))
        except StoreError as exc:
            skipped.append({"subject": plan["subject"], "pair_id": plan["pair_id"], "reason": str(exc)})
    tables: dict[str, Any] = {}
    if rows:
        keys = ["pair_id", "method", "model_version"]
        pair_df = pd.DataFrame([ChangePairRow.model_validate({k: v for k, v in r.items() if k not in ("lesions", "registration_seconds")})
                                .model_dump(mode="json") for r in rows])
        tables[PAIRS_TABLE] = append_table(store, PAIRS_TABLE, pair_df, keys=keys)
        lesion_rows = [lr for r in rows for lr in r["lesions"]]
        covers = pair_df[keys]
        lesion_df = pd.DataFrame(lesion_rows, columns=list(ChangeLesionRow.model_fields)) if lesion_rows else pd.DataFrame(columns=list(ChangeLesionRow.model_fields))
        tables[LESIONS_TABLE] = append_table(store, LESIONS_TABLE, lesion_df, keys=keys, covers=covers)
    for r in rows:
        log.info("change %s (%s): %s", r["pair_id"], r["method"], json.dumps({k: r[k] for k in ("n_new", "n_enlarging", "n_shrinking",
                                                                                               "n_disappeared", "n_stable")}))
    return {"pairs": rows + reused, "computed": [r["pair_id"] for r in rows], "up_to_date": [r["pair_id"] for r in reused],
            "skipped": skipped, "tables": tables}
