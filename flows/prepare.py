"""Flow ``prepare``: class-balanced patch indices for every labelled case of a store."""

from __future__ import annotations

from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from flows.common import batches


@task(name="patch-index-batch", cache_policy=NO_CACHE)
def index_batch(store: str, case_ids: list[str], patch_size: int, n_lesion: int, n_background: int, seed: int) -> list[dict[str, Any]]:
    from pipeline.prepare.patches import write_patch_index

    out = []
    for case_id in case_ids:
        info = write_patch_index(store, case_id, (patch_size,) * 3, n_lesion=n_lesion, n_background=n_background, seed=seed)
        out.append({"case_id": case_id, **{k: v for k, v in info.items() if isinstance(v, (int, float, str))}})
    return out


@flow(name="prepare", log_prints=True)
def prepare(store: str, patch_size: int = 48, n_lesion: int = 512, n_background: int = 512, seed: int = 0, batch_size: int = 16,
            channels: list[str] | None = None) -> list[dict[str, Any]]:
    """Precompute lesion/background patch centres (seeded) for every case with a label; with
    ``channels``, only the cases holding them (a channel the store does not have is refused
    before any work)."""
    from pipeline.prepare.patches import indexable_cases

    cases = indexable_cases(store, channels)
    futures = index_batch.map(unmapped(store), batches(cases, batch_size), unmapped(patch_size), unmapped(n_lesion), unmapped(n_background), unmapped(seed))
    rows = [r for batch in futures.result() for r in batch]
    holding = f" holding {', '.join(channels)}" if channels else ""
    print(f"prepare: patch indices for {len(rows)} labelled cases{holding} (patch {patch_size}³, seed {seed})")
    return rows
