"""Flow ``train``: train the 3-D U-Net on a store's labelled cases; checkpoint with a model version.

Parameters stay plain JSON values (Prefect deployments and the UI pass them as JSON): ``config``
is a :class:`training.config.TrainConfig` as a dict (absent keys take the defaults), and a few
common settings may be given on their own; a setting given on its own wins over ``config``.

Example:
    >>> train("/data/ms.zarr", config={"iterations": 2000, "optim": {"lr": 1e-3}}, seed=1)  # doctest: +SKIP
    {'model_version': 'unet3d-…', 'checkpoint': '/data/ms.zarr/models/unet3d-…', 'metrics': {…}, 'train_config': {…}}
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

if TYPE_CHECKING:
    from training.config import TrainConfig


def train_config(config: dict[str, Any] | None = None, *, iterations: int | None = None, patch_size: int | None = None,
                 batch_size: int | None = None, seed: int | None = None, channels: list[str] | None = None,
                 val_fraction: float | None = None) -> TrainConfig:
    """``config`` (a TrainConfig dict) with the settings that are not None applied; validated.

    ``patch_size`` is one edge for a cubic patch; ``channels=None`` keeps the config's (by default
    the store's channels).
    """
    from training.config import make_config

    given = {
        "iterations": iterations,
        "patch_zyx": (patch_size,) * 3 if patch_size is not None else None,
        "batch_size": batch_size,
        "seed": seed,
        "channels": tuple(channels) if channels is not None else None,
        "val_fraction": val_fraction,
    }
    return make_config(config, **{k: v for k, v in given.items() if v is not None})


@task(name="train-unet", cache_policy=NO_CACHE)
def train_task(store: str, config: dict[str, Any]) -> dict[str, Any]:
    from training.loop import train as train_loop

    logger = get_run_logger()
    result = train_loop(
        store,
        config,
        progress=lambda info: logger.info("train %s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items()}),
    )
    return {"model_version": result.model_version, "checkpoint": str(result.checkpoint_path), "metrics": result.metrics,
            "train_config": result.config.model_dump(mode="json") if result.config is not None else config}


@flow(name="train", log_prints=True)
def train(store: str, config: dict[str, Any] | None = None, iterations: int | None = None, patch_size: int | None = None,
          batch_size: int | None = None, seed: int | None = None, channels: list[str] | None = None,
          val_fraction: float | None = None) -> dict[str, Any]:
    """Train on the store (CUDA when present, CPU otherwise); returns model version, metrics and the config as used.

    ``config`` is a TrainConfig as a dict; ``iterations``, ``patch_size`` (cube edge), ``batch_size``,
    ``seed``, ``channels`` (default: the store's) and ``val_fraction`` override it when given.
    """
    cfg = train_config(config, iterations=iterations, patch_size=patch_size, batch_size=batch_size, seed=seed,
                       channels=channels, val_fraction=val_fraction)
    out = train_task(store, cfg.model_dump(mode="json"))
    create_markdown_artifact(
        f"# Model {out['model_version']}\n\ncheckpoint: `{out['checkpoint']}`\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in out["metrics"].items() if not isinstance(v, (list, dict)))
        + f"\n\n## Training config\n\n```json\n{json.dumps(out['train_config'], indent=2)}\n```\n",
        key="trained-model",
    )
    print(f"train: model {out['model_version']} → {out['checkpoint']}")
    return out
