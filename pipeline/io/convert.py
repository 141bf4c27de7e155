"""``convert``: every DICOM series and volume file under a folder → NIfTI + JSON sidecar.

Outputs (relative to ``outdir``):

* DICOM series → ``<folder>/<SeriesNumber>_<SeriesDescription>.nii.gz`` (+ ``.json``), where
  ``<folder>`` is the folder holding the series' files relative to ``src`` (so studies do not
  collide); the description is sanitised to ``[A-Za-z0-9._-]``; clashes get ``_2``, ``_3``…
* NIfTI / MetaImage files → ``<same sub-folder>/<stem>.nii.gz`` (+ ``.json``).

Nothing raises on bad input: every unreadable file or series is recorded in
``ConvertSummary.rejected`` as ``{"path", "reason", "code"}``. Summaries and sidecars carry no
patient identifiers (no names, IDs, UIDs or dates).

Example:
    >>> from pipeline.io.convert import convert_tree          # doctest: +SKIP
    >>> summary = convert_tree("raw/", "nifti/", workers=2)  # doctest: +SKIP
    >>> len(summary.converted), summary.rejected[:1]         # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.io.readers.errors import ReaderError, ReasonCode

_DICOM_LIKE_SUFFIXES = (".dcm", ".ima", ".dicom")


@dataclass
class ConvertSummary:
    """Result of :func:`convert_tree`.

    ``converted``: one dict per written NIfTI: ``kind`` ("dicom"|"file"), ``source`` (folder or
    file, relative to src), ``output`` and ``sidecar`` (absolute paths), ``shape`` (x, y, z[, t]),
    ``series_number``, ``series_description``, ``n_files``, ``warnings``, ``seconds``.
    ``rejected``: ``{"path": str, "reason": str, "code": str}`` per file or series that was not
    converted (``code``: a :class:`~storage_schemas.models.ReasonCode` value).
    """

    converted: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.converted)


def sanitise(text: str, max_len: int = 64) -> str:
    """File-name-safe form of a series description (``[A-Za-z0-9._-]``, no leading dot).

    >>> sanitise("Axial EPI-FMRI (Interleaved I to S)")
    'Axial_EPI-FMRI_Interleaved_I_to_S'
    """
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    out = re.sub(r"_+", "_", out)
    return out[:max_len].rstrip("._-")


def _rejected(path: str | os.PathLike[str], reason: str, code: ReasonCode) -> dict[str, str]:
    return {"path": os.fspath(path), "reason": reason, "code": code.value}


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".mhd", ".mha"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _rel(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root)
    except ValueError:
        return Path(path.name)


class _Resolver:
    """``Path.resolve()`` with the folders cached (one realpath per folder, not per file)."""

    def __init__(self) -> None:
        self._dirs: dict[Path, Path] = {}

    def __call__(self, path: Path) -> Path:
        if path.is_symlink():
            return path.resolve()
        parent = self._dirs.get(path.parent)
        if parent is None:
            parent = self._dirs[path.parent] = path.parent.resolve()
        return parent / path.name


def _claim(directory: Path, base: str, claimed: set[Path]) -> Path:
    """``directory/base.nii.gz`` or the first free ``base_2``, ``base_3``…"""
    candidate = directory / f"{base}.nii.gz"
    n = 2
    while candidate in claimed:
        candidate = directory / f"{base}_{n}.nii.gz"
        n += 1
    claimed.add(candidate)
    return candidate


def _sidecar_path(nifti: Path) -> Path:
    return nifti.with_name(nifti.name[: -len(".nii.gz")] + ".json")


# ----------------------------------------------------------------------------- tasks
_IN_WORKER = False
PARALLEL_MIN_BYTES = 32 * 1024 * 1024
"""Conversions go to the worker processes only when the inputs add up to this much: below it
one process is faster (starting workers and shipping work to them costs ~0.1 s)."""


def _init_worker() -> None:
    """Runs in each worker process as it starts: imports what the conversions need (while the
    parent scans headers, when the pool is started early)."""
    global _IN_WORKER
    _IN_WORKER = True  # SimpleITK is limited to one thread when (and only if) a task needs it
    import nibabel  # noqa: F401

    import pipeline.io.readers.dicom
    import pipeline.io.writers  # noqa: F401


def _single_threaded_sitk() -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _size_of(paths: list[Path]) -> int:
    total = 0
    for f in paths:
        try:
            total += os.stat(f).st_size
        except OSError:
            pass
    return total


def _run_task(task: tuple[str, Any, str, str], threads: int = 1) -> dict:
    """Convert one item; returns {"ok": True, ...} or {"ok": False, "path", "reason"}.

    ``threads`` > 1 compresses the .nii.gz with that many threads (a lone item, idle workers).
    """
    kind, item, output, source = task
    t0 = time.perf_counter()
    out = Path(output)
    try:
        if kind != "dicom" and _IN_WORKER:
            _single_threaded_sitk()
        from pipeline.io.writers import write_nifti, write_sidecar

        if kind == "dicom":
            from pipeline.io.readers.dicom import read_series, sidecar

            volume = read_series(item)
            payload = sidecar(item, volume)
            info = {"series_number": item.series_number, "series_description": item.series_description, "n_files": len(item.files)}
        else:
            from pipeline import __version__
            from pipeline.io.readers import read_volume

            volume = read_volume(item)
            payload = {
                "SourceFormat": "NIfTI" if ".nii" in Path(item).name.lower() else "MetaImage",
                "SourceFile": source,
                "Dimensions": list(volume.shape_xyz) + ([int(volume.array.shape[0])] if volume.is_4d else []),
                "VoxelSize": [round(v, 6) for v in volume.spacing],
                "ConversionSoftware": "lesionflow",
                "ConversionSoftwareVersion": __version__,
            }
            info = {"series_number": None, "series_description": None, "n_files": 1}
        write_nifti(volume, out, threads=threads)
        write_sidecar(payload, _sidecar_path(out))
        return {
            "ok": True,
            "kind": kind,
            "source": source,
            "output": str(out),
            "sidecar": str(_sidecar_path(out)),
            "shape": list(volume.shape_xyz) + ([int(volume.array.shape[0])] if volume.is_4d else []),
            "dtype": str(volume.array.dtype),
            "warnings": list(volume.meta.get("warnings", [])),
            "seconds": round(time.perf_counter() - t0, 4),
            **info,
        }
    except ReaderError as exc:
        return {"ok": False, **_rejected(exc.path, exc.reason, exc.code)}
    except Exception as exc:  # never raise on bad input: record it
        path = str(item.files[0]) if kind == "dicom" and getattr(item, "files", None) else str(item)
        return {"ok": False, **_rejected(path, f"unexpected {type(exc).__name__}: {exc}", ReasonCode.INTERNAL_ERROR)}


# ----------------------------------------------------------------------------- entry point
def convert_tree(src: str | os.PathLike[str], outdir: str | os.PathLike[str], *, workers: int = 1) -> ConvertSummary:
    """Convert every DICOM series and NIfTI/MetaImage file under ``src`` into ``outdir``.

    Args:
        src: folder (searched recursively; hidden entries skipped) or a single file.
        outdir: output folder (created).
        workers: processes; > 1 uses a ``ProcessPoolExecutor`` for the conversions when there
            are several items (SimpleITK single-threaded in each worker) and for the header
            scan of very large trees (:func:`pipeline.io.readers.dicom.scan_series_parallel`).

    Returns:
        :class:`ConvertSummary`; never raises for bad input files.
    """
    from pipeline.io.readers import is_dicom_file, is_volume_file, walk_files

    summary = ConvertSummary()
    src_path = Path(src)
    out_root = Path(outdir).resolve()
    if not src_path.exists():
        summary.rejected.append(_rejected(src_path, "source does not exist", ReasonCode.UNREADABLE))
        return summary
    root = src_path.resolve() if src_path.is_dir() else src_path.resolve().parent
    files = walk_files(src_path) if src_path.is_dir() else [src_path]

    dicom_files: list[Path] = []
    volume_files: list[Path] = []
    resolve = _Resolver()
    for path in files:
        if resolve(path).is_relative_to(out_root):
            continue  # never re-convert our own output when outdir is inside src
        if is_volume_file(path):
            volume_files.append(path)
            continue
        if is_dicom_file(path):
            dicom_files.append(path)
            continue
        if path.suffix.lower() in _DICOM_LIKE_SUFFIXES:
            try:
                size = path.stat().st_size
            except OSError as exc:
                summary.rejected.append(_rejected(path, f"cannot open: {exc.strerror}", ReasonCode.UNREADABLE))
                continue
            if size == 0:
                summary.rejected.append(_rejected(path, "empty file (0 bytes)", ReasonCode.EMPTY_FILE))
            else:
                summary.rejected.append(_rejected(path, "not a DICOM file (no DICM preamble and pydicom cannot parse it)", ReasonCode.NOT_DICOM))

    # Worker processes start at the pool's first submit, and only when the inputs are big
    # enough (PARALLEL_MIN_BYTES). With several folders/files there will be several items to
    # convert: start them right away, so that they import their modules during the scan.
    pool, input_bytes = None, 0
    if workers > 1:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker)
        input_bytes = _size_of(dicom_files + volume_files)
        if input_bytes >= PARALLEL_MIN_BYTES and len({p.parent for p in dicom_files}) + len(volume_files) > 1:
            pool.submit(int)
    try:
        _plan_and_run(summary, root, out_root, dicom_files, volume_files, pool, workers, resolve, input_bytes)
    finally:
        if pool is not None:
            pool.shutdown()
    return summary


def _plan_and_run(summary: ConvertSummary, root: Path, out_root: Path, dicom_files: list[Path], volume_files: list[Path],
                  pool: ProcessPoolExecutor | None, workers: int, resolve: _Resolver | None = None, input_bytes: int = 0) -> None:
    from pipeline.io.readers.dicom import scan_series_parallel

    resolve = resolve or _Resolver()
    tasks: list[tuple[str, Any, str, str]] = []
    claimed: set[Path] = set()
    if dicom_files:
        series_list, errors = scan_series_parallel(dicom_files, pool, workers)
        summary.rejected.extend(_rejected(e.path, e.reason, e.code) for e in errors)
        for s in series_list:  # sorted by (SeriesNumber, key): deterministic names
            folder = Path(os.path.commonpath(list({str(resolve(Path(f)).parent) for f in s.files})))
            rel_folder = _rel(folder, root) if folder != root else Path()
            desc = sanitise(s.series_description or s.protocol_name or "series")
            number = s.series_number if s.series_number is not None else 0
            base = f"{number}_{desc}" if desc else str(number)
            target = _claim(out_root / rel_folder, base, claimed)
            tasks.append(("dicom", s, str(target), str(rel_folder) or "."))
    for path in volume_files:
        rel = _rel(path, root)
        target = _claim(out_root / rel.parent, sanitise(_stem(path), 200) or "image", claimed)
        tasks.append(("file", path, str(target), str(rel)))

    if pool is not None and len(tasks) > 1 and input_bytes >= PARALLEL_MIN_BYTES:
        # biggest series first so that one large series does not finish last alone
        order = sorted(range(len(tasks)), key=lambda i: -(len(tasks[i][1].files) if tasks[i][0] == "dicom" else 1))
        results_by_index = dict(zip(order, pool.map(_run_task, [tasks[i] for i in order], chunksize=1)))
        results = [results_by_index[i] for i in range(len(tasks))]
    else:  # one process; a single item may still use the cores for compression
        threads = workers if len(tasks) == 1 else 1
        results = [_run_task(t, threads) for t in tasks]
    for res in results:
        if res.pop("ok"):
            summary.converted.append(res)
        else:
            summary.rejected.append(res)
