#!/usr/bin/env python
"""What a resolution pyramid costs at commit time: seconds and bytes per case for 0 to 3
downsampled levels (``PYRAMID_MAX_LEVELS``), on a phantom case and a real MNI case.

Each case is ingested once (``run_ingest``, in process) to get its stored arrays and metadata;
then ``write_case`` writes it into a fresh store ``--repeats`` times per setting, taking turns
(round robin) so a busy spell on a shared machine does not hit one setting only, with one Zarr
codec thread and one SimpleITK thread (as in an ingest worker). Reported per setting: the levels
written (shapes), the median write time, the time of the downsampling alone, the case's bytes on
disk, and both relative to no pyramid and to the case's whole conversion (the ingest's seconds
for that session).

Prints ONE JSON object on stdout (progress on stderr).

Example::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_pyramid.py --repeats 5
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
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SHARED = Path(os.environ.get("LESIONFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
MNI = SHARED / "open_ms" / "cross_sectional" / "MNI" / "patient07"


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _ingested_case(src: Path, work: Path) -> tuple[dict, float]:
    """(the arrays and metadata of the one case ingested from ``src``, conversion seconds)."""
    import numpy as np

    from pipeline.core.config import PipelineConfig
    from pipeline.ingest import run_ingest
    from pipeline.store import foreground_mask, list_cases, open_case, read_case_meta, reference_label

    store = work / "ingested.zarr"
    t0 = time.perf_counter()
    summary = run_ingest(src, store, PipelineConfig(), b"bench-pyramid-key")
    seconds = time.perf_counter() - t0
    case_id = list_cases(store)[0]
    g = open_case(store, case_id)
    label = reference_label(g)
    case = {"meta": read_case_meta(store, case_id), "image": np.asarray(g["image"][...]), "foreground": np.asarray(foreground_mask(g)[...]),
            "label": None if label is None else np.asarray(label[...])}
    return case, seconds / max(1, summary.converted)


def measure(name: str, case: dict, convert_s: float, work: Path, levels: list[int], repeats: int) -> dict:
    import numpy as np

    from pipeline.store import init_store, ngff, write_case

    meta = case["meta"]
    out: dict = {"case": name, "shape_czyx": list(case["image"].shape), "spacing_xyz_mm": list(meta.geometry.spacing),
                 "convert_s_per_case": round(convert_s, 3), "settings": {}}
    times: dict[int, list[float]] = {n: [] for n in levels}
    down: dict[int, list[float]] = {n: [] for n in levels}
    sizes: dict[int, int] = {}
    for r in range(repeats):
        for n in levels:
            ngff.PYRAMID_MAX_LEVELS = n
            root = init_store(work / f"{name}-{n}-{r}.zarr")
            t0 = time.perf_counter()
            write_case(root, meta, case["image"], case["foreground"], case["label"])
            times[n].append(time.perf_counter() - t0)
            factors = ngff.pyramid_factors(meta.geometry)
            t0 = time.perf_counter()
            ngff.pyramid_levels(case["image"], factors, "mean")
            ngff.pyramid_levels(case["foreground"], factors, "max")
            if case["label"] is not None:
                ngff.pyramid_levels(case["label"], factors, "max")
            down[n].append(time.perf_counter() - t0)
            sizes[n] = _bytes(root / "cases" / meta.case_id)
            if r < repeats - 1 or n != levels[-1]:
                shutil.rmtree(root)
        print(f"[bench_pyramid] {name}: round {r + 1}/{repeats}", file=sys.stderr)
    base_t, base_b = statistics.median(times[levels[0]]), sizes[levels[0]]
    for n in levels:
        ngff.PYRAMID_MAX_LEVELS = n
        factors = ngff.pyramid_factors(meta.geometry)
        shapes = [list(lv.shape) for lv in ngff.pyramid_levels(np.zeros(case["image"].shape[1:], np.uint8), factors, "max")]
        t = statistics.median(times[n])
        out["settings"][str(n)] = {
            "levels_written": len(factors), "factors_zyx": [list(f) for f in factors], "level_shapes_zyx": shapes,
            "write_s_median": round(t, 4), "write_s_all": [round(x, 4) for x in times[n]],
            "downsample_s_median": round(statistics.median(down[n]), 4), "case_bytes": sizes[n],
            "extra_write_s": round(t - base_t, 4), "extra_bytes": sizes[n] - base_b,
            "extra_bytes_pct": round(100 * (sizes[n] - base_b) / base_b, 2),
            "extra_s_pct_of_conversion": round(100 * (t - base_t) / convert_s, 2) if convert_s else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--levels", default="0,1,2,3", help="values of PYRAMID_MAX_LEVELS to compare")
    ap.add_argument("--no-mni", action="store_true", help="phantom only")
    args = ap.parse_args()

    import SimpleITK as sitk
    import zarr

    from pipeline.phantom import make_cohort

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    zarr.config.set({"threading.max_workers": 1})
    levels = [int(x) for x in args.levels.split(",")]
    result: dict = {"benchmark": "bench_pyramid",
                    "machine": {"cpu_count": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
                                "platform": platform.platform(), "python": platform.python_version()},
                    "repeats": args.repeats, "threads": "1 SimpleITK, 1 Zarr codec thread (as an ingest worker)", "cases": []}
    with tempfile.TemporaryDirectory(prefix="bench-pyramid-") as tmp:
        work = Path(tmp)
        cohort = make_cohort(work / "phantom", n_subjects=1, seed=0)  # the default 1.5 mm phantom
        (work / "p").mkdir()
        case, seconds = _ingested_case(cohort.cohort_dir, work / "p")
        result["cases"].append(measure("phantom_1.5mm", case, seconds, work / "p", levels, args.repeats))
        if not args.no_mni and MNI.is_dir():
            (work / "m").mkdir()
            case, seconds = _ingested_case(MNI, work / "m")
            result["cases"].append(measure("mni_patient07", case, seconds, work / "m", levels, args.repeats))
        elif not args.no_mni:
            result["mni"] = f"skipped: {MNI} not found (set LESIONFLOW_SHARED_DATA)"
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
