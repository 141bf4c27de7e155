"""The ``lesionflow`` command.

Imports are lazy: ``lesionflow --help``, ``convert``, ``lesions``, ``compare`` and ``phantom`` never
import torch or Prefect, so they start fast and work without a training stack.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

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
    """``payload`` as strict JSON on stdout (NaN → null, numpy/Path/datetime → plain values)."""
    from pipeline.core.jsonable import to_jsonable

    typer.echo(json.dumps(to_jsonable(payload), indent=2, allow_nan=False))


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
        _console().print(f"[yellow]generated a pseudonymisation key in {key_file} (set {PSEUDONYM_KEY_ENV} for real data)[/]", soft_wrap=True)
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
    out: Path | None = typer.Option(None, help="write the per-lesion table to this CSV"),
    as_json: bool = typer.Option(False, "--json", help='print {"total_volume_ml": ..., "lesion_count": ...}'),
) -> None:
    """Lesion table of an existing mask: total volume (mL), count, per-lesion rows."""
    from pipeline.io.readers import read_volume
    from pipeline.io.readers.errors import ReaderError
    from pipeline.lesions.components import lesion_table

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
    config: Path | None = typer.Option(None, "--config", help="pipeline configuration JSON"),
    target_spacing: str | None = typer.Option(None, help="resample to this spacing, mm 'x,y,z' (default: keep the reference grid)"),
    dask_address: str | None = typer.Option(None, envvar="LESIONFLOW_DASK_ADDRESS", help="existing Dask scheduler, e.g. tcp://host:8786"),
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
        from pipeline.core.config import load_config, pseudonym_key
        from pipeline.ingest import run_ingest
        from pipeline.ingest.cluster import dask_client

        cfg = load_config(config, target_spacing=tuple(spacing) if spacing else None, dask_address=dask_address, n_workers=workers)
        with _progress() as progress, dask_client(cfg.dask_address, cfg.n_workers, memory_limit=cfg.worker_memory_limit) as client:
            summary = run_ingest(source, store, cfg, pseudonym_key(), client=client, progress=progress, force=force).as_dict()
    else:
        from flows.ingest import ingest as ingest_flow
        from flows.ingest import seal_source

        # the flow run's parameters are kept in Prefect's database: the folder goes there sealed
        summary = ingest_flow(seal_source(source), str(store), config_path=str(config) if config else None, target_spacing=spacing,
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
    if summary["rejected_inputs"] or summary["unused_inputs"]:
        typer.echo(f"inputs are named by sealed path (src:…); `lesionflow lineage --store {summary['store']} --inputs` lists them "
                   "with their paths (needs the pseudonymisation key)")


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


# ------------------------------------------------------------------------------- lineage
@app.command()
def lineage(
    targets: list[str] = typer.Argument(None, help="case ids and/or sealed paths (src:…, root:…) to resolve"),
    store: str | None = typer.Option(None, "--store", help="store folder or URL (needed for case ids and --inputs)"),
    inputs: bool = typer.Option(False, "--inputs", help="also list every rejected and unused input of the store"),
    as_json: bool = typer.Option(False, "--json", help="print the resolved paths as JSON"),
) -> None:
    """Resolve cases or sealed paths back to their source files (needs the pseudonymisation key).

    The store, the catalog, reports, logs and JSON output name source files by sealed path only;
    with LESIONFLOW_PSEUDONYM_KEY set to the key the store was ingested with, this opens them.
    A different key is refused (exit 2); it never yields a wrong path.
    """
    _ensure_key()
    from pipeline.core.config import pseudonym_key
    from pipeline.core.lineage import LineageKeyError, is_sealed
    from pipeline.ingest.lineage import case_lineage, input_lineage, open_token
    from pipeline.store import StoreError

    targets = list(targets or [])
    if not targets and not inputs:
        _fail("name a case id or a sealed path (src:…/root:…), or give --inputs")
    if (inputs or any(not is_sealed(t) for t in targets)) and store is None:
        _fail("--store is needed to resolve a case id or list --inputs")
    if store is not None:
        _existing_store(store)
    key = pseudonym_key()
    out: dict[str, Any] = {"cases": [], "tokens": [], "inputs": None}
    try:
        for t in targets:
            if is_sealed(t):
                out["tokens"].append({"token": t, "path": open_token(t, key)})
            else:
                out["cases"].append(case_lineage(store, t, key))
        if inputs:
            out["inputs"] = input_lineage(store, key)
    except LineageKeyError as exc:
        _fail(f"{exc}; nothing resolved")
    except StoreError as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        _print_json(out)
        return
    for t in out["tokens"]:
        typer.echo(f"{t['token']}\n  {t['path']}")
    for c in out["cases"]:
        typer.echo(f"{c['case_id']}  (ingest folder: {c['source_root'] or 'not recorded'})")
        for f in c["files"]:
            typer.echo(f"  {f['role']:<8} {f['path']}  sha256 {f['sha256'][:16]}  {f['size_bytes']} B")
        for i in c["inputs"]:
            typer.echo(f"  {i['role']:<8} {i['path']}: {i['reason']}")
    for i in out["inputs"] or []:
        typer.echo(f"{i['role']:<8} {i['absolute'] or i['path']}  [{i['code']}] {i['reason']}")


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
    patch_size: int = typer.Option(48, help="patch edge in voxels (patch index and augmentation bank)"),
    seed: int = typer.Option(0),
    channels: str | None = _channels_option(),
    samples_per_case: int | None = typer.Option(None, "--samples-per-case", min=0,
                                                   help="augmented samples stored per case (default 64; 0: no augmentation bank)"),
    bank_config: Path | None = typer.Option(None, "--bank-config", exists=True, dir_okay=False,
                                               help="augmentation bank configuration JSON (a BankConfig; absent keys take the defaults)"),
    workers: int = typer.Option(2, help="Dask LocalCluster worker processes for the bank (0: in this process)"),
    dask_address: str | None = typer.Option(None, envvar="LESIONFLOW_DASK_ADDRESS", help="existing Dask scheduler, e.g. tcp://host:8786"),
    force: bool = typer.Option(False, help="rebuild every augmentation bank, even up-to-date ones"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Precompute class-balanced patch indices and the augmentation bank for every labelled case (with --channels: holding them).

    The bank is incremental: only new cases, re-ingested cases and a changed bank configuration are built.
    """
    from pydantic import ValidationError

    from pipeline.store import StoreError, resolve_channels

    wanted = _channel_list(channels)
    try:
        resolve_channels(store, wanted)  # an unknown channel: one error line, before a flow run starts
    except StoreError as exc:
        _fail(str(exc))
    from flows.prepare import bank_config as make_bank_config
    from flows.prepare import prepare as prepare_flow
    from training.config import describe_errors

    try:
        bank = json.loads(bank_config.read_text()) if bank_config is not None else None
        make_bank_config(bank, patch_size=patch_size, seed=seed)  # refused here, with the field, not in a worker
    except ValidationError as exc:
        _fail(f"--bank-config {bank_config}: {describe_errors(exc)}")
    except (OSError, ValueError) as exc:
        _fail(f"--bank-config {bank_config}: {exc}")
    rows = prepare_flow(str(store), patch_size=patch_size, seed=seed, channels=wanted, bank=bank, samples_per_case=samples_per_case,
                        dask_address=dask_address, n_workers=workers, force_bank=force)
    if as_json:
        _print_json(rows)
        return
    built = sum(r.get("bank") == "built" for r in rows)
    banks = f"; augmentation banks: {built} built, {sum(r.get('bank') == 'up-to-date' for r in rows)} up to date" if samples_per_case != 0 else ""
    typer.echo(f"patch indices written for {len(rows)} cases{banks}")


