"""Ingest speed: seconds per case, MB/s, 1 vs 2 Dask workers, incremental add of one case.

Prints one JSON object. Sources:

* a phantom cohort of ``--subjects`` cases (DICOM, MetaImage and NIfTI subjects), generated once;
* real data: ``../shared/data/open_ms/cross_sectional/MNI`` (when present);
* ``nnUNetv2_plan_and_preprocess`` on the same phantom cases side by side, when ``nnunetv2`` is
  installed (``--nnunet-bin``: the ``bin`` folder of a separate virtual environment, so that
  nnU-Net does not change this one's torch; or on ``PATH``). The cases are exported in nnU-Net's
  raw layout first (export time excluded: nnU-Net is given already-converted NIfTI, the easier
  job). The comparison is fair (``vs_nnunet``): both sides are whole commands run as
  subprocesses, so interpreter start-up, imports and worker start-up count on both sides
  (``lesionflow ingest --no-prefect --workers 2`` vs ``nnUNetv2_plan_and_preprocess -np 2``),
  each into a fresh output folder, taking turns, ``--repeats`` runs each, medians compared.

The ``phantom`` block times the library call on a warm cluster (start-up excluded), which is
what the 1 → 2 worker speed-up is about; it is not compared with nnU-Net.

    python benchmarks/bench_ingest.py --subjects 20 --repeats 5 --nnunet-bin /path/to/nnunet-venv/bin
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("LESIONFLOW_PSEUDONYM_KEY", "benchmark-key")


def _warm_up() -> None:
    """Import in each worker what a conversion uses (their first-use cost is worker start-up)."""
    import cc3d  # noqa: F401
    import nibabel  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import scipy.ndimage  # noqa: F401
    import SimpleITK  # noqa: F401
    import zarr.codecs  # noqa: F401

    import pipeline.ingest
    import pipeline.ingest.normalize
    import pipeline.ingest.resample
    import pipeline.io.readers.dicom
    import pipeline.io.readers.metaimage
    import pipeline.io.readers.nifti
    import pipeline.store  # noqa: F401


def ingest_once(source: Path, store: Path, workers: int) -> dict:
    from pipeline.core.config import PipelineConfig, pseudonym_key
    from pipeline.ingest import run_ingest
    from pipeline.ingest.cluster import dask_client

    with dask_client(None, workers) as client:  # cluster start-up and worker imports excluded from the timing
        client.run(_warm_up)
        t0 = time.perf_counter()
        s = run_ingest(source, store, PipelineConfig(), pseudonym_key(), client=client)
        wall = time.perf_counter() - t0
    n = max(1, s.converted)
    return {
        "workers": workers,
        "converted": s.converted,
        "skipped": s.skipped,
        "wall_s": round(wall, 2),
        "s_per_case": round(wall / n, 3),
        "mb_hashed": round(s.bytes_read / 1e6, 1),
        "mb_per_s": round(s.bytes_read / 1e6 / wall, 1) if wall > 0 else None,
    }


def _ceiling_init(ready) -> None:
    import SimpleITK as sitk
    import zarr

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    zarr.config.set({"threading.max_workers": 1})
    _warm_up()
    ready.wait()  # the timing starts once every process has imported everything


def _ceiling_convert(job: tuple) -> float:
    from pipeline.ingest import IngestContext, convert_session

    plan, store, cfg = job
    return convert_session(plan, IngestContext(store, cfg, "ceiling", force=True)).seconds


def machine_ceiling(cohort: Path, work: Path, repeats: int) -> dict:
    """The same conversions in 1 and 2 plain processes (multiprocessing, no Dask, no discovery):
    how much a second core speeds this work up on this machine at best."""
    import multiprocessing as mp

    from pipeline.core.config import PipelineConfig, pseudonym_key
    from pipeline.ingest.discover import discover
    from pipeline.store import init_store

    cfg = PipelineConfig()
    plans = sorted(discover(cohort, cfg, pseudonym_key()).sessions, key=lambda p: -p.work_estimate())
    runs: dict[int, list[float]] = {1: [], 2: []}
    ctx = mp.get_context("spawn")
    for _ in range(repeats):
        for n in (1, 2):
            store = work / f"store-ceiling-{n}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            init_store(store)
            ready = ctx.Barrier(n + 1)
            with ctx.Pool(n, initializer=_ceiling_init, initargs=(ready,)) as pool:
                ready.wait()
                t0 = time.perf_counter()
                list(pool.imap_unordered(_ceiling_convert, [(p, str(store), cfg) for p in plans], chunksize=1))
                runs[n].append(round(time.perf_counter() - t0, 2))
    med = {n: sorted(r)[len(r) // 2] for n, r in runs.items()}
    return {"runs_s": {f"{n}_process{'es' if n > 1 else ''}": r for n, r in runs.items()},
            "speedup_1_to_2": round(med[1] / med[2], 2),
            "note": "convert_session over the discovered sessions in 1 vs 2 plain processes: the machine's own ceiling for this work"}


def session_dirs(cohort: Path) -> list[Path]:
    """Top-level session folders of a phantom cohort (one per subject)."""
    out = []
    for fmt in ("dicom", "metaimage"):
        out += sorted(p for p in (cohort / fmt).iterdir() if p.is_dir()) if (cohort / fmt).exists() else []
    out += sorted((cohort / "bids").glob("sub-*")) if (cohort / "bids").exists() else []
    return out


def export_nnunet_raw(store: Path, raw: Path) -> int:
    """The store's cases in nnU-Net's raw layout (``imagesTr/case000_0000.nii.gz``, ``labelsTr``)."""
    import nibabel as nib
    import numpy as np

    from pipeline.core.geometry import affine_ras
    from pipeline.store import list_cases, open_case, read_case_meta, volume_from_geometry

    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    cases = list_cases(store)
    channels: tuple[str, ...] = ()
    for i, case_id in enumerate(cases):
        meta = read_case_meta(store, case_id)
        channels = tuple(meta.channels)
        g = open_case(store, case_id)
        for c in range(len(meta.channels)):
            v = volume_from_geometry(meta.geometry, np.asarray(g["image"][c]))
            nib.save(nib.Nifti1Image(v.array.transpose(2, 1, 0), affine_ras(v)), raw / "imagesTr" / f"case{i:03d}_{c:04d}.nii.gz")
        v = volume_from_geometry(meta.geometry, np.asarray(g["labels/reference/0"][:]))
        nib.save(nib.Nifti1Image(v.array.transpose(2, 1, 0).astype(np.uint8), affine_ras(v)), raw / "labelsTr" / f"case{i:03d}.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): m for i, m in enumerate(channels)},
        "labels": {"background": 0, "lesion": 1}, "numTraining": len(cases), "file_ending": ".nii.gz"}))
    return len(cases)


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {res.returncode}: {res.stderr[-1000:]}")
    return wall


def vs_nnunet(cohort: Path, store: Path, work: Path, repeats: int, nnunet_bin: str | None) -> dict | None:
    """Whole commands on both sides, start-up included, the same number of runs, taking turns."""
    exe = shutil.which("nnUNetv2_plan_and_preprocess", path=nnunet_bin) if nnunet_bin else shutil.which("nnUNetv2_plan_and_preprocess")
    lesionflow = shutil.which("lesionflow", path=str(Path(sys.executable).parent))
    if exe is None or lesionflow is None:
        return None
    n = export_nnunet_raw(store, work / "nnUNet_raw" / "Dataset901_Phantom")
    nn_env = {**os.environ, "nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "pre"),
              "nnUNet_results": str(work / "res")}
    lf_env = dict(os.environ)
    runs: dict[str, list[float]] = {"lesionflow": [], "nnunet": []}
    for _ in range(repeats + 1):  # the first round is an untimed warm-up (page cache, bytecode)
        shutil.rmtree(work / "pre", ignore_errors=True)
        nn = _timed([exe, "-d", "901", "-c", "3d_fullres", "-np", "2"], nn_env)
        shutil.rmtree(work / "store-cli.zarr", ignore_errors=True)
        lf = _timed([lesionflow, "ingest", str(cohort), "--store", str(work / "store-cli.zarr"), "--workers", "2", "--no-prefect", "--json"],
                    lf_env)
        runs["nnunet"].append(round(nn, 2))
        runs["lesionflow"].append(round(lf, 2))
    runs = {k: v[1:] for k, v in runs.items()}
    med = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
    return {"cases": n, "runs_s": runs, "median_s": med,
            "s_per_case": {k: round(v / n, 3) for k, v in med.items()},
            "ratio_lesionflow_over_nnunet": round(med["lesionflow"] / med["nnunet"], 3),
            "commands": {"lesionflow": "lesionflow ingest SRC --store S --workers 2 --no-prefect --json (DICOM/MetaImage/NIfTI sources)",
                         "nnunet": f"{exe} -d 901 -c 3d_fullres -np 2 (the same cases, already NIfTI)"},
            "note": "both whole commands as subprocesses: interpreter start-up, imports and worker start-up included on both sides"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--spacing", type=float, default=1.5, help="phantom base voxel size, mm")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each worker count (median reported)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--nnunet-bin", help="bin folder of a virtual environment with nnunetv2 (default: PATH)")
    args = ap.parse_args()

    from pipeline.phantom import make_cohort

    work = Path(tempfile.mkdtemp(prefix="lf-bench-ingest-"))
    result: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}, "subjects": args.subjects}
    t0 = time.perf_counter()
    info = make_cohort(work / "phantom", n_subjects=args.subjects + 1, seed=0, spacing_mm=args.spacing)
    result["phantom_generation_s"] = round(time.perf_counter() - t0, 1)

    # hold the last subject back for the incremental measurement
    cohort = Path(info.cohort_dir)
    sessions = session_dirs(cohort)
    held = sessions[-1]
    aside = work / "held" / held.relative_to(cohort)
    aside.parent.mkdir(parents=True)
    shutil.move(str(held), str(aside))

    # 1 and 2 workers take turns, each into a fresh store; the median run of each is reported
    # (a busy spell of a shared machine then spreads over both instead of hitting one)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for _ in range(args.repeats):
        for workers in (1, 2):
            store = work / f"store-{workers}w.zarr"
            shutil.rmtree(store, ignore_errors=True)
            runs[workers].append(ingest_once(cohort, store, workers))
    med = {w: sorted(r, key=lambda x: x["wall_s"])[len(r) // 2] for w, r in runs.items()}
    result["phantom"] = {"1_worker": med[1], "2_workers": med[2],
                         "runs_s": {f"{w}_worker{'s' if w > 1 else ''}": [x["wall_s"] for x in r] for w, r in runs.items()},
                         "speedup_1_to_2": round(med[1]["wall_s"] / med[2]["wall_s"], 2)}
    result["machine_ceiling"] = machine_ceiling(cohort, work, args.repeats)

    # incremental: add the held-back case to (a copy of) the 20-case store, vs converting that
    # case alone into an empty store; taking turns, median of the repeats
    single = work / "single"
    (single / held.relative_to(cohort)).parent.mkdir(parents=True)
    shutil.copytree(aside, single / held.relative_to(cohort))
    shutil.move(str(aside), str(held))
    alone_runs, add_runs = [], []
    for _ in range(args.repeats):
        shutil.rmtree(work / "store-single.zarr", ignore_errors=True)
        alone_runs.append(ingest_once(single, work / "store-single.zarr", 2))
        target = work / "store-add.zarr"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(work / "store-2w.zarr", target)  # the 20-case store, as the 2-worker run left it
        add_runs.append(ingest_once(cohort, target, 2))
    one = sorted(alone_runs, key=lambda x: x["wall_s"])[len(alone_runs) // 2]
    add = sorted(add_runs, key=lambda x: x["wall_s"])[len(add_runs) // 2]
    result["incremental"] = {"add_1_to_store_s": add["wall_s"], "convert_1_alone_s": one["wall_s"],
                             "ratio": round(add["wall_s"] / one["wall_s"], 2), "converted": add["converted"], "skipped": add["skipped"],
                             "runs_s": {"add": [x["wall_s"] for x in add_runs], "alone": [x["wall_s"] for x in alone_runs]}}

    mni = REPO.parent / "shared" / "data" / "open_ms" / "cross_sectional" / "MNI"
    result["real_mni"] = ingest_once(mni, work / "store-mni.zarr", 2) if mni.is_dir() else None
    result["vs_nnunet"] = vs_nnunet(cohort, work / "store-add.zarr", work, args.repeats, args.nnunet_bin)
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
