"""Archive re-scoring speed: cases per hour with 1 and 2 Dask CPU workers, the query that finds the
missing (case, model) pairs, and a table query for one model version.

Prints one JSON object (progress on stderr):

* ``scoring``: a phantom cohort of ``--subjects`` subjects (``--spacing`` mm) is ingested once and its
  case groups copied (with their catalog rows) up to ``--cases`` cases; a 3-D U-Net is trained for a
  few iterations (its speed, not its quality, matters); then every case is re-scored
  (``overwrite``) by :func:`flows.score.run_batches` (masks written, lesion rows added as table
  parts) on a LocalCluster of 1 and of 2 worker processes, one torch thread each, batches of
  ``--batch`` cases. ``cases_per_hour`` counts from the first batch submitted to the last rows
  written, on a cluster already started (its start is reported apart, ``cluster_start_s``) whose
  workers have imported MONAI and loaded the model (once per run, not timed).
  ``workers_cpu_per_wall``: CPU seconds the workers used per second of the run; below the number of
  workers, they waited (for a core, on a shared machine, or for I/O).
* ``prefetch`` (``--prefetch``): the same cases and model scored in this one process (torch's
  default threads, or ``--prefetch-threads``) by :func:`training.infer.score_cases` (``overwrite``,
  masks written; the lesion rows are not measured), sequentially (``prefetch=False``) and with the
  prefetching reader (``prefetch=True``: case n+1 read and case n-1 written in their own threads
  while case n is inferred), taking turns ``--prefetch-rounds`` times after one untimed warm-up
  run of each. ``cases_per_hour`` per run and the median of each, ``speedup`` (prefetch over
  sequential), the process's CPU seconds per wall second, and ``stages_s``: the seconds each
  stage took in the sequential runs (read, infer, write; from the ``events`` hook), whose sum
  over the largest is the most overlapping could give. ``--prefetch-device cuda`` on a GPU machine.
* ``find_missing``: a synthetic store of ``--archive-cases`` cases x 4 modalities in the catalog
  (one compacted part plus 20 recent ones) and a ``case_volumes`` table of ``--table-rows`` rows
  (4 model versions of ``--table-rows / 4`` cases each, 2 parts per version); the time of
  :func:`pipeline.lesions.archive.unscored_cases` for one of them (median of 3 runs, first run apart).
* ``table_query``: :func:`pipeline.lesions.archive.model_case_volumes` (one version, DuckDB over the
  parts) beside :func:`pipeline.store.read_table` of the whole table filtered afterwards.

    python benchmarks/bench_score.py                        # 48 cases, 1, 2, 1, 2 workers, queries over 10^5 cases
    python benchmarks/bench_score.py --cases 200 --skip-queries   # 4.3 min on 2 shared cores (2026-11-29)
    python benchmarks/bench_score.py --cases 48 --skip-queries --skip-dask --prefetch   # sequential vs prefetching, one process
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("LESIONFLOW_PSEUDONYM_KEY", "bench-key-not-secret")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def make_scoring_store(work: Path, subjects: int, cases: int, spacing: float) -> tuple[Path, list[str]]:
    """A store of ``cases`` phantom cases: ``subjects`` ingested, then their groups and catalog rows copied."""
    import pyarrow.compute as pc

    from pipeline import store
    from pipeline.core.config import PipelineConfig
    from pipeline.ingest import run_ingest
    from pipeline.phantom import make_cohort

    cohort = make_cohort(work / "phantom", n_subjects=subjects, seed=11, spacing_mm=spacing)
    root = work / "store.zarr"
    summary = run_ingest(cohort.cohort_dir, root, PipelineConfig(n_workers=2), b"bench-key")
    base = store.list_cases(root)
    _log(f"ingested {summary.converted} subjects → {len(base)} cases")
    catalog = store.catalog_dataset(root, store.catalog_arrow_schema().names, filter=pc.field("status") == "converted")
    copies, i = [], 0
    while len(base) + len(copies) < cases:
        src = base[i % len(base)]
        new = f"{src.split('_')[0]}c{i:04d}_{src.split('_')[1]}"
        shutil.copytree(root / "cases" / src, root / "cases" / new)
        rows = catalog.filter(pc.field("case_id") == src).to_pylist()
        from storage_schemas.models import CatalogRow

        store.append_catalog(root, [CatalogRow(**{**r, "case_id": new}) for r in rows])
        copies.append(new)
        i += 1
    store.compact_catalog(root, min_parts=2)
    return root, base + copies


def _warm(model_dir: str, root: str) -> None:
    """In each worker before timing: torch at one thread, MONAI's inferer imported, the model loaded
    (kept by :func:`training.infer.score_cases` for the batches that follow)."""
    import monai.inferers  # noqa: F401 - the import the first batch would otherwise pay
    import torch

    from training.infer import _cached_model

    torch.set_num_threads(1)
    _cached_model(model_dir, root, "cpu")


def _cpu_s() -> float:
    """CPU seconds (user + system) this process has used."""
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def scoring_setup(args: argparse.Namespace, work: Path) -> tuple[Path, list[str], str]:
    """The phantom store, its case ids and a model folder trained for 5 iterations."""
    import torch

    from training.loop import train

    root, ids = make_scoring_store(work, args.subjects, args.cases, args.spacing)
    threads = torch.get_num_threads()
    result = train(root, case_ids=ids[: args.subjects], val_case_ids=[], patch_zyx=(32, 32, 32), batch_size=2, iterations=5, seed=0,
                   num_threads=1)
    torch.set_num_threads(threads)
    return root, ids, str(result.checkpoint_path)


def bench_scoring(args: argparse.Namespace, root: Path, ids: list[str], model_dir: str) -> dict:
    from flows.common import batches
    from flows.score import run_batches
    from pipeline.ingest.cluster import dask_client

    groups = batches(ids, args.batch)
    out = {"cases": len(ids), "subjects_ingested": args.subjects, "spacing_mm": args.spacing, "batch_cases": args.batch,
           "model": "unet (TrainConfig default), 5 iterations", "runs": []}
    for workers in args.workers:
        t0 = time.perf_counter()
        with dask_client(None, workers) as client:
            started = time.perf_counter() - t0
            load0 = _load()
            client.run(_warm, model_dir, str(root))  # imports and model load, in every worker, not timed
            cpu0 = client.run(_cpu_s)
            t1 = time.perf_counter()
            counts = run_batches(str(root), model_dir, groups, overwrite=True, flush_every=64, client=client)
            seconds = time.perf_counter() - t1
            cpu1 = client.run(_cpu_s)
        worker_cpu = sum(cpu1[w] - cpu0[w] for w in cpu1)
        run = {"workers": workers, "cluster_start_s": round(started, 2), "seconds": round(seconds, 2), "scored": counts["scored"],
               "cases_per_hour": round(counts["scored"] / seconds * 3600), "parts_added": counts["parts"],
               "workers_cpu_s": round(worker_cpu, 1), "workers_cpu_per_wall": round(worker_cpu / seconds, 2),
               "load_avg_1m_at_start": load0, "load_avg_1m_at_end": _load()}
        _log(json.dumps(run))
        out["runs"].append(run)
    by: dict[int, list[float]] = {}
    for r in out["runs"]:
        by.setdefault(r["workers"], []).append(r["cases_per_hour"])
    out["cases_per_hour_median"] = {str(w): round(statistics.median(v)) for w, v in by.items()}
    if 1 in by and 2 in by:
        out["speedup_2_vs_1"] = round(statistics.median(by[2]) / statistics.median(by[1]), 2)
    return out


def bench_prefetch(args: argparse.Namespace, root: Path, ids: list[str], model_dir: str) -> dict:
    """Sequential vs prefetching :func:`training.infer.score_cases` in this process (see the module docstring)."""
    import threading

    import monai.inferers  # noqa: F401 - imported before timing
    import torch

    from training.infer import score_cases

    if args.prefetch_threads:
        torch.set_num_threads(args.prefetch_threads)
    stages: dict[str, float] = {}
    starts: dict[tuple[str, str], float] = {}
    lock = threading.Lock()

    def hook(what: str, case_id: str) -> None:
        stage, edge = what.rsplit("_", 1)
        now = time.perf_counter()
        with lock:
            if edge == "start":
                starts[(stage, case_id)] = now
            else:
                stages[stage] = stages.get(stage, 0.0) + now - starts.pop((stage, case_id))

    def one(prefetch: bool, timed: bool) -> dict:
        stages.clear()
        load0, cpu0, t0 = _load(), _cpu_s(), time.perf_counter()
        rows = score_cases(root, model_dir, case_ids=ids, overwrite=True, device=args.prefetch_device, cache_model=True, prefetch=prefetch,
                           events=hook if not prefetch else None)
        seconds = time.perf_counter() - t0
        cpu = _cpu_s() - cpu0
        scored = sum(r["status"] == "scored" for r in rows)
        run = {"prefetch": prefetch, "timed": timed, "seconds": round(seconds, 2), "scored": scored,
               "cases_per_hour": round(scored / seconds * 3600), "cpu_per_wall": round(cpu / seconds, 2),
               "load_avg_1m_at_start": load0, "load_avg_1m_at_end": _load()}
        if not prefetch:
            run["stages_s"] = {k: round(v, 2) for k, v in stages.items()}
        _log(json.dumps(run))
        return run

    one(False, timed=False)
    one(True, timed=False)
    runs = []
    for _ in range(args.prefetch_rounds):
        runs += [one(False, timed=True), one(True, timed=True)]
    med = {p: round(statistics.median(r["cases_per_hour"] for r in runs if r["prefetch"] is p)) for p in (False, True)}
    seq_stages = [r["stages_s"] for r in runs if not r["prefetch"]]
    stage_med = {k: round(statistics.median(s[k] for s in seq_stages), 2) for k in seq_stages[0]}
    return {"cases": len(ids), "device": args.prefetch_device, "torch_threads": torch.get_num_threads(), "runs": runs,
            "cases_per_hour_median": {"sequential": med[False], "prefetch": med[True]},
            "speedup": round(med[True] / med[False], 2), "stages_s_sequential_median": stage_med,
            "overlap_ceiling": round(sum(stage_med.values()) / max(stage_med.values()), 2)}


def make_archive(root: Path, n_cases: int, table_rows: int, versions: int = 4) -> list[str]:
    """Catalog of ``n_cases`` x 4 modalities (one compacted part + 20 small ones) and a case_volumes
    table of ``table_rows`` rows over ``versions`` model versions (2 parts each), each version having scored
    the first ``table_rows / versions`` cases; returns the versions."""
    from datetime import UTC, datetime, timedelta

    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import store
    from pipeline.lesions.tables import append_lesion_rows
    from storage_schemas.models import SCHEMA_VERSION

    store.init_store(root)
    schema = store.catalog_arrow_schema()
    cases = [f"sub-{i:06x}_ses-01" for i in range(n_cases)]
    mods = ["FLAIR", "T1", "T2", "MASK"]
    t0 = datetime.now(UTC) - timedelta(days=30)
    n = n_cases * len(mods)
    cols = {name: pa.nulls(n, schema.field(name).type) for name in schema.names}
    cols.update({
        "case_id": pa.array(np.repeat(cases, len(mods))), "modality": pa.array(mods * n_cases), "status": pa.array(["converted"] * n),
        "source_relpath": pa.array([f"src:{i:08x}" for i in range(n)]), "pipeline_version": pa.array(["0"] * n),
        "config_hash": pa.array(["h"] * n), "run_id": pa.array(["r"] * n), "schema_version": pa.array([SCHEMA_VERSION] * n),
        "recorded_at": pa.array([t0 + timedelta(seconds=i // len(mods)) for i in range(n)], pa.timestamp("us", tz="UTC")),
    })
    table = pa.table([cols[k] for k in schema.names], schema=schema)
    (root / "catalog").mkdir(parents=True, exist_ok=True)
    small = min(20 * 4 * 8, n // 2)
    pq.write_table(table.slice(0, n - small), root / "catalog" / "part-20260101T000000-compact-00000000.parquet")
    for k in range(20):
        pq.write_table(table.slice(n - small + k * small // 20, small // 20), root / "catalog" / f"part-20260102T0000{k:02d}-{k:08x}.parquet")
    names = [f"unet3d-2026010{v}T000000-{v:08x}" for v in range(versions)]
    per_version = table_rows // versions
    for version in names:
        scored = cases[:per_version]
        for chunk in np.array_split(np.array(scored), max(1, 10 // versions)):
            frame = pd.DataFrame({"case_id": chunk, "subject": [c.split("_")[0] for c in chunk], "session": "ses-01", "model_version": version,
                                  "total_volume_ml": 1.0, "lesion_count": 1, "connectivity": 26, "min_lesion_mm3": 0.0, "voxel_volume_mm3": 1.0,
                                  "source_fingerprint": "f", "config_hash": "h", "scored_at": pd.Timestamp.now(tz="UTC")})
            append_lesion_rows(root, frame.to_dict("records"), [], finish=False)
    return names


def _timed(fn, repeats: int = 3) -> dict:
    first_t = time.perf_counter()
    first = fn()
    first_s = time.perf_counter() - first_t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"first_s": round(first_s, 3), "median_s": round(statistics.median(times), 3), "runs": repeats, "result": first}


def bench_queries(args: argparse.Namespace, work: Path) -> dict:
    from pipeline import store
    from pipeline.lesions.archive import model_case_volumes, unscored_cases

    root = work / "archive.zarr"
    t = time.perf_counter()
    versions = make_archive(root, args.archive_cases, args.table_rows)
    _log(f"synthetic archive written in {time.perf_counter() - t:.1f} s")
    missing = _timed(lambda: len(unscored_cases(root, versions[0], ["FLAIR", "T1", "T2"])))
    query = _timed(lambda: len(model_case_volumes(root, versions[1])))
    full = _timed(lambda: int((store.read_table(root, "case_volumes")["model_version"] == versions[1]).sum()), repeats=1)
    n_table = sum(1 for _ in (root / "tables" / "case_volumes").glob("part-*.parquet"))
    return {
        "find_missing": {"catalog_rows": args.archive_cases * 4, "catalog_parts": 21, "archive_cases": args.archive_cases,
                         "table_rows": args.table_rows, "table_parts": n_table, "missing_found": missing.pop("result"), **missing},
        "table_query": {"table_rows": args.table_rows, "versions": len(versions), "rows_of_one_version": query.pop("result"),
                        "model_case_volumes": query, "read_table_then_filter": {k: v for k, v in full.items() if k != "result"}},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=48, help="phantom cases re-scored per worker count (the issue's figure is for 200)")
    ap.add_argument("--subjects", type=int, default=6, help="phantom subjects ingested (copied up to --cases)")
    ap.add_argument("--spacing", type=float, default=3.0, help="phantom voxel size, mm")
    ap.add_argument("--batch", type=int, default=4, help="cases per Dask task")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 1, 2], help="worker counts, run in this order (alternated: the load drifts)")
    ap.add_argument("--archive-cases", type=int, default=100_000)
    ap.add_argument("--table-rows", type=int, default=100_000)
    ap.add_argument("--skip-scoring", action="store_true", help="neither Dask nor prefetch scoring")
    ap.add_argument("--skip-dask", action="store_true", help="no Dask worker scoring")
    ap.add_argument("--prefetch", action="store_true", help="sequential vs prefetching scoring in one process")
    ap.add_argument("--prefetch-rounds", type=int, default=2, help="timed runs of each, taking turns")
    ap.add_argument("--prefetch-threads", type=int, default=0, help="torch threads for --prefetch (0: torch's default)")
    ap.add_argument("--prefetch-device", default="cpu", help="device for --prefetch (cuda on a GPU machine)")
    ap.add_argument("--skip-queries", action="store_true")
    args = ap.parse_args()

    import duckdb
    import torch

    result = {"benchmark": "bench_score", "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                                                     "duckdb": duckdb.__version__, "processor": platform.processor() or platform.machine(),
                                                     "load_avg_1m_at_start": _load()}}
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        work = Path(tmp)
        if not args.skip_queries:
            result.update(bench_queries(args, work))
            _log(json.dumps({k: result[k] for k in ("find_missing", "table_query")}))
        if not args.skip_scoring and (not args.skip_dask or args.prefetch):
            root, ids, model_dir = scoring_setup(args, work)
            if not args.skip_dask:
                result["scoring"] = bench_scoring(args, root, ids, model_dir)
            if args.prefetch:
                result["prefetch"] = bench_prefetch(args, root, ids, model_dir)
    result["machine"]["load_avg_1m_at_end"] = _load()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
