"""Flow ``change``: lesion change between the visits of every subject of a store.

score the pairs' cases with ``model`` when ``method="model"`` and a case lacks its prediction
(the ``score`` flow's task) → every visit pair (:func:`pipeline.longitudinal.run_change`: the
common space, the change mask, the ``change_pairs`` and ``change_lesions`` tables) → optionally
the change masks as NIfTI (:func:`pipeline.export.change.export_change`).

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
                min_size_mm3: float) -> dict[str, Any]:
    from pipeline.lesions.change import ChangeRules
    from pipeline.longitudinal import run_change

    rules = ChangeRules(connectivity=connectivity, min_size_mm3=min_size_mm3, enlarge_fraction=enlarge_fraction)
    out = run_change(store, method=method, model_version=model_version, rules=rules)
    return {"pairs": out["pairs"], "skipped": out["skipped"], "tables": out["tables"]}


@task(name="change-export", cache_policy=NO_CACHE)
def export_task(store: str, out_dir: str, method: str, model_version: str | None) -> list[str]:
    from pipeline.export.change import export_change

    return [str(p) for p in export_change(store, out_dir, method, model_version)]


@flow(name="change", log_prints=True)
def change(store: str, method: str = "subtraction", model: str | None = None, export_dir: str | None = None,
           enlarge_fraction: float = 0.5, connectivity: int = 26, min_size_mm3: float = 0.0) -> dict[str, Any]:
    """Lesion change of every visit pair of ``store`` by ``method`` (``model``: both visits'
    predictions of ``model``, a version, alias or ``latest``, scored first where missing;
    ``subtraction``: the FLAIR difference). Returns ``{"method", "model_version", "pairs",
    "skipped", "tables", "exported"}``."""
    model_version = None
    if method == "model":
        from pipeline.longitudinal import visit_pairs
        from training.checkpoint import resolve_model_version
        from training.registry import default_model

        model = model or default_model(store)
        model_version = resolve_model_version(model, store)
        plans, _ = visit_pairs(store)
        cases = sorted({c for p in plans for c in (p["baseline"], p["followup"])})
        if cases:
            predict_batch(store, model, cases, False)
    out = change_task(store, method, model_version, enlarge_fraction, connectivity, min_size_mm3)
    exported = export_task(store, export_dir, method, model_version) if export_dir else []
    for r in out["pairs"]:
        figures = f", change Dice {r['dice']:.3f}, sensitivity {r['change_sensitivity']:.2f}" if r.get("has_expert") else ""
        print(f"change {r['pair_id']} ({method}): {r['n_new']} new, {r['n_enlarging']} enlarging, {r['n_shrinking']} shrinking, "
              f"{r['n_disappeared']} disappeared, {r['n_stable']} stable{figures}")
    return {"method": method, "model_version": model_version, **out, "exported": exported}
