"""A cohort mixing every class of hostile input of issue 10 with good sessions, and a measured
run of a command over it (peak memory of its whole process tree).

:func:`write_broken_inputs` writes inconsistent and damaged inputs (truncated, gaps, duplicates,
no geometry, non-finite voxels, ...); :func:`write_hostile_cohort` adds resource bombs (a NIfTI or
MetaImage declaring a huge matrix, a gzip bomb, a gzip that cannot inflate to what it declares,
DICOM with absurd Rows/Columns or a matrix beyond the file, a compressed DICOM with an absurd
matrix, a MetaImage data file that is a device or lies outside the cohort, a FIFO named like a
volume), identifying folder names, compressed DICOM, a "T1 SPACE" series and two poisoned
sessions (their folders are named in :data:`POISON`; they kill their Dask worker only when the
test hook ``LESIONFLOW_TEST_POISON_SESSIONS`` of :mod:`tests.hooks.sitecustomize` is set, see
:func:`poison_env`). :func:`run_measured` runs a command and samples the resident memory of every
process of its tree. Used by ``tests/pipeline/ingest/test_hostile_cohort.py``,
``tests/pipeline/ingest/test_bad_inputs.py`` and ``benchmarks/bench_hostile.py``.

Example (in a test)::

    cohort = write_hostile_cohort(tmp_path / "cohort")
    run = run_measured([sys.executable, "-m", "lesionflow.cli", "ingest", ...], env=poison_env(os.environ))
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom import uid

from pipeline.core.volume import Volume
from pipeline.io.writers import write_nifti
from pipeline.phantom.writers import write_metaimage
from storage_schemas.models import ReasonCode
from tests import dicom_factory as fac
from tests.session_factory import blob_image, lesion_mask_on, write_session

REPO = Path(__file__).resolve().parents[1]
HOOKS = REPO / "tests" / "hooks"
POISON = {"poison_oom": "oom", "poison_crash": "crash"}
"""Folder name → how the session kills its worker (see :func:`tests.session_factory.convert_or_poison`)."""
IDENTITY = ("DOE^JANE", "MRN123456", "19700101", "ACC456789")
"""A fake patient's name, MRN, birth date and accession number, in folder names of the cohort."""


@dataclass
class HostileCohort:
    """What :func:`write_hostile_cohort` wrote: ``src`` the cohort folder; ``good`` the session
    folders (relative) that must be converted; ``rejected`` input relpath → (a fragment of the
    reason, its code); ``poisoned`` relpath of each poisoned session → how it dies."""

    src: Path
    good: list[str] = field(default_factory=list)
    rejected: dict[str, tuple[str, ReasonCode]] = field(default_factory=dict)
    poisoned: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------- builders
def dicom_flair(folder: Path, study: str, n: int = 10, description: str = "AX FLAIR", extra: dict | None = None) -> list[Path]:
    """A small DICOM FLAIR series (``n`` slices of 24 x 24 at 1 x 1 x 2 mm) of its own study."""
    arr = (blob_image((n, 24, 24), (1.0, 1.0, 2.0)).array).astype(np.int16)
    return fac.write_series(folder, arr, spacing=(1.0, 1.0, 2.0), description=description, study_uid=study,
                            extra={"PatientID": f"PID-{study[-4:]}", **(extra or {})})


def _edit(files: Sequence[Path], **attrs: object) -> None:
    for f in files:
        d = pydicom.dcmread(f)
        for k, v in attrs.items():
            setattr(d, k, v)
        d.save_as(f, enforce_file_format=True)


def _nifti_header_bytes(shape: tuple[int, ...], dtype=np.float32) -> bytes:
    """A NIfTI-1 header (348 bytes + an empty extension flag) declaring ``shape``, data at byte 352."""
    hdr = nib.Nifti1Image(np.zeros((2, 2, 2), dtype), np.eye(4)).header.copy()
    hdr.set_data_shape(shape)
    hdr.set_data_offset(352)
    bio = io.BytesIO()
    hdr.write_to(bio)
    return bio.getvalue()[:348] + b"\0\0\0\0"


def _mhd(path: Path, data_file: str, dims: str = "4 4 4", element: str = "MET_SHORT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {dims}\nElementType = {element}\nElementDataFile = {data_file}\n")
    return path


