"""Flow ``promote``: point a store's alias (``production`` by default) at a model version.

Run through its deployment, the completed run triggers the ``rescore-archive`` deployment
(``deploy/prefect.yaml``): the archive is re-scored with the newly promoted model. The same
alias change without a flow is ``lesionflow models --store STORE --alias production VERSION``
(which re-scores nothing by itself).
"""

from __future__ import annotations

from typing import Any

from prefect import flow


@flow(name="promote", log_prints=True)
def promote(store: str, model: str = "latest", alias: str = "production", note: str | None = None) -> dict[str, Any]:
    """Set ``alias`` to ``model`` (a version, ``latest`` or another alias, resolved now); returns the history entry."""
    from training.checkpoint import resolve_model_dir, resolve_model_version
    from training.registry import set_alias

    version = resolve_model_version(resolve_model_dir(model, store))
    entry = set_alias(store, alias, version, note=note)
    print(f"promote: {alias} → {version} (was {entry['previous']})")
    return entry
