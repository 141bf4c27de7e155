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
def evaluate_task(store: str, model_version: str, truth_cases: str) -> list[dict[str, Any]]:
    from pipeline.evaluate import evaluate

    return evaluate(store, model_version, truth_cases).to_dict(orient="records")


@flow(name="demo", log_prints=True)
def demo(workdir: str = "work/demo", subjects: int = 6, seed: int = 0, spacing_mm: float = 1.5,
         iterations: int = 300, n_workers: int = 2) -> dict[str, Any]:
    """Run the end-to-end pipeline in ``workdir``; returns outputs and the evaluation table."""
    work = Path(workdir).resolve()
    store = str(work / "store.zarr")
    ph = phantom_task(str(work / "phantom"), subjects, seed, spacing_mm)
    ingested = ingest(ph["cohort"], store, n_workers=n_workers)
    prepare(store, seed=seed)
    trained = train(store, iterations=iterations, seed=seed)
    scored = score(store, trained["model_version"])
    evaluation = evaluate_task(store, trained["model_version"], ph["truth_cases"])
    return {
        "workdir": str(work),
        "cohort": ph["cohort"],
        "truth_cases": ph["truth_cases"],
        "store": store,
        "ingest": {k: ingested[k] for k in ("converted", "skipped", "rejected")},
        "report": (ingested.get("report") or {}).get("html"),
        "model_version": trained["model_version"],
        "checkpoint": trained["checkpoint"],
        "tables": scored["tables"],
        "evaluation": evaluation,
    }
