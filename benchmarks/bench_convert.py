#!/usr/bin/env python
"""Benchmark ``lesionflow convert`` against ``dcm2niix`` on the same DICOM folder tree, at matched
compression (``dcm2niix -1``, gzip level 1 like ours) and at dcm2niix's default (level 6), with the
output sizes side by side.

Prints ONE JSON object on stdout (progress goes to stderr). Every tool converts the same
source tree ``--repeats`` times, each time into a fresh, empty output folder, and the median
wall time is reported. The tools take turns (round robin), after one untimed warm-up round
that puts the source in the page cache, so that a busy spell on a shared machine does not
hit one tool only.

Timed commands:

* ``dcm2niix -z y -1 -o OUT SRC`` (gzip level 1: the same work as our ``.nii.gz``, level 1) and
  ``dcm2niix -z y -o OUT SRC`` (its default, level 6: slower, smaller) when the binary is found
  (``--dcm2niix``, ``$PATH`` or next to this Python); otherwise ``null``. The ratios are ours over
  the matched-compression run (``ratio_ours_over_dcm2niix``) and over the default one
  (``ratio_ours_over_dcm2niix_default``); ``bytes`` of every tool's output is in its block;
* ``lesionflow convert SRC OUT --workers W --json`` through the installed console script, as a
  subprocess: Python start-up and imports are included, like dcm2niix's process start-up;
* ``pipeline.io.convert.convert_tree(SRC, OUT, workers=W)`` in this process (library time:
  no interpreter start-up; the modules are imported by the warm-up run).

Sources:

* default: ``../shared/data/dcm_qa_nih/In`` relative to the repository root (``--src``);
* ``--phantom N``: a generated tree of N larger single-frame series (``--slices`` x
  ``--matrix``², uint16 (12 bits stored), Explicit VR Little Endian, realistic header incl. an 8 KiB private
  blob), written to a temporary folder (or ``--phantom-dir``, reused when already there).

Examples::

    .venv/bin/python benchmarks/bench_convert.py
    .venv/bin/python benchmarks/bench_convert.py --phantom 6 --repeats 3 --workers 1,2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_SRC = REPO.parent / "shared" / "data" / "dcm_qa_nih" / "In"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- tools
def _find_tool(name: str, explicit: str | None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def _dcm2niix_version(exe: str) -> str | None:
    try:
        res = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"version\s+(\S+)", res.stdout + res.stderr)
    return m.group(1) if m else None


def _gzip_backend() -> str:
    """Which deflate lesionflow's NIfTI writer uses here (pipeline.io.writers._deflater)."""
    try:
        from pipeline.io.writers import _deflater

        zmod, level, strategy = _deflater()
    except Exception as exc:  # pragma: no cover - report, do not fail the benchmark
        return f"unknown ({type(exc).__name__})"
    name = getattr(zmod, "__name__", str(zmod))
    return f"{name} level {level}" + (" Z_RLE" if name == "zlib" and strategy == 3 else "")


def _pigz_found() -> bool:
    return shutil.which("pigz") is not None


# ----------------------------------------------------------------------------- measuring
def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _count_outputs(out: Path) -> dict:
    nii = [p for p in out.rglob("*") if p.name.endswith((".nii.gz", ".nii"))]
    js = [p for p in out.rglob("*.json")]
    return {"nifti_files": len(nii), "json_files": len(js), "bytes": sum(p.stat().st_size for p in nii)}


_SUBPROCESS_ENV: dict[str, str] | None = None


