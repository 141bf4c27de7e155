"""Flow ``score``: sliding-window inference over a store's cases, masks written back, lesion tables.

``model`` is a model version, an alias (``models/aliases.json``), ``"latest"``, or a model
folder/file anywhere; left out, the store's ``production`` alias (:mod:`training.registry`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import batches


@task(name="predict-batch", cache_policy=NO_CACHE)
def predict_batch(store: str, model: str, case_ids: list[str], overwrite: bool) -> list[dict[str, Any]]:
    from training.infer import score_cases

    return score_cases(store, model, case_ids=case_ids, overwrite=overwrite)


@task(name="lesion-tables", cache_policy=NO_CACHE)
def tables_task(store: str, model_version: str, connectivity: int, min_lesion_mm3: float) -> dict[str, Any]:
    from pipeline.lesions.tables import write_lesion_tables

    out = write_lesion_tables(store, model_version, connectivity=connectivity, min_size_mm3=min_lesion_mm3)
    return {"paths": out["paths"], "case_volumes": out["case_volumes"].to_dict(orient="records")}


@flow(name="score", log_prints=True)
def score(store: str, model: str | None = None, connectivity: int = 26, min_lesion_mm3: float = 0.0, batch_size: int = 8,
          overwrite: bool = False) -> dict[str, Any]:
    """Score every case of ``store`` with ``model`` (a version or alias in the store, ``latest``, or a model
    folder/file; default: the store's ``production`` alias).

    Masks go to ``cases/<id>/labels/prediction-<model_version>/0`` (NGFF labels); tables to ``tables/``.
    Cases already scored by this model are skipped unless ``overwrite``.
    """
    from pipeline.store import list_cases
    from training.checkpoint import resolve_model_dir, resolve_model_version
    from training.registry import default_model

    if model is None:
        model = default_model(store)
    model_dir = str(resolve_model_dir(model, store))  # an alias is read once: every batch scores with the same model
    model_version = resolve_model_version(model_dir)
    cases = list_cases(store)
    done = [r for batch in predict_batch.map(unmapped(store), unmapped(model_dir), batches(cases, batch_size), unmapped(overwrite)).result() for r in batch]
    tables = tables_task(store, model_version, connectivity, min_lesion_mm3)
    rows = tables["case_volumes"]
    create_table_artifact(
        [{k: r[k] for k in ("case_id", "total_volume_ml", "lesion_count")} for r in rows],
        key="lesion-volumes",
        description=f"lesion volumes by {model_version}",
    )
    print(f"score: {len(done)} cases scored with {model_version}; tables → {tables['paths']['case_volumes']['csv']}")
    return {"model_version": model_version, "scored": len(done), "tables": tables["paths"], "case_volumes": rows}