def write_broken_inputs(src: Path) -> HostileCohort:
    """Damaged and inconsistent inputs, each in a session folder of its own, beside two good
    sessions (NIfTI, DICOM) and one whose label is off its grid (converted without the label)."""
    out = HostileCohort(src)
    expected = out.rejected
    write_session(src / "good_nifti", "good_", seed=1)
    dicom_flair(src / "good_dicom" / "flair", "1.2.3.1000")
    out.good += ["good_nifti", "good_dicom"]

    files = dicom_flair(src / "truncated" / "flair", "1.2.3.1001")
    files[3].write_bytes(files[3].read_bytes()[:-40])
    expected[files[3].relative_to(src).as_posix()] = ("truncated", ReasonCode.TRUNCATED)

    files = dicom_flair(src / "nopixels" / "flair", "1.2.3.1002")
    d = pydicom.dcmread(files[4])
    del d.PixelData
    d.save_as(files[4])
    expected[files[4].relative_to(src).as_posix()] = ("no pixel data", ReasonCode.NO_PIXEL_DATA)

    files = dicom_flair(src / "gap" / "flair", "1.2.3.1003")
    files[5].unlink()
    expected[files[6].relative_to(src).as_posix()] = ("slice missing", ReasonCode.MISSING_SLICE)

    files = dicom_flair(src / "duplicate" / "flair", "1.2.3.1004")
    shutil.copy(files[2], files[2].with_name("copy.dcm"))
    expected["duplicate/flair/copy.dcm"] = ("duplicate slice", ReasonCode.DUPLICATE_SLICE)

    no_affine = src / "no_affine"
    no_affine.mkdir(parents=True)
    img = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    nib.save(img, no_affine / "x_FLAIR.nii.gz")
    expected["no_affine/x_FLAIR.nii.gz"] = ("qform", ReasonCode.GEOMETRY_UNKNOWN)

    (src / "not_gzip").mkdir()
    (src / "not_gzip" / "y_FLAIR.nii.gz").write_bytes(b"plain text, not gzip")
    expected["not_gzip/y_FLAIR.nii.gz"] = ("gzip", ReasonCode.CORRUPT)

    _mhd(src / "mhd" / "z_FLAIR.mhd", "z_FLAIR.raw")
    expected["mhd/z_FLAIR.mhd"] = ("z_FLAIR.raw", ReasonCode.MISSING_DATA_FILE)

    (src / "zero").mkdir()
    (src / "zero" / "IM0001").write_bytes(b"")
    expected["zero/IM0001"] = ("zero-byte", ReasonCode.EMPTY_FILE)

    nan = blob_image((12, 40, 40), (1.0, 1.0, 3.0))
    arr = nan.array.copy()
    arr[5, 5, 5] = np.inf
    (src / "nan").mkdir()
    write_nifti(nan.with_array(arr), src / "nan" / "n_FLAIR.nii.gz")
    expected["nan/n_FLAIR.nii.gz"] = ("non-finite", ReasonCode.NON_FINITE_VOXELS)

    write_session(src / "offgrid", "o_", seed=3, label=False)
    flair = blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0))
    off_grid = Volume((flair.array > 110).astype(np.uint8), spacing=(1.0, 1.0, 2.0), origin=flair.origin)  # 2 mm, not 3 mm slices
    write_nifti(off_grid, src / "offgrid" / "o_lesion_mask.nii.gz")
    expected["offgrid/o_lesion_mask.nii.gz"] = ("label grid does not match", ReasonCode.LABEL_OFF_GRID)
    out.good.append("offgrid")
    return out