@app.command("augment-preview")
def augment_preview(
    store: str = _store_option(),
    case: str = typer.Option(..., "--case", help="case id (see `lesionflow prepare --json`)"),
    out: Path | None = typer.Option(None, "--out", help="PNG to write (default: augment-preview-<case>.png here)"),
    samples: int = typer.Option(16, "--samples", min=1, help="samples shown (lesion-centred first)"),
    channel: str | None = typer.Option(None, "--channel", help="channel shown (default: the first stored)"),
    columns: int = typer.Option(8, min=1),
) -> None:
    """Write a PNG grid of a case's augmented samples with the label outlined in red."""
    from pipeline.core.png import png_bytes
    from pipeline.prepare.bank import read_bank
    from pipeline.prepare.preview import bank_grid
    from pipeline.store import StoreError

    try:
        bank = read_bank(store, case)
        if bank is None:
            _fail(f"case {case} has no augmentation bank; build it with `lesionflow prepare --store {store}`")
        if channel is not None and channel not in bank.channels:
            _fail(f"--channel {channel}: the bank holds {bank.channels}")
        rgb = bank_grid(store, case, n_samples=samples, channel=channel, columns=columns)
    except StoreError as exc:
        _fail(str(exc))
    target = out or Path(f"augment-preview-{case}.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png_bytes(rgb))
    typer.echo(f"{min(samples, bank.n_samples)} of {bank.n_samples} samples of {case} → {target} "
               f"({bank.n_lesion} lesion-centred, {bank.bytes_stored / 1e6:.1f} MB stored)")


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
        self._tasks: dict[str, Any] = {}
        return self

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        label = event.get("label") or "train"  # one bar per training (a recipe's folds can train at once)
        prefix = f"{label}: " if event.get("label") else ""
        if kind == "start":
            done = event.get("resumed_from") or 0
            what = f"{event.get('network', 'unet')} {event.get('spatial_dims', 3)}-D, {event.get('loss_kind', 'dice_ce')}"
            self._p.console.print(f"{prefix}training {what} on {len(event.get('train_cases') or [])} case(s), patch {event.get('patch_zyx')}, "
                                  f"batch {event.get('batch_size')}, {event.get('device')}; run {event.get('run_id')}"
                                  + (f" (resumed at iteration {done})" if event.get("resumed_from") is not None else ""), soft_wrap=True)
            self._tasks[label] = self._p.add_task(label, total=event.get("iterations"), completed=done, loss="-", speed="")
        elif kind == "train" and label in self._tasks:
            speed = f"{event['it_per_s']:.2f} it/s" if event.get("it_per_s") else ""
            self._p.update(self._tasks[label], completed=event["iteration"], loss=f"{event['loss']:.4f}", speed=speed)
        elif kind == "val":
            self._p.console.print(f"  validation at {event.get('iteration')}: {event.get('case_id')} Dice {event.get('dice', 0):.3f}")
        elif kind == "early_stop":
            self._p.console.print(f"  early stop at {event['iteration']}: best Dice {event['best_val_dice']:.3f} at {event['best_iteration']}")

    def __exit__(self, *exc: Any) -> None:
        self._p.stop()


@app.command()
def train(
    store: str = _store_option(),
    config: Path | None = typer.Option(None, "--config", exists=True, dir_okay=False,
                                          help="training configuration JSON (a TrainConfig; absent keys take the defaults); "
                                               "the options below override it"),
    iterations: int | None = typer.Option(None, help="optimiser steps (default 300)"),
    patch_size: int | None = typer.Option(None, help="patch edge in voxels (in 2-D the slice's); default: planned from the data and memory"),
    batch_size: int | None = typer.Option(None, help="patches per step; default: planned"),
    seed: int | None = typer.Option(None, help="seeds the weights, the sampler and the validation split (default 0)"),
    network: str | None = typer.Option(None, help="unet (default), dynunet, vnet or segresnet"),
    loss: str | None = typer.Option(None, help="dice_ce (default), dice, tversky, focal_tversky, focal or dice_focal"),
    dims: int | None = typer.Option(None, "--dims", help="3 = 3-D patches (default), 2 = axial slices"),
    val_fraction: float | None = typer.Option(None, help="hold out this fraction of the cases for validation"),
    val_every: int | None = typer.Option(None, help="validate every N iterations (best weights kept)"),
    early_stop: int | None = typer.Option(None, help="stop after N validations without improvement"),
    resume: str | None = typer.Option(None, "--resume", help="continue a run from its last checkpoint: a run id, 'latest' or a model version"),
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
    alias: str | None = typer.Option(None, "--alias", help="an alias to set (with --model) or remove (with --remove), e.g. production"),
    model: str | None = typer.Option(None, "--model", help="the model version the alias should point to"),
    remove: bool = typer.Option(False, "--remove", help="remove --alias"),
    note: str | None = typer.Option(None, "--note", help="why the alias moved (kept in the alias history)"),
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
    model: str | None = typer.Option(None, "--model", help="model version or alias in the store, 'latest', or a model folder / model.pt "
                                                              "(default: the 'production' alias)"),
    connectivity: int = typer.Option(26),
    min_size_mm3: float = typer.Option(0.0, "--min-size-mm3"),
    overwrite: bool = typer.Option(False, help="re-score cases already scored by this model"),
    workers: int = typer.Option(2, "--workers", help="Dask worker processes (one torch thread each) when there is more than one batch; "
                                                      "0: in this process (a GPU)"),
    dask_address: str | None = typer.Option(None, "--dask-address", envvar="LESIONFLOW_DASK_ADDRESS", help="an existing Dask scheduler"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score the cases MODEL has not scored yet (default: the store's 'production' alias; found by a query over catalog and
    tables) and add their rows to the lesion-volume tables (Parquet + CSV)."""
    from training.checkpoint import CheckpointError

    if model is None:
        from training.registry import default_model

        try:
            model = default_model(store)
        except CheckpointError as exc:
            _fail(str(exc))
    from flows.score import score as score_flow

    try:
        out = score_flow(str(store), model, connectivity=connectivity, min_lesion_mm3=min_size_mm3, overwrite=overwrite,
                         n_workers=workers, dask_address=dask_address)
    except CheckpointError as exc:
        _fail(str(exc))
    if as_json:
        _print_json(out)
    else:
        _print_table(out["case_volumes"], ["case_id", "total_volume_ml", "lesion_count"], f"lesion volumes ({out['model_version']})")
        typer.echo(f"tables → {out['tables']['case_volumes']['csv']}")


@app.command()
def change(
    store: str = _store_option(),
    model: str | None = typer.Option(None, "--model", help="model version or alias in the store, 'latest', or a model folder "
                                                              "(method 'model'; default: the 'production' alias)"),
    method: str = typer.Option("model", "--method", help="model: compare both visits' predictions; subtraction: FLAIR difference, "
                               "no model; auto: the model for the pairs it has scored, subtraction for the others (as the chain)"),
    enlarge_fraction: float = typer.Option(0.5, "--enlarge-fraction", help="relative volume increase from which a lesion is enlarging"),
    connectivity: int = typer.Option(26),
    min_size_mm3: float = typer.Option(0.0, "--min-size-mm3"),
    export: Path | None = typer.Option(None, "--export", help="write each pair's change mask as NIfTI into this folder"),
    as_json: bool = typer.Option(False, "--json", help="one object per (subject, baseline, follow-up): counts and volumes per class"),
) -> None:
    """Lesion change between each subject's consecutive visits: new, enlarging, shrinking,
    disappeared and stable lesions, change masks in the store, tables change_pairs / change_lesions."""
    if method not in ("model", "subtraction", "auto"):
        _fail("--method must be 'model', 'subtraction' or 'auto'")
    if method == "subtraction" and model is not None:
        _fail("--model goes with --method model or auto")
    from flows.change import change as change_flow

    errors: tuple[type[Exception], ...] = ()
    if method != "subtraction":  # torch only where a model may be used
        from training.checkpoint import CheckpointError

        errors = (CheckpointError,)
    try:
        out = change_flow(str(store), method=method, model=model, export_dir=str(export) if export else None,
                          enlarge_fraction=enlarge_fraction, connectivity=connectivity, min_size_mm3=min_size_mm3)
    except errors as exc:
        _fail(str(exc))
    keys = ("pair_id", "subject", "baseline_case", "followup_case", "interval_days", "method", "model_version",
            "n_new", "n_enlarging", "n_shrinking", "n_disappeared", "n_stable", "n_new_or_enlarging",
            "new_ml", "enlarging_ml", "shrinking_ml", "disappeared_ml", "stable_ml", "registration_method", "registration_ncc",
            "has_expert", "dice", "change_sensitivity", "fp_per_true_change", "expert_changes", "detected_changes")
    rows = [{k: r.get(k) for k in keys} for r in out["pairs"]]
    if as_json:
        _print_json(_jsonable(rows))
        return
    if not rows:
        typer.echo("no visit pair to compare" + "".join(f"\n  {s['subject']}: {s['reason']}" for s in out["skipped"]))
        return
    _print_table(rows, ["pair_id", "n_new", "n_enlarging", "n_shrinking", "n_disappeared", "n_stable", "registration_ncc", "dice",
                        "change_sensitivity", "fp_per_true_change"], f"lesion change ({method})",
                 headers={"n_new": "new", "n_enlarging": "enlarging", "n_shrinking": "shrinking", "n_disappeared": "gone",
                          "n_stable": "stable", "registration_ncc": "NCC", "change_sensitivity": "sensitivity", "fp_per_true_change": "FP/true"})
    for s in out["skipped"]:
        typer.echo(f"skipped {s.get('pair_id', s['subject'])}: {s['reason']}")
    for path in out["exported"]:
        typer.echo(f"change mask → {path}")
    typer.echo(f"tables → {out['tables'].get('change_pairs', {}).get('csv', '-')}")


@app.command()
def report(
    store: str = _store_option(),
    channels: str | None = _channels_option(),
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


# ------------------------------------------------------------------------------- evaluate / compare / segment
def _jsonable(value: Any) -> Any:
    """NaN and numpy scalars → JSON values (NaN becomes null)."""
    import math

    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _num(value: Any, digits: int = 3) -> str:
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


@app.command()
def evaluate(
    store: str = _store_option(),
    model: str = typer.Option(..., "--model", help="model version in the store, 'latest', or a model folder / model.pt"),
    truth: str | None = typer.Option(None, "--truth", help="truth table CSV (the phantom's truth/truth_cases.csv), optional"),
    case_score: str = typer.Option("predicted_volume", "--case-score", help="case-level score: predicted_volume or max_probability"),
    no_score: bool = typer.Option(False, "--no-score", help="evaluate only the cases MODEL has scored already"),
    as_json: bool = typer.Option(False, "--json", help="print the cohort figures and every case as JSON"),
) -> None:
    """Evaluate MODEL against the store's reference labels: Dice, HD95, volumes, lesion-wise
    detection (MSSEG-1 and ISLES'22 rules), case-level AUC; tables and an HTML page in the store."""
    from flows.evaluate import CASE_SCORES

    if case_score not in CASE_SCORES:
        _fail(f"--case-score must be one of {', '.join(CASE_SCORES)}")
    from training.checkpoint import CheckpointError, resolve_model_version

    try:
        resolve_model_version(model, store)
    except CheckpointError as exc:
        _fail(str(exc))
    from flows.evaluate import evaluate as evaluate_flow

    out = evaluate_flow(str(store), model, truth_cases=truth, case_score=case_score, score_missing=not no_score)
    if as_json:
        _print_json(_jsonable({k: out[k] for k in ("model_version", "cases", "scored", "cohort", "tables", "page", "case_rows")}))
        return
    rows = [r for r in out["case_rows"] if r.get("has_reference")]
    # a case of unknown geometry (slice stack without a configured spacing) has no mm or mL: its sizes in voxels
    sizes = ["voxels_ref", "voxels_pred"] if any(r.get("geometry_source") == "unknown" for r in rows) else []
    _print_table(rows, ["case_id", "split", "has_lesion", "dice", "hd95_mm", "volume_ref_ml", "volume_pred_ml", *sizes, "msseg_ref_lesions",
                        "msseg_tp_ref", "msseg_f1", "isles_f1", "case_score"],
                 f"evaluation of {out['model_version']}",
                 headers={"has_lesion": "lesion?", "hd95_mm": "HD95 mm", "volume_ref_ml": "ref mL", "volume_pred_ml": "pred mL",
                          "voxels_ref": "ref vox", "voxels_pred": "pred vox",
                          "msseg_ref_lesions": "ref n", "msseg_tp_ref": "found", "msseg_f1": "F1 MSSEG", "isles_f1": "F1 ISLES"})
    c = out["cohort"]
    typer.echo(f"{c['n_cases']} cases ({c['n_with_lesions']} with lesions, {c['n_lesion_free']} lesion-free); "
               f"Dice {_num(c['dice_mean'])} (median {_num(c['dice_median'])}), HD95 median {_num(c['hd95_median_mm'])} mm")
    typer.echo(f"lesion-wise MSSEG-1: sensitivity {_num(c['msseg_sensitivity'])}, precision {_num(c['msseg_precision'])}, "
               f"F1 {_num(c['msseg_f1'])}; ISLES'22 F1 {_num(c['isles_f1'])}")
    typer.echo(f"volume: mean |error| {_num(c['abs_rel_volume_error_pct_mean'], 1)} %, r {_num(c['volume_pearson_r'])}, "
               f"Bland-Altman bias {_num(c['bland_altman_bias_ml'])} mL "
               f"[{_num(c['bland_altman_loa_low_ml'])}, {_num(c['bland_altman_loa_high_ml'])}]")
    typer.echo(f"case AUC {_num(c['case_auc'])} ({c['case_score_kind']}), slice AUC {_num(c['slice_auc'])}")
    typer.echo(f"page   → {out['page'].get('html')}\ntables → {out['tables']['evaluation_cases']['csv']}")


@app.command()
def compare(
    ref: Path = typer.Argument(..., help="reference mask (NIfTI or MetaImage)"),
    pred: Path = typer.Argument(..., help="mask to evaluate, on the reference's grid"),
    out: Path | None = typer.Option(None, "--out", help="write one row per lesion of both masks (both rules) to this CSV"),
    as_json: bool = typer.Option(False, "--json", help="print dice, lesion_sensitivity, lesion_precision, lesion_f1, ref_lesions, "
                                                        "pred_lesions, volume_ref_ml, volume_pred_ml and the rest as JSON"),
) -> None:
    """Evaluate PRED against REF by every rule: Dice, HD95, volumes, lesion-wise detection
    (MSSEG-1 as Anima's analyzer; ISLES'22 beside it)."""
    from pipeline.lesions.evaluation import MaskFileError, compare_files

    for path in (ref, pred):
        if not path.is_file():
            _fail(f"{path} does not exist or is not a file")
    try:
        metrics, lesion_rows = compare_files(ref, pred)
    except MaskFileError as exc:
        _fail(str(exc))
    payload = {
        "dice": metrics["dice"],
        "lesion_sensitivity": metrics["msseg_sensitivity"],
        "lesion_precision": metrics["msseg_precision"],
        "lesion_f1": metrics["msseg_f1"],
        "ref_lesions": metrics["msseg_ref_lesions"],
        "pred_lesions": metrics["msseg_pred_lesions"],
        "volume_ref_ml": metrics["volume_ref_ml"],
        "volume_pred_ml": metrics["volume_pred_ml"],
        **{k: v for k, v in metrics.items() if k != "predicted_volume_ml"},
        "rules": {"lesion_*": "MSSEG-1 (Anima): 6-connected, lesions > 3 mm3, alpha 0.10, beta 0.70, gamma 0.65",
                  "isles_*": "ISLES'22: 26-connected, any overlap"},
    }
    if out is not None:
        import pandas as pd

        pd.DataFrame(lesion_rows, columns=["rule", "side", "lesion_id", "voxels", "volume_mm3", "overlap_fraction", "outside_fraction",
                                           "detected"]).to_csv(out, index=False)
    if as_json:
        _print_json(_jsonable(payload))
        return
    m = payload
    typer.echo(f"reference  {ref}: {m['volume_ref_ml']:.3f} mL, {m['ref_lesions']} lesions (MSSEG-1), {m['isles_ref_lesions']} (ISLES'22)")
    typer.echo(f"prediction {pred}: {m['volume_pred_ml']:.3f} mL, {m['pred_lesions']} lesions (MSSEG-1), {m['isles_pred_lesions']} (ISLES'22)")
    typer.echo(f"Dice {_num(m['dice'])}, HD95 {_num(m['hd95_mm'])} mm, volume difference {m['volume_diff_ml']:+.3f} mL "
               f"({_num(m['rel_volume_error_pct'], 1)} %)")
    typer.echo(f"lesion-wise MSSEG-1: {m['msseg_tp_ref']}/{m['ref_lesions']} reference lesions detected, {m['msseg_tp_pred']}/{m['pred_lesions']} "
               f"predicted lesions true; sensitivity {_num(m['lesion_sensitivity'])}, precision {_num(m['lesion_precision'])}, "
               f"F1 {_num(m['lesion_f1'])}")
    typer.echo(f"lesion-wise ISLES'22: sensitivity {_num(m['isles_sensitivity'])}, precision {_num(m['isles_precision'])}, F1 {_num(m['isles_f1'])}")


@app.command()
def segment(
    session_dir: Path = typer.Argument(..., help="the folder of one session's images (DICOM, NIfTI, MetaImage, BIDS)"),
    model: Path = typer.Option(..., "--model", help="model folder (model.json + model.pt) or its model.pt"),
    out: Path = typer.Option(..., "--out", help="lesion mask to write (.nii.gz), in the session's reference geometry"),
    config: Path | None = typer.Option(None, "--config", help="pipeline configuration JSON as given to ingest (default: the model's channels)"),
    probability: Path | None = typer.Option(None, "--probability", help="also write the lesion probability map (.nii.gz)"),
    device: str | None = typer.Option(None, help="cuda or cpu (default: CUDA when available)"),
    connectivity: int = typer.Option(26, help="lesion table: 6, 18 or 26"),
    min_size_mm3: float = typer.Option(0.0, "--min-size-mm3", help="lesion table: drop lesions smaller than this (mm3)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Segment one session without a store: mask + lesion table (CSV beside it), like LST-AI."""
    if connectivity not in (6, 18, 26):
        _fail("--connectivity must be 6, 18 or 26")
    if not session_dir.is_dir():
        _fail(f"{session_dir} is not a folder; give the folder holding one session's images")
    if not model.exists():
        _fail(f"--model {model} does not exist; give a model folder (model.json + model.pt)")
    from lesionflow.segment import SegmentError, segment_session
    from training.checkpoint import CheckpointError

    try:
        result = segment_session(session_dir, model, out, config=config, device=device, connectivity=connectivity,
                                 min_size_mm3=min_size_mm3, probability_out=probability)
    except (SegmentError, CheckpointError) as exc:
        _fail(str(exc))
    if as_json:
        _print_json(result)
        return
    for w in result["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    size = f"{result['total_volume_ml']:.3f} mL" if result["total_volume_ml"] is not None else f"{result['total_voxels']} voxels (geometry unknown)"
    typer.echo(f"{result['lesion_count']} lesions, {size} (max probability {result['max_probability']:.3f}) by {result['model_version']}")
    if result.get("slice_lesion_probability") is not None:
        probs = result["slice_lesion_probability"]
        typer.echo(f"slice classifier: lesion {'present' if result['lesion_present'] else 'absent'} "
                   f"({sum(p >= 0.5 for p in probs)} of {len(probs)} slices at probability >= 0.5, highest {max(probs, default=0.0):.3f})")
    typer.echo(f"mask    → {result['mask']}\nlesions → {result['lesions_csv']}")


# ------------------------------------------------------------------------------- upgrade / export / show
@app.command()
def upgrade(
    store: str = _store_option(),
    dry_run: bool = typer.Option(False, "--dry-run", help="list what would change, change nothing"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Bring a store written by an older lesionflow to the current layout, in place (no stored voxel rewritten).

    Metadata is rewritten and masks are moved (renamed); the resolution pyramid of schema 1.5 is
    added as new arrays computed from level 0, which stays byte for byte as it was.

    Run it while nothing else writes to the store. Safe to interrupt and to run again.
    """
    from pipeline.store import StoreError, upgrade_store

    try:
        out = upgrade_store(store, dry_run=dry_run)
    except StoreError as exc:
        _fail(str(exc))
    if as_json:
        _print_json(out)
        return
    for case_id, lines in out["actions"].items():
        for line in lines:
            typer.echo(f"  {case_id}: {line}")
    verb = "would change" if dry_run else "changed"
    typer.echo(f"{out['cases_changed']} of {out['cases']} cases {verb}; schema {out['schema_before']} → {out['schema_after']} ({out['store']})")


@app.command()
def export(
    out: Path = typer.Argument(..., help="output folder: the tree is written to OUT/derivatives/lesionflow"),
    store: str = _store_option(),
    case: list[str] = typer.Option([], "--case", help="case id (sub-…_ses-…); repeat for several (default: every case)"),
    model: list[str] = typer.Option([], "--model", help="model version or 'latest'; repeat for several (default: every model that scored a case)"),
    channels: bool = typer.Option(True, "--channels/--no-channels", help="export the stored channels too"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write cases, reference masks and predictions as BIDS derivatives (NIfTI + JSON sidecars) for ITK-SNAP, 3D Slicer, FSLeyes."""
    from pipeline.export.bids import export_bids
    from pipeline.store import StoreError

    try:
        summary = export_bids(store, out, case_ids=case or None, models=model or None, channels=channels).as_dict()
    except StoreError as exc:
        _fail(str(exc))
    if as_json:
        _print_json(summary)
        return
    for line in summary["skipped"]:
        typer.echo(f"  skipped: {line}", err=True)
    models = ", ".join(summary["models"]) or "no predictions"
    typer.echo(f"{summary['cases']} cases ({models}), {summary['files']} files → {summary['root']}")


@app.command()
def show(
    store: str = _store_option(),
    case: str = typer.Option(..., "--case", help="case id (sub-…_ses-…)"),
    model: str | None = typer.Option(None, "--model", help="prediction to outline (default: the most recently scored)"),
    out: Path = typer.Option(..., "--out", help="PNG file to write"),
    middle: bool = typer.Option(False, "--middle", help="mid-slices instead of the slices through the largest lesion"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One PNG of a case: axial, coronal and sagittal slices of each channel, reference label (red) and prediction (yellow) outlined."""
    from pipeline.export.show import render_case
    from pipeline.store import StoreError

    try:
        info = render_case(store, case, out, model=model, focus="middle" if middle else "lesion")
    except (StoreError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        _print_json(info)
        return
    z, y, x = info["voxel_zyx"]
    typer.echo(f"{info['png']}: rows {', '.join(info['channels'])}; columns axial z={z}, coronal y={y}, sagittal x={x} "
               f"({info['focus']}); reference {'red' if info['reference'] else 'none'}, "
               f"prediction {info['model_version'] + ' yellow' if info['model_version'] else 'none'}, overlap orange")


# ------------------------------------------------------------------------------- real-data recipe
@app.command("train-ms")
def train_ms(
    workdir: Path = typer.Option(Path("work/train-ms"), help="folder for the store, the truth table and the exported model"),
    config: Path | None = typer.Option(None, "--config", exists=True, dir_okay=False, help="a TrainConfig JSON instead of the recipe's"),
    iterations: int | None = typer.Option(None, help="override the recipe's iterations (e.g. 20 for a quick check)"),
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


@app.command("train-lgg")
def train_lgg(
    workdir: Path = typer.Option(Path("work/train-lgg"), help="folder for the store, the cross-validation tables and the exported model"),
    config: Path | None = typer.Option(None, "--config", exists=True, dir_okay=False, help="a TrainConfig JSON instead of the recipe's"),
    iterations: int | None = typer.Option(None, help="override the recipe's iterations (e.g. 10 for a quick check)"),
    data: Path | None = typer.Option(None, "--data", help="folder of LGG patient folders (default: ../shared/data/lgg/kaggle_3m)"),
    folds: int = typer.Option(4, min=2, help="cross-validation folds, by patient"),
    fold_workers: int | None = typer.Option(None, "--fold-workers", min=1,
                                            help="trainings (folds and the final model) at once, one process each (default: one per core on the CPU, 1 on a GPU)"),
    classifier: bool = typer.Option(True, "--classifier/--no-classifier",
                                    help="also train the slice classifier for 'tumour present?' with each segmentation (under 2 min each on a CPU core)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The brain-tumour recipe: ingest the LGG slice stacks of ../shared/data, cross-validate a 2-D U-Net (focal Tversky)
    by patient, report Dice / Tversky on tumour slices and tumour-present AUC, export the final model to WORKDIR/model.
    Meant to finish within 45 min on 2 CPU cores."""
    _ensure_key(workdir.resolve())
    from flows.train import progress_to
    from flows.train_lgg import TIME_LIMIT_S
    from flows.train_lgg import train_lgg as train_lgg_flow

    cfg = json.loads(config.read_text()) if config is not None else None
    try:
        with _TrainBar() as bar, progress_to(bar):
            out = train_lgg_flow(str(workdir), config=cfg, iterations=iterations, data_dir=str(data) if data else None, folds=folds,
                                 fold_workers=fold_workers, classifier=classifier)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        _print_json({k: v for k, v in out.items() if k != "cases"})
        return
    s = out["summary"]
    rows = [{**f, "fold": f["fold"] + 1} for f in out["folds"]]
    rows.append({"fold": "all", "test_patients": s["n_patients"], "dice_slices": s["dice_slices"], "tversky_slices": s["tversky_slices"],
                 "dice_patients": s["dice_patients"], "tversky_patients": s["tversky_patients"], "slice_auc": s["slice"]["auc"],
                 "patients_correct": s["patients_correct"],
                 **({"classifier_slice_auc": s["slice_classifier"]["auc"]} if "slice_classifier" in s else {})})
    columns = ["fold", "test_patients", "dice_slices", "tversky_slices", "dice_patients", "tversky_patients", "slice_auc"]
    columns += ["classifier_slice_auc"] if "slice_classifier" in s else []
    _print_table(rows, [*columns, "patients_correct"],
                 "cross-validation by patient (held-out patients; Dice / Tversky on tumour slices)",
                 headers={"test_patients": "patients", "dice_slices": "Dice (slices)", "tversky_slices": "TI (slices)",
                          "dice_patients": "Dice (patients)", "tversky_patients": "TI (patients)", "slice_auc": "slice AUC",
                          "classifier_slice_auc": "slice AUC (classifier)",
                          "patients_correct": "present correct"})
    sl, pt = s["slice"], s["patient"]
    t = out["timings"]
    verdict = "within" if out["within_limit"] else "OVER"
    _console().print(f"tumour present per slice, from the segmentation (maximum probability): AUC {sl['auc']:.3f}, sensitivity {sl['sensitivity']:.3f}, specificity {sl['specificity']:.3f} "
                     f"at probability {sl['threshold']:g} ({sl['n_positive']} tumour / {sl['n_negative']} other slices)\n"
                     + (f"tumour present per slice, from the slice classifier: AUC {s['slice_classifier']['auc']:.3f}, "
                        f"sensitivity {s['slice_classifier']['sensitivity']:.3f}, specificity {s['slice_classifier']['specificity']:.3f} "
                        f"at probability {s['slice_classifier']['threshold']:g}; patients correct {s['patients_correct_classifier']}/{s['n_patients']}\n"
                        if "slice_classifier" in s else "")
                     + f"per patient: {s['patients_correct']}/{s['n_patients']} correct (AUC {pt['auc']:.3f}; NaN: every patient has tumour)\n"
                     f"time: ingest {t['ingest_s']:.0f} s, augmentation banks {t.get('bank_s', 0):.0f} s, "
                     f"{len(out['folds'])} folds and the final model {t['training_s']:.0f} s ({out['fold_workers']} at a time); "
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
        table.add_column((headers or {}).get(c, c), justify="left" if c in ("case_id", "pair_id", "split") else "right", no_wrap=c in ("case_id", "pair_id"))
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
