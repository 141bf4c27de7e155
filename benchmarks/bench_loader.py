"""Training loader speed: patches/s and peak memory, lesionflow's bank loader side by side with nnU-Net's.

Prints one JSON object. For each source (a folder of cases with labels, ingested into a temporary
store; and a phantom cohort of ``--phantom`` cases):

* ``prepare``: the augmentation bank built per case in a warm process on one core (seconds and
  compressed bytes per case), then all of them again as the ``prepare`` flow builds them, one task
  per case on a fresh 2-worker Dask LocalCluster (``dask_2_workers_s``, cluster startup included),
  next to nnU-Net's preprocessing of the same cases: its per-case
  ``DefaultPreprocessor.run_case_save`` in a warm process on one core, and the whole
  ``nnUNetv2_plan_and_preprocess -np 2`` command per case (fingerprint and planning included).
* loaders, each in a fresh process, measured the same way: a warm-up of ``--warmup`` seconds,
  then windows of ``--window`` seconds for ``--seconds``; ``patches_per_s`` is the median window,
  ``peak_rss_mb`` the largest sum of resident memory over the process and all its children
  (sampled every 0.2 s from /proc, so shared pages count once per process):

  - ``lesionflow.patchdataset_0w`` / ``_2w``: the old loader (raw volumes, flips only), 0 / 2 worker processes;
  - ``lesionflow.augmented``: the bank loader as training uses it without a GPU: bank samples
    (rotation, scaling, low resolution stored) read by 2 threads, which also apply mirroring and
    the intensity transforms (noise, blur, brightness, contrast, gamma) straight into the float32
    batch. nnU-Net-equivalent augmentation, all on the CPU;
  - ``lesionflow.augmented_2p``: the same with 2 worker processes (how threads were chosen);
  - ``lesionflow.bank_read``: bank samples with mirroring only, 2 threads, float32;
  - ``lesionflow.bank_int16``: what the host does for GPU training: bank samples read by 2
    threads straight into int16 batch buffers (pinned on CUDA); the float conversion, mirroring
    and intensity transforms then run on the GPU (not measured here without one);
  - ``in_memory``: the upper bound: every case decoded in RAM as float32, random crops only, one process;
  - ``nnunet.none`` (0 and 2 workers) and ``nnunet.augmented`` (2 workers, its full
    ``get_training_transforms`` with deep supervision): ``nnUNetDataLoader`` on the same cases
    preprocessed by ``nnUNetv2_plan_and_preprocess``, the same patch and batch size.

``--feed STORE`` (the GPU check): trains the default network from STORE's bank for ``--seconds``
and reports the share of time spent waiting for data and, with ``nvidia-smi``, the GPU's mean
utilisation (target: at least 90 %)::

    .venv/bin/python benchmarks/bench_loader.py --feed /data/ms.zarr --seconds 300 --device cuda

nnU-Net must not change this project's torch: install it in its own virtual environment and pass
its interpreter with ``--nnunet-python``::

    python3 -m venv /opt/nnunet-venv && /opt/nnunet-venv/bin/pip install nnunetv2
    .venv/bin/python benchmarks/bench_loader.py --source DIR --seconds 30 --nnunet-python /opt/nnunet-venv/bin/python

``--source DIR``: a folder lesionflow can ingest (cases with labels), e.g.
``../shared/data/open_ms/cross_sectional/MNI`` with ``--channels FLAIR,T1,T1POST,T2``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NNUNET_PYTHON = "/work/nnunet-venv/bin/python"


# ----------------------------------------------------------------------------- shared by both environments (no project imports)
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss_mb(pid: int | None = None) -> float:
    """Resident memory (MB) of ``pid`` and all its descendants, from /proc."""
    pid = pid or os.getpid()
    tree, todo, total = _children(), [pid], 0
    while todo:
        p = todo.pop()
        todo += tree.get(p, [])
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total / 1024


class PeakRSS:
    """Samples :func:`tree_rss_mb` every ``every`` seconds in a thread; ``peak`` is the largest seen."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.peak, self._stop = every, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb())
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_mb())