def write_hostile_cohort(src: Path) -> HostileCohort:
    """Every hostile input class of issue 10 beside good sessions (see the module docstring).

    About 5 MB on disk; the good sessions are small (at most 36 x 44 x 44 voxels), so the memory
    an ingest of it needs is the interpreter's and Dask's, plus what a hostile input could make it
    allocate if a reader trusted a header.
    """
    out = write_broken_inputs(src)
    expected = out.rejected

    # --- resource bombs -----------------------------------------------------------------------
    (src / "huge_nifti").mkdir()
    (src / "huge_nifti" / "h_FLAIR.nii").write_bytes(_nifti_header_bytes((2000, 2000, 2000)) + b"\0" * 256)
    expected["huge_nifti/h_FLAIR.nii"] = ("max_voxels", ReasonCode.TOO_LARGE)

    (src / "gzip_bomb").mkdir()  # 50 MiB of zeros in ~50 KiB, declaring 10^9 voxels
    bomb = gzip.compress(_nifti_header_bytes((1000, 1000, 1000), np.uint8) + b"\0" * (50 * 2**20), 9)
    (src / "gzip_bomb" / "b_FLAIR.nii.gz").write_bytes(bomb)
    expected["gzip_bomb/b_FLAIR.nii.gz"] = ("max_voxels", ReasonCode.TOO_LARGE)

    (src / "gzip_forged").mkdir()  # within the default limits (343 M voxels), but ~50 KiB cannot inflate to 343 MB
    forged = gzip.compress(_nifti_header_bytes((700, 700, 700), np.uint8) + b"\0" * (50 * 2**20), 9)
    (src / "gzip_forged" / "f_FLAIR.nii.gz").write_bytes(forged)
    expected["gzip_forged/f_FLAIR.nii.gz"] = ("cannot inflate", ReasonCode.TRUNCATED)

    (src / "gzip_tail").mkdir()  # a valid 64^3 image followed by 1 GiB of zeros: read, the tail is never inflated
    data = np.arange(64**3, dtype=np.uint32).astype(np.uint8)
    zeros = gzip.compress(b"\0" * (16 * 2**20), 9)
    with open(src / "gzip_tail" / "t_FLAIR.nii.gz", "wb") as fh:
        fh.write(gzip.compress(_nifti_header_bytes((64, 64, 64), np.uint8) + data.tobytes(), 6))
        for _ in range(64):
            fh.write(zeros)
    out.good.append("gzip_tail")

    (src / "huge_mha").mkdir()
    (src / "huge_mha" / "h_FLAIR.mha").write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 3000 3000 3000\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n" + b"\0" * 64)
    expected["huge_mha/h_FLAIR.mha"] = ("max_voxels", ReasonCode.TOO_LARGE)

    _mhd(src / "mhd_device" / "d_FLAIR.mhd", "/dev/zero", dims="4096 4096 4096")
    expected["mhd_device/d_FLAIR.mhd"] = ("character device", ReasonCode.NOT_REGULAR_FILE)

    elsewhere = src.parent / f"{src.name}-elsewhere" / "t1.raw"  # another patient's file, outside the cohort
    elsewhere.parent.mkdir(parents=True, exist_ok=True)
    elsewhere.write_bytes(b"\0" * 128)
    _mhd(src / "mhd_outside" / "o_FLAIR.mhd", f"../../{elsewhere.parent.name}/t1.raw")
    expected["mhd_outside/o_FLAIR.mhd"] = ("outside the header's folder", ReasonCode.OUTSIDE_SOURCE)

    (src / "fifo").mkdir()
    os.mkfifo(src / "fifo" / "p_FLAIR.nii.gz")  # opening it would block forever
    expected["fifo/p_FLAIR.nii.gz"] = ("FIFO", ReasonCode.NOT_REGULAR_FILE)

    files = dicom_flair(src / "dicom_absurd" / "flair", "1.2.3.1010", n=2)
    _edit(files, Rows=65535, Columns=65535)
    expected[files[0].relative_to(src).as_posix()] = ("65535x65535", ReasonCode.TOO_LARGE)

    files = dicom_flair(src / "dicom_beyond_file" / "flair", "1.2.3.1011", n=2)
    _edit(files, Rows=4096, Columns=4096)
    expected[files[0].relative_to(src).as_posix()] = ("bytes present", ReasonCode.TRUNCATED)

    files = dicom_flair(src / "dicom_compressed_absurd" / "flair", "1.2.3.1012", n=2)
    for f in files:
        fac.recompress(f, uid.RLELossless)
    _edit(files, Rows=40000, Columns=40000)
    expected[files[0].relative_to(src).as_posix()] = ("40000x40000", ReasonCode.TOO_LARGE)

    # --- compressed DICOM, identifying folder names, a "T1 SPACE" series: all converted --------
    files = dicom_flair(src / "compressed" / "flair", "1.2.3.1020")
    for f in files:
        fac.recompress(f, uid.RLELossless)
    syntax = next((s for s in (uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.JPEGLosslessSV1) if fac.encoder_missing(s) is None), None)
    if syntax is not None:
        t1 = blob_image((8, 20, 20), (1.2, 1.2, 2.5), seed=5).array.astype(np.int16)
        for f in fac.write_series(src / "compressed" / "t1", t1, spacing=(1.2, 1.2, 2.5), description="T1 MPRAGE", series_number=2,
                                  study_uid="1.2.3.1020", extra={"PatientID": "PID-1020"}):
            fac.recompress(f, syntax)
    out.good.append("compressed")

    name, mrn, birth, accession = IDENTITY
    phi = f"{name}_{mrn}/{birth}_{accession}"
    dicom_flair(src / phi / "flair", "1.2.3.1030", extra={"PatientName": name, "PatientID": mrn, "PatientBirthDate": birth,
                                                          "AccessionNumber": accession})
    out.good.append(phi)

    dicom_flair(src / "t1space" / "flair", "1.2.3.1040")
    t1 = blob_image((8, 20, 20), (1.2, 1.2, 2.5), seed=6).array.astype(np.int16)
    fac.write_series(src / "t1space" / "t1", t1, spacing=(1.2, 1.2, 2.5), description="T1 SPACE", series_number=2, study_uid="1.2.3.1040",
                     extra={"PatientID": "PID-1040"})
    out.good.append("t1space")

    mha = src / "good_mhd"
    mha.mkdir()
    flair = blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0), seed=9)
    write_metaimage(flair, mha / "m_FLAIR.mha")
    write_nifti(lesion_mask_on(flair), mha / "m_lesion_mask.nii.gz")
    out.good.append("good_mhd")

    # --- poisoned sessions: they kill their worker under the test hook (poison_env) ------------
    for folder, how in POISON.items():
        rel = f"{name}_{mrn}_other/{folder}" if how == "oom" else folder  # a poisoned session in an identifying folder
        write_session(src / rel, f"{folder}_", seed=11 + len(folder), label=False)
        out.poisoned[rel] = how
    return out


