"""The ``lesionflow`` command.

Imports are lazy: ``lesionflow --help``, ``convert``, ``lesions`` and ``phantom`` never import
torch or Prefect, so they start fast and work without a training stack.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(
    name="lesionflow",
    help="Raw MRI/CT study folders → Zarr store → trained model → lesion-volume tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _ensure_key(workdir: Path | None = None) -> None:
    """Make sure a pseudonymisation key is configured; the demo may create one and says so."""
    from pipeline.core.config import PSEUDONYM_KEY_ENV

    if os.environ.get(PSEUDONYM_KEY_ENV):
        return
    if workdir is None:
        _fail(f"no pseudonymisation key: set {PSEUDONYM_KEY_ENV} (e.g. `export {PSEUDONYM_KEY_ENV}=$(openssl rand -hex 32)`), keep it secret and reuse it for every ingest of a study")
    key_file = workdir / "pseudonym.key"
    workdir.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        import secrets

        key_file.write_text(secrets.token_hex(32))
        key_file.chmod(0o600)
        _console().print(f"[yellow]generated a pseudonymisation key in {key_file} (set {PSEUDONYM_KEY_ENV} for real data)[/]")
    os.environ[PSEUDONYM_KEY_ENV] = key_file.read_text().strip()


# ------------------------------------------------------------------------------- phantom
@app.command()
def phantom(
    out: Path = typer.Argument(..., help="folder to write the phantom cohort into"),
    subjects: int = typer.Option(6, "--subjects", "-n", min=1, help="number of subjects"),
    seed: int = typer.Option(0, help="random seed (same seed → identical files)"),
    spacing: float = typer.Option(1.5, help="base voxel size in mm"),
    fault: list[str] = typer.Option([], "--fault", help="plant a fault: thick_slices, missing_flair, label_offgrid, noisy"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary"),
) -> None:
    """Write a synthetic cohort (DICOM, MetaImage, NIfTI) with lesions of known volume."""
    from pipeline.phantom import make_cohort

    info = make_cohort(out, n_subjects=subjects, seed=seed, spacing_mm=spacing, faults=fault)
    payload = {"cohort": str(info.cohort_dir), "truth_cases": str(info.truth_cases_csv), "subjects": subjects, "seed": seed}
    if as_json:
        _print_json(payload)
    else:
        typer.echo(f"phantom cohort → {info.cohort_dir}\ntruth table   → {info.truth_cases_csv}")


# ------------------------------------------------------------------------------- convert
@app.command()
def convert(
    src: Path = typer.Argument(..., exists=True, file_okay=False, help="folder with DICOM series and/or volumes"),
    outdir: Path = typer.Argument(..., help="output folder for .nii.gz + .json sidecars"),
    workers: int = typer.Option(2, help="parallel processes"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary"),
) -> None:
    """Convert every image series/volume under SRC to NIfTI with a JSON sidecar (geometry kept exactly)."""
    from pipeline.io.convert import convert_tree

    summary = convert_tree(src, outdir, workers=workers)
    payload = {"converted": len(summary.converted), "rejected": len(summary.rejected), "outputs": summary.converted, "rejected_inputs": summary.rejected}
    if as_json:
        _print_json(payload)
    else:
        for item in summary.converted:
            typer.echo(f"  {item.get('output', item)}")
        for item in summary.rejected:
            typer.echo(f"  rejected {item['path']}: {item['reason']}", err=True)
        typer.echo(f"{len(summary.converted)} converted, {len(summary.rejected)} rejected → {outdir}")
    if summary.rejected and not summary.converted:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------- lesions
@app.command()
def lesions(
    mask: Path = typer.Argument(..., exists=True, dir_okay=False, help="lesion mask (NIfTI or MetaImage)"),
    connectivity: int = typer.Option(26, help="6, 18 or 26"),
    min_size_mm3: float = typer.Option(0.0, "--min-size-mm3", help="drop components smaller than this (mm³)"),
    out: Optional[Path] = typer.Option(None, help="write the per-lesion table to this CSV"),
    as_json: bool = typer.Option(False, "--json", help='print {"total_volume_ml": ..., "lesion_count": ...}'),
) -> None:
    """Lesion table of an existing mask: total volume (mL), count, per-lesion rows."""
    from pipeline.lesions.components import lesion_table
    from pipeline.io.readers import read_volume
    from pipeline.io.readers.errors import ReaderError

    if connectivity not in (6, 18, 26):
        _fail("--connectivity must be 6, 18 or 26")
    try:
        volume = read_volume(mask)
    except ReaderError as err:
        _fail(str(err))
    summary, rows = lesion_table(volume, connectivity=connectivity, min_size_mm3=min_size_mm3)
    if out is not None:
        import pandas as pd

        pd.DataFrame(rows, columns=["lesion_id", "voxels", "volume_mm3", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "bbox_min_zyx", "bbox_max_zyx"]).to_csv(out, index=False)
    if as_json:
        _print_json({"total_volume_ml": summary["total_volume_ml"], "lesion_count": summary["lesion_count"]})
        return
    typer.echo(f"{mask}: {summary['lesion_count']} lesions, {summary['total_volume_ml']:.3f} mL (connectivity {connectivity}, min {min_size_mm3} mm³)")
    for r in rows[:20]:
        typer.echo(f"  #{r['lesion_id']:<3} {r['volume_mm3']:>10.2f} mm³  centroid LPS ({r['centroid_x_mm']:.1f}, {r['centroid_y_mm']:.1f}, {r['centroid_z_mm']:.1f}) mm")
    if len(rows) > 20:
        typer.echo(f"  … {len(rows) - 20} more (use --out)")


# ------------------------------------------------------------------------------- ingest
@app.command()
def ingest(
    source: Path = typer.Argument(..., exists=True, file_okay=False, help="cohort folder to ingest"),
    store: str = typer.Option(..., "--store", help="Zarr store folder (created if missing) or URL (s3://bucket/store)"),
    config: Optional[Path] = typer.Option(None, "--config", help="pipeline configuration JSON"),
    target_spacing: Optional[str] = typer.Option(None, help="resample to this spacing, mm 'x,y,z' (default: keep the reference grid)"),
    dask_address: Optional[str] = typer.Option(None, envvar="LESIONFLOW_DASK_ADDRESS", help="existing Dask scheduler, e.g. tcp://host:8786"),
    workers: int = typer.Option(2, help="LocalCluster worker processes (ignored with --dask-address)"),
    force: bool = typer.Option(False, help="re-convert even unchanged sessions"),
    no_prefect: bool = typer.Option(False, "--no-prefect", help="run as a plain function (no Prefect flow run)"),
    as_json: bool = typer.Option(False, "--json", help="print converted/skipped/rejected counts as JSON"),
) -> None:
    """Discover studies under SOURCE and convert new or changed ones into the store."""
    _ensure_key()
    spacing = [float(s) for s in target_spacing.split(",")] if target_spacing else None
    if spacing is not None and len(spacing) != 3:
        _fail("--target-spacing needs three numbers: x,y,z in mm")
    if no_prefect:
        from pipeline.core.config import PipelineConfig, pseudonym_key
        from pipeline.ingest.session import run_ingest
        from pipeline.ingest.cluster import dask_client

        cfg = PipelineConfig.from_file(config) if config else PipelineConfig()
        if spacing:
            cfg = cfg.model_copy(update={"target_spacing": tuple(spacing)})
        with _progress() as progress, dask_client(dask_address, workers) as client:
            summary = run_ingest(source, store, cfg, pseudonym_key(), client=client, progress=progress, force=force).as_dict()
    else:
        from flows.ingest import ingest as ingest_flow

        summary = ingest_flow(str(source), str(store), config_path=str(config) if config else None, target_spacing=spacing,
                              dask_address=dask_address, n_workers=workers, force=force)
    if as_json:
        _print_json(summary)
    else:
        _print_ingest(summary)


def _print_ingest(summary: dict[str, Any]) -> None:
    typer.echo(f"{summary['converted']} converted, {summary['skipped']} up to date, {summary['rejected']} sessions rejected, "
               f"{summary.get('unused_sessions', 0)} without usable images → {summary['store']}")
    for r in summary["rejected_inputs"]:
        typer.echo(f"  rejected {r['path']}: {r['reason']}")
    for r in summary["unused_inputs"]:
        typer.echo(f"  unused   {r['path']}: {r['reason']}")


class _progress:
    """Rich progress bars fed by the library's ``progress(stage, done, total)`` callbacks."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=_console(), transient=False)
        self._p.start()
        self._tasks: dict[str, Any] = {}
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._p.add_task(stage, total=total)
        self._p.update(self._tasks[stage], completed=done, total=total)

    def __exit__(self, *exc: Any) -> None:
        self._p.stop()