def measure(batches: Iterator[Any], batch_size: int, seconds: float, window: float, warmup: float) -> dict[str, Any]:
    """Warm up, then count patches in windows of ``window`` s for ``seconds`` s; the median window is the result."""
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        first = None
        while time.perf_counter() - t0 < warmup:
            next(batches)
            first = first or round(time.perf_counter() - t0, 2)
        rates: list[float] = []
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            n, t_w = 0, time.perf_counter()
            while time.perf_counter() - t_w < window:
                next(batches)
                n += batch_size
            rates.append(n / (time.perf_counter() - t_w))
    return {"patches_per_s": round(statistics.median(rates), 2), "windows": [round(r, 2) for r in rates],
            "first_batch_s": first, "peak_rss_mb": round(rss.peak, 1)}


def kill_descendants() -> None:
    """SIGKILL every process this one started (loader workers), so a measurement's pipe closes when it ends."""
    import signal

    tree, todo, found = _children(), [os.getpid()], []
    while todo:
        p = todo.pop()
        for child in tree.get(p, []):
            found.append(child)
            todo.append(child)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def machine() -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()], "python": sys.version.split()[0]}


# ----------------------------------------------------------------------------- nnU-Net side (runs under --nnunet-python)
def _nnunet_setup(pre: str, dataset: str) -> tuple[Any, Any, Any, Any]:
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = join(pre, dataset)
    plans = PlansManager(load_json(join(folder, "nnUNetPlans.json")))
    dataset_json = load_json(join(folder, "dataset.json"))
    cm = plans.get_configuration("3d_fullres")
    return plans, cm, plans.get_label_manager(dataset_json), (join(folder, cm.data_identifier), dataset_json)


