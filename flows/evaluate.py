"""Flow ``evaluate``: a model against the store's reference labels, by the field's rules.

resolve the model → score the cases it has not scored yet (the ``score`` flow's task) →
optionally the probability maps' maxima (case score ``max_probability``) → per-case evaluation in
batches (:func:`pipeline.lesions.evaluation.evaluate_case`) → cohort figures, the four
``evaluation_*`` tables and the evaluation page (:mod:`pipeline.quality.evaluation_page`).

Example:
    >>> evaluate("/data/ms.zarr", "latest")  # doctest: +SKIP
    {'model_version': 'unet3d-…', 'cases': 12, 'cohort': {'dice_mean': 0.71, 'msseg_f1': 0.64, …}, 'page': {…}, …}
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import batches
from flows.score import predict_batch, tables_task

CASE_SCORES = ("predicted_volume", "max_probability")


def probability_summary(store: str, model: str, case_ids: list[str]) -> dict[str, dict[str, Any]]:
    """``case_id → {"max": float, "slice_max": [float per slice]}``: the maximum lesion
    probability of each case (inside its foreground, as scoring masks it) and of each slice.

    Runs the model's sliding window again (:func:`training.infer.predict_array`); cases the
    model cannot read (a missing channel) are left out.
    """
    import numpy as np

    from pipeline.store import foreground_mask, open_case
    from training.checkpoint import load_model
    from training.data import check_case
    from training.infer import default_device, predict_array

    net, info = load_model(model, store_root=store, device=default_device())
    roi = tuple(int(r) for r in (info.get("patch_zyx") or (48, 48, 48)))
    out: dict[str, dict[str, Any]] = {}
    for case_id in case_ids:
        index, _reason = check_case(store, case_id, list(info["channels"]), require_label=False)
        if index is None:
            continue
        group = open_case(store, case_id)
        image = np.stack([np.asarray(group["image"][i], dtype=np.float32) for i in index])
        prob = predict_array(net, image, roi)
        fg = foreground_mask(group)
        if fg is not None:
            prob = prob * (np.asarray(fg[...]) != 0)
        out[case_id] = {"max": float(prob.max()), "slice_max": [float(v) for v in prob.reshape(prob.shape[0], -1).max(axis=1)]}
    return out


@task(name="probability-scores", cache_policy=NO_CACHE)
def probability_task(store: str, model: str, case_ids: list[str]) -> dict[str, dict[str, Any]]:
    return probability_summary(store, model, case_ids)


@task(name="evaluate-batch", cache_policy=NO_CACHE)
def evaluate_batch(store: str, model_version: str, case_ids: list[str], probabilities: dict[str, dict[str, Any]] | None) -> list[Any]:
    from pipeline.lesions.evaluation import evaluate_case

    rows = [evaluate_case(store, c, model_version, probability=(probabilities or {}).get(c)) for c in case_ids]
    return [r for r in rows if r is not None]


def model_info(store: str, model: str) -> dict[str, Any] | None:
    """The ``model.json`` of ``model`` (a version in the store or a model folder), or None."""
    import json

    from pipeline.store import read_bytes
    from training.checkpoint import INFO_FILE, resolve_model_dir

    blob = read_bytes(resolve_model_dir(model, store), INFO_FILE)
    return json.loads(blob) if blob else None


@task(name="evaluation-tables-and-page", cache_policy=NO_CACHE)
def write_task(store: str, model_version: str, rows: list[Any], truth_cases: str | None, page: bool,
               info: dict[str, Any] | None) -> dict[str, Any]:
    from pipeline.lesions.evaluation import evaluate_model, write_evaluation
    from pipeline.quality.evaluation_page import build_evaluation_page

    ev = evaluate_model(store, model_version, truth_cases, rows=[tuple(r) for r in rows], model_info=info)
    paths = write_evaluation(store, ev)
    pages = build_evaluation_page(store, ev) if page else {}
    return {"cohort": ev.cohort, "tables": paths, "page": pages, "cases": ev.cases.to_dict(orient="records")}


@flow(name="evaluate", log_prints=True)
def evaluate(store: str, model: str = "latest", truth_cases: str | None = None, case_score: str = "predicted_volume",
             score_missing: bool = True, batch_size: int = 8, page: bool = True) -> dict[str, Any]:
    """Evaluate ``model`` (a version in the store, ``latest``, or a model folder) on every case.

    Args:
        truth_cases: optional truth table (the phantom's ``truth/truth_cases.csv``) for the
            analytic-truth columns.
        case_score: ``predicted_volume`` (from the masks) or ``max_probability`` (runs the
            model's sliding window again for the probability maps).
        score_missing: score the cases this model has not scored yet (else they are left out);
            the lesion tables are then refreshed with the score flow's defaults.
        page: write the evaluation page next to the data-quality report.

    Returns:
        ``model_version``, ``cases`` (number evaluated), ``scored`` (newly scored), ``cohort``
        (the cohort's figures), ``tables`` and ``page`` (paths), ``case_rows``.
    """
    from pipeline.store import list_cases
    from training.checkpoint import resolve_model_version

    if case_score not in CASE_SCORES:
        raise ValueError(f"case_score must be one of {CASE_SCORES}, got {case_score!r}")
    model_version = resolve_model_version(model, store)
    cases = list_cases(store)
    groups = batches(cases, batch_size)
    newly = 0
    if score_missing and cases:
        done = [r for batch in predict_batch.map(unmapped(store), unmapped(model), groups, unmapped(False)).result() for r in batch]
        newly = sum(r["status"] == "scored" for r in done)
        if newly:
            tables_task(store, model_version, 26, 0.0)
    probabilities: dict[str, dict[str, Any]] | None = None
    if case_score == "max_probability" and cases:
        probabilities = {}
        for part in probability_task.map(unmapped(store), unmapped(model), groups).result():
            probabilities.update(part)
    parts = evaluate_batch.map(unmapped(store), unmapped(model_version), groups, unmapped(probabilities)).result() if cases else []
    rows = [r for part in parts for r in part]
    out = write_task(store, model_version, rows, truth_cases, page, model_info(store, model))
    c = out["cohort"]
    keys = ("n_cases", "dice_mean", "hd95_median_mm", "msseg_sensitivity", "msseg_precision", "msseg_f1", "isles_f1",
            "abs_rel_volume_error_pct_mean", "volume_pearson_r", "case_auc", "slice_auc")
    def shown(v: Any) -> Any:
        return None if isinstance(v, float) and v != v else v  # NaN is not JSON

    create_table_artifact([{"figure": k, "value": shown(c.get(k))} for k in keys], key="evaluation", description=f"evaluation of {model_version}")
    print(f"evaluate: {len(rows)} cases with {model_version} (newly scored {newly}); Dice {c.get('dice_mean')}, "
          f"lesion F1 (MSSEG-1) {c.get('msseg_f1')}, case AUC {c.get('case_auc')}; page → {out['page'].get('html')}")
    return {"model_version": model_version, "cases": len(rows), "scored": newly, "cohort": c, "tables": out["tables"],
            "page": out["page"], "case_rows": out["cases"]}
