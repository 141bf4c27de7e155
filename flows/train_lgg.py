"""Flow ``train_lgg``: the brain-tumour write-up on its own data. The lower-grade glioma patients
of ``lgg/kaggle_3m`` (numbered TIFF slice stacks: pre-contrast T1, FLAIR, post-contrast T1 and a
tumour mask per slice): ingest them, cross-validate a 2-D U-Net with the focal Tversky loss by
patient (:data:`FOLDS` folds; no patient on both sides), report Dice and Tversky index on tumour
slices and "tumour present?" per slice and per patient (ROC AUC, sensitivity, specificity at
probability 0.5), from the segmentation and from a slice classifier trained beside it
(:data:`CLASSIFIER_CONFIG`, :mod:`training.classify`), train a final model on every patient and
export it, its classifier in ``classifier/``, to ``<workdir>/model/`` (usable by ``lesionflow
segment PATIENT_DIR --model <workdir>/model --out MASK.nii.gz``).

Before the folds it prepares every patient's 2-D augmentation bank (:data:`BANK_CONFIG`: axial
slices transformed in-plane, half on tumour slices and half on tumour-free ones; banks are per
patient, so one build serves every fold and the final model), and each training reads it
(``augmentation.bank`` auto: only when every training patient has one; each fold reports
``samples_from``). A rerun on the same store rebuilds nothing.

The four folds and the final model train at the same time as far as the cores allow (one torch
thread each, in the processes of a Dask LocalCluster: ``fold_workers``), so two cores take about
three fold-lengths instead of five.

Held-out patients are never seen in training: no validation, early stopping or weight selection
on them; the last weights are used (``select="last"``). ``make train-lgg`` runs it; it is meant
to finish within :data:`TIME_LIMIT_S` (45 min) on 2 CPU cores and reports whether it did.
``<workdir>/crossval.json`` keeps every figure, ``crossval_slices.csv`` / ``crossval_cases.csv``
every held-out slice and patient (pseudonymised ids, voxel counts: the geometry is unknown).

Example:
    >>> out = train_lgg("work/train-lgg")  # doctest: +SKIP
    >>> out["summary"]["slice"]["auc"], out["summary"]["slice_classifier"]["auc"], out["within_limit"]  # doctest: +SKIP
    (0.81, 0.92, True)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.train_ms import export_task, shared_data_dir

SOURCE = Path("lgg") / "kaggle_3m"
TIME_LIMIT_S = 45 * 60
"""The recipe's promise: ingest, 4 cross-validation trainings, the final training and the evaluation within 45 minutes on 2 CPU cores."""
FOLDS = 4
INGEST_CONFIG: dict[str, Any] = {"channels": ["FLAIR", "T1", "T1POST"], "reference_modality": "FLAIR"}
"""The pipeline configuration of the recipe's store (the slice-stack planes: T1, FLAIR, T1 post-contrast; the defaults)."""

