"""Flow ``demo``: the whole mission on a phantom cohort, on embedded defaults.

phantom cohort → ingest (Dask LocalCluster) → prepare → train → score → evaluation vs truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.ingest import ingest
from flows.prepare import prepare
from flows.score import score
from flows.train import train


@task(name="phantom-cohort", cache_policy=NO_CACHE)
def phantom_task(out: str, subjects: int, seed: int, spacing_mm: float) -> dict[str, str]:
    from pipeline.phantom import make_cohort

    info = make_cohort(out, n_subjects=subjects, seed=seed, spacing_mm=spacing_mm)
    return {"cohort": str(info.cohort_dir), "truth_cases": str(info.truth_cases_csv)}


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(store: str, model_version: str, truth_cases: str, held_out: list[str]) -> list[dict[str, Any]]:
    from pipeline.lesions.evaluation import evaluate

    rows = evaluate(store, model_version, truth_cases).to_dict(orient="records")
    for r in rows:
        r["split"] = "held-out" if r["case_id"] in held_out else "train"
    return sorted(rows, key=lambda r: (r["split"] != "held-out", r["case_id"]))


@flow(name="demo", log_prints=True)
def demo(workdir: str = "work/demo", subjects: int = 6, seed: int = 0, spacing_mm: float = 1.5,
         iterations: int = 300, n_workers: int = 2, held_out_fraction: float = 0.34,
         train_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the end-to-end pipeline in ``workdir``; returns outputs and the evaluation table.

    ``held_out_fraction`` of the cases are kept out of training, so the table shows Dice and
    volume error on unseen cases (``split`` column) next to the training cases.
    ``train_config`` (a TrainConfig as a dict) sets the rest of training; ``iterations``, ``seed``
    and ``held_out_fraction`` (as ``val_fraction``) override it.
    """
    work = Path(workdir).resolve()
    store = str(work / "store.zarr")
    ph = phantom_task(str(work / "phantom"), subjects, seed, spacing_mm)
    ingested = ingest(ph["cohort"], store, n_workers=n_workers)
    prepare(store, seed=seed)
    # the demo's patch and batch stay fixed (48³, 2: a few minutes on 2 cores) rather than planned
    config = {"patch_zyx": [48, 48, 48], "batch_size": 2, **(train_config or {})}
    trained = train(store, config=config, iterations=iterations, seed=seed, val_fraction=held_out_fraction)
    scored = score(store, trained["model_version"])
    held_out = list(trained["metrics"].get("val_case_ids") or [])
    evaluation = evaluate_task(store, trained["model_version"], ph["truth_cases"], held_out)
    return {
        "workdir": str(work),
        "cohort": ph["cohort"],
        "truth_cases": ph["truth_cases"],
        "store": store,
        "ingest": {k: ingested[k] for k in ("converted", "skipped", "rejected")},
        "report": (ingested.get("report") or {}).get("html"),
        "model_version": trained["model_version"],
        "checkpoint": trained["checkpoint"],
        "train_config": trained["train_config"],
        "tables": scored["tables"],
        "evaluation": evaluation,
    }
