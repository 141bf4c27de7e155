"""Flow ``train``: train a network on a store's labelled cases (or resume a run); checkpoint with a model version.

Parameters stay plain JSON values (Prefect deployments and the UI pass them as JSON): ``config``
is a :class:`training.config.TrainConfig` as a dict (absent keys take the defaults: the network,
loss, 2-D/3-D, patch planning...), and a few common settings may be given on their own; a
setting given on its own wins over ``config``. ``resume`` continues a run from its last
checkpoint (a run id, ``"latest"`` or a model version) with the run's own config.

The training loop's progress events go to the flow run's log. A caller in the same process (the
``lesionflow train`` command's progress bar) may also receive them: :func:`progress_to`.

Example:
    >>> train("/data/ms.zarr", config={"iterations": 2000, "optim": {"lr": 1e-3}}, seed=1)  # doctest: +SKIP
    {'model_version': 'unet3d-…', 'checkpoint': '/data/ms.zarr/models/unet3d-…', 'metrics': {…}, 'train_config': {…}}
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

if TYPE_CHECKING:
    from training.config import TrainConfig

_LISTENERS: list[Callable[[dict[str, Any]], None]] = []


def listeners() -> list[Callable[[dict[str, Any]], None]]:
    """The listeners :func:`progress_to` registered (for other flows that run the training loop)."""
    return list(_LISTENERS)


@contextlib.contextmanager
def progress_to(listener: Callable[[dict[str, Any]], None]) -> Iterator[None]:
    """Also send the training events of flow runs started in this process to ``listener`` (while in the block)."""
    _LISTENERS.append(listener)
    try:
        yield
    finally:
        _LISTENERS.remove(listener)


def recipe_progress(label: str, every: int = 100) -> Callable[[dict[str, Any]], None]:
    """A ``progress`` callback for recipes that run the training loop in a task (``train_ms``,
    ``train_lgg``): every event goes to the :func:`progress_to` listeners with ``label`` added, and the run log keeps
    each non-step event and one step in ``every``, prefixed with ``label``."""
    logger = get_run_logger()
    current = list(_LISTENERS)

    def progress(event: dict[str, Any]) -> None:
        labelled = {**event, "label": label}  # trainings running at once (train_lgg's folds) keep their own bars
        for listener in current:
            listener(labelled)
        if event.get("event") != "train" or event.get("iteration", 0) % every == 0:
            logger.info("%s %s", label, {k: v for k, v in event.items() if k not in ("plan", "skipped")})

    return progress


def train_config(config: dict[str, Any] | None = None, *, iterations: int | None = None, patch_size: int | None = None,
                 batch_size: int | None = None, seed: int | None = None, channels: list[str] | None = None,
                 val_fraction: float | None = None) -> TrainConfig:
    """``config`` (a TrainConfig dict) with the settings that are not None applied; validated.

    ``patch_size`` is one edge for a cubic patch (in 2-D: a square slice ``(1, p, p)``);
    ``channels=None`` keeps the config's (by default the store's channels).
    """
    from training.config import make_config

    base = make_config(config)
    patch = None
    if patch_size is not None:
        patch = (1, patch_size, patch_size) if base.spatial_dims == 2 else (patch_size,) * 3
    given = {
        "iterations": iterations,
        "patch_zyx": patch,
        "batch_size": batch_size,
        "seed": seed,
        "channels": tuple(channels) if channels is not None else None,
        "val_fraction": val_fraction,
    }
    return make_config(base, **{k: v for k, v in given.items() if v is not None})


@task(name="train-network", cache_policy=NO_CACHE)
def train_task(store: str, config: dict[str, Any] | None, resume: str | None = None) -> dict[str, Any]:
    from training.loop import train as train_loop

    logger = get_run_logger()
    listeners = list(_LISTENERS)
    logged = {"n": 0}

    def progress(info: dict[str, Any]) -> None:
        for listener in listeners:
            listener(info)
        if info.get("event") == "train":
            logged["n"] += 1
            if listeners and logged["n"] % 10:
                return  # a progress bar shows every step; the log keeps one in ten
        logger.info("train %s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items() if k != "plan"})

    if resume is not None:
        result = train_loop(store, resume_run=resume, progress=progress)
    else:
        result = train_loop(store, config, progress=progress)
    return {"model_version": result.model_version, "checkpoint": str(result.checkpoint_path), "run_id": result.run_id,
            "metrics": result.metrics,
            "train_config": result.config.model_dump(mode="json") if result.config is not None else config}


@flow(name="train", log_prints=True)
def train(store: str, config: dict[str, Any] | None = None, iterations: int | None = None, patch_size: int | None = None,
          batch_size: int | None = None, seed: int | None = None, channels: list[str] | None = None,
          val_fraction: float | None = None, resume: str | None = None) -> dict[str, Any]:
    """Train on the store (CUDA when present, CPU otherwise); returns model version, run id, metrics and the config as used.

    ``config`` is a TrainConfig as a dict; ``iterations``, ``patch_size`` (cube edge; in 2-D the
    slice's in-plane edge), ``batch_size``, ``seed``, ``channels`` (default: the store's) and
    ``val_fraction`` override it when given. ``resume`` (a run id, ``"latest"`` or a model version)
    continues that run instead, with its own config: nothing else may be given then.
    """
    if resume is not None:
        given = {"config": config, "iterations": iterations, "patch_size": patch_size, "batch_size": batch_size, "seed": seed,
                 "channels": channels, "val_fraction": val_fraction}
        extra = sorted(k for k, v in given.items() if v is not None)
        if extra:
            raise ValueError(f"resume continues run {resume!r} with its own config; leave out {', '.join(extra)}")
        out = train_task(store, None, resume)
    else:
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
