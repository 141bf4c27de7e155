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
* ``model`` (with ``--model DIR``, a model folder such as ``lesionflow train-ms``'s ``<workdir>/model``):
  ``lesionflow change --method model`` with that model, the same evaluation, on each grid of
  ``--model-grids``: ``native`` (the store above, each visit on its own FLAIR grid, as the
  subtraction ran) and ``1mm`` (a second ingest of the patient at 1 mm isotropic, the voxel size of
  the open_ms MNI images the recipe's model is trained on); per grid the scoring time, the lesion
  volume each visit's prediction holds, and the figures for each of :data:`MODEL_RULES` (fixed before
  any figure was seen: the flow's defaults, and the subtraction's 10 mm³ size floor), every one reported;
* ``methods``: one row per method, grid and setting side by side (Dice, lesion-wise sensitivity,
  false positives per true change, and whether the issue's target is met: sensitivity >= 0.6 with at
  most one false positive per true change);
* the machine and its load average before and after.

    python benchmarks/bench_change.py [--data ../shared/data] [--sweep] [--no-registration]
                                      [--model DIR] [--model-grids native,1mm]
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


MODEL_RULES = ({"connectivity": 26, "min_size_mm3": 0.0}, {"connectivity": 26, "min_size_mm3": 10.0})
"""The model method's settings, all reported: the flow's defaults, and the subtraction's 10 mm³ size floor."""
TARGET = {"sensitivity": 0.6, "fp_per_true_change": 1.0}
"""The issue's aim: lesion-wise sensitivity >= 0.6 with at most one false positive per true change."""
FIGURES = ("dice", "change_sensitivity", "fp_per_true_change", "expert_changes", "detected_changes", "change_fp",
           "n_new", "n_enlarging", "n_shrinking", "n_disappeared", "n_stable")


def _meets(row: dict) -> bool:
    return row["change_sensitivity"] >= TARGET["sensitivity"] and row["fp_per_true_change"] <= TARGET["fp_per_true_change"]


def _model_change(store: str, model_dir: str) -> dict:
    """Score both visits with the model, then the model method's change for every :data:`MODEL_RULES`."""
    import numpy as np

    from pipeline.lesions.change import ChangeRules
    from pipeline.longitudinal import run_change, visit_pairs
    from pipeline.store import open_case, prediction_mask, read_case_meta
    from training.checkpoint import resolve_model_version
    from training.infer import score_cases

    (plan,), _ = visit_pairs(store)
    version = resolve_model_version(model_dir)
    t = time.perf_counter()
    score_cases(store, model_dir, case_ids=[plan["baseline"], plan["followup"]], overwrite=True)
    out: dict = {"score_s": round(time.perf_counter() - t, 1), "predicted_ml": {}}
    for visit in ("baseline", "followup"):
        meta = read_case_meta(store, plan[visit])
        n = int((np.asarray(prediction_mask(open_case(store, plan[visit]), version)[...]) != 0).sum())
        out["predicted_ml"][visit] = round(n * float(np.prod(meta.geometry.spacing)) / 1000.0, 2)
        out.setdefault("grid_mm", {})[visit] = [round(float(v), 2) for v in meta.geometry.spacing]
    out["settings"] = []
    for rules in MODEL_RULES:
        t = time.perf_counter()
        (row,) = run_change(store, method="model", model_version=version, rules=ChangeRules(**rules))["pairs"]
        out["settings"].append({"rules": rules, "seconds": round(time.perf_counter() - t, 1), **{k: row[k] for k in FIGURES}})
    return out


def _distances(tx, ref, points) -> dict[str, float]:
    import numpy as np

    e = np.array([np.linalg.norm(np.subtract(tx.TransformPoint(tuple(p)), ref.TransformPoint(tuple(p)))) for p in points])
    return {"median_mm": round(float(np.median(e)), 3), "p95_mm": round(float(np.percentile(e, 95)), 3), "max_mm": round(float(e.max()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("LESIONFLOW_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--no-registration", action="store_true")
    ap.add_argument("--model", help="a model folder (model.pt + model.json): also measure the model method")
    ap.add_argument("--model-grids", default="native,1mm", help="grids to score on: native (the subtraction's store), 1mm")
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
        methods = [{"method": "subtraction", "grid": "native", "setting": out["subtraction"]["config"],
                    **{k: out["subtraction"][k] for k in ("dice", "change_sensitivity", "fp_per_true_change")}}]
        if args.model:
            from training.checkpoint import read_model_info

            info = read_model_info(args.model)
            out["model"] = {"model_dir": Path(args.model).name, "model_version": info.get("model_version"),
                            "channels": info.get("channels"), "train_cases": len(info.get("train_case_ids") or []), "iterations": info.get("iterations"),
                            "grids": {}}
            for grid_name in args.model_grids.split(","):
                if grid_name == "native":
                    grid_store = store
                elif grid_name == "1mm":
                    grid_store = str(Path(tmp) / "s1mm.zarr")
                    t = time.perf_counter()
                    run_ingest(src, grid_store, PipelineConfig(target_spacing=(1.0, 1.0, 1.0)), pseudonym_key())
                    out["model"]["ingest_1mm_s"] = round(time.perf_counter() - t, 1)
                else:
                    raise SystemExit(f"--model-grids: unknown grid {grid_name!r} (native, 1mm)")
                res = _model_change(grid_store, args.model)
                out["model"]["grids"][grid_name] = res
                print(f"model on {grid_name}: {res}", file=sys.stderr)
                methods += [{"method": "model", "grid": grid_name, "setting": r["rules"],
                             **{k: r[k] for k in ("dice", "change_sensitivity", "fp_per_true_change")}} for r in res["settings"]]
        for m in methods:
            m["meets_target"] = _meets(m)
        out["methods"] = methods
        out["target"] = TARGET
    out["machine"]["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
