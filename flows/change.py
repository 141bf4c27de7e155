"""Flow ``change``: lesion change between the visits of every subject of a store.

score the pairs' cases with ``model`` when ``method="model"`` and a case lacks its prediction
(the ``score`` flow's task) → every visit pair (:func:`pipeline.longitudinal.run_change`: the
common space, the change mask, the ``change_pairs`` and ``change_lesions`` tables) → optionally
the change masks as NIfTI (:func:`pipeline.export.change.export_change`).

``method="auto"`` is the chain's (deployment ``change-new``, after ``score-new``): the pairs
whose two visits both hold a prediction of ``model`` (default: the ``production`` alias) by the
model, every other pair (and every pair while no model is promoted) by subtraction; it scores
nothing itself (``score-new`` just did). Pairs whose inputs are unchanged keep their stored
result, so a run with no new visit reads the visits table, the pairs' case metadata and mask
attributes, and says ``nothing new``.

Example:
    >>> change("/data/ms.zarr", method="subtraction")  # doctest: +SKIP
    {'method': 'subtraction', 'pairs': [{'pair_id': 'sub-…', 'n_new': 3, 'change_sensitivity': 0.69, …}], …}
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.score import predict_batch


@task(name="change-pairs", cache_policy=NO_CACHE)
def change_task(store: str, method: str, model_version: str | None, enlarge_fraction: float, connectivity: int,
                min_size_mm3: float, pair_ids: list[str] | None = None) -> dict[str, Any]:
    from pipeline.lesions.change import ChangeRules
    from pipeline.longitudinal import run_change

    rules = ChangeRules(connectivity=connectivity, min_size_mm3=min_size_mm3, enlarge_fraction=enlarge_fraction)
    out = run_change(store, method=method, model_version=model_version, rules=rules, pair_ids=pair_ids)
    return {k: out[k] for k in ("pairs", "computed", "up_to_date", "skipped", "tables")}


@task(name="change-export", cache_policy=NO_CACHE)
def export_task(store: str, out_dir: str, method: str, model_version: str | None) -> list[str]:
    from pipeline.export.change import export_change

    return [str(p) for p in export_change(store, out_dir, method, model_version)]


def _production_version(store: str, model: str | None) -> str | None:
    """The version ``model`` (default: the ``production`` alias) names, or None when there is none yet."""
    from training.checkpoint import CheckpointError, resolve_model_version
    from training.registry import default_model

    try:
        return resolve_model_version(model or default_model(store), store)
    except (CheckpointError, FileNotFoundError):
        return None


@flow(name="change", log_prints=True)
def change(store: str, method: str = "subtraction", model: str | None = None, export_dir: str | None = None,
           enlarge_fraction: float = 0.5, connectivity: int = 26, min_size_mm3: float = 0.0) -> dict[str, Any]:
    """Lesion change of every visit pair of ``store`` by ``method`` (``model``: both visits'
    predictions of ``model``, a version, alias or ``latest``, scored first where missing;
    ``subtraction``: the FLAIR difference; ``auto``: the model for the pairs it has scored, subtraction
    for the others, nothing scored). Returns ``{"method", "model_version", "pairs", "computed",
    "up_to_date", "skipped", "tables", "exported", "methods"}`` (``methods``: pair id → method used)."""
    from pipeline.longitudinal import visit_pairs

    if method not in ("model", "subtraction", "auto"):
        raise ValueError(f"method must be 'model', 'subtraction' or 'auto', got {method!r}")
    model_version = None
    plans, _ = visit_pairs(store)
    if method == "model":
        from training.checkpoint import resolve_model_version
        from training.registry import default_model

        model = model or default_model(store)
        model_version = resolve_model_version(model, store)
        cases = sorted({c for p in plans for c in (p["baseline"], p["followup"])})
        if cases:
            predict_batch(store, model, cases, False)
        runs = [("model", None)]
    elif method == "auto":
        from pipeline.longitudinal.run import pairs_scored_by

        model_version = _production_version(store, model)
        by_model, by_subtraction = pairs_scored_by(store, plans, model_version)
        runs = [(m, ids) for m, ids in (("model", by_model), ("subtraction", by_subtraction)) if ids]
        print(f"change (auto): {len(by_model)} pairs by the model {model_version or '(none promoted)'}, "
              f"{len(by_subtraction)} by subtraction")
    else:
        runs = [("subtraction", None)]
    out: dict[str, Any] = {"pairs": [], "computed": [], "up_to_date": [], "skipped": [], "tables": {}, "exported": [], "methods": {}}
    for m, ids in runs:
        version = model_version if m == "model" else None
        part = change_task(store, m, version, enlarge_fraction, connectivity, min_size_mm3, ids)
        for k in ("pairs", "computed", "up_to_date", "skipped"):
            out[k] += part[k]
        out["tables"].update(part["tables"])
        out["methods"].update({r["pair_id"]: m for r in part["pairs"]})
        if export_dir:
            out["exported"] += export_task(store, export_dir, m, version)
    for r in out["pairs"]:
        if r["pair_id"] not in out["computed"]:
            continue
        figures = f", change Dice {r['dice']:.3f}, sensitivity {r['change_sensitivity']:.2f}" if r.get("has_expert") else ""
        print(f"change {r['pair_id']} ({r['method']}): {r['n_new']} new, {r['n_enlarging']} enlarging, {r['n_shrinking']} shrinking, "
              f"{r['n_disappeared']} disappeared, {r['n_stable']} stable{figures}")
    if not out["computed"]:
        print(f"change: nothing new ({len(out['up_to_date'])} pairs up to date, {len(out['skipped'])} skipped)")
    else:
        print(f"change: {len(out['computed'])} pairs computed, {len(out['up_to_date'])} up to date, {len(out['skipped'])} skipped")
    return {"method": method, "model_version": model_version, **out}