# ------------------------------------------------------------------------------- prepare / train / score
def _existing_store(value: str) -> str:
    """``--store`` of the commands that read a store: a URL (``s3://bucket/store``) or an existing folder."""
    from pipeline.store import is_remote

    if not is_remote(value) and not Path(value).is_dir():
        # a plain one-line message, not click's boxed usage error: the box wraps at the terminal's
        # width, which splits the path a user wants to copy (and made CI depend on COLUMNS)
        _fail(f"--store {value} does not exist; create it with `lesionflow ingest SOURCE --store {value}`")
    return value


def _store_option(help_text: str = "store folder or URL (s3://bucket/store)") -> Any:
    return typer.Option(..., "--store", callback=_existing_store, help=help_text)


def _channels_option() -> Any:
    return typer.Option(None, "--channels", help="comma-separated modalities, e.g. FLAIR,T1 (default: the store's)")


def _channel_list(value: str | None) -> list[str] | None:
    """``--channels FLAIR,T1`` as a list; None (the store's channels) when not given."""
    if value is None:
        return None
    channels = [c.strip() for c in value.split(",") if c.strip()]
    if not channels:
        _fail("--channels needs at least one modality, e.g. FLAIR,T1")
    return channels


@app.command()
def prepare(
    store: str = _store_option(),
    patch_size: int = typer.Option(48, help="patch edge in voxels"),
    seed: int = typer.Option(0),
    channels: Optional[str] = _channels_option(),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Precompute class-balanced patch indices for every labelled case (with --channels: holding them)."""
    from pipeline.store import StoreError, resolve_channels

    wanted = _channel_list(channels)
    try:
        resolve_channels(store, wanted)  # an unknown channel: one error line, before a flow run starts
    except StoreError as exc:
        _fail(str(exc))
    from flows.prepare import prepare as prepare_flow

    rows = prepare_flow(str(store), patch_size=patch_size, seed=seed, channels=wanted)
    _print_json(rows) if as_json else typer.echo(f"patch indices written for {len(rows)} cases")


def _with_kind(section: Any, kind: str, default: str) -> dict[str, Any]:
    """A config's ``model``/``loss`` section with ``kind``: the file's settings when it is that kind, else the kind's defaults."""
    if isinstance(section, dict) and section.get("kind", default) == kind:
        return {**section, "kind": kind}
    return {"kind": kind}


class _TrainBar:
    """A rich progress bar fed by the training loop's events (start, train, val, checkpoint, early_stop, done)."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._console = _console()
        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                           TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=self._console, transient=False)
        self._p.start()
        self._task = None
        return self

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            done = event.get("resumed_from") or 0
            what = f"{event.get('network', 'unet')} {event.get('spatial_dims', 3)}-D, {event.get('loss_kind', 'dice_ce')}"
            self._p.console.print(f"training {what} on {len(event.get('train_cases') or [])} case(s), patch {event.get('patch_zyx')}, "
                                  f"batch {event.get('batch_size')}, {event.get('device')}; run {event.get('run_id')}"
                                  + (f" (resumed at iteration {done})" if event.get("resumed_from") is not None else ""), soft_wrap=True)
            self._task = self._p.add_task("train", total=event.get("iterations"), completed=done, loss="-", speed="")
        elif kind == "train" and self._task is not None:
            speed = f"{event['it_per_s']:.2f} it/s" if event.get("it_per_s") else ""
            self._p.update(self._task, completed=event["iteration"], loss=f"{event['loss']:.4f}", speed=speed)
        elif kind == "val":
            self._p.console.print(f"  validation at {event.get('iteration')}: {event.get('case_id')} Dice {event.get('dice', 0):.3f}")
        elif kind == "early_stop":
            self._p.console.print(f"  early stop at {event['iteration']}: best Dice {event['best_val_dice']:.3f} at {event['best_iteration']}")

    def __exit__(self, *exc: Any) -> None:
        self._p.stop()


@app.command()
def train(
    store: str = _store_option(),
    config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False,
                                          help="training configuration JSON (a TrainConfig; absent keys take the defaults); "
                                               "the options below override it"),
    iterations: Optional[int] = typer.Option(None, help="optimiser steps (default 300)"),
    patch_size: Optional[int] = typer.Option(None, help="patch edge in voxels (in 2-D the slice's); default: planned from the data and memory"),
    batch_size: Optional[int] = typer.Option(None, help="patches per step; default: planned"),
    seed: Optional[int] = typer.Option(None, help="seeds the weights, the sampler and the validation split (default 0)"),
    network: Optional[str] = typer.Option(None, help="unet (default), dynunet, vnet or segresnet"),
    loss: Optional[str] = typer.Option(None, help="dice_ce (default), dice, tversky, focal_tversky, focal or dice_focal"),
    dims: Optional[int] = typer.Option(None, "--dims", help="3 = 3-D patches (default), 2 = axial slices"),
    val_fraction: Optional[float] = typer.Option(None, help="hold out this fraction of the cases for validation"),
    val_every: Optional[int] = typer.Option(None, help="validate every N iterations (best weights kept)"),
    early_stop: Optional[int] = typer.Option(None, help="stop after N validations without improvement"),
    resume: Optional[str] = typer.Option(None, "--resume", help="continue a run from its last checkpoint: a run id, 'latest' or a model version"),
    no_prefect: bool = typer.Option(False, "--no-prefect", help="run as a plain function (no Prefect flow run)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train a segmentation network on the store (CUDA when available) with a progress bar; prints the model version.

    Channels are the store's unless the config names them. Example --config file:
    {"iterations": 2000, "model": {"kind": "dynunet"}, "loss": {"kind": "focal_tversky"}, "val_fraction": 0.2, "val_every": 200}
    After a crash, `lesionflow train --store S --resume latest` continues from the last checkpoint.
    """
    from pydantic import ValidationError

    from flows.train import progress_to, train_config
    from training.config import describe_errors

    given = {"--config": config, "--iterations": iterations, "--patch-size": patch_size, "--batch-size": batch_size, "--seed": seed,
             "--network": network, "--loss": loss, "--dims": dims, "--val-fraction": val_fraction, "--val-every": val_every,
             "--early-stop": early_stop}
    cfg_json: dict[str, Any] | None = None
    if resume is not None:
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            _fail(f"--resume continues the run with its own config; leave out {', '.join(extra)}")
    else:
        source = f"--config {config}" if config is not None else "training options"
        try:
            raw = json.loads(config.read_text()) if config is not None else {}
            if not isinstance(raw, dict):
                raise ValueError(f"{config}: a JSON object (a valid dictionary of TrainConfig fields) is needed, got {type(raw).__name__}")
            extra_fields: dict[str, Any] = {}
            if network is not None:
                extra_fields["model"] = _with_kind(raw.get("model"), network, "unet")
            if loss is not None:
                extra_fields["loss"] = _with_kind(raw.get("loss"), loss, "dice_ce")
            for key, value in (("spatial_dims", dims), ("val_every", val_every), ("early_stop_patience", early_stop)):
                if value is not None:
                    extra_fields[key] = value
            cfg = train_config({**raw, **extra_fields}, iterations=iterations, patch_size=patch_size, batch_size=batch_size, seed=seed,
                               val_fraction=val_fraction)
        except ValidationError as exc:
            _fail(f"{source}: {describe_errors(exc)}")
        except (OSError, ValueError) as exc:  # unreadable file or JSON
            _fail(f"{source}: {exc}")
        cfg_json = cfg.model_dump(mode="json")
    try:
        with _TrainBar() as bar, progress_to(bar):
            if no_prefect:
                from training.loop import train as train_loop

                result = train_loop(store, resume_run=resume, progress=bar) if resume is not None else train_loop(store, cfg_json, progress=bar)
                out = {"model_version": result.model_version, "checkpoint": str(result.checkpoint_path), "run_id": result.run_id,
                       "metrics": result.metrics, "train_config": result.config.model_dump(mode="json") if result.config else cfg_json}
            else:
                from flows.train import train as train_flow

                out = train_flow(str(store), config=cfg_json, resume=resume) if resume is None else train_flow(str(store), resume=resume)
    except ValueError as exc:  # no usable case, an unknown or finished run, CUDA asked for without CUDA
        _fail(str(exc))
    if as_json:
        _print_json({k: v for k, v in out.items() if k != "metrics"} | {"metrics": {k: v for k, v in out["metrics"].items() if k != "loss_history"}})
    else:
        m = out["metrics"]
        val = ""
        if m.get("val_dice") is not None:
            val = f", validation Dice {m['val_dice']:.3f} ({m.get('selected')}, iteration {m.get('best_iteration') or m.get('iterations')})"
        typer.echo(f"model {out['model_version']} → {out['checkpoint']} (run {out.get('run_id')}{val})")


@app.command()
def models(
    store: str = _store_option(),
    alias: Optional[str] = typer.Option(None, "--alias", help="an alias to set (with --model) or remove (with --remove), e.g. production"),
    model: Optional[str] = typer.Option(None, "--model", help="the model version the alias should point to"),
    remove: bool = typer.Option(False, "--remove", help="remove --alias"),
    note: Optional[str] = typer.Option(None, "--note", help="why the alias moved (kept in the alias history)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The model registry: every model in the store (metrics, training cases, data fingerprint, config hash,
    code version) and its aliases. Scoring uses the 'production' alias when no model is named.

    Set an alias: lesionflow models --store S --alias production --model VERSION
    """
    from training.checkpoint import CheckpointError
    from training.registry import registry, remove_alias, set_alias

    if alias is not None:
        if remove == (model is not None):
            _fail("--alias needs either --model VERSION (set it) or --remove")
        try:
            entry = remove_alias(store, alias) if remove else set_alias(store, alias, model, note=note)  # type: ignore[arg-type]
        except (ValueError, CheckpointError) as exc:
            _fail(str(exc))
        if as_json:
            _print_json(entry)
        else:
            moved = f"{entry['previous']} → {entry['model_version']}" if entry["previous"] else str(entry["model_version"])
            typer.echo(f"alias {alias}: {moved}")
        return
    rows = registry(store)
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        r["aliases_"] = ",".join(r["aliases"])
        r["train_cases"] = len(r["train_case_ids"])
        r["network_"] = f"{r['network']} {r['spatial_dims']}d"
        r["data"] = (r["data_fingerprint"] or "")[:12]
        r["config"] = (r["train_config_hash"] or "")[:12]
    _print_table(rows, ["model_version", "aliases_", "network_", "loss", "val_dice", "selected", "train_cases", "data", "config", "code_version"],
                 f"models in {store}", headers={"aliases_": "aliases", "network_": "network", "train_cases": "train cases", "data": "data sha",
                                                "config": "config sha", "code_version": "code"})


@app.command()
def score(
    store: str = _store_option(),
    model: Optional[str] = typer.Option(None, "--model", help="model version or alias in the store, 'latest', or a model folder / model.pt "
                                                              "(default: the 'production' alias)"),
    connectivity: int = typer.Option(26),
    min_size_mm3: float = typer.Option(0.0, "--min-size-mm3"),
    overwrite: bool = typer.Option(False, help="re-score cases already scored by this model"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score every case with MODEL (default: the store's 'production' alias) and write lesion-volume tables (Parquet + CSV)."""
    from training.checkpoint import CheckpointError

    if model is None:
        from training.registry import default_model

        try:
            model = default_model(store)
        except CheckpointError as exc:
            _fail(str(exc))
    from flows.score import score as score_flow

    try:
        out = score_flow(str(store), model, connectivity=connectivity, min_lesion_mm3=min_size_mm3, overwrite=overwrite)
    except CheckpointError as exc:
        _fail(str(exc))
    if as_json:
        _print_json(out)
    else:
        _print_table(out["case_volumes"], ["case_id", "total_volume_ml", "lesion_count"], f"lesion volumes ({out['model_version']})")
        typer.echo(f"tables → {out['tables']['case_volumes']['csv']}")


@app.command()
def report(
    store: str = _store_option(),
    channels: Optional[str] = _channels_option(),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write the data-quality report (HTML) of a store."""
    from pipeline.quality.report import build_report
    from pipeline.store import StoreError, resolve_channels

    try:
        wanted = resolve_channels(store, _channel_list(channels))
    except StoreError as exc:
        _fail(str(exc))
    result = build_report(store, channels=wanted)
    if as_json:
        _print_json({"html": str(result.html_path), "summary": result.summary, "flagged": result.flagged})
    else:
        typer.echo(f"report → {result.html_path} ({len(result.flagged)} findings)")


# ------------------------------------------------------------------------------- real-data recipe
@app.command("train-ms")
def train_ms(
    workdir: Path = typer.Option(Path("work/train-ms"), help="folder for the store, the truth table and the exported model"),
    config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False, help="a TrainConfig JSON instead of the recipe's"),
    iterations: Optional[int] = typer.Option(None, help="override the recipe's iterations (e.g. 20 for a quick check)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The real-data recipe: ingest the two MS patients of ../shared/data (open_ms MNI), train on patient07,
    evaluate on patient19, export the model to WORKDIR/model. Meant to finish within 45 min on 2 CPU cores."""
    _ensure_key(workdir.resolve())
    from flows.train import progress_to
    from flows.train_ms import TIME_LIMIT_S
    from flows.train_ms import train_ms as train_ms_flow

    cfg = json.loads(config.read_text()) if config is not None else None
    try:
        with _TrainBar() as bar, progress_to(bar):
            out = train_ms_flow(str(workdir), config=cfg, iterations=iterations)
    except FileNotFoundError as exc:
        _fail(str(exc))
    if as_json:
        _print_json({k: v for k, v in out.items() if k != "scored"})
        return
    import re

    present = list(dict.fromkeys(k for r in out["evaluation"] for k in r))
    columns = [c for c in ("patient", "split", "dice", "pred_volume_ml", "truth_volume_ml", "volume_error_pct", "pred_lesions", "truth_lesions")
               if c in present]
    # lesion-wise detection and HD95, when the evaluation gives them (pipeline.lesions.evaluation)
    columns += [c for c in present if re.search(r"(sensitivity|precision|f1|hd95)", c) and c not in columns]
    _print_table(out["evaluation"], columns, f"{out['model_version']}: trained on patient07, tested on patient19",
                 headers={"pred_volume_ml": "pred mL", "truth_volume_ml": "truth mL", "volume_error_pct": "vol err %"})
    t = out["timings"]
    verdict = "within" if out["within_limit"] else "OVER"
    _console().print(f"time: ingest {t['ingest_s']:.0f} s, train {t['train_s']:.0f} s, score {t['score_s']:.0f} s, evaluate {t['evaluate_s']:.0f} s; "
                     f"total {t['total_s'] / 60:.1f} min, {verdict} the {TIME_LIMIT_S // 60} min limit ({out['threads']} torch thread(s))\n"
                     f"model → {out['model_dir']}", soft_wrap=True)


# ------------------------------------------------------------------------------- demo
@app.command()
def demo(
    workdir: Path = typer.Option(Path("work/demo"), help="folder for the phantom, store, model and tables"),
    subjects: int = typer.Option(6, min=3, help="phantom subjects (a third are held out of training)"),
    seed: int = typer.Option(0),
    iterations: int = typer.Option(300),
    workers: int = typer.Option(2),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The whole mission on a phantom cohort: ingest → prepare → train → score → evaluate."""
    _ensure_key(workdir.resolve())
    from flows.demo import demo as demo_flow

    out = demo_flow(str(workdir), subjects=subjects, seed=seed, iterations=iterations, n_workers=workers)
    if as_json:
        _print_json(out)
        return
    _print_table(out["evaluation"], ["case_id", "split", "pred_volume_ml", "truth_volume_ml", "volume_error_pct", "pred_lesions", "truth_lesions", "dice"],
                 f"lesion volumes by {out['model_version']} vs phantom truth",
                 headers={"pred_volume_ml": "pred mL", "truth_volume_ml": "truth mL", "volume_error_pct": "vol err %",
                          "pred_lesions": "pred n", "truth_lesions": "truth n"})
    console = _console()
    console.print(f"phantom cohort : {out['cohort']}\ntruth table    : {out['truth_cases']}\nstore          : {out['store']}\n"
                  f"quality report : {out['report']}\nmodel          : {out['checkpoint']}\n"
                  f"case table     : {out['tables']['case_volumes']['csv']}\nlesion table   : {out['tables']['lesions']['csv']}", soft_wrap=True)


def _print_table(rows: list[dict[str, Any]], columns: list[str], title: str, headers: dict[str, str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column((headers or {}).get(c, c), justify="left" if c in ("case_id", "split") else "right", no_wrap=c == "case_id")
    def cell(c: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return ""
        if isinstance(v, float):
            return f"{v:.1f}" if c.endswith("_pct") else f"{v:.3f}"
        return str(v)

    for r in rows:
        table.add_row(*[cell(c, r.get(c)) for c in columns])
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))
    console.print(table)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
