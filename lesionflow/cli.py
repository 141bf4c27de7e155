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
        _console().print(f"[yellow]demo: generated a pseudonymisation key in {key_file} (set {PSEUDONYM_KEY_ENV} for real data)[/]")
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
    patch_size: int = typer.Option(48, help="patch edge in voxels (patch index and augmentation bank)"),
    seed: int = typer.Option(0),
    channels: Optional[str] = _channels_option(),
    samples_per_case: Optional[int] = typer.Option(None, "--samples-per-case", min=0,
                                                   help="augmented samples stored per case (default 64; 0: no augmentation bank)"),
    bank_config: Optional[Path] = typer.Option(None, "--bank-config", exists=True, dir_okay=False,
                                               help="augmentation bank configuration JSON (a BankConfig; absent keys take the defaults)"),
    workers: int = typer.Option(2, help="Dask LocalCluster worker processes for the bank (0: in this process)"),
    dask_address: Optional[str] = typer.Option(None, envvar="LESIONFLOW_DASK_ADDRESS", help="existing Dask scheduler, e.g. tcp://host:8786"),
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
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write (default: augment-preview-<case>.png here)"),
    samples: int = typer.Option(16, "--samples", min=1, help="samples shown (lesion-centred first)"),
    channel: Optional[str] = typer.Option(None, "--channel", help="channel shown (default: the first stored)"),
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


@app.command()
def train(
    store: str = _store_option(),
    config: Optional[Path] = typer.Option(None, "--config", exists=True, dir_okay=False,
                                          help="training configuration JSON (a TrainConfig; absent keys take the defaults); the options below override it"),
    iterations: Optional[int] = typer.Option(None, help="optimiser steps (default 300)"),
    patch_size: Optional[int] = typer.Option(None, help="patch edge in voxels, a multiple of 8 (default 48)"),
    batch_size: Optional[int] = typer.Option(None, help="patches per step (default 2)"),
    seed: Optional[int] = typer.Option(None, help="seeds the weights, the sampler and the validation split (default 0)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Train the 3-D U-Net on the store (CUDA when available); prints the model version.

    Channels are the store's unless the config names them. Example --config file:
    {"iterations": 2000, "patch_zyx": [64, 64, 64], "optim": {"lr": 0.001}, "val_fraction": 0.2}
    """
    from pydantic import ValidationError

    from flows.train import train as train_flow, train_config
    from training.config import describe_errors

    source = f"--config {config}" if config is not None else "training options"
    try:
        raw = json.loads(config.read_text()) if config is not None else None
        cfg = train_config(raw, iterations=iterations, patch_size=patch_size, batch_size=batch_size, seed=seed)
    except ValidationError as exc:
        _fail(f"{source}: {describe_errors(exc)}")
    except (OSError, ValueError) as exc:  # unreadable file or JSON
        _fail(f"{source}: {exc}")
    out = train_flow(str(store), config=cfg.model_dump(mode="json"))
    _print_json(out) if as_json else typer.echo(f"model {out['model_version']} → {out['checkpoint']}")


@app.command()
def score(
    store: str = _store_option(),
    model: str = typer.Option(..., "--model", help="model version in the store, or a model folder / model.pt"),
    connectivity: int = typer.Option(26),
    min_size_mm3: float = typer.Option(0.0, "--min-size-mm3"),
    overwrite: bool = typer.Option(False, help="re-score cases already scored by this model"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Score every case with MODEL and write lesion-volume tables (Parquet + CSV)."""
    from flows.score import score as score_flow

    out = score_flow(str(store), model, connectivity=connectivity, min_lesion_mm3=min_size_mm3, overwrite=overwrite)
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