RECIPE_CONFIG: dict[str, Any] = {
    "spatial_dims": 2,
    "model": {"kind": "unet", "features": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
    "loss": {"kind": "focal_tversky", "fn_weight": 0.7, "fp_weight": 0.3, "gamma": 0.75},
    "patch_zyx": [1, 128, 128],
    "batch_size": 8,
    "iterations": 1400,
    "lesion_fraction": 0.5,
    "background_slices": "lesion_free",
    "select": "last",
    "log_every": 20,
    "checkpoint_every": 1000,
    # 2026-11-29, this 2-core VM at load average 5-8: 2.8 it/s with 1 torch thread, 0.3 it/s with 2 (128² x 8, this network)
    "threads": 1,
}
"""The configuration each fold and the final model train with (see README "Brain tumours (LGG)")."""

BANK_CONFIG: dict[str, Any] = {"spatial_dims": 2, "samples_per_case": 256, "lesion_share": 0.5, "background_slices": "lesion_free"}
"""The recipe's 2-D augmentation bank (:class:`pipeline.prepare.augment.BankConfig`); its patch is the training patch and its seed
the flow's. K = 256 slices per patient: a fold of 1400 iterations x 8 draws 11 200 samples from 12 patients' 3 072, so each is seen
about 4 times, with fresh mirroring and intensity transforms each time."""


CLASSIFIER_CONFIG: dict[str, Any] = {"size": 128, "iterations": 600, "batch_size": 16, "seed": 0, "threads": 1}
"""The slice classifier each fold and the final model train beside the segmentation (:class:`training.classify.SliceClassifierConfig`):
"tumour present?" per slice from its own network, which ranked held-out slices better than the segmentation's maximum
probability (the recipe's 4 folds, 2026-11-30: slice AUC 0.92 against 0.81)."""


@task(name="ingest-lgg", cache_policy=NO_CACHE)
def ingest_task(source: str, store: str) -> dict[str, Any]:
    from pipeline.core.config import PipelineConfig, pseudonym_key
    from pipeline.ingest import run_ingest

    summary = run_ingest(source, store, PipelineConfig(**INGEST_CONFIG), pseudonym_key()).as_dict()
    return {k: summary[k] for k in ("converted", "skipped", "rejected", "seconds")}


def recipe_bank_config(train_config: dict[str, Any], seed: int) -> dict[str, Any] | None:
    """The BankConfig (JSON) the recipe prepares for ``train_config``: :data:`BANK_CONFIG` with the training patch,
    its ``background_slices`` and ``seed``; None when the run will not read a 2-D bank (3-D, no patch given, bank off)."""
    from pipeline.prepare.augment import BankConfig

    aug = train_config.get("augmentation") or {}
    patch = train_config.get("patch_zyx")
    if int(train_config.get("spatial_dims", 3)) != 2 or patch is None or aug.get("bank", "auto") == "off":
        return None
    cfg = {**BANK_CONFIG, "patch_zyx": [int(v) for v in patch], "seed": int(seed),
           "background_slices": train_config.get("background_slices", BANK_CONFIG["background_slices"])}
    return BankConfig.model_validate(cfg).model_dump(mode="json")


@task(name="folds-lgg", cache_policy=NO_CACHE)
def folds_task(store: str, k: int, seed: int) -> list[list[str]]:
    from training.crossval import content_keys, patient_folds, subjects_of

    return patient_folds(subjects_of(store), k, seed, order=content_keys(store))  # the same folds whatever the pseudonym key


Fold = tuple[int, list[str], list[str]]
"""A training job: its number, its training cases and its held-out cases (a fold; none for the final model)."""

PROGRESS_TOPIC = "lesionflow-train-lgg-progress"
"""The Dask event topic on which folds training on workers report their progress to the flow."""


def default_fold_workers(config: dict[str, Any], folds: int) -> int:
    """How many folds train at once: one per group of ``config["threads"]`` cores on the CPU (2 on
    2 cores with the recipe's 1 thread), capped at ``folds``; 1 on a GPU (the folds take turns on
    the one device) or when torch may use every core (``threads`` unset)."""
    import torch

    threads = int(config.get("threads") or 0)
    if torch.cuda.is_available() or threads <= 0:
        return 1
    return max(1, min(folds, (os.cpu_count() or 1) // threads))


@task(name="fold-lgg", cache_policy=NO_CACHE)
def fold_task(store: str, config: dict[str, Any], fold: Fold, label: str, classifier: dict[str, Any] | None = None,
              classifier_dir: str | None = None) -> dict[str, Any]:
    """One fold in this process (:func:`training.crossval.run_fold`), its progress to the run log and the CLI's bar."""
    from flows.train import recipe_progress
    from training.crossval import run_fold

    i, train_ids, held_out = fold
    return run_fold(store, config, train_ids, held_out, i, progress=recipe_progress(label), classifier=classifier, classifier_dir=classifier_dir)


def _fold_on_worker(store: str, config: dict[str, Any], fold: Fold, classifier: dict[str, Any] | None,
                    classifier_dir: str | None) -> dict[str, Any]:
    """:func:`training.crossval.run_fold` on a Dask worker, its progress events sent to the client on :data:`PROGRESS_TOPIC`."""
    from distributed import get_worker

    from training.crossval import run_fold

    worker = get_worker()
    i, train_ids, held_out = fold

    def progress(event: dict[str, Any]) -> None:
        worker.log_event(PROGRESS_TOPIC, {"fold": i, "event": json.loads(json.dumps(event, default=str))})

    return run_fold(store, config, train_ids, held_out, i, progress=progress, classifier=classifier, classifier_dir=classifier_dir)


@task(name="folds-on-dask-lgg", cache_policy=NO_CACHE)
def folds_on_dask_task(store: str, config: dict[str, Any], jobs: list[Fold], workers: int, labels: dict[int, str],
                       classifier: dict[str, Any] | None = None, classifier_dirs: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Every job on a Dask LocalCluster of ``workers`` processes (one job each at a time), results in
    the order of ``jobs``; their progress reaches the run log and the CLI's bars (one per label) as if
    they trained here."""
    from dask.distributed import as_completed

    from flows.train import recipe_progress
    from pipeline.ingest.cluster import dask_client

    logger = get_run_logger()
    progress = {i: recipe_progress(labels[i]) for i, _, _ in jobs}
    results: dict[int, dict[str, Any]] = {}
    with dask_client(None, workers) as client:
        client.subscribe_topic(PROGRESS_TOPIC, lambda ev: progress[ev[1]["fold"]](ev[1]["event"]))
        futures = [client.submit(_fold_on_worker, store, config, job, classifier, (classifier_dirs or {}).get(job[0]), pure=False)
                   for job in jobs]
        for fut in as_completed(futures):
            r = fut.result()
            results[r["fold"]] = r
            logger.info("%s done in %.0f s (%d of %d trainings)", labels[r["fold"]], r["seconds"], len(results), len(jobs))
    return [results[i] for i, _, _ in jobs]


@flow(name="train_lgg", log_prints=True)
def train_lgg(workdir: str = "work/train-lgg", config: dict[str, Any] | None = None, iterations: int | None = None,
              data_dir: str | None = None, folds: int = FOLDS, seed: int = 0, final: bool = True,
              fold_workers: int | None = None, classifier: dict[str, Any] | bool | None = True) -> dict[str, Any]:
    """Ingest the LGG patients, cross-validate by patient, train the final model on all, export it.

    ``config`` replaces :data:`RECIPE_CONFIG` (a TrainConfig dict); ``iterations`` overrides it
    (a quick check: ``iterations=10``); ``data_dir`` is the folder of patient folders (default
    ``<shared data>/lgg/kaggle_3m``); ``folds`` at most the number of patients. The folds' trainings
    and the final model's (``final``) are independent: ``fold_workers`` of them run at once, each in a
    process of a Dask LocalCluster (default :func:`default_fold_workers`: 2 on 2 cores with the
    recipe's 1 torch thread; 1 runs them one after another in this process). Each training is
    seeded by the config alone, so the figures do not depend on ``fold_workers``. ``classifier``: the
    slice classifier every training also gets (True: :data:`CLASSIFIER_CONFIG`; a dict replaces it;
    False or None: none); its figures are ``summary["slice_classifier"]`` and ``["patient_classifier"]``
    and the final one is exported to ``<workdir>/model/classifier/``. Returns the pooled
    figures (``summary``), per-fold figures, timings (s: ``training_s`` is every training, folds and
    final, from first start to last end) and whether the run stayed within :data:`TIME_LIMIT_S`.
    """
    import pandas as pd

    from training.crossval import summarise

    t0 = time.perf_counter()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = str(work / "store.zarr")
    source = Path(data_dir) if data_dir else shared_data_dir() / SOURCE
    if not source.is_dir() or not any(p.is_dir() for p in source.iterdir()):
        raise FileNotFoundError(f"{source}: needs the LGG patient folders (set LESIONFLOW_SHARED_DATA to the shared data folder)")
    cfg = dict(config or RECIPE_CONFIG)
    if iterations is not None:
        cfg["iterations"] = int(iterations)
    timings: dict[str, float] = {}
    ingested = ingest_task(str(source), store)
    timings["ingest_s"] = round(time.perf_counter() - t0, 1)
    fold_cases = folds_task(store, folds, seed)
    all_cases = sorted(c for f in fold_cases for c in f)
    bank_rows: list[dict[str, Any]] = []
    bank_cfg = recipe_bank_config(cfg, seed)
    if bank_cfg is not None:  # every patient's bank once (per patient: each fold and the final model read the same)
        from flows.prepare import bank_task

        t = time.perf_counter()
        bank_rows = bank_task(store, all_cases, bank_cfg, None, 0, False)
        timings["bank_s"] = round(time.perf_counter() - t, 1)
    slice_rows: list[dict[str, Any]] = []
    case_rows: list[dict[str, Any]] = []
    per_fold: list[dict[str, Any]] = []
    jobs: list[Fold] = [(i, [c for c in all_cases if c not in held_out], list(held_out)) for i, held_out in enumerate(fold_cases)]
    labels = {i: f"fold {i + 1}/{len(jobs)}" for i, _, _ in jobs}
    if final:  # the final model (every patient, nothing held out) trains beside the folds
        labels[len(jobs)] = "final"
    everything = jobs + ([(len(jobs), list(all_cases), [])] if final else [])
    workers = default_fold_workers(cfg, len(everything)) if fold_workers is None else max(1, min(int(fold_workers), len(everything)))
    cls_cfg = dict(CLASSIFIER_CONFIG) if classifier is True else (dict(classifier) if classifier else None)
    cls_dirs = {len(jobs): str(work / "classifier.partial")} if final and cls_cfg else {}
    t = time.perf_counter()
    if workers > 1:
        done = folds_on_dask_task(store, cfg, everything, workers, labels, cls_cfg, cls_dirs)
    else:
        done = [fold_task(store, cfg, job, labels[job[0]], cls_cfg, cls_dirs.get(job[0])) for job in everything]
    timings["training_s"] = round(time.perf_counter() - t, 1)
    final_model = done.pop() if final else None
    for (i, train_ids, held_out), trained in zip(jobs, done):
        slice_rows += trained["slices"]
        case_rows += trained["cases"]
        fold_summary = summarise(trained["slices"], trained["cases"])
        per_fold.append({"fold": i, "train_patients": len(train_ids), "test_patients": len(held_out), "model_version": trained["model_version"],
                         "train_s": trained["train_seconds"], "it_per_s": trained["it_per_s"], "seconds": trained["seconds"],
                         "samples_from": trained["samples_from"],
                         **{k: fold_summary[k] for k in ("dice_slices", "tversky_slices", "dice_patients", "tversky_patients", "patients_correct")},
                         "slice_auc": fold_summary["slice"]["auc"],
                         **({"classifier_slice_auc": fold_summary["slice_classifier"]["auc"]} if "slice_classifier" in fold_summary else {})})
    summary = summarise(slice_rows, case_rows)
    exported = None
    if final_model:
        from training.classify import CLASSIFIER_DIR

        extra = {CLASSIFIER_DIR: cls_dirs[len(jobs)]} if cls_dirs else None
        exported = export_task(final_model["checkpoint"], str(work / "model"), extra)
        if cls_dirs:
            shutil.rmtree(cls_dirs[len(jobs)], ignore_errors=True)
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    within = timings["total_s"] <= TIME_LIMIT_S
    pd.DataFrame(slice_rows).to_csv(work / "crossval_slices.csv", index=False)
    pd.DataFrame(case_rows).to_csv(work / "crossval_cases.csv", index=False)
    threads = int(cfg.get("threads") or os.environ.get("LESIONFLOW_TORCH_THREADS") or os.cpu_count() or 1)
    out = {"workdir": str(work), "store": store, "model_dir": exported, "final_model_version": final_model["model_version"] if final_model else None,
           "train_config": cfg, "classifier_config": cls_cfg, "ingest": ingested, "bank": _bank_summary(bank_cfg, bank_rows), "folds": per_fold, "summary": summary, "cases": case_rows, "timings": timings,
           "within_limit": within, "time_limit_s": TIME_LIMIT_S, "threads": threads, "fold_workers": workers, "load_average": list(os.getloadavg())}
    (work / "crossval.json").write_text(json.dumps(out, indent=1, default=float))
    create_table_artifact(per_fold, key="train-lgg-crossval", description=f"{len(fold_cases)}-fold cross-validation by patient")
    if final_model:
        out["final_samples_from"] = final_model["samples_from"]
    print(f"train_lgg: {len(fold_cases)} folds over {len(all_cases)} patients in {timings['total_s'] / 60:.1f} min "
          f"({'within' if within else 'OVER'} the {TIME_LIMIT_S // 60} min limit); slice AUC {summary['slice']['auc']:.3f}"
          + (f" (slice classifier {summary['slice_classifier']['auc']:.3f})" if "slice_classifier" in summary else "") + f"; model → {exported}")
    return out


def _bank_summary(bank_cfg: dict[str, Any] | None, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the recipe's bank step did: config hash, cases built / up to date, samples, MB, build seconds (total and per patient)."""
    if bank_cfg is None:
        return None
    built = [r for r in rows if r["status"] == "built"]
    seconds = [float(r["seconds"]) for r in built]
    return {"config": bank_cfg, "bank_config_hash": rows[0]["bank_config_hash"] if rows else None, "cases": len(rows), "built": len(built),
            "up_to_date": len(rows) - len(built), "samples": sum(int(r["n_samples"]) for r in rows),
            "mb": round(sum(r["image_bytes"] + r["label_bytes"] for r in rows) / 1e6, 2), "build_s": round(sum(seconds), 1),
            "build_s_per_patient": round(sum(seconds) / len(seconds), 2) if seconds else None}
