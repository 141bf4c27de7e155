"""Training and scoring speed on a synthetic store: iterations/s, validation Dice, scoring s/case.

Prints one JSON object. Runs on CUDA when available (bf16 autocast), else CPU. Training settings
come from ``--config`` (a TrainConfig JSON; default: TrainConfig's defaults), the options override it.

    python benchmarks/bench_train.py --cases 6 --shape 96 --iterations 300 --patch 48
    python benchmarks/bench_train.py --config train.json --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # not tests/: its pipeline/ (the mirrored test tree) would shadow the package


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--shape", type=int, default=96, help="edge of the cubic synthetic volumes (voxels)")
    ap.add_argument("--config", type=Path, default=None, help="TrainConfig JSON")
    ap.add_argument("--iterations", type=int, default=None, help="default: the config's (300)")
    ap.add_argument("--patch", type=int, default=None, help="cube edge; default: the config's (48)")
    ap.add_argument("--batch", type=int, default=None, help="default: the config's (2)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()

    import torch

    from tests.store_factory import make_store
    from training.config import TrainConfig
    from training.infer import score_cases
    from training.loop import train

    cfg = TrainConfig.from_file(args.config) if args.config else TrainConfig()
    given = {"iterations": args.iterations, "patch_zyx": (args.patch,) * 3 if args.patch else None, "batch_size": args.batch, "threads": args.threads}
    cfg = cfg.with_overrides(**{k: v for k, v in given.items() if v is not None})

    work = Path(tempfile.mkdtemp(prefix="lf-bench-train-"))
    store = work / "store.zarr"
    t0 = time.perf_counter()
    cases = make_store(store, n_cases=args.cases, shape_zyx=(args.shape,) * 3, seed=0)
    t_store = time.perf_counter() - t0
    val = cases[-1:]
    t0 = time.perf_counter()
    result = train(str(store), cfg, case_ids=cases[:-1], val_case_ids=val)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    scored = score_cases(str(store), result.model_version, overwrite=True)
    t_score = time.perf_counter() - t0
    out = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "cases": args.cases,
        "shape": args.shape,
        "patch": cfg.patch_zyx[0],
        "batch": cfg.batch_size,
        "iterations": cfg.iterations,
        "train_config_hash": result.metrics["train_config_hash"],
        "store_build_s": round(t_store, 2),
        "train_s": round(t_train, 2),
        "it_per_s": round(result.metrics.get("it_per_s") or cfg.iterations / t_train, 2),
        "val_dice": result.metrics.get("val_dice"),
        "final_loss": result.metrics.get("final_loss"),
        "score_s_per_case": round(t_score / max(1, len(scored)), 3),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
