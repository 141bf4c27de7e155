"""Training speed per network and device: iterations/s, patches/s, peak memory, planner estimate; scoring s/case.

Prints one JSON object (progress on stderr). For each network (``unet``, ``dynunet``, ``vnet``,
``segresnet``) and each of ``--dims`` (3 = patches, 2 = axial slices), a fresh subprocess trains
``--iterations`` steps on a synthetic store (after ``--warmup`` untimed steps) and reports:

* ``it_per_s`` and ``patches_per_s`` (iterations x batch), timed steps only;
* ``peak_mb``: CUDA ``max_memory_allocated`` on a GPU; on the CPU the process's peak resident
  set (``ru_maxrss``) minus the resident set before the network was built;
* ``planner_estimate_mb``: :func:`training.plan.activation_bytes` for the same patch and batch,
  to check the planner's memory model against the measurement; ``parameter_state_mb``: fp32
  weights, gradients and Adam's two moments (16 bytes per parameter), which the peak includes and
  the activation estimate does not (on CUDA the planner leaves 30 % of the memory for it);
* on CUDA: ``gpu_busy_pct`` (``torch.cuda.utilization`` sampled during the timed steps, needs
  ``pynvml``), and with ``--profile`` the 10 most expensive operators of 3 profiled steps;
  with ``--cuda-options`` also each network's 3-D run with ``channels_last`` and with
  ``torch.compile``, so that they are switched on where they measure faster.

Patch and batch: ``--patch``/``--batch`` if given, else each network's plan for the synthetic
cases on this device (``planned: true`` in the row). On a CPU the default is a fixed small patch
(32^3 / 1x128x128, batch 2) so the whole table takes minutes; pass ``--plan`` to use the planner there too.

    python benchmarks/bench_train.py                          # every network, 3-D and 2-D
    python benchmarks/bench_train.py --networks unet --dims 3 --iterations 50 --plan
    python benchmarks/bench_train.py --cuda-options --profile  # on a GPU machine
    python benchmarks/bench_train.py --config train.json       # one TrainConfig instead of the grid
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # not tests/: its pipeline/ (the mirrored test tree) would shadow the package

NETWORKS = ("unet", "dynunet", "vnet", "segresnet")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
           "processor": platform.processor() or platform.machine(), "loadavg_before": os.getloadavg()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return out


def one(args: argparse.Namespace) -> dict:
    """One network/dims/option combination, in this process (called in a subprocess by main)."""
    import numpy as np
    import torch

    from tests.store_factory import make_store
    from training.config import TrainConfig
    from training.loop import flush_losses, setup, train_step
    from training.plan import activation_bytes

    spec = json.loads(args.one)
    threads = spec.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    work = Path(tempfile.mkdtemp(prefix="lf-bench-train-"))
    store = work / "store.zarr"
    cases = make_store(store, n_cases=spec["cases"], shape_zyx=(spec["shape"],) * 3, seed=0)
    profiled = 3 if spec.get("profile") else 0  # the loader must last for the profiled steps too (it ran out on CUDA: StopIteration)
    cfg = TrainConfig.model_validate(spec["config"]).with_overrides(iterations=spec["warmup"] + spec["iterations"] + profiled)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state = setup(str(store), cfg, case_ids=cases[:-1], val_case_ids=[])
    dev = state.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    loader = iter(state.loader)
    for _ in range(spec["warmup"]):
        train_step(state, next(loader))
    busy: list[float] = []
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(spec["iterations"]):
        train_step(state, next(loader))
        if dev.type == "cuda":
            try:
                busy.append(float(torch.cuda.utilization(dev)))
            except Exception:  # pynvml missing
                pass
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    flush_losses(state)
    used = state.cfg
    row = {
        "network": used.model.kind, "spatial_dims": used.spatial_dims, "patch_zyx": list(used.patch_zyx or ()),
        "batch": used.batch_size, "planned": bool(state.plan.get("planned")), "device": str(dev),
        "channels_last": used.channels_last, "compile": used.compile, "amp": str(state.amp_dtype).replace("torch.", "") if state.amp_dtype else None,
        "parameters_m": round(sum(p.numel() for p in state.model.parameters()) / 1e6, 2),
        "iterations": spec["iterations"], "seconds": round(seconds, 2),
        "it_per_s": round(spec["iterations"] / seconds, 3), "patches_per_s": round(spec["iterations"] * int(used.batch_size or 1) / seconds, 2),
        "final_loss": round(float(np.mean(state.losses[-5:])), 4),
        "planner_estimate_mb": round(
            activation_bytes(used, used.patch_zyx, int(used.batch_size or 1), 2 if state.amp_dtype is not None else 4) / 2**20, 1),
        "parameter_state_mb": round(16 * sum(p.numel() for p in state.model.parameters()) / 2**20, 1),
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
    }
    if dev.type == "cuda":
        row["peak_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
        row["gpu_busy_pct"] = round(float(np.mean(busy)), 1) if busy else None
        if spec.get("profile"):
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    train_step(state, next(loader))
                torch.cuda.synchronize(dev)
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=10)
            row["profile_top10"] = table.splitlines()
    else:
        row["peak_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1)  # KiB on Linux
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", default=",".join(NETWORKS))
    ap.add_argument("--dims", default="3,2", help="3, 2 or both")
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--shape", type=int, default=96, help="edge of the cubic synthetic volumes (voxels)")
    ap.add_argument("--iterations", type=int, default=10, help="timed steps per combination")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--patch", type=int, default=None, help="cube edge (2-D: the slice's); default: fixed small on CPU, planned on CUDA")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--plan", action="store_true", help="plan patch and batch on the CPU too")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default $LESIONFLOW_TORCH_THREADS or all cores)")
    ap.add_argument("--config", type=Path, default=None, help="one TrainConfig JSON instead of the grid")
    ap.add_argument("--cuda-options", action="store_true", help="also channels_last and torch.compile per network (3-D, CUDA)")
    ap.add_argument("--profile", action="store_true", help="CUDA: top-10 operators of 3 profiled steps")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per combination")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return

    import torch

    cuda = torch.cuda.is_available()
    threads = args.threads or int(os.environ.get("LESIONFLOW_TORCH_THREADS") or 0) or None
    combos: list[dict] = []
    if args.config:
        combos.append(json.loads(args.config.read_text()))
    else:
        for dims in (int(d) for d in args.dims.split(",")):
            for net in args.networks.split(","):
                cfg: dict = {"model": {"kind": net}, "spatial_dims": dims, "device": "cuda" if cuda else "cpu", "log_every": 1000,
                             "checkpoint_every": None}
                patch = args.patch or (None if (cuda or args.plan) else (32 if dims == 3 else 128))
                if patch:
                    cfg["patch_zyx"] = [patch] * 3 if dims == 3 else [1, patch, patch]
                if args.batch or not (cuda or args.plan):
                    cfg["batch_size"] = args.batch or 2
                combos.append(cfg)
                if cuda and args.cuda_options and dims == 3:
                    combos.append({**cfg, "channels_last": True})
                    combos.append({**cfg, "compile": True})
    out = {"script": "bench_train", "machine": machine(), "cases": args.cases, "shape": args.shape, "warmup": args.warmup, "rows": []}
    for cfg in combos:
        spec = {"config": cfg, "cases": args.cases, "shape": args.shape, "iterations": args.iterations, "warmup": args.warmup,
                "threads": threads, "profile": args.profile}
        label = f"{cfg.get('model', {}).get('kind', 'unet')} {cfg.get('spatial_dims', 3)}-D"
        label += (" channels_last" if cfg.get("channels_last") else "") + (" compile" if cfg.get("compile") else "")
        _log(f"bench_train: {label} ...")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec), "--iterations", str(args.iterations)],
                                  capture_output=True, text=True, timeout=args.timeout, env=env, cwd=REPO)
        except subprocess.TimeoutExpired:
            out["rows"].append({"config": cfg, "error": f"timed out after {args.timeout} s"})
            continue
        if proc.returncode != 0:
            out["rows"].append({"config": cfg, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"})
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        _log(f"  {row['it_per_s']} it/s, {row['patches_per_s']} patches/s, peak {row['peak_mb']} MB (estimate {row['planner_estimate_mb']} MB)")
        _log("  row " + json.dumps(row))  # the rows so far survive a run stopped from outside
        out["rows"].append(row)
    out["machine"]["loadavg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