def nnunet_loader(pre: str, dataset: str, patch: list[int], batch: int, augmented: bool, workers: int) -> Iterator[Any]:
    import numpy as np
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    _, cm, lm, (folder, _) = _nnunet_setup(pre, dataset)
    ds = infer_dataset_class(folder)(folder)
    transforms, initial = None, list(patch)
    if augmented:  # as nnUNetTrainer.get_dataloaders / configure_rotation_dummyDA_mirroring_and_inital_patch_size (3-D, isotropic)
        rotation = (-30.0 / 360 * 2.0 * np.pi, 30.0 / 360 * 2.0 * np.pi)
        initial = [int(i) for i in get_patch_size(patch, rotation, rotation, rotation, (0.85, 1.25))]
        ds_scales = list(list(i) for i in 1 / np.cumprod(np.vstack(cm.pool_op_kernel_sizes), axis=0))[:-1]
        transforms = nnUNetTrainer.get_training_transforms(patch, rotation, ds_scales, (0, 1, 2), False, use_mask_for_norm=cm.use_mask_for_norm,
                                                           is_cascaded=False, foreground_labels=lm.foreground_labels, regions=None, ignore_label=None)
    dl = nnUNetDataLoader(ds, batch, initial, patch, lm, oversample_foreground_percent=0.33, sampling_probabilities=None, pad_sides=None,
                          transforms=transforms, probabilistic_oversampling=False)
    if workers == 0:
        return SingleThreadedAugmenter(dl, None)
    return NonDetMultiThreadedAugmenter(data_loader=dl, transform=None, num_processes=workers, num_cached=max(6, workers // 2), seeds=None,
                                        pin_memory=False, wait_time=0.002)


def nnunet_preprocess_per_case(raw: str, pre: str, dataset: str) -> dict[str, Any]:
    """nnU-Net's own per-case preprocessing (``DefaultPreprocessor.run_case_save``) in this warm process, one core."""
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    plans, cm, _, (_, dataset_json) = _nnunet_setup(pre, dataset)
    files = get_filenames_of_train_images_and_targets(join(raw, dataset), dataset_json)
    out = tempfile.mkdtemp()
    pp = DefaultPreprocessor(verbose=False)
    seconds = []
    for case, entry in sorted(files.items()):
        t = time.perf_counter()
        pp.run_case_save(join(out, case), entry["images"], entry["label"], plans, cm, dataset_json)
        seconds.append(round(time.perf_counter() - t, 3))
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds_per_case": seconds, "median_s_per_case": statistics.median(seconds)}


# ----------------------------------------------------------------------------- lesionflow side
def lesionflow_loader(store: str, mode: str, patch: list[int], batch: int, seed: int = 0) -> Iterator[Any]:
    import numpy as np
    import torch

    from pipeline import store as st

    torch.set_num_threads(1)
    cases = [c for c in st.list_cases(store) if st.read_case_meta(store, c).has_label]
    n = 10**7
    if mode.startswith("patchdataset"):
        from training.data import PatchDataset

        workers = int(mode.rsplit("_", 1)[1].rstrip("w"))
        ds = PatchDataset(store, cases, patch_zyx=patch, samples_per_epoch=n, seed=seed)
        return iter(torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0))
    if mode == "bank_int16":  # the host side of GPU training: int16 batches in (pinnable) buffers, converted and augmented on the device
        from training.data import BankDataset, _ThreadBatches

        ds = BankDataset(store, cases, patch_zyx=patch, samples_per_epoch=n, seed=seed)
        return iter(_ThreadBatches(ds, batch, threads=2, prefetch=2, pin=False))
    if mode in ("augmented", "augmented_2p", "bank_read"):
        from training.augment import BatchAugment, IntensityAugmentConfig
        from training.data import BankDataset, BankLoader

        cfg = IntensityAugmentConfig() if mode.startswith("augmented") else IntensityAugmentConfig(
            p_noise=0, p_blur=0, p_brightness=0, p_contrast=0, p_gamma=0, p_gamma_inverted=0)
        ds = BankDataset(store, cases, patch_zyx=patch, samples_per_epoch=n, seed=seed, transform=BatchAugment(cfg, flip_prob=0.5))
        kind = {"augmented": "threads", "augmented_2p": "processes", "bank_read": "threads"}[mode]
        return iter(BankLoader(ds, batch, device="cpu", workers=2, kind=kind, seed=seed))
    if mode == "in_memory":
        from pipeline.prepare.patches import patch_bounds, read_patch_index

        vols = []
        for c in cases:
            g = st.open_case(store, c)
            vols.append((np.asarray(g["image"][...], np.float32), np.asarray(st.reference_label(g)[...]), read_patch_index(store, c)))

        def crops() -> Iterator[Any]:
            rng = np.random.default_rng(seed)
            while True:
                images, labels = [], []
                for _ in range(batch):
                    image, label, index = vols[int(rng.integers(len(vols)))]
                    kind = "lesion" if rng.random() < 0.5 and len(index["lesion"]) else "background"
                    centre = index[kind][int(rng.integers(len(index[kind])))]
                    slices, pad = patch_bounds(centre, label.shape, patch)
                    images.append(np.pad(image[(slice(None), *slices)], ((0, 0), *pad)))
                    labels.append(np.pad(label[slices], pad))
                yield torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)[:, None].astype(np.int64))
        return crops()
    raise ValueError(f"unknown mode {mode}")


