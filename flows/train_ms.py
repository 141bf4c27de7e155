"""Flow ``train_ms``: the real-data recipe. Two multiple-sclerosis patients with expert masks
(``open_ms/cross_sectional/MNI``: patient07 and patient19, FLAIR/T1/T2 at 1 mm in MNI space):
ingest both, train on patient07 with :data:`RECIPE_CONFIG`, score patient19 (and patient07),
evaluate against the consensus masks, print the figures and export the model to
``<workdir>/model/`` (``model.pt`` + ``model.json``, usable by ``lesionflow segment`` and
``lesionflow score --model <workdir>/model``).

Patient19 is never seen during training: no validation on it, no early stopping on it, the
last weights are exported (``select="last"``). It was, however, the patient the configurations
were compared on (there is no third patient), so the figures are those of the chosen
configuration, not of a blind test. ``make train-ms`` runs it; it is meant to finish within
:data:`TIME_LIMIT_S` (45 min) on 2 CPU cores and reports whether it did.

Example:
    >>> out = train_ms("work/train-ms")  # doctest: +SKIP
    >>> out["evaluation"][0]["dice"], out["within_limit"]  # doctest: +SKIP
    (0.61, True)
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

TRAIN_PATIENT, TEST_PATIENT = "patient07", "patient19"
SOURCE = Path("open_ms") / "cross_sectional" / "MNI"
TIME_LIMIT_S = 45 * 60
"""The recipe's promise: ingest, training, scoring and evaluation within 45 minutes on 2 CPU cores."""

RECIPE_CONFIG: dict[str, Any] = {
    "spatial_dims": 3,
    "model": {"kind": "unet"},
    "loss": {"kind": "focal_tversky"},
    "patch_zyx": [48, 48, 48],
    "batch_size": 2,
    "iterations": 750,
    "select": "last",
    "log_every": 20,
    "checkpoint_every": 250,
}
"""The configuration :func:`train_ms` trains (see README "Training on real data" for the ones compared)."""


