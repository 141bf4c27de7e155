"""Flow ``export``: stored cases and their predictions as a BIDS-derivatives tree (``lesionflow export``)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from flows.common import batches


@task(name="export-cases", cache_policy=NO_CACHE)
def export_batch(store: str, out: str, case_ids: list[str], models: list[str] | None, channels: bool) -> list[dict[str, Any]]:
    from pipeline.export.bids import export_case

    return [export_case(store, case_id, out, models, channels=channels) for case_id in case_ids]


@task(name="export-dataset-files", cache_policy=NO_CACHE)
def dataset_files(store: str, out: str, exports: list[dict[str, Any]]) -> list[str]:
    from pipeline.export.bids import write_dataset_files

    return write_dataset_files(store, out, exports)


@flow(name="export", log_prints=True)
def export(store: str, out: str, case_ids: list[str] | None = None, models: list[str] | None = None, channels: bool = True,
           batch_size: int = 8) -> dict[str, Any]:
    """Export ``case_ids`` (default every case) with the predictions of ``models`` (versions or
    ``latest``; default every model that scored a case) to ``OUT/derivatives/lesionflow``."""
    from pipeline.export.bids import derivatives_root, resolve_models
    from pipeline.store import list_cases

    ids = list(case_ids) if case_ids else list_cases(store)
    wanted = resolve_models(store, models)
    exports = [e for batch in export_batch.map(unmapped(store), unmapped(out), batches(ids, batch_size), unmapped(wanted),
                                               unmapped(channels)).result() for e in batch]
    files = dataset_files(store, out, exports)
    skipped = [s for e in exports for s in e["skipped"]]
    root = derivatives_root(out)
    print(f"export: {len(exports)} cases → {root}" + (f" ({len(skipped)} skipped items)" if skipped else ""))
    return {"root": str(root), "cases": len(exports), "files": len(files) + sum(len(e["files"]) for e in exports),
            "models": sorted({v for e in exports for v in e["models"]}), "skipped": skipped}