def _subprocess_env(work: Path) -> dict[str, str]:
    """Environment for the timed commands: Python bytecode cached (in the scratch folder) as in
    a normal installation, even where PYTHONDONTWRITEBYTECODE is set (the warm-up fills it)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def _time_subprocess(cmd: list[str], out: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=_SUBPROCESS_ENV)
    wall = time.perf_counter() - t0
    return wall, _children_cpu() - cpu0, res


class _Tool:
    """One timed command: ``once(out_dir) -> (wall_s, cpu_s, extra)``; collects its runs."""

    def __init__(self, label: str, meta: dict, once) -> None:
        self.label, self.meta, self.once = label, meta, once
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.extra: dict = {}

    def run(self, work: Path, i: int, timed: bool) -> None:
        out = work / f"{self.label}-{i}"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        wall, cpu, extra = self.once(out)
        if timed:
            self.walls.append(wall)
            self.cpus.append(cpu)
            _log(f"  {self.label}: run {i}: {wall:.3f} s")
        self.extra = {**extra, **_count_outputs(out)}
        shutil.rmtree(out, ignore_errors=True)

    def result(self) -> dict:
        return {
            **self.meta,
            "median_s": round(statistics.median(self.walls), 4),
            "runs_s": [round(w, 4) for w in self.walls],
            "cpu_s_median": round(statistics.median(self.cpus), 4),
            **self.extra,
        }


def _round_robin(tools: list[_Tool], repeats: int, work: Path) -> None:
    """One untimed warm-up round, then ``repeats`` rounds running every tool once in turn, so
    that a busy spell on a shared machine hits all tools alike instead of one of them."""
    for i in range(repeats + 1):
        for tool in tools:
            tool.run(work, i, timed=i > 0)


def dcm2niix_tool(exe: str, src: Path, level: int | None = 1) -> _Tool:
    """``level`` 1 = matched to lesionflow's gzip level; None = dcm2niix's default (6)."""
    flags = ["-z", "y", *([f"-{level}"] if level is not None else [])]

    def once(out: Path):
        wall, cpu, res = _time_subprocess([exe, *flags, "-o", str(out), str(src)], out)
        if res.returncode not in (0,):
            _log(f"  dcm2niix exit status {res.returncode}: {res.stderr[-500:]}")
        series = len(re.findall(r"^Convert \d+ DICOM", res.stdout, flags=re.M))
        return wall, cpu, {"series": series, "returncode": res.returncode}

    meta = {"command": f"{exe} {' '.join(flags)} -o OUT SRC", "gzip_level": level or 6, "version": _dcm2niix_version(exe),
            "pigz_found": _pigz_found()}
    return _Tool("dcm2niix" if level is not None else "dcm2niix-default", meta, once)


def cli_tool(exe: str, src: Path, workers: int) -> _Tool:
    def once(out: Path):
        wall, cpu, res = _time_subprocess([exe, "convert", str(src), str(out), "--workers", str(workers), "--json"], out)
        info: dict = {"returncode": res.returncode}
        try:
            payload = json.loads(res.stdout)
            info.update(series=payload["converted"], rejected=payload["rejected"])
        except (ValueError, KeyError):
            _log(f"  lesionflow exit status {res.returncode}: {res.stderr[-500:]}")
            info.update(series=None, rejected=None)
        return wall, cpu, info

    return _Tool(f"cli-w{workers}", {"command": f"{exe} convert SRC OUT --workers {workers} --json"}, once)


def library_tool(src: Path, workers: int) -> _Tool:
    from pipeline.io.convert import convert_tree

    def once(out: Path):
        cpu0, ccpu0 = _self_cpu(), _children_cpu()
        t0 = time.perf_counter()
        summary = convert_tree(src, out, workers=workers)
        wall = time.perf_counter() - t0
        # children CPU only counts pool workers that have exited (they have, after shutdown)
        cpu = (_self_cpu() - cpu0) + (_children_cpu() - ccpu0)
        return wall, cpu, {"series": len(summary.converted), "rejected": len(summary.rejected)}

    return _Tool(f"lib-w{workers}", {"call": f"convert_tree(SRC, OUT, workers={workers})"}, once)


# ----------------------------------------------------------------------------- phantom
PHANTOM_SERIES = (  # (description, tissue intensities (background, csf, grey, white), TE, TR)
    ("T1_MPRAGE", (0, 300, 650, 900), 2.3, 2300),
    ("T2_SPACE", (0, 1400, 800, 550), 400, 3200),
    ("FLAIR_SPACE", (0, 120, 750, 600), 390, 5000),
    ("PD_TSE", (0, 900, 850, 700), 12, 3000),
    ("T1_MPRAGE_GD", (0, 320, 680, 950), 2.3, 2300),
    ("SWI_MAG", (0, 700, 500, 450), 20, 28),
)


def _phantom_volume(rng, shape: tuple[int, int, int], intensities: tuple[int, int, int, int]):
    """int16 [z, y, x]: nested ellipsoids ("head") + smooth bias + noise (compresses like MRI)."""
    import numpy as np

    nz, ny, nx = shape
    z, y, x = np.ogrid[-1:1:nz * 1j, -1:1:ny * 1j, -1:1:nx * 1j]
    r = (x / 0.80) ** 2 + (y / 0.92) ** 2 + (z / 0.85) ** 2
    bg, csf, grey, white = intensities
    vol = np.full(shape, float(bg), np.float32)
    vol[r < 1.0] = grey
    vol[r < 0.65] = white
    vol[((x / 0.12) ** 2 + (y / 0.35) ** 2 + (z / 0.3) ** 2) < 1.0] = csf  # ventricles
    vol *= (1.0 + 0.15 * x + 0.1 * y).astype(np.float32)  # bias field
    inside = r < 1.0
    sigma = np.where(inside, 0.015 * max(intensities), 3.0).astype(np.float32)  # quiet background
    noise = rng.normal(0.0, 1.0, size=shape).astype(np.float32) * sigma
    vol = np.abs(vol + noise)  # magnitude image: Rician-like background
    return np.clip(vol, 0, 32767).astype(np.int16)


def make_phantom_tree(root: Path, n_series: int, slices: int, matrix: int, seed: int = 0) -> dict:
    """Write ``n_series`` single-frame DICOM series under ``root/sub-XX/ses-01/NN_<desc>/``."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    n_files = 0
    for s in range(n_series):
        desc, intens, te, tr = PHANTOM_SERIES[s % len(PHANTOM_SERIES)]
        subject = f"sub-{s // 3 + 1:02d}"
        folder = root / subject / "ses-01" / f"{s + 1:02d}_{desc}"
        folder.mkdir(parents=True, exist_ok=True)
        vol = _phantom_volume(rng, (slices, matrix, matrix), intens)
        series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
        spacing = 256.0 / matrix
        dz = 1.0
        for k in range(slices):
            d = Dataset()
            d.SpecificCharacterSet = "ISO_IR 100"
            d.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
            d.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            d.SOPInstanceUID = generate_uid()
            d.StudyDate = d.SeriesDate = d.AcquisitionDate = d.ContentDate = "20240101"
            d.StudyTime = d.SeriesTime = "120000.000000"
            d.AcquisitionTime = d.ContentTime = f"12{s:02d}00.{k:06d}"
            d.AccessionNumber = "BENCH0001"
            d.Modality = "MR"
            d.Manufacturer = "SIEMENS"
            d.InstitutionName = "Benchmark Hospital"
            d.ReferringPhysicianName = "Ref^Doc"
            d.StationName = "BENCHMR"
            d.StudyDescription = "Brain^MS"
            d.SeriesDescription = desc
            d.ManufacturerModelName = "Prisma"
            d.PatientName = f"Phantom^{subject}"
            d.PatientID = f"PH{s // 3 + 1:04d}"
            d.PatientBirthDate = "19800101"
            d.PatientSex = "O"
            d.PatientAge = "044Y"
            d.PatientWeight = "70"
            d.BodyPartExamined = "BRAIN"
            d.ScanningSequence = ["GR", "IR"]
            d.SequenceVariant = ["SK", "SP", "MP"]
            d.ScanOptions = "IR"
            d.MRAcquisitionType = "3D"
            d.SequenceName = "*tfl3d1_16ns"
            d.SliceThickness = f"{dz:g}"
            d.RepetitionTime = f"{tr:g}"
            d.EchoTime = f"{te:g}"
            d.InversionTime = "900"
            d.NumberOfAverages = "1"
            d.ImagingFrequency = "123.2"
            d.ImagedNucleus = "1H"
            d.EchoNumbers = 1
            d.MagneticFieldStrength = "3"
            d.SpacingBetweenSlices = f"{dz:g}"
            d.EchoTrainLength = 1
            d.PercentSampling = "100"
            d.PercentPhaseFieldOfView = "100"
            d.PixelBandwidth = "240"
            d.DeviceSerialNumber = "12345"
            d.SoftwareVersions = "syngo MR XA30"
            d.ProtocolName = desc
            d.TransmitCoilName = "Body"
            d.AcquisitionMatrix = [0, matrix, matrix, 0]
            d.InPlanePhaseEncodingDirection = "ROW"
            d.FlipAngle = "9"
            d.SAR = "0.05"
            d.PatientPosition = "HFS"
            d.StudyInstanceUID = study_uid
            d.SeriesInstanceUID = series_uid
            d.StudyID = "1"
            d.SeriesNumber = s + 1
            d.AcquisitionNumber = 1
            d.InstanceNumber = k + 1
            z0 = -dz * (slices - 1) / 2
            d.ImagePositionPatient = [f"{-128 + spacing / 2:g}", f"{-128 + spacing / 2:g}", f"{z0 + k * dz:g}"]
            d.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            d.FrameOfReferenceUID = frame_uid
            d.PositionReferenceIndicator = ""
            d.SliceLocation = f"{z0 + k * dz:g}"
            d.SamplesPerPixel = 1
            d.PhotometricInterpretation = "MONOCHROME2"
            d.Rows = matrix
            d.Columns = matrix
            d.PixelSpacing = [f"{spacing:g}", f"{spacing:g}"]
            d.BitsAllocated = 16
            d.BitsStored = 12
            d.HighBit = 11
            d.PixelRepresentation = 0
            d.WindowCenter = "600"
            d.WindowWidth = "1200"
            # a vendor private block, like Siemens' CSA headers (skipped by both converters)
            d.private_block(0x0029, "SIEMENS CSA HEADER", create=True).add_new(0x10, "OB", bytes(rng.integers(0, 255, 8192, dtype=np.uint8)))
            d.PixelData = np.clip(vol[k], 0, 4095).astype("<u2").tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = d.SOPClassUID
            meta.MediaStorageSOPInstanceUID = d.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            d.file_meta = meta
            d.preamble = b"\0" * 128
            d.save_as(str(folder / f"IM{k + 1:05d}.dcm"), enforce_file_format=True)
            n_files += 1
    return {"series": n_series, "slices": slices, "matrix": matrix, "files": n_files}


