"""Flow ``score``: sliding-window inference over a store's cases, masks written back, lesion tables.

``model`` is a model version, an alias (``models/aliases.json``), ``"latest"``, or a model
folder/file anywhere; left out, the store's ``production`` alias (:mod:`training.registry`).

Re-scoring an archive: the cases still to score are found by a query over the catalog and the
``case_volumes`` table (:func:`pipeline.lesions.archive.unscored_cases`), not by opening every
case. They are scored in batches (:func:`training.infer.score_batch`) on Dask worker processes
(one torch and one SimpleITK thread each; a LocalCluster of ``n_workers``, or a scheduler at
``dask_address``), or in this process when there is a single batch or ``n_workers=0`` (one device,
the GPU when there is one: there a reader thread reads the next case and a writer thread writes the
previous one while a case is inferred, :func:`training.infer.score_cases`). Every
``flush_every`` cases the rows go to the lesion tables as new parts, reading nothing stored
before, so an interrupted run keeps what it finished and the next run resumes from the query;
the tables' exports (``tables/*.parquet``, ``.csv``) are rewritten once at the end
(``export=False`` leaves them to a later run or ``finish_lesion_tables``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import batches

ARTIFACT_ROWS = 200
"""Case rows shown in the ``lesion-volumes`` artefact (a run of 10 000 cases would not be read there)."""


@task(name="predict-batch", cache_policy=NO_CACHE)
def predict_batch(store: str, model: str, case_ids: list[str], overwrite: bool) -> list[dict[str, Any]]:
    from training.infer import score_cases

    return score_cases(store, model, case_ids=case_ids, overwrite=overwrite)


@task(name="lesion-tables", cache_policy=NO_CACHE)
def tables_task(store: str, model_version: str, connectivity: int, min_lesion_mm3: float) -> dict[str, Any]:
    from pipeline.lesions.tables import write_lesion_tables

    out = write_lesion_tables(store, model_version, connectivity=connectivity, min_size_mm3=min_lesion_mm3)
    return {"paths": out["paths"], "case_volumes": out["case_volumes"].to_dict(orient="records")}


@task(name="find-unscored", cache_policy=NO_CACHE)
def unscored_task(store: str, model_version: str, channels: list[str], overwrite: bool, case_ids: list[str] | None) -> list[str]:
    """The cases ``model_version`` has still to score (a query over catalog and tables), within ``case_ids`` when given."""
    from pipeline.lesions.archive import unscored_cases

    todo = unscored_cases(store, model_version, channels, overwrite=overwrite)
    if case_ids is not None:
        wanted = set(case_ids)
        todo = [c for c in todo if c in wanted]
    return todo


def run_batches(store: str, model_dir: str, groups: list[list[str]], overwrite: bool = False, connectivity: int = 26,
                min_lesion_mm3: float = 0.0, n_workers: int = 2, dask_address: str | None = None, flush_every: int = 64,
                client: Any = None, log: Callable[[str], None] | None = None, prefetch: bool | None = None) -> dict[str, Any]:
    """Score the batches ``groups`` (lists of case ids) with the model folder ``model_dir`` and add
    the lesion rows as table parts every ``flush_every`` cases (and once at the end); the plain
    function behind the ``score-batches`` task.

    Where: on ``client`` (a connected Dask client) when given; else in this process for one batch
    or ``n_workers=0`` without ``dask_address``; else on a scheduler at ``dask_address`` or a
    LocalCluster of ``n_workers`` processes (one torch thread each). In this process (one device:
    the GPU when there is one) the cases are scored ``flush_every`` at a time (not by batch) with the
    prefetching reader (:func:`training.infer.score_cases`; ``prefetch`` None: its default, False: off); on Dask
    workers without it (a worker is one core). Returns the counts by status
    (``scored``, ``exists``, ``skipped``), ``parts`` added and ``skipped_cases`` with reasons.
    """
    from pipeline.lesions.tables import append_lesion_rows
    from training.infer import score_batch

    total = sum(len(g) for g in groups)
    pending: dict[str, list[dict[str, Any]]] = {"case_rows": [], "lesion_rows": []}
    counts = {"scored": 0, "exists": 0, "skipped": 0, "parts": 0}
    skipped: list[dict[str, str]] = []
    done = 0

    def flush() -> None:
        if pending["case_rows"]:
            append_lesion_rows(store, pending["case_rows"], pending["lesion_rows"], finish=False)
            counts["parts"] += 1
            pending["case_rows"], pending["lesion_rows"] = [], []

    def take(out: dict[str, Any]) -> None:
        nonlocal done
        for r in out["results"]:
            counts[r["status"]] += 1
            if r["status"] == "skipped":
                skipped.append({"case_id": r["case_id"], "reason": r.get("reason", "")})
        pending["case_rows"].extend(out["case_rows"])
        pending["lesion_rows"].extend(out["lesion_rows"])
        done += len(out["results"])
        if log is not None:
            log(f"score: {done}/{total} cases")
        if len(pending["case_rows"]) >= flush_every:
            flush()

    def on(c: Any) -> None:
        from dask.distributed import as_completed

        # a Dask worker is one core (one torch thread): no reader and writer threads beside it
        futures = [c.submit(score_batch, store, model_dir, group, overwrite, connectivity, min_lesion_mm3, 1, "cpu", False if prefetch is None else prefetch, pure=False)
                   for group in groups]
        for fut in as_completed(futures):
            take(fut.result())

    if client is not None:
        on(client)
    elif len(groups) <= 1 or (n_workers == 0 and not dask_address):
        # one pipeline per flush_every cases rather than per batch: the prefetching reader keeps
        # reading ahead across the batches (the rows still go out every flush_every cases)
        for chunk in batches([c for g in groups for c in g], max(1, flush_every)):
            take(score_batch(store, model_dir, chunk, overwrite, connectivity, min_lesion_mm3, threads=None, prefetch=prefetch))
    else:
        from pipeline.ingest.cluster import dask_client

        with dask_client(dask_address, max(1, min(n_workers, len(groups)))) as c:
            on(c)
    flush()
    return {**counts, "skipped_cases": skipped}


@task(name="score-batches", cache_policy=NO_CACHE)
def score_batches(store: str, model_dir: str, groups: list[list[str]], overwrite: bool, connectivity: int, min_lesion_mm3: float,
                  n_workers: int, dask_address: str | None, flush_every: int, prefetch: bool | None = None) -> dict[str, Any]:
    """:func:`run_batches` as a task, logging progress to the run."""
    logger = get_run_logger()
    return run_batches(store, model_dir, groups, overwrite, connectivity, min_lesion_mm3, n_workers, dask_address, flush_every,
                       log=logger.info, prefetch=prefetch)


@task(name="export-tables", cache_policy=NO_CACHE)
def export_task(store: str) -> dict[str, Any]:
    from pipeline.lesions.tables import finish_lesion_tables

    return finish_lesion_tables(store)


@flow(name="score", log_prints=True)
def score(store: str, model: str | None = None, connectivity: int = 26, min_lesion_mm3: float = 0.0, batch_size: int = 8,
          overwrite: bool = False, case_ids: list[str] | None = None, n_workers: int = 2, dask_address: str | None = None,
          flush_every: int = 64, export: bool = True, model_optional: bool = False, prefetch: bool | None = None) -> dict[str, Any]:
    """Score the cases of ``store`` that ``model`` has not scored yet (a version or alias in the store,
    ``latest``, or a model folder/file; default: the store's ``production`` alias).

    Masks go to ``cases/<id>/labels/prediction-<model_version>/0`` (NGFF labels); tables to ``tables/``
    (see the module docstring for how the work is found, spread and written). ``overwrite`` re-scores
    every case; ``case_ids`` limits the run to those cases. ``connectivity`` (6/18/26) and
    ``min_lesion_mm3`` (mm³) shape the lesion tables. ``model_optional``: with no ``model`` and no
    ``production`` alias yet, score nothing instead of failing (the chain after an ingest, before any
    model was promoted). ``prefetch``: in this process (``n_workers=0``, or a single batch), overlap
    reading, inference and writing (:func:`training.infer.score_cases`); None: on a GPU, and on the
    CPU when torch leaves a core free (:func:`training.infer.default_prefetch`;
    ``$LESIONFLOW_SCORE_PREFETCH=0`` on the worker turns it off), False: off; on Dask CPU workers it
    stays off unless True.

    Returns ``model_version``, ``scored`` (cases newly scored), ``measured`` (cases whose rows were
    added: newly scored, or holding the mask from an interrupted run), ``skipped`` (with reasons in
    ``skipped_cases``), ``parts`` (table parts added), ``tables`` (locations) and ``case_volumes``
    (the model's current rows, one per case).
    """
    from pipeline.lesions.archive import model_case_volumes
    from pipeline.store import table_exports
    from training.checkpoint import read_model_info, resolve_model_dir, resolve_model_version
    from training.registry import default_model

    if model is None:
        from training.checkpoint import CheckpointError

        try:
            model = default_model(store)
        except CheckpointError as exc:
            if not model_optional:
                raise
            print(f"score: nothing scored: {exc}")
            return {"model_version": None, "scored": 0, "measured": 0, "skipped": 0, "skipped_cases": [], "parts": 0,
                    "tables": {name: table_exports(store, name) for name in ("case_volumes", "lesions")}, "case_volumes": []}
    model_dir = str(resolve_model_dir(model, store))  # an alias is read once: every batch scores with the same model
    model_version = resolve_model_version(model_dir)
    channels = list(read_model_info(model_dir).get("channels") or [])
    todo = unscored_task(store, model_version, channels, overwrite, case_ids)
    print(f"score: {len(todo)} cases to score with {model_version}")
    counts = score_batches(store, model_dir, batches(todo, batch_size), overwrite, connectivity, min_lesion_mm3, n_workers,
                           dask_address, max(1, flush_every), prefetch)
    measured = counts["scored"] + counts["exists"]
    if export and counts["parts"]:
        tables = export_task(store)
    else:
        tables = {name: table_exports(store, name) for name in ("case_volumes", "lesions")}
    rows = model_case_volumes(store, model_version).to_dict(orient="records")
    create_table_artifact(
        rows[:ARTIFACT_ROWS],
        key="lesion-volumes",
        description=f"lesion volumes by {model_version}" + (f" (first {ARTIFACT_ROWS} of {len(rows)} cases)" if len(rows) > ARTIFACT_ROWS else ""),
    )
    print(f"score: {counts['scored']} cases scored, {measured} measured, {counts['skipped']} skipped with {model_version}; "
          f"{counts['parts']} table parts added; tables → {tables['case_volumes']['csv']}")
    return {"model_version": model_version, "scored": counts["scored"], "measured": measured, "skipped": counts["skipped"],
            "skipped_cases": counts["skipped_cases"], "parts": counts["parts"], "tables": tables, "case_volumes": rows}
