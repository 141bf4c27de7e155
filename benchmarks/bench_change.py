"""Lesion change on the shared longitudinal MS patient: accuracy and time, as one JSON object.

On ``open_ms/longitudinal/raw/patient01`` (two visits, the dataset's transforms into a common
space, an expert change mask there) it measures:

* ``ingest_s``: ``run_ingest`` of the patient (both sessions, the visit order, the expert mask);
* ``supplied``: the supplied transforms' registration quality (NCC of the two FLAIR images in
  the common brain mask), and the same with the transforms inverted (the wrong convention would
  look like that);
* ``registration``: our rigid (and rigid-then-affine) registration of the follow-up FLAIR onto
  the baseline against the dataset's transforms (``C_f ∘ C_b⁻¹``, an independent reference: its
  authors' registration): median / 95th percentile / largest distance in mm over brain points,
  seconds;
* ``subtraction``: ``lesionflow change --method subtraction`` with its defaults against the expert
  mask (voxel Dice, lesion-wise sensitivity and false positives per true change, MSSEG-1 rules),
  seconds; with ``--sweep`` also every configuration of a small grid (the defaults were chosen
  on this one patient: say so wherever its figures are quoted);
* the machine and its load average before and after.

    python benchmarks/bench_change.py [--data ../shared/data] [--sweep] [--no-registration]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _distances(tx, ref, points) -> dict[str, float]:
    import numpy as np

    e = np.array([np.linalg.norm(np.subtract(tx.TransformPoint(tuple(p)), ref.TransformPoint(tuple(p)))) for p in points])
    return {"median_mm": round(float(np.median(e)), 3), "p95_mm": round(float(np.percentile(e, 95)), 3), "max_mm": round(float(e.max()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("LESIONFLOW_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--no-registration", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("LESIONFLOW_PSEUDONYM_KEY", "bench-change-key")

    import numpy as np

    from pipeline.core.config import PipelineConfig, pseudonym_key
    from pipeline.ingest import run_ingest
    from pipeline.lesions.change import evaluate_change
    from pipeline.longitudinal import SubtractionConfig, run_change, visit_pairs
    from pipeline.longitudinal.register import pair_transforms, register_rigid_affine, transform_from_json, transform_to_json
    from pipeline.longitudinal.run import _common_space, _flair, pair_grid
    from pipeline.longitudinal.subtraction import subtraction_change
    from pipeline.store import EXPERT, read_pair_mask

    src = Path(args.data) / "open_ms" / "longitudinal" / "raw" / "patient01"
    out: dict = {"machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                             "loadavg_before": os.getloadavg()}, "data": "open_ms/longitudinal/raw/patient01"}
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "s.zarr")
        t = time.perf_counter()
        summary = run_ingest(src, store, PipelineConfig(), pseudonym_key())
        out["ingest_s"] = round(time.perf_counter() - t, 1)
        out["ingest"] = {"converted": summary.converted, "rejected_inputs": len(summary.rejected_inputs)}
        (plan,), _ = visit_pairs(store)
        grid, kind, _meta = pair_grid(store, plan)
        on, reg = _common_space(store, plan, grid, kind)
        inverted = dict(plan, baseline_transform=transform_to_json(transform_from_json(plan["baseline_transform"]).GetInverse()),
                        followup_transform=transform_to_json(transform_from_json(plan["followup_transform"]).GetInverse()))
        out["supplied"] = {"ncc": reg.ncc, "ncc_inverted": _common_space(store, inverted, grid, kind)[1].ncc, "pair_grid": kind}
        print(f"supplied transforms: NCC {reg.ncc}", file=sys.stderr)
        if not args.no_registration:
            fb, mb = _flair(store, plan["baseline"])
            ff, _mf = _flair(store, plan["followup"])
            _, ref = pair_transforms(transform_from_json(plan["baseline_transform"]), transform_from_json(plan["followup_transform"]), "baseline")
            idx = np.argwhere(mb[::2, ::8, ::8] > 0) * [2, 8, 8]
            points = fb.index_to_world(idx[:, ::-1].astype(float))
            moved = np.array([np.linalg.norm(np.subtract(ref.TransformPoint(tuple(p)), p)) for p in points])
            out["registration"] = {"points": len(points), "motion_median_mm": round(float(np.median(moved)), 2),
                                   "motion_max_mm": round(float(moved.max()), 2)}
            for name, affine in (("rigid", False), ("rigid+affine", True)):
                r = register_rigid_affine(fb, ff, fixed_mask=mb, affine=affine)
                out["registration"][name] = {**_distances(r.transform, ref, points), "mattes_mi": round(r.mattes_mi, 4), "seconds": round(r.seconds, 1)}
                print(f"registration {name}: {out['registration'][name]}", file=sys.stderr)
        t = time.perf_counter()
        (row,) = run_change(store, method="subtraction")["pairs"]
        out["subtraction"] = {"config": SubtractionConfig().as_dict(), "seconds": round(time.perf_counter() - t, 1),
                              **{k: row[k] for k in ("dice", "change_sensitivity", "fp_per_true_change", "expert_changes", "detected_changes",
                                                     "change_fp", "n_new", "n_enlarging", "n_shrinking", "n_disappeared")}}
        print(f"subtraction: {out['subtraction']}", file=sys.stderr)
        if args.sweep:
            expert = read_pair_mask(store, plan["pair_id"], EXPERT)
            rows = []
            for dz, hz, e, ms in itertools.product((3.0, 3.5, 4.0, 5.0), (None, 0.0, 1.0, 1.5, 2.0), (6.0, 10.0), (10.0, 20.0, 40.0)):
                cfg = SubtractionConfig(diff_z=dz, hyper_z=hz, erode_mm=e, min_size_mm3=ms)
                ev = evaluate_change(expert, subtraction_change(on["flair_b"], on["flair_f"], on["brain"], grid.spacing, cfg) > 0,
                                     grid.voxel_volume_mm3)
                rows.append({**cfg.as_dict(), "dice": round(ev["dice"], 3), "sensitivity": round(ev["change_sensitivity"], 3),
                             "fp_per_true_change": round(ev["fp_per_true_change"], 3)})
            out["sweep"] = rows
    out["machine"]["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
