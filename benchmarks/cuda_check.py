"""The CUDA path end to end, in one script for a GPU machine: train, crash, resume, score, evaluate, benchmark.

Prints one JSON object (progress on stderr). On a synthetic store (``--cases`` cases of
``--shape``³ voxels):

1. ``planned``: the patch and batch the planner picks for this GPU (bf16 autocast);
2. ``uninterrupted``: a run of ``--iterations`` with validation every ``--iterations // 4``;
3. ``resumed``: the same run stopped by an exception just after its middle checkpoint, then
   resumed with ``train(resume_run=...)``; on CUDA the weights are not bitwise those of the
   uninterrupted run (cuDNN), so the largest weight difference and both validation Dice are reported;
4. ``score``/``evaluate``: every case scored with the resumed model and
   :func:`pipeline.lesions.evaluation.evaluate` against the stored labels;
5. ``bench``: ``bench_train.py --cuda-options --profile`` for every network (3-D and 2-D), unless ``--no-bench``.

    python benchmarks/cuda_check.py                         # on the GPU machine, ~5 min on one H200
    python benchmarks/cuda_check.py --device cpu --quick    # the same script, tiny, as a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Stop(RuntimeError):
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda")
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--shape", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="tiny store, network and run (a smoke test of the script)")
    ap.add_argument("--no-bench", action="store_true")
    args = ap.parse_args()

    import torch

    from pipeline.lesions.evaluation import evaluate
    from pipeline.lesions.tables import write_lesion_tables
    from tests.store_factory import make_store
    from training.checkpoint import load_model
    from training.infer import score_cases
    from training.loop import list_runs, train

    device = args.device or "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device; run with --device cpu --quick for a smoke test"}))
        sys.exit(1)
    if args.quick:
        args.cases, args.shape, args.iterations = 3, 40, 8
    work = Path(tempfile.mkdtemp(prefix="lf-cuda-check-"))
    store = str(work / "store.zarr")
    out: dict = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu", "torch": torch.__version__}
    t0 = time.perf_counter()
    ids = make_store(store, n_cases=args.cases, shape_zyx=(args.shape,) * 3, seed=0)
    train_ids, val_ids = ids[:-1], ids[-1:]
    out["store_s"] = round(time.perf_counter() - t0, 1)
    every = max(2, args.iterations // 4)
    cfg = {"iterations": args.iterations, "device": device, "val_every": every, "checkpoint_every": every, "log_every": every, "seed": 3}
    if args.quick:
        cfg.update({"model": {"features": [4, 8, 16], "strides": [2, 2]}, "patch_zyx": [16, 16, 16], "batch_size": 2})

    _log("cuda_check: uninterrupted run")
    t = time.perf_counter()
    whole = train(store, cfg, case_ids=train_ids, val_case_ids=val_ids, runs_dir=work / "runs_a", models_dir=work / "models")
    out["planned"] = {"patch_zyx": whole.config.patch_zyx, "batch_size": whole.config.batch_size, "plan": whole.metrics["plan"]}
    out["uninterrupted"] = {k: whole.metrics[k] for k in ("val_dice", "val_dice_last", "selected", "best_iteration", "it_per_s", "train_seconds")}
    out["uninterrupted"]["amp"] = load_model(whole.checkpoint_path, device="cpu")[1].get("amp")
    out["uninterrupted"]["seconds"] = round(time.perf_counter() - t, 1)
    if device.startswith("cuda"):
        out["uninterrupted"]["peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)

    _log("cuda_check: a run stopped after its middle checkpoint, then resumed")
    stop_at = 2 * every + 1

    def stop(event: dict) -> None:
        if event.get("event") == "train" and event.get("iteration", 0) >= stop_at:
            raise _Stop()

    cfg_stop = {**cfg, "log_every": 1}
    try:
        train(store, cfg_stop, case_ids=train_ids, val_case_ids=val_ids, runs_dir=work / "runs_b", models_dir=work / "models", progress=stop)
    except _Stop:
        pass
    (run,) = list_runs(store, work / "runs_b")
    resumed = train(store, resume_run=run["run_id"], runs_dir=work / "runs_b", models_dir=work / "models")
    a = {k: v.float() for k, v in load_model(whole.checkpoint_path, device="cpu")[0].state_dict().items()}
    b = {k: v.float() for k, v in load_model(resumed.checkpoint_path, device="cpu")[0].state_dict().items()}
    out["resumed"] = {"resumed_from": resumed.metrics["resumed_from"], "val_dice": resumed.metrics["val_dice"],
                      "max_abs_weight_diff_vs_uninterrupted": float(max((a[k] - b[k]).abs().max() for k in a)),
                      "identical": all(torch.equal(a[k], b[k]) for k in a)}

    _log("cuda_check: score and evaluate")
    t = time.perf_counter()
    rows = score_cases(store, resumed.checkpoint_path, device=device, overwrite=True)
    version = rows[0]["model_version"]
    write_lesion_tables(store, version)
    table = evaluate(store, version)
    out["score"] = {"cases": len(rows), "seconds_per_case": round((time.perf_counter() - t) / max(1, len(rows)), 3)}
    out["evaluate"] = table.to_dict(orient="records")

    if not args.no_bench:
        _log("cuda_check: bench_train")
        cmd = [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--iterations", "3" if args.quick else "20"]
        if device.startswith("cuda"):
            cmd += ["--cuda-options", "--profile"]
        else:
            cmd += ["--networks", "unet", "--dims", "3", "--shape", "40", "--cases", "2"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}, cwd=REPO)
        out["bench"] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-2000:]}
    out["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
