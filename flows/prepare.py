"""Flow ``prepare``: class-balanced patch indices and the augmentation bank of every labelled case of a store.

The patch index is rebuilt each run (cheap). The bank (:mod:`pipeline.prepare.bank`) is incremental:
only cases whose bank is missing or stale (another :class:`~pipeline.prepare.augment.BankConfig`,
or a case re-ingested from other sources or with another pipeline config) are built, one Dask task
per case, on an existing scheduler (``dask_address``) or a LocalCluster of ``n_workers`` processes
(``n_workers=0``: in this process). Parameters stay plain JSON values.

Example:
    >>> prepare("/data/ms.zarr", patch_size=64, bank={"samples_per_case": 32, "spatial": {"p_elastic": 0.1}})  # doctest: +SKIP
    [{'case_id': 'sub-…', 'n_lesion': 512, …, 'bank': 'built', 'bank_mb': 18.2, 'bank_seconds': 4.1}, …]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE

from flows.common import batches

if TYPE_CHECKING:
    from pipeline.prepare.augment import BankConfig


@task(name="patch-index-batch", cache_policy=NO_CACHE)
def index_batch(store: str, case_ids: list[str], patch_size: int, n_lesion: int, n_background: int, seed: int) -> list[dict[str, Any]]:
    from pipeline.prepare.patches import write_patch_index

    out = []
    for case_id in case_ids:
        info = write_patch_index(store, case_id, (patch_size,) * 3, n_lesion=n_lesion, n_background=n_background, seed=seed)
        out.append({"case_id": case_id, **{k: v for k, v in info.items() if isinstance(v, (int, float, str))}})
    return out


def bank_config(bank: dict[str, Any] | None = None, *, patch_size: int | None = None, seed: int | None = None) -> BankConfig:
    """``bank`` (a BankConfig dict; absent keys take the defaults) with the patch (cube edge) and seed
    of the run applied where the dict does not set them; validated."""
    from pipeline.prepare.augment import BankConfig

    data = dict(bank or {})
    if patch_size is not None:
        data.setdefault("patch_zyx", (patch_size,) * 3)
    if seed is not None:
        data.setdefault("seed", seed)
    return BankConfig.model_validate(data)


@task(name="augmentation-banks", cache_policy=NO_CACHE)
def bank_task(store: str, case_ids: list[str], config: dict[str, Any], dask_address: str | None, n_workers: int,
              force: bool) -> list[dict[str, Any]]:
    """Build the missing or stale banks among ``case_ids``: one Dask task per case (largest first)."""
    from pipeline.prepare.augment import BankConfig
    from pipeline.prepare.bank import ensure_bank, plan_banks

    logger = get_run_logger()
    cfg = BankConfig.model_validate(config)
    todo, fresh = plan_banks(store, cfg, case_ids, force=force)
    logger.info("augmentation banks: %d to build, %d up to date", len(todo), len(fresh))
    rows = [ensure_bank(store, c, cfg) for c in fresh]  # reads the records only
    if not todo:
        return rows
    if n_workers == 0 and not dask_address:
        for i, case_id in enumerate(todo, start=1):
            rows.append(ensure_bank(store, case_id, cfg, force=True))
            logger.info("augmentation banks: %d/%d", i, len(todo))
        return rows
    from dask.distributed import as_completed

    from pipeline.ingest.cluster import dask_client

    with dask_client(dask_address, n_workers) as client:
        futures = [client.submit(ensure_bank, store, case_id, cfg, True, pure=False) for case_id in todo]
        for i, fut in enumerate(as_completed(futures), start=1):
            rows.append(fut.result())
            logger.info("augmentation banks: %d/%d", i, len(todo))
    return rows


@flow(name="prepare", log_prints=True)
def prepare(store: str, patch_size: int = 48, n_lesion: int = 512, n_background: int = 512, seed: int = 0, batch_size: int = 16,
            channels: list[str] | None = None, bank: dict[str, Any] | None = None, samples_per_case: int | None = None,
            dask_address: str | None = None, n_workers: int = 2, force_bank: bool = False,
            ingest_run: str | None = None) -> list[dict[str, Any]]:
    """Precompute lesion/background patch centres (seeded) and the augmentation bank for every case with
    a label; with ``channels``, only the cases holding them (a channel the store does not have is refused
    before any work).

    ``bank`` is a :class:`~pipeline.prepare.augment.BankConfig` as a dict (its patch and seed default to
    ``patch_size`` and ``seed``); ``samples_per_case`` overrides its K, and 0 builds no bank.
    ``ingest_run`` (an ingest summary's ``run_id``) limits the run to the cases that ingest converted:
    the chain after an ingest (``prepare-new`` in ``deploy/prefect.yaml``) updates the new cases only.

    Returns one row per case: the patch index's counts and the bank's ``bank`` status (``built`` /
    ``up-to-date``), ``bank_mb`` (compressed) and ``bank_seconds``.
    """
    from pipeline.prepare.patches import indexable_cases

    cases = indexable_cases(store, channels)
    if ingest_run is not None:
        from pipeline.store import cases_of_run

        new = set(cases_of_run(store, ingest_run))
        cases = [c for c in cases if c in new]
    futures = index_batch.map(unmapped(store), batches(cases, batch_size), unmapped(patch_size), unmapped(n_lesion), unmapped(n_background),
                              unmapped(seed))
    rows = [r for batch in futures.result() for r in batch]
    holding = f" holding {', '.join(channels)}" if channels else ""
    holding += f" converted by ingest run {ingest_run}" if ingest_run else ""
    print(f"prepare: patch indices for {len(rows)} labelled cases{holding} (patch {patch_size}³, seed {seed})")
    if samples_per_case == 0 or not cases:
        return rows
    overrides = {} if samples_per_case is None else {"samples_per_case": samples_per_case}
    cfg = bank_config({**(bank or {}), **overrides}, patch_size=patch_size, seed=seed)
    built_rows = bank_task(store, cases, cfg.model_dump(mode="json"), dask_address, n_workers, force_bank)
    banks = {r["case_id"]: r for r in built_rows}
    for row in rows:
        b = banks.get(row["case_id"], {})
        row.update({"bank": b.get("status"), "bank_samples": b.get("n_samples"),
                    "bank_mb": round((b.get("image_bytes", 0) + b.get("label_bytes", 0)) / 1e6, 3), "bank_seconds": b.get("seconds")})
    built = [b for b in banks.values() if b["status"] == "built"]
    mb = sum(r["bank_mb"] for r in rows) / max(len(rows), 1)
    print(f"prepare: augmentation banks built for {len(built)} cases, {len(banks) - len(built)} up to date "
          f"(K={cfg.samples_per_case}, patch {'x'.join(map(str, cfg.patch_zyx))}, {cfg.dtype}, {mb:.1f} MB per case, "
          f"config {cfg.config_hash()[:12]})")
    return rows