def poison_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the test hooks first on ``PYTHONPATH`` and the poisoned sessions of
    :data:`POISON` set to kill their workers (``LESIONFLOW_TEST_POISON_SESSIONS``)."""
    path = os.pathsep.join(p for p in (str(HOOKS), str(REPO), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "LESIONFLOW_TEST_POISON_SESSIONS": json.dumps(POISON)}


# ------------------------------------------------------------------------------- measuring a run
@dataclass
class MeasuredRun:
    """A finished command with its memory: ``peak_tree_rss_mb`` the largest sum of the resident
    sets of the command and all its descendants seen by sampling (every ``interval_s``);
    ``peak_process_rss_mb`` the largest single process's peak (``getrusage(RUSAGE_CHILDREN)``
    of a wrapper whose only child is the command: the kernel's exact figure, every process of
    the tree that was waited for included, killed Dask workers too); ``peak_by_role_mb`` the
    sampled peak per kind of process (``cli``, ``dask worker``, ``prefect server``, ...; ``gone``:
    a process that exited between being listed and being named, e.g. a killed worker);
    ``processes`` how many distinct processes were seen."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_tree_rss_mb: float
    peak_process_rss_mb: float
    peak_by_role_mb: dict[str, float]
    processes: int
    samples: int


_WRAPPER = ("import json, resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "print('LESIONFLOW_MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def _role(proc) -> str:  # type: ignore[no-untyped-def]
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return "gone"
    if "LESIONFLOW_MAXRSS_KB" in cmd:
        return "wrapper"
    if cmd.startswith("dask worker") or "spawn_main" in cmd:  # a worker names itself once started
        return "dask worker"  # the nannies and the scheduler of a LocalCluster live in the CLI's process
    if "resource_tracker" in cmd:
        return "multiprocessing resource tracker"
    if "lesionflow" in cmd and "ingest" in cmd:
        return "cli"
    if "prefect" in cmd or "uvicorn" in cmd:
        return "prefect server"
    return "other"


def run_measured(cmd: Sequence[str], env: Mapping[str, str], timeout_s: float, interval_s: float = 0.05,
                 cwd: str | Path | None = None) -> MeasuredRun:
    """Run ``cmd`` (through a wrapper that reports the kernel's peak RSS of its tree) and sample
    the resident memory of every process of the tree every ``interval_s`` (psutil).

    Sampling sees what is alive at each instant: a spike shorter than the interval can be missed
    in the sum, never in ``peak_process_rss_mb`` (the kernel's, per process). Raises
    ``subprocess.TimeoutExpired`` (after killing the tree) past ``timeout_s``.
    """
    import sys

    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(env), cwd=cwd)
    root = psutil.Process(proc.pid)
    peak_tree, peaks, seen, samples = 0, {}, set(), 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_tree, samples
        while not stop.is_set():
            try:
                tree = root.children(recursive=True)  # the command and its descendants, not the wrapper
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in tree:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                key = (p.pid, p.create_time())
                seen.add(key)
                role = _role(p)
                peaks[role] = max(peaks.get(role, 0), rss)
            peak_tree = max(peak_tree, total)
            samples += 1
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        for p in [*root.children(recursive=True), root]:
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.communicate()
        raise
    finally:
        stop.set()
        thread.join()
    wall = time.perf_counter() - t0
    maxrss_kb = 0
    for line in stderr.splitlines():
        if line.startswith("LESIONFLOW_MAXRSS_KB"):
            maxrss_kb = int(line.split()[1])
    return MeasuredRun(proc.returncode, stdout, stderr, wall, peak_tree / 2**20, maxrss_kb / 1024,
                       {k: round(v / 2**20, 1) for k, v in sorted(peaks.items())}, len(seen), samples)
