#!/usr/bin/env python
"""One ingest of a cohort mixing every hostile input class of issue 10 with good sessions,
measured: wall time, peak memory of the whole process tree, counts, and every rejection's code.

The cohort is ``tests.hostile_factory.write_hostile_cohort``: damaged DICOM/NIfTI/MetaImage,
resource bombs (NIfTI / MetaImage declaring 8·10^9 and 2.7·10^10 voxels, a gzip bomb, a gzip that
cannot inflate to what it declares, DICOM with 65535 x 65535 or a 4096² matrix beyond its file, a
compressed DICOM declaring 40000², a MetaImage reading ``/dev/zero`` or a file outside the cohort,
a FIFO named like a volume), compressed DICOM, identifying folder names, a "T1 SPACE" series and
two poisoned sessions that kill their Dask worker (one allocating past the worker memory limit,
one exiting as a native crash; through the test hook of ``tests/hooks/sitecustomize.py``), beside
eight good sessions.

Each mode runs ``/usr/bin/time -v lesionflow ingest COHORT --store NEW --config C --workers W --json``
(``prefect``: the default command, a Prefect flow run on an ephemeral API; ``plain``:
``--no-prefect``), with ``C`` = ``{"worker_memory_limit": LIMIT}``. Memory is counted three ways:

* ``time_v_max_rss_mb``: GNU time's "Maximum resident set size": the largest *single* process of
  the tree (``wait4`` rusage of the CLI, which includes its reaped descendants: Dask worker
  processes, killed ones too, and Prefect's server), not a sum;
* ``peak_tree_rss_mb``: psutil sampling every 50 ms of the CLI and every descendant (the
  LocalCluster's scheduler and nannies live in the CLI's process; one process per worker; the
  Prefect server in ``prefect`` mode), summed per sample, the largest sum;
* ``peak_by_role_mb``: the sampled peak of each kind of process.

Prints ONE JSON object on stdout (progress on stderr). Identifying folder names of the cohort are
printed as ``<identifying folder>``.

Example::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_hostile.py --modes plain,prefect --workers 2 --memory-limit 700MiB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KEY = "bench-hostile-key"


def _time_v(stderr: str) -> dict[str, float | str]:
    """The fields of GNU time -v we report."""
    out: dict[str, float | str] = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    if m:
        out["time_v_max_rss_mb"] = round(int(m.group(1)) / 1024, 1)
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", stderr)
    if m:
        parts = [float(p) for p in m.group(1).split(":")]
        out["time_v_wall_s"] = round(sum(p * 60**i for i, p in enumerate(reversed(parts))), 2)
    for field, name in (("User time (seconds)", "user_s"), ("System time (seconds)", "system_s"), ("Exit status", "exit_status")):
        m = re.search(re.escape(field) + r": (\S+)", stderr)
        if m:
            out[name] = float(m.group(1))
    return out


def _label(relpath: str) -> str:
    """An input's path in the report: identity-bearing folder names withheld."""
    from tests.hostile_factory import IDENTITY

    parts = ["<identifying folder>" if any(w.lower() in p.lower() for w in IDENTITY) else p for p in relpath.split("/")]
    return "/".join(parts)


def run_mode(mode: str, src: Path, work: Path, workers: int, limit: str, timeout_s: float) -> dict:
    from tests.hostile_factory import poison_env, run_measured
    from tests.sealed import reveal, reveal_text

    store = work / f"store-{mode}.zarr"
    config = work / "config.json"
    config.write_text(json.dumps({"worker_memory_limit": limit}))
    env = poison_env({**os.environ, "LESIONFLOW_PSEUDONYM_KEY": KEY})
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "lesionflow.cli", "ingest", str(src), "--store", str(store), "--config", str(config),
           "--workers", str(workers), "--json"]
    if mode == "plain":
        cmd.append("--no-prefect")
    print(f"[bench_hostile] {mode}: {' '.join(cmd[2:])}", file=sys.stderr)
    run = run_measured(cmd, env, timeout_s=timeout_s)
    result: dict = {"mode": mode, "returncode": run.returncode, "wall_s": round(run.wall_s, 2), **_time_v(run.stderr),
                    "peak_tree_rss_mb": round(run.peak_tree_rss_mb, 1), "peak_process_rss_mb_rusage": round(run.peak_process_rss_mb, 1),
                    "peak_by_role_mb": run.peak_by_role_mb, "processes_seen": run.processes, "samples": run.samples}
    if run.returncode != 0:
        result["stderr_tail"] = run.stderr[-3000:]
        return result
    summary = json.loads(run.stdout)
    rejections = sorted(({"input": _label(reveal(r["path"], KEY)), "code": r["code"],
                          "reason": _label(reveal_text(r["reason"], KEY))[:200]} for r in summary["rejected_inputs"]),
                        key=lambda r: r["input"])
    result.update({
        "converted": summary["converted"], "rejected_sessions": summary["rejected"], "skipped": summary["skipped"],
        "unused_sessions": summary.get("unused_sessions", 0), "rejected_inputs": len(summary["rejected_inputs"]),
        "unused_inputs": len(summary["unused_inputs"]), "codes": dict(Counter(r["code"] for r in summary["rejected_inputs"])),
        "rejections": rejections,
        "unused": sorted(({"input": _label(reveal(r["path"], KEY)), "code": r["code"]} for r in summary["unused_inputs"]),
                         key=lambda r: r["input"]),
        "ingest_seconds_reported": summary.get("seconds"),
    })
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="plain,prefect", help="comma-separated: plain (--no-prefect), prefect (the default command)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="700MiB", help="worker_memory_limit of the --config JSON")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per run before it is killed (the 'bounded time')")
    args = ap.parse_args()

    from tests.hostile_factory import write_hostile_cohort

    result: dict = {
        "benchmark": "bench_hostile",
        "machine": {"cpu_count": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2), "platform": platform.platform(),
                    "python": platform.python_version()},
        "workers": args.workers, "worker_memory_limit": args.memory_limit,
        "memory_counting": "time_v_max_rss_mb: GNU time -v, the largest single process of the tree (reaped Dask workers included); "
                           "peak_tree_rss_mb: psutil, sum over the CLI process (client, scheduler, nannies) and every descendant "
                           "(Dask worker processes, Prefect's server), sampled every 50 ms",
    }
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        cohort = write_hostile_cohort(Path(tmp) / "cohort")
        result["cohort"] = {"good_sessions": len(cohort.good), "poisoned_sessions": len(cohort.poisoned),
                            "hostile_inputs": len(cohort.rejected),
                            "bytes": sum(p.stat().st_size for p in cohort.src.rglob("*") if p.is_file())}
        runs = []
        for mode in args.modes.split(","):
            runs.append(run_mode(mode.strip(), cohort.src, Path(tmp), args.workers, args.memory_limit, args.timeout))
            runs[-1]["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
        result["runs"] = runs
        expected = {k: v[1].value for k, v in cohort.rejected.items()}
        for run in runs:
            if "rejections" in run:
                got = {r["input"]: r["code"] for r in run["rejections"]}
                run["every_hostile_input_rejected_with_its_code"] = all(got.get(_label(k)) == c for k, c in expected.items())
                run["good_sessions_converted"] = run["converted"] == len(cohort.good)
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
