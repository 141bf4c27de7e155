#!/usr/bin/env python
"""Decode speed of pydicom's pixel-data plugins on real MRI slices, per transfer syntax.

Prints ONE JSON object on stdout (progress goes to stderr). Used to choose the decoders that
lesionflow ships (see :mod:`pipeline.io.readers.dicom_pixels`).

Slices (real scanner data from ``../shared/data``, skipped when absent):

* ``native_320``: the middle slice of ``open_ms/longitudinal/raw/patient01/study1_FLAIR.nii.gz``
  (a FLAIR in its scanner grid, 320x320, uint16 as stored);
* ``mni_218x182``: the middle axial slice of the MNI FLAIR of ``cross_sectional/MNI/patient07``
  (float32, quantised to 12-bit uint16).

Each slice is written as one uncompressed DICOM file (``tests/dicom_factory.py``), re-encoded
with every syntax that can be encoded here (``dicom_factory.recompress``: pydicom's encoders,
GDCM for the JPEG processes), then decoded by every installed plugin of that syntax through
``pydicom.pixels.get_decoder(ts).as_array(ds, decoding_plugin=name)``: the median of
``--repeats`` decodes after one untimed decode (which also checks that the values are exact for
the lossless syntaxes). The plugins take turns on each round, so a busy spell on the shared
machine does not hit one of them only.

Example::

    .venv/bin/python benchmarks/bench_decoders.py --repeats 50 > benchmarks/results/DATE-bench_decoders.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("LESIONFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
NATIVE = DATA / "open_ms/longitudinal/raw/patient01/study1_FLAIR.nii.gz"
MNI = DATA / "open_ms/cross_sectional/MNI/patient07/FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"

SYNTAXES = {
    "1.2.840.10008.1.2.4.70": True,  # JPEG Lossless SV1 (lossless: values must match)
    "1.2.840.10008.1.2.4.57": True,  # JPEG Lossless
    "1.2.840.10008.1.2.4.51": False,  # JPEG Extended (12-bit lossy)
    "1.2.840.10008.1.2.4.80": True,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90": True,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.5": True,  # RLE Lossless
}
PACKAGES = ("pydicom", "python-gdcm", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls", "pillow")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _slices() -> dict[str, np.ndarray]:
    import nibabel as nib

    out: dict[str, np.ndarray] = {}
    if NATIVE.is_file():
        img = nib.load(NATIVE)
        out["native_320"] = np.ascontiguousarray(np.asarray(img.dataobj)[:, :, img.shape[2] // 2].T).astype(np.uint16)
    if MNI.is_file():
        img = nib.load(MNI)
        s = np.asarray(img.dataobj, np.float32)[:, :, img.shape[2] // 2].T
        out["mni_218x182"] = np.round(np.clip(s, 0, None) / s.max() * 4095).astype(np.uint16)
    return out


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    import pydicom
    from pydicom.pixels import get_decoder

    from tests import dicom_factory as fac

    result: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "packages": _versions(),
        "repeats": args.repeats,
        "slices": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, arr in _slices().items():
            stored_bits = 12 if int(arr.max()) < 4096 else 16
            extra = {"BitsStored": stored_bits, "HighBit": stored_bits - 1}
            entry: dict = {"shape": list(arr.shape), "bits_stored": stored_bits, "syntaxes": {}}
            result["slices"][name] = entry
            for syntax, lossless in SYNTAXES.items():
                uid = pydicom.uid.UID(syntax)
                if syntax == "1.2.840.10008.1.2.4.51" and stored_bits > 12:
                    continue
                missing = fac.encoder_missing(syntax)
                if missing:
                    entry["syntaxes"][uid.name] = {"skipped": missing}
                    continue
                folder = Path(tmp) / name / syntax
                (path,) = fac.write_series(folder, arr[None], extra=extra)
                fac.recompress(path, syntax)
                ds = pydicom.dcmread(path)
                decoder = get_decoder(syntax)
                plugins = sorted(decoder.available_plugins)
                row: dict = {"uid": syntax, "encoded_bytes": os.path.getsize(path), "raw_bytes": arr.nbytes, "plugins": {}}
                times: dict[str, list[float]] = {p: [] for p in plugins}
                for p in list(plugins):
                    try:
                        got, _ = decoder.as_array(ds, decoding_plugin=p)
                    except Exception as exc:  # a plugin that fails is reported, not timed
                        row["plugins"][p] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
                        plugins.remove(p)
                        continue
                    exact = bool(np.array_equal(got.reshape(arr.shape), arr))
                    row["plugins"][p] = {"exact": exact, "max_abs_error": int(np.abs(got.astype(np.int64) - arr).max())}
                    if lossless and not exact:
                        _log(f"{name} {uid.name} {p}: NOT exact")
                for _ in range(args.repeats):
                    for p in plugins:
                        t0 = time.perf_counter()
                        decoder.as_array(ds, decoding_plugin=p)
                        times[p].append(time.perf_counter() - t0)
                for p in plugins:
                    row["plugins"][p]["median_ms"] = round(statistics.median(times[p]) * 1e3, 3)
                entry["syntaxes"][uid.name] = row
                _log(f"{name} {uid.name}: " + ", ".join(f"{p} {row['plugins'][p].get('median_ms')} ms" for p in row["plugins"]))
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
