"""Flow ``train``: train the 3-D U-Net on a store's labelled cases; checkpoint with a model version."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE


@task(name="train-unet", cache_policy=NO_CACHE)
def train_task(store: str, iterations: int, patch_size: int, batch_size: int, seed: int, channels: tuple[str, ...], val_fraction: float) -> dict[str, Any]:
    from training.loop import train as train_loop

    logger = get_run_logger()
    result = train_loop(
        store,
        channels=channels,
        patch_zyx=(patch_size,) * 3,
        batch_size=batch_size,
        iterations=iterations,
        seed=seed,
        val_fraction=val_fraction,
        progress=lambda info: logger.info("train %s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items()}),
    )
    return {"model_version": result.model_version, "checkpoint": str(result.checkpoint_path), "metrics": result.metrics}


@flow(name="train", log_prints=True)
def train(store: str, iterations: int = 300, patch_size: int = 48, batch_size: int = 2, seed: int = 0,
          channels: list[str] | None = None, val_fraction: float = 0.0) -> dict[str, Any]:
    """Train on the store (CUDA when present, CPU otherwise); returns model version and metrics."""
    out = train_task(store, iterations, patch_size, batch_size, seed, tuple(channels or ("FLAIR", "T1", "T2")), val_fraction)
    create_markdown_artifact(
        f"# Model {out['model_version']}\n\ncheckpoint: `{out['checkpoint']}`\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in out["metrics"].items() if not isinstance(v, (list, dict))),
        key="trained-model",
    )
    print(f"train: model {out['model_version']} → {out['checkpoint']}")
    return out