def _subprocess_json(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> dict[str, Any]:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if res.returncode != 0:
        return {"error": res.stderr[-2000:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _run_measure(python: str, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    print(f"  measuring {' '.join(args[:2])} ...", file=sys.stderr, flush=True)
    return _subprocess_json([python, str(Path(__file__).resolve()), "--measure", *args], env=env)


def ingest_source(source: Path, store: Path, channels: list[str] | None) -> list[str]:
    from pipeline.core.config import PipelineConfig, pseudonym_key
    from pipeline.ingest import run_ingest

    cfg = PipelineConfig() if not channels else PipelineConfig(channels=tuple(channels))
    run_ingest(source, store, cfg, pseudonym_key())
    from pipeline import store as st

    return [c for c in st.list_cases(store) if st.read_case_meta(store, c).has_label]


def prepare_banks(store: Path, cases: list[str], patch: list[int], k: int) -> dict[str, Any]:
    import monai.transforms  # noqa: F401  (imported before timing: a worker imports it once)

    from pipeline.prepare.augment import BankConfig
    from pipeline.prepare.bank import build_bank
    from pipeline.prepare.patches import write_patch_index

    cfg = BankConfig(samples_per_case=k, patch_zyx=tuple(patch))
    rows = []
    for c in cases:
        write_patch_index(store, c, patch)
        rows.append(build_bank(store, c, cfg, threads=1))
    seconds = [r["seconds"] for r in rows]
    nbytes = [r["image_bytes"] + r["label_bytes"] for r in rows]
    # as the prepare flow builds them: every bank again on a fresh 2-worker Dask LocalCluster (startup included)
    from dask.distributed import wait

    from pipeline.ingest.cluster import dask_client
    from pipeline.prepare.bank import ensure_bank

    t0 = time.perf_counter()
    with dask_client(None, 2) as client:
        wait([client.submit(ensure_bank, str(store), c, cfg, True, pure=False) for c in cases])
    dask_s = time.perf_counter() - t0
    return {"samples_per_case": k, "dtype": cfg.dtype, "seconds_per_case": seconds, "median_s_per_case": statistics.median(seconds),
            "dask_2_workers_s": round(dask_s, 2), "dask_2_workers_s_per_case": round(dask_s / max(len(cases), 1), 2),
            "bytes_per_case": nbytes, "mb_per_case": round(statistics.mean(nbytes) / 1e6, 2),
            "bytes_per_sample": round(statistics.mean(nbytes) / k), "config_hash": cfg.config_hash()}


def bank_codecs(store: str | Path, n: int = 8) -> dict[str, Any]:
    """The bank image codec, chosen by measurement: ``n`` stored samples of the first banked case
    re-encoded with each candidate on one core; median compressed MB, encode and decode ms per sample."""
    import numcodecs
    import numpy as np
    from numcodecs import LZ4, Blosc, Zstd

    from pipeline import store as st
    from pipeline.prepare.bank import has_bank, open_bank

    numcodecs.blosc.set_nthreads(1)
    case = next(c for c in st.list_cases(store) if has_bank(store, c))
    image, _, bank = open_bank(store, case)
    samples = [np.asarray(image[i]) for i in range(min(n, bank.n_samples))]
    candidates = {
        "zstd-1": Zstd(level=1), "zstd-3": Zstd(level=3), "zstd--1 (fast)": Zstd(level=-1), "lz4": LZ4(),
        "blosc-lz4-5": Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE),
        "blosc-lz4-5-shuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),
        "blosc-lz4-5-bitshuffle": Blosc(cname="lz4", clevel=5, shuffle=Blosc.BITSHUFFLE),
        "blosc-zstd-1-shuffle": Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE),
    }
    rows: dict[str, Any] = {}
    for name, codec in candidates.items():
        enc_s, dec_s, sizes = [], [], []
        for x in samples:
            t = time.perf_counter()
            data = codec.encode(x)
            enc_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            codec.decode(data)
            dec_s.append(time.perf_counter() - t)
            sizes.append(len(data))
        rows[name] = {"mb": round(statistics.median(sizes) / 1e6, 2), "encode_ms": round(1000 * statistics.median(enc_s), 1),
                      "decode_ms": round(1000 * statistics.median(dec_s), 1)}
    return {"samples": len(samples), "shape": list(samples[0].shape), "dtype": str(samples[0].dtype),
            "raw_mb": round(samples[0].nbytes / 1e6, 2), "stored_with": bank.compressor, "codecs": rows}


def resamplers(repeats: int = 5) -> dict[str, Any]:
    """The bank's spatial step by three libraries on one core: 4 channels of a 130 x 150 x 126 block
    resampled to a 104 x 128 x 104 sample, linear interpolation, zero padding; median ms."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.transforms import Affine
    from scipy import ndimage

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    torch.set_num_threads(1)
    block = np.random.default_rng(0).normal(size=(4, 130, 150, 126)).astype(np.float32)
    patch = (104, 128, 104)
    linear = np.eye(3) * 0.9 + 0.05
    image = sitk.GetImageFromArray(np.moveaxis(block, 0, -1), isVector=True)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(list(linear.ravel()))
    transform.SetCenter((63.0, 75.0, 65.0))
    reference = sitk.Image(list(patch[::-1]), sitk.sitkVectorFloat32, 4)
    monai_affine = Affine(rotate_params=(0.2, 0.1, 0.3), scale_params=(1.1, 1.1, 1.1), spatial_size=patch, padding_mode="zeros",
                          image_only=True, mode="bilinear")
    x = torch.from_numpy(block)
    runs = {
        "monai_affine": lambda: monai_affine(x),
        "simpleitk_resample": lambda: sitk.Resample(image, reference, transform, sitk.sitkLinear, 0.0),
        "scipy_affine_transform_order1": lambda: [ndimage.affine_transform(block[c], linear, output_shape=patch, order=1) for c in range(4)],
    }
    out: dict[str, Any] = {"block": list(block.shape), "patch": list(patch), "threads": 1}
    for name, run in runs.items():
        run()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
        out[f"{name}_ms"] = round(1000 * statistics.median(times), 1)
    return out


def dtype_tolerance(store: str, model_version: str) -> dict[str, Any]:
    """What the network tolerates: a trained model's lesion probabilities on float32 input vs the same
    input stored as float16 or as int16 x a power-of-two scale (the bank's types), per labelled case."""
    import numpy as np
    import torch

    from pipeline import store as st
    from pipeline.lesions.components import dice
    from pipeline.prepare.augment import int16_scale, quantize
    from training.checkpoint import load_model
    from training.infer import predict_array

    torch.set_num_threads(1)
    model, info = load_model(st.location(store, f"models/{model_version}") if "/" not in model_version else model_version, device="cpu")
    rows = []
    for case_id in st.list_cases(store):
        g = st.open_case(store, case_id)
        if "label" not in g:
            continue
        image, label = np.asarray(g["image"][...], np.float32), np.asarray(g["label"][...])
        probs = {"float32": predict_array(model, image, info["patch_zyx"])}
        scale = int16_scale(float(np.abs(image).max()))
        stored = {"float16": image.astype(np.float16).astype(np.float32),
                  "int16": quantize(image, "int16", scale).astype(np.float32) * np.float32(scale)}
        row: dict[str, Any] = {"case_id": case_id, "int16_scale": scale, "dice_float32": round(dice(probs["float32"] > 0.5, label), 4)}
        for name, x in stored.items():
            p = predict_array(model, x, info["patch_zyx"])
            row[f"{name}_max_input_error"] = float(np.abs(x - image).max())
            row[f"{name}_max_prob_change"] = round(float(np.abs(p - probs["float32"]).max()), 5)
            row[f"{name}_mask_dice_vs_float32"] = round(dice(p > 0.5, probs["float32"] > 0.5), 5)
            row[f"dice_{name}"] = round(dice(p > 0.5, label), 4)
        rows.append(row)
    return {"store": str(store), "model": model_version, "cases": rows}


def feed_check(store: str, seconds: float, device: str | None = None, batch: int = 2, workers: int = 0,
               patch_zyx: tuple[int, int, int] | None = None, fixed: bool = False) -> dict[str, Any]:
    """Is the training step ever starved? Train the default network from the bank for ``seconds`` as
    :func:`training.loop.fit` does (nothing read back from the GPU per step) and measure, where
    ``nvidia-smi`` exists, the GPU's utilisation sampled every 0.5 s (target on a GPU: busy >= 90 %),
    and the share of wall time the host spent getting the next batch (reading, copying and launching
    the on-device augmentation; the GPU works through its queue meanwhile). ``fixed``: train on one
    batch over and over, without the loader: the ceiling the loader is measured against."""
    import torch

    from pipeline import store as st
    from pipeline.prepare.bank import read_bank
    from training.config import TrainConfig
    from training.loop import flush_losses, pick_device, setup, train_step

    dev = pick_device(device)
    cases = [c for c in st.list_cases(store) if read_bank(store, c) is not None]
    patch = tuple(patch_zyx or read_bank(store, cases[0]).patch_zyx)
    cfg = TrainConfig(patch_zyx=tuple(p - p % 8 for p in patch), batch_size=batch, iterations=10**6, device=str(dev), threads=None,
                      num_workers=workers, augmentation={"bank": "require"})
    state = setup(store, cfg, case_ids=cases)
    util: list[float] = []
    stop = threading.Event()

    def sample_gpu() -> None:
        while not stop.is_set():
            res = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"], capture_output=True, text=True)
            if res.returncode == 0 and res.stdout.strip():
                util.append(float(res.stdout.split()[0]))
            stop.wait(0.5)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    batches = iter(state.loader)
    for _ in range(5):  # warm-up: first batches, cuDNN autotuning
        train_step(state, next(batches))
    if fixed:
        one = next(batches)
        batches = iter(lambda: one, None)
    sampler = threading.Thread(target=sample_gpu, daemon=True) if dev.type == "cuda" and shutil.which("nvidia-smi") else None
    if sampler:
        sampler.start()
    sync()
    waited, steps, t0 = 0.0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t_wait = time.perf_counter()
        batch_ = next(batches)
        waited += time.perf_counter() - t_wait
        train_step(state, batch_)
        steps += 1
        if steps % 50 == 0:
            flush_losses(state)  # as fit() does at its log lines
    sync()
    wall = time.perf_counter() - t0
    stop.set()
    return {"device": str(dev), "patch_zyx": list(cfg.patch_zyx), "batch_size": batch, "loader_workers": None if fixed else getattr(state.loader, "workers", None),
            "fixed_batch": fixed, "steps": steps, "it_per_s": round(steps / wall, 3),
            "loader_wait_fraction": round(waited / wall, 4), "gpu_utilization_mean_pct": round(statistics.mean(util), 1) if util else None,
            "gpu_utilization_samples": len(util)}


def run_source(name: str, source: Path, work: Path, args: argparse.Namespace, channels: list[str] | None) -> dict[str, Any]:
    from pipeline import store as st

    print(f"{name}: ingest {source}", file=sys.stderr, flush=True)
    store = work / f"{name}.zarr"
    cases = ingest_source(source, store, channels)
    shape = st.read_case_meta(store, cases[0]).geometry.shape_zyx
    patch = [min(p, (s // 8) * 8) for p, s in zip(args.patch, shape)]
    meta = st.read_case_meta(store, cases[0])
    out: dict[str, Any] = {"source": str(source), "cases": len(cases), "shape_zyx": list(shape), "channels": meta.channels,
                           "patch_zyx": patch, "batch_size": args.batch}
    print(f"{name}: banks for {len(cases)} cases (K={args.samples_per_case}, patch {patch})", file=sys.stderr, flush=True)
    out["prepare"] = {"lesionflow_bank": prepare_banks(store, cases, patch, args.samples_per_case)}
    out["bank_codecs"] = bank_codecs(store)
    common = ["--patch", ",".join(map(str, patch)), "--batch", str(args.batch), "--seconds", str(args.seconds),
              "--window", str(args.window), "--warmup", str(args.warmup)]
    loaders: dict[str, Any] = {}
    for mode in args.modes.split(","):
        key = f"lesionflow.{mode}" if mode != "in_memory" else "in_memory"
        loaders[key] = _run_measure(sys.executable, ["lesionflow", mode, "--store", str(store), *common])
    nn_python = args.nnunet_python
    if nn_python and Path(nn_python).exists():
        nn = vs_nnunet(name, store, work, nn_python, common, args)
        out["prepare"]["nnunet"] = nn.pop("prepare")
        loaders.update(nn)
    out["loaders"] = loaders
    out["machine_after"] = machine()
    return out


def vs_nnunet(name: str, store: Path, work: Path, python: str, common: list[str], args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_ingest import export_nnunet_raw

    dataset = "Dataset903_Loader" if name == "source" else "Dataset904_LoaderPhantom"
    raw, pre = work / "nnUNet_raw", work / "nnUNet_preprocessed"
    export_nnunet_raw(store, raw / dataset)
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(work / "nnUNet_results"),
           "nnUNet_n_proc_DA": "2", "OMP_NUM_THREADS": "1"}
    exe = str(Path(python).parent / "nnUNetv2_plan_and_preprocess")
    print(f"{name}: {exe} -d {dataset[7:10]}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    res = subprocess.run([exe, "-d", dataset[7:10], "-c", "3d_fullres", "-np", "2"], env=env, capture_output=True, text=True)
    whole = time.perf_counter() - t
    if res.returncode != 0:
        return {"prepare": {"error": res.stderr[-2000:]}}
    n = len(list((raw / dataset / "labelsTr").glob("*.nii.gz")))
    per_case = _run_measure(python, ["nnunet-preprocess", "x", "--raw", str(raw), "--pre", str(pre), "--dataset", dataset], env=env)
    out: dict[str, Any] = {"prepare": {"plan_and_preprocess_np2_s": round(whole, 2), "plan_and_preprocess_s_per_case": round(whole / n, 2),
                                       "run_case_save": per_case}}
    for label, mode, workers in (("nnunet.none_0w", "none", 0), ("nnunet.none_2w", "none", 2), ("nnunet.augmented_2w", "augmented", 2)):
        out[label] = _run_measure(python, ["nnunet", mode, "--pre", str(pre), "--dataset", dataset, "--workers", str(workers), *common], env=env)
    return out


def summary(result: dict[str, Any], key: str) -> dict[str, Any]:
    loaders = result.get(key, {}).get("loaders", {})
    rate = lambda k: loaders.get(k, {}).get("patches_per_s")
    s: dict[str, Any] = {
        "lesionflow.augmented.patches_per_s": rate("lesionflow.augmented"),
        "lesionflow.bank_read.patches_per_s": rate("lesionflow.bank_read"),
        "lesionflow.bank_int16.patches_per_s": rate("lesionflow.bank_int16"),
        "nnunet.none.patches_per_s": max(filter(None, [rate("nnunet.none_0w"), rate("nnunet.none_2w")]), default=None),
        "nnunet.augmented.patches_per_s": rate("nnunet.augmented_2w"),
    }
    if s["nnunet.none.patches_per_s"]:
        for k in ("lesionflow.augmented", "lesionflow.bank_read", "lesionflow.bank_int16"):
            if s[f"{k}.patches_per_s"]:
                s[f"{k}_over_nnunet_none"] = round(s[f"{k}.patches_per_s"] / s["nnunet.none.patches_per_s"], 2)
    if s["nnunet.augmented.patches_per_s"] and s["lesionflow.augmented.patches_per_s"]:
        s["lesionflow.augmented_over_nnunet_augmented"] = round(s["lesionflow.augmented.patches_per_s"] / s["nnunet.augmented.patches_per_s"], 2)
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "open_ms" / "cross_sectional" / "MNI"),
                    help="folder of cases with labels (ingested into a temporary store)")
    ap.add_argument("--channels", default=None, help="comma-separated channels to ingest (default: the pipeline's)")
    ap.add_argument("--phantom", type=int, default=20, help="also a phantom cohort of this many cases (0: none)")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per loader (after the warm-up)")
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--patch", default="112,160,128", help="patch z,y,x in voxels (clipped to the volume)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--samples-per-case", type=int, default=32, help="K of the augmentation bank")
    ap.add_argument("--modes", default="patchdataset_0w,patchdataset_2w,augmented,augmented_2p,bank_read,bank_int16,in_memory")
    ap.add_argument("--nnunet-python", default=os.environ.get("NNUNET_PYTHON", DEFAULT_NNUNET_PYTHON),
                    help="python of a separate virtual environment with nnunetv2 (skipped when absent)")
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one, removed after)")
    ap.add_argument("--note", default="", help="free text recorded in the JSON (e.g. what else ran on the machine)")
    ap.add_argument("--feed", metavar="STORE", help="only check that training from STORE's bank is never starved (GPU: busy share) and exit")
    ap.add_argument("--device", default=None, help="--feed: cuda or cpu (default: CUDA when available)")
    ap.add_argument("--resamplers", action="store_true", help="only compare the resamplers of the bank's spatial step and exit")
    ap.add_argument("--codecs", metavar="STORE", help="only measure candidate bank image codecs on STORE's stored samples and exit")
    ap.add_argument("--tolerance", nargs=2, metavar=("STORE", "MODEL"),
                    help="only measure what a trained model tolerates of the stored types (float16, int16 x scale) and exit")
    # internal: one measurement in this process
    ap.add_argument("--measure", nargs=2, metavar=("SIDE", "MODE"))
    ap.add_argument("--store")
    ap.add_argument("--pre")
    ap.add_argument("--raw")
    ap.add_argument("--dataset")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    args.patch = [int(p) for p in str(args.patch).split(",")]

    if args.measure:
        side, mode = args.measure
        if side == "lesionflow":
            sys.path.insert(0, str(REPO))
            batches = lesionflow_loader(args.store, mode, args.patch, args.batch)
        elif side == "nnunet":
            batches = nnunet_loader(args.pre, args.dataset, args.patch, args.batch, mode == "augmented", args.workers)
        elif side == "nnunet-preprocess":
            print(json.dumps(nnunet_preprocess_per_case(args.raw, args.pre, args.dataset)))
            return
        else:
            raise SystemExit(f"unknown side {side}")
        print(json.dumps({**measure(iter(batches), args.batch, args.seconds, args.window, args.warmup), "machine": machine()}), flush=True)
        kill_descendants()  # loader worker processes would keep the pipe (and the measurement) open
        os._exit(0)

    sys.path.insert(0, str(REPO))
    os.environ.setdefault("LESIONFLOW_PSEUDONYM_KEY", "benchmark-key")
    if args.feed:
        print(json.dumps({"benchmark": "bench_loader --feed", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                          **feed_check(args.feed, args.seconds, args.device, args.batch)}, indent=2))
        return
    if args.resamplers:
        print(json.dumps({"benchmark": "bench_loader --resamplers", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                          "note": args.note, **resamplers()}, indent=2))
        return
    if args.codecs:
        print(json.dumps({"benchmark": "bench_loader --codecs", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                          "note": args.note, **bank_codecs(args.codecs)}, indent=2))
        return
    if args.tolerance:
        print(json.dumps({"benchmark": "bench_loader --tolerance", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
                          **dtype_tolerance(*args.tolerance)}, indent=2))
        return
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_loader-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "bench_loader", "date": time.strftime("%Y-%m-%d"), "machine_before": machine(), "note": args.note,
                              "settings": {"seconds": args.seconds, "window": args.window, "warmup": args.warmup, "batch": args.batch,
                                           "samples_per_case": args.samples_per_case, "nnunet_python": args.nnunet_python}}
    try:
        channels = args.channels.split(",") if args.channels else None
        if args.source and Path(args.source).is_dir():
            result["source"] = run_source("source", Path(args.source), work, args, channels)
        if args.phantom:
            from pipeline.phantom import make_cohort

            cohort = make_cohort(work / "phantom", n_subjects=args.phantom, seed=0, spacing_mm=1.5)
            result["phantom"] = run_source("phantom", Path(cohort.cohort_dir), work, args, None)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result["summary"] = {k: summary(result, k) for k in ("source", "phantom") if k in result}
    top = result["summary"].get("source") or result["summary"].get("phantom") or {}
    result.update({k: v for k, v in top.items() if k.endswith("patches_per_s")})  # the interface's top-level keys
    result["machine_after"] = machine()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