# ----------------------------------------------------------------------------- main
def _tree_info(src: Path) -> dict:
    files = [p for p in src.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="DICOM folder tree (default: %(default)s)")
    ap.add_argument("--phantom", type=int, metavar="N", help="benchmark on a generated tree of N larger series instead of --src")
    ap.add_argument("--slices", type=int, default=176, help="phantom slices per series (default 176)")
    ap.add_argument("--matrix", type=int, default=256, help="phantom in-plane matrix (default 256)")
    ap.add_argument("--phantom-dir", type=Path, help="where to write the phantom tree (reused if it already holds one); default: a temporary folder, removed afterwards")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per tool (median reported; default 3)")
    ap.add_argument("--workers", default="1,2", help="comma-separated --workers values for lesionflow (default 1,2)")
    ap.add_argument("--dcm2niix", help="dcm2niix executable (default: next to this python, else $PATH)")
    ap.add_argument("--lesionflow", help="lesionflow console script (default: next to this python, else $PATH)")
    ap.add_argument("--no-library", action="store_true", help="skip the in-process convert_tree timing")
    ap.add_argument("--workdir", type=Path, help="scratch folder for outputs (default: a temporary folder)")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]

    cleanup: list[Path] = []
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    if args.workdir is None:
        cleanup.append(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        phantom_info = None
        if args.phantom:
            src = args.phantom_dir or Path(tempfile.mkdtemp(prefix="bench_phantom_"))
            if args.phantom_dir is None:
                cleanup.append(src)
            marker = src / ".phantom.json"
            wanted = {"series": args.phantom, "slices": args.slices, "matrix": args.matrix}
            if marker.exists() and {k: v for k, v in json.loads(marker.read_text()).items() if k in wanted} == wanted:
                phantom_info = json.loads(marker.read_text())
                _log(f"reusing phantom tree {src}")
            else:
                if src.exists():
                    shutil.rmtree(src)
                src.mkdir(parents=True)
                _log(f"writing phantom tree ({args.phantom} series x {args.slices} slices of {args.matrix}^2) to {src} ...")
                t0 = time.perf_counter()
                phantom_info = make_phantom_tree(src, args.phantom, args.slices, args.matrix)
                phantom_info["generation_s"] = round(time.perf_counter() - t0, 2)
                marker.write_text(json.dumps(phantom_info))
        else:
            src = args.src
        src = src.resolve()
        if not src.is_dir():
            print(json.dumps({"error": f"source folder not found: {src}"}))
            return 2

        result: dict = {
            "source": {"path": str(src), "phantom": phantom_info, **_tree_info(src)},
            "machine": {
                "cpu_count": os.cpu_count(),
                "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "repeats": args.repeats,
            "lesionflow_gzip": _gzip_backend(),
        }

        global _SUBPROCESS_ENV
        _SUBPROCESS_ENV = _subprocess_env(work)
        tools: list[_Tool] = []
        d_exe = _find_tool("dcm2niix", args.dcm2niix)
        d_tool = dcm2niix_tool(d_exe, src, level=1) if d_exe else None
        d_default = dcm2niix_tool(d_exe, src, level=None) if d_exe else None
        if d_tool and d_default:
            tools += [d_tool, d_default]
        else:
            _log("dcm2niix not found: skipped")
        l_exe = _find_tool("lesionflow", args.lesionflow)
        cli_tools = {w: cli_tool(l_exe, src, w) for w in workers} if l_exe else {}
        if not l_exe:
            _log("lesionflow console script not found: CLI timing skipped")
        lib_tools = {} if args.no_library else {w: library_tool(src, w) for w in workers}
        tools += list(cli_tools.values()) + list(lib_tools.values())
        _log(f"{len(tools)} tools x ({args.repeats} timed + 1 warm-up) rounds on {src} ...")
        _round_robin(tools, args.repeats, work)

        result["dcm2niix"] = d_tool.result() if d_tool else None
        result["dcm2niix_default"] = d_default.result() if d_default else None
        result["lesionflow_cli"] = {f"workers={w}": t.result() for w, t in cli_tools.items()} if l_exe else None
        result["lesionflow_library"] = None if args.no_library else {f"workers={w}": t.result() for w, t in lib_tools.items()}

        for ref_key, out_key in (("dcm2niix", "ratio_ours_over_dcm2niix"), ("dcm2niix_default", "ratio_ours_over_dcm2niix_default")):
            ratios: dict = {}
            if result[ref_key]:
                ref = result[ref_key]["median_s"]
                for kind in ("lesionflow_cli", "lesionflow_library"):
                    for key, val in (result[kind] or {}).items():
                        ratios[f"{kind.removeprefix('lesionflow_')} {key}"] = round(val["median_s"] / ref, 3) if ref > 0 else None
            result[out_key] = ratios or None
        sizes = {"dcm2niix -1": (result["dcm2niix"] or {}).get("bytes"), "dcm2niix default": (result["dcm2niix_default"] or {}).get("bytes")}
        for kind in ("lesionflow_cli", "lesionflow_library"):
            for key, val in (result[kind] or {}).items():
                sizes[f"{kind.removeprefix('lesionflow_')} {key}"] = val.get("bytes")
        result["output_bytes"] = sizes
        result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        print(json.dumps(result, indent=2))
        return 0
    finally:
        for p in cleanup:
            shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
