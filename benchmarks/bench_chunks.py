"""Chunk shape and codec for the case image array, chosen by measurement.

Writes the real MNI case (FLAIR, T1, T2 of ../shared/data/open_ms/cross_sectional/MNI/patient07,
z-scored like the store does) as a (C, Z, Y, X) float32 Zarr v3 array with several chunk shapes
and codecs, then measures: size on disk, write time, whole-volume read time, and the time to
read random 48³ and 96³ patches of all channels (what training does). Prints one JSON object.

    python benchmarks/bench_chunks.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_case() -> np.ndarray:
    from pipeline.ingest.normalize import foreground_mask, zscore
    from pipeline.io.readers import read_volume

    mni = REPO.parent / "shared" / "data" / "open_ms" / "cross_sectional" / "MNI" / "patient07"
    if mni.is_dir():
        chans = [read_volume(next(mni.glob(f"{m}_N4*.nii.gz"))).array for m in ("FLAIR", "T1", "T2")]
    else:  # synthetic stand-in of the same size
        rng = np.random.default_rng(0)
        chans = [rng.normal(100, 20, (182, 218, 182)).astype(np.float32) for _ in range(3)]
    fg = foreground_mask(chans[0])
    return np.stack([zscore(c, fg)[0] for c in chans])


def codecs():
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    return {
        "none": [],
        "blosc-lz4-shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle)],
        "blosc-zstd1-shuffle": [BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.shuffle)],
        "blosc-zstd3-shuffle": [BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.shuffle)],
        "zstd3": [ZstdCodec(level=3)],
    }


def bench(arr: np.ndarray, chunks: tuple[int, ...], comp: list, root: Path, repeats: int, rng: np.random.Generator) -> dict:
    import zarr

    path = root / "a.zarr"
    writes = []
    for _ in range(repeats):
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        z = zarr.create_array(str(path), shape=arr.shape, chunks=chunks, dtype=arr.dtype, compressors=comp)
        z[...] = arr
        writes.append(time.perf_counter() - t0)
    write_s = float(np.median(writes))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    z = zarr.open_array(str(path), mode="r")
    whole = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _ = z[...]
        whole.append(time.perf_counter() - t0)
    out = {"chunks": list(chunks), "size_mb": round(size / 1e6, 1), "ratio": round(arr.nbytes / size, 2),
           "write_s": round(write_s, 3), "whole_read_s": round(float(np.median(whole)), 3)}
    for p in (48, 96):
        times = []
        for _ in range(20 * repeats):
            start = [int(rng.integers(0, s - p)) for s in arr.shape[1:]]
            t0 = time.perf_counter()
            _ = z[:, start[0]:start[0] + p, start[1]:start[1] + p, start[2]:start[2] + p]
            times.append(time.perf_counter() - t0)
        out[f"patch{p}_ms"] = round(1000 * float(np.median(times)), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    arr = load_case()
    root = Path(tempfile.mkdtemp(prefix="lf-bench-chunks-"))
    rng = np.random.default_rng(0)
    results = []
    shapes = [(1, 32, 32, 32), (1, 64, 64, 64), (1, 128, 128, 128), (3, 64, 64, 64), (1, 16, arr.shape[2], arr.shape[3])]
    for name, comp in codecs().items():
        for chunks in shapes:
            if name != "blosc-zstd3-shuffle" and chunks not in ((1, 64, 64, 64), (3, 64, 64, 64)):
                continue  # codecs compared at 64³ blocks; block shapes compared at blosc-zstd3
            results.append({"codec": name, **bench(arr, chunks, comp, root, args.repeats, rng)})
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"array": {"shape": list(arr.shape), "dtype": str(arr.dtype), "mb": round(arr.nbytes / 1e6, 1)},
                      "cpus": os.cpu_count(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
