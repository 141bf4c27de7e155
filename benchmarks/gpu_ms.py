"""The real-data recipe on a GPU: banks, the feed check and configurations trained on patient07, evaluated on patient19.

For a machine with a CUDA GPU but without Prefect (the lent GPU machine): the steps of
``flows/train_ms.py`` called as library functions, on a store already holding the two
open_ms MNI patients (``lesionflow ingest`` elsewhere; the store names them by pseudonym, so
``--cases`` maps ``patient07``/``patient19`` to case ids). Prints one JSON object and rewrites
it to ``--out`` after every step, so a run stopped from outside keeps what it measured.

1. ``banks``: each case's augmentation bank (``--samples`` samples of ``--bank-patch``), both
   cases in parallel processes with ``--threads`` torch threads each;
2. ``feed``: :func:`bench_loader.feed_check` (issue #11: is the GPU ever starved?) for the default
   network, one run per ``--feed`` entry ``MODE:BATCH[:THREADS]``: ``loader`` (the bank loader as
   training uses it, with its default threads on CUDA, 4 to 8, or ``THREADS``), ``fixed`` (one batch
   over and over: the ceiling without a loader); e.g. ``loader:2,loader:2:2,fixed:2``;
3. ``configs``: for each configuration, a 20-iteration probe (its it/s, cuDNN autotuning), then
   training for about ``--seconds`` (iterations = probe rate x seconds; ``select: last``, no
   validation: patient19 is never seen), scoring both patients and
   :func:`pipeline.lesions.evaluation.evaluate` against their consensus masks.

    LESIONFLOW_PSEUDONYM_KEY=... python benchmarks/gpu_ms.py --store ms.zarr --cases cases.json --out result.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

CONFIGS: dict[str, dict[str, Any]] = {
    # the CPU recipe's choices (3-D U-Net, focal Tversky), with the context a GPU affords
    "unet_ft_128": {"model": {"kind": "unet"}, "loss": {"kind": "focal_tversky"}, "patch_zyx": [128, 128, 128], "batch_size": 2},
    # nnU-Net's own choice of network and loss
    "dynunet_dicece_128": {"model": {"kind": "dynunet"}, "loss": {"kind": "dice_ce"}, "patch_zyx": [128, 128, 128], "batch_size": 2},
}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _bank(store: str, case_id: str, samples: int, patch: list[int], threads: int) -> dict[str, Any]:
    from pipeline.prepare.augment import BankConfig
    from pipeline.prepare.bank import ensure_bank

    return ensure_bank(store, case_id, BankConfig(samples_per_case=samples, patch_zyx=tuple(patch)), threads=threads)


def run_config(store: str, name: str, cfg: dict[str, Any], cases: dict[str, str], seconds: float, work: Path,
               device: str = "cuda") -> dict[str, Any]:
    import torch

    from pipeline.lesions.evaluation import evaluate, write_truth_table
    from pipeline.lesions.tables import write_lesion_tables
    from training.infer import score_cases
    from training.loop import train

    base = {"spatial_dims": 3, "select": "last", "log_every": 100, "checkpoint_every": None, "device": device, "seed": 0, **cfg}
    out: dict[str, Any] = {"config": base}
    t = time.perf_counter()
    probe = train(store, {**base, "iterations": 20}, case_ids=[cases["patient07"]], val_case_ids=[], save=False,
                  runs_dir=work / "runs", models_dir=work / "models")
    rate = float(probe.metrics["it_per_s"])
    iterations = max(50, int(rate * seconds))
    out["probe"] = {"it_per_s": rate, "seconds": round(time.perf_counter() - t, 1)}
    _log(f"gpu_ms: {name}: {rate:.2f} it/s in the probe; training {iterations} iterations")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    result = train(store, {**base, "iterations": iterations}, case_ids=[cases["patient07"]], val_case_ids=[])
    out["train"] = {"iterations": iterations, "seconds": round(time.perf_counter() - t, 1), "it_per_s": result.metrics["it_per_s"],
                    "peak_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None, "model_version": result.model_version,
                    "final_loss": result.metrics.get("final_loss")}  # mean of the last 10 iterations (metrics has no "losses")
    t = time.perf_counter()
    order = [cases["patient19"], cases["patient07"]]
    score_cases(store, result.model_version, case_ids=order, overwrite=True, device=device)
    write_lesion_tables(store, result.model_version, case_ids=order)
    out["score_s_per_case"] = round((time.perf_counter() - t) / 2, 2)
    truth = write_truth_table(store, cases, work / "truth_cases.csv")
    table = evaluate(store, result.model_version, truth)
    patient = {c: p for p, c in cases.items()}
    out["evaluation"] = [{"patient": patient[r["case_id"]], **r} for r in table.to_dict(orient="records") if r["case_id"] in patient]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--cases", required=True, type=Path, help='JSON {"patient07": case_id, "patient19": case_id}')
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--samples", type=int, default=96, help="bank samples per case")
    ap.add_argument("--bank-patch", default="128,128,128")
    ap.add_argument("--threads", type=int, default=8, help="torch threads per bank process")
    ap.add_argument("--feed-seconds", type=float, default=40)
    ap.add_argument("--feed", default="loader:2,fixed:2", help="feed checks, MODE:BATCH[:THREADS] (loader or fixed; THREADS: loader threads, default the loader's own), comma-separated")
    ap.add_argument("--seconds", type=float, default=120, help="training time per configuration (about)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--device", default="cuda", help="cpu with a small --patch: a smoke test of the script")
    ap.add_argument("--patch", default=None, help="replace every configuration's patch (z,y,x)")
    args = ap.parse_args()

    import torch

    cases = json.loads(args.cases.read_text())
    work = Path(tempfile.mkdtemp(prefix="lf-gpu-ms-"))
    out: dict[str, Any] = {"script": "gpu_ms", "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}

    def save() -> None:
        text = json.dumps(out, indent=2, default=str)
        if args.out:
            args.out.write_text(text)

    patch = [int(x) for x in args.bank_patch.split(",")]
    _log(f"gpu_ms: banks ({args.samples} samples of {patch} per case)")
    t = time.perf_counter()
    with ProcessPoolExecutor(len(cases), mp_context=mp.get_context("spawn")) as pool:
        rows = list(pool.map(_bank, [args.store] * len(cases), list(cases.values()), [args.samples] * len(cases),
                             [patch] * len(cases), [args.threads] * len(cases)))
    out["banks"] = {"seconds": round(time.perf_counter() - t, 1), "rows": rows}
    save()

    from bench_loader import feed_check

    out["feed"] = []
    for spec in filter(None, args.feed.split(",")):
        mode, batch, *threads = spec.split(":")
        _log(f"gpu_ms: feed check {mode}, batch {batch}" + (f", {threads[0]} loader threads" if threads else ""))
        try:
            out["feed"].append(feed_check(args.store, args.feed_seconds, args.device, batch=int(batch), fixed=mode == "fixed",
                                          workers=int(threads[0]) if threads else 0))
        except Exception as exc:  # reported; the configurations still run
            out["feed"].append({"spec": spec, "error": repr(exc)})
        save()

    out["configs"] = {}
    for name in filter(None, args.configs.split(",")):
        _log(f"gpu_ms: configuration {name}")
        try:
            cfg = {**CONFIGS[name], **({"patch_zyx": [int(x) for x in args.patch.split(",")]} if args.patch else {})}
            out["configs"][name] = run_config(args.store, name, cfg, cases, args.seconds, work, args.device)
        except Exception as exc:
            import traceback

            out["configs"][name] = {"error": repr(exc), "traceback": traceback.format_exc()[-3000:]}
        save()
    save()
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