def shared_data_dir() -> Path:
    """``$LESIONFLOW_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("LESIONFLOW_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def case_of_patient(store: str, patient: str, key: bytes | None = None) -> str:
    """The case ingested from ``<patient>/``: cases are pseudonymised and their source paths sealed,
    so the paths are opened with the pseudonymisation ``key`` (default: the environment's).

    Raises :class:`~pipeline.core.lineage.LineageKeyError` when ``key`` did not seal the store's
    paths (nothing is matched by guess), ``ValueError`` unless exactly one case came from ``<patient>/``."""
    from pipeline.core.config import pseudonym_key
    from pipeline.core.lineage import source_relpaths
    from pipeline.store import list_cases, read_case_meta

    key = key or pseudonym_key()
    hits = [c for c in list_cases(store) if any(p.split("/")[0] == patient for p in source_relpaths(read_case_meta(store, c), key))]
    if len(hits) != 1:
        raise ValueError(f"expected one case from {patient}/ in {store}, found {len(hits)}")
    return hits[0]


@task(name="ingest-ms", cache_policy=NO_CACHE)
def ingest_task(source: str, store: str) -> dict[str, Any]:
    from pipeline.core.config import PipelineConfig, pseudonym_key
    from pipeline.ingest import run_ingest

    summary = run_ingest(source, store, PipelineConfig(), pseudonym_key()).as_dict()
    return {k: summary[k] for k in ("converted", "skipped", "rejected", "seconds")}


@task(name="train-ms", cache_policy=NO_CACHE)
def train_task(store: str, config: dict[str, Any], train_case: str) -> dict[str, Any]:
    from flows.train import recipe_progress
    from training.loop import train

    progress = recipe_progress("train")

    result = train(store, config, case_ids=[train_case], val_case_ids=[], progress=progress)
    return {"model_version": result.model_version, "checkpoint": str(result.checkpoint_path), "run_id": result.run_id,
            "train_seconds": result.metrics["train_seconds"], "it_per_s": result.metrics["it_per_s"],
            "train_config": result.config.model_dump(mode="json") if result.config else config}


@task(name="score-ms", cache_policy=NO_CACHE)
def score_task(store: str, model_version: str, case_ids: list[str]) -> list[dict[str, Any]]:
    from pipeline.lesions.tables import write_lesion_tables
    from training.infer import score_cases

    rows = score_cases(store, model_version, case_ids=case_ids, overwrite=True)
    write_lesion_tables(store, model_version, case_ids=case_ids)
    return rows


def reference_truth(store: str, cases: dict[str, str], out_csv: Path) -> Path:
    """The consensus masks' truth table (see :func:`pipeline.lesions.evaluation.write_truth_table`)."""
    from pipeline.lesions.evaluation import write_truth_table

    return write_truth_table(store, cases, out_csv)


@task(name="evaluate-ms", cache_policy=NO_CACHE)
def evaluate_task(store: str, model_version: str, truth_csv: str, cases: dict[str, str]) -> list[dict[str, Any]]:
    """The project's evaluation (:func:`pipeline.lesions.evaluation.evaluate`) per patient; every column it gives is kept,
    as plain JSON values (NaN → None, ``evaluated_at`` → ISO text: the rows become a Prefect table artifact), and
    ``split`` is the recipe's (``train`` / ``test``) rather than the evaluation's (``train`` / ``unseen``, from model.json)."""
    from pipeline.core.jsonable import to_jsonable
    from pipeline.lesions.evaluation import evaluate

    table = evaluate(store, model_version, truth_csv)
    split = {case: ("train" if patient == TRAIN_PATIENT else "test") for patient, case in cases.items()}
    patient_of = {case: patient for patient, case in cases.items()}
    rows = []
    for row in table.to_dict(orient="records"):
        if row["case_id"] in split:
            rows.append(to_jsonable({"patient": patient_of[row["case_id"]], **row, "split": split[row["case_id"]]}))
    return sorted(rows, key=lambda r: r["split"] != "test")


@task(name="export-model", cache_policy=NO_CACHE)
def export_task(checkpoint: str, out_dir: str, extra_dirs: dict[str, str] | None = None) -> str:
    """Copy ``model.pt`` and ``model.json`` into ``out_dir`` (replaced whole), and each folder of
    ``extra_dirs`` (sub-folder name -> local folder, e.g. a slice classifier) beside them."""
    from pipeline.store import read_bytes

    out = Path(out_dir)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("model.pt", "model.json"):
        blob = read_bytes(checkpoint, name)
        if blob is None:
            raise FileNotFoundError(f"{checkpoint}/{name} missing")
        (staging / name).write_bytes(blob)
    for name, folder in (extra_dirs or {}).items():
        shutil.copytree(folder, staging / name)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return str(out)


@flow(name="train_ms", log_prints=True)
def train_ms(workdir: str = "work/train-ms", config: dict[str, Any] | None = None, iterations: int | None = None,
             data_dir: str | None = None) -> dict[str, Any]:
    """Ingest the two MS patients, train on patient07, score and evaluate patient19, export the model.

    ``config`` replaces :data:`RECIPE_CONFIG` (a TrainConfig dict); ``iterations`` overrides it
    (a quick check: ``iterations=20``). Returns the evaluation rows, the timings (s) and whether
    the whole run stayed within :data:`TIME_LIMIT_S`.
    """
    t0 = time.perf_counter()
    work = Path(workdir).resolve()
    store = str(work / "store.zarr")
    source = Path(data_dir) if data_dir else shared_data_dir() / SOURCE
    if not (source / TRAIN_PATIENT).is_dir() or not (source / TEST_PATIENT).is_dir():
        raise FileNotFoundError(f"{source}: needs {TRAIN_PATIENT}/ and {TEST_PATIENT}/ (set LESIONFLOW_SHARED_DATA to the shared data folder)")
    timings: dict[str, float] = {}
    ingested = ingest_task(str(source), store)
    timings["ingest_s"] = round(time.perf_counter() - t0, 1)
    cases = {p: case_of_patient(store, p) for p in (TRAIN_PATIENT, TEST_PATIENT)}
    cfg = dict(config or RECIPE_CONFIG)
    if iterations is not None:
        cfg["iterations"] = int(iterations)
    t = time.perf_counter()
    trained = train_task(store, cfg, cases[TRAIN_PATIENT])
    timings["train_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    scored = score_task(store, trained["model_version"], [cases[TEST_PATIENT], cases[TRAIN_PATIENT]])
    timings["score_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    truth = reference_truth(store, cases, work / "truth_cases.csv")
    evaluation = evaluate_task(store, trained["model_version"], str(truth), cases)
    timings["evaluate_s"] = round(time.perf_counter() - t, 1)
    exported = export_task(trained["checkpoint"], str(work / "model"))
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    within = timings["total_s"] <= TIME_LIMIT_S
    create_table_artifact(evaluation, key="train-ms-evaluation",
                          description=f"{trained['model_version']} on {TEST_PATIENT} (trained on {TRAIN_PATIENT})")
    print(f"train_ms: {trained['model_version']} in {timings['total_s'] / 60:.1f} min "
          f"({'within' if within else 'OVER'} the {TIME_LIMIT_S // 60} min limit); model → {exported}")
    return {"workdir": str(work), "store": store, "model_version": trained["model_version"], "model_dir": exported,
            "run_id": trained["run_id"], "train_config": trained["train_config"], "it_per_s": trained["it_per_s"],
            "ingest": ingested, "scored": scored, "evaluation": evaluation, "timings": timings, "within_limit": within,
            "time_limit_s": TIME_LIMIT_S, "threads": int(os.environ.get("LESIONFLOW_TORCH_THREADS") or os.cpu_count() or 1)}
