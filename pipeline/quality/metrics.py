"""Image-quality metrics (cheap, MRIQC-style) and cohort outliers per modality.

Every metric is a plain function of numpy arrays ``(image, foreground) -> float`` so that it
works both on the raw, un-normalised array at conversion time (:func:`volume_metrics`, called by
the ingest) and on the z-scored arrays of a store (:func:`case_metrics`). Non-finite voxels are
ignored by every metric and counted by :func:`n_nonfinite`.

Definitions (``fg`` = foreground voxels, ``bg`` = the rest, statistics over finite voxels):

``snr``                 mean(fg) / std(fg) (MRIQC ``snr`` on one tissue). Needs raw intensities:
                        z-scoring makes mean(fg) ~ 0, so :func:`case_metrics` takes it from the
                        raw statistics recorded at ingest (``ChannelInfo.intensity_mean/std``).
``snr_noise``           std(fg) / sigma_noise, sigma_noise = 1.4826 * MAD of neighbouring-voxel
                        differences inside fg (in-plane axes) / sqrt(2). Invariant to any affine
                        intensity change, so raw and z-scored arrays give the same value; this is
                        the metric that flags noisy series.
``cnr``                 |mean(lesion) - mean(fg \\ lesion)| / sqrt(var(lesion) + var(fg \\ lesion)),
                        lesion = label > 0 (MRIQC's CNR with lesion/normal tissue instead of GM/WM).
``efc``                 entropy focus criterion (MRIQC): normalised entropy of voxel intensities
                        over the whole image; higher = more blur/ghosting spread across the FOV.
``fber``                median(fg^2) / median(bg^2) (MRIQC FBER); NaN (MRIQC: -1) when the
                        background has no energy.
``foreground_fraction`` fg voxels / all voxels.
``p01, p50, p99``       intensity percentiles in fg.
``bias_index``          inhomogeneity proxy: std of the fg intensity smoothed with a 20 mm
                        Gaussian (normalised convolution on a ~4 mm grid) / std(fg), in [0, 1].
                        A smooth bias field survives the smoothing, noise and fine anatomy do not.
``n_nonfinite``         number of NaN/inf voxels in the whole array.

``efc`` and ``fber`` need non-negative magnitudes: an array with negative values (a z-scored
one) is first shifted so that its minimum is 0. On stored arrays their values therefore
depend on how the ingest normalised the background; compare them within one store only.

Cohort outliers (:func:`cohort_outliers`) are computed per modality: with fewer than
``MIN_COHORT`` (4) series nothing is flagged; below ``ROBUST_MIN_N`` (10) series Tukey fences
with k = 3 (``value < Q1 - 3 IQR`` or ``> Q3 + 3 IQR``), otherwise robust z-scores
``0.6745 (x - median) / MAD`` with ``|z| > 3.5`` (Iglewicz & Hoaglin). The spread (IQR, MAD) is
floored at 1 % of ``|median|`` so that a cohort of near-identical values does not flag
rounding noise. Only the "bad" direction of each metric is flagged (see :data:`METRIC_SPECS`).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> img = np.zeros((16, 32, 32), np.float32); img[4:12, 8:24, 8:24] = 100
    >>> m = volume_metrics(img + rng.normal(0, 5, img.shape).astype(np.float32))
    >>> 0.1 < m["foreground_fraction"] < 0.3 and m["n_nonfinite"] == 0
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

MIN_COHORT = 4
"""Fewer series than this in a modality: no cohort outlier is flagged."""

ROBUST_MIN_N = 10
"""From this many series on, robust z-scores (median/MAD) are used instead of Tukey fences."""

ROBUST_Z = 3.5
TUKEY_K = 3.0
SPREAD_FLOOR = 0.01
"""IQR/MAD are floored at this fraction of |median|."""

_MAX_SAMPLE = 2_000_000  # voxels used for medians/percentiles of very large arrays


@dataclass(frozen=True)
class MetricSpec:
    """How a metric is read: its bad direction, the flag a cohort outlier gets, and its meaning."""

    direction: str  # "low" | "high" | "both" | "absolute" | "none"
    flag: str
    description: str
    implied_by: str | None = None  # an outlier of this metric is explained by an outlier of that one


ABSOLUTE_FLOORS: dict[str, float] = {"snr_noise": 2.0}
"""Values below these flag a series whatever the cohort: with an SNR (foreground spread over noise
sigma) under 2 lesions of a few voxels are not separable from noise. Clean phantom and real
scans measured here lie at 2.9-17."""

METRIC_SPECS: dict[str, MetricSpec] = {
    "snr": MetricSpec("none", "", "mean/std of the raw foreground intensity (MRIQC snr); tissue-contrast dominated, shown only"),
    "snr_noise": MetricSpec("low", "noisy", "foreground std / noise sigma (MAD of neighbour differences); low = noisy"),
    "cnr": MetricSpec("low", "low lesion contrast", "lesion vs. normal-foreground contrast-to-noise ratio", implied_by="snr_noise"),
    "efc": MetricSpec("high", "blur/ghosting (high EFC)", "entropy focus criterion; high = energy spread by blur/ghosting", implied_by="snr_noise"),
    "fber": MetricSpec("low", "low FBER (background signal)", "foreground/background energy ratio; low = ghosting/noise in the air", implied_by="snr_noise"),
    "bias_index": MetricSpec("high", "intensity inhomogeneity", "std of the 20 mm-smoothed foreground / std of the foreground"),
    "foreground_fraction": MetricSpec("both", "unusual foreground fraction", "fraction of voxels in the foreground mask"),
    "p01": MetricSpec("none", "", "1st intensity percentile in the foreground"),
    "p50": MetricSpec("none", "", "median intensity in the foreground"),
    "p99": MetricSpec("none", "", "99th intensity percentile in the foreground"),
    "n_nonfinite": MetricSpec("absolute", "non-finite voxels", "NaN/inf voxels in the array; any is a fault"),
}
"""Every metric :func:`volume_metrics` returns, in report order."""

METRIC_NAMES: tuple[str, ...] = tuple(METRIC_SPECS)
OUTLIER_METRICS: tuple[str, ...] = tuple(k for k, s in METRIC_SPECS.items() if s.direction in ("low", "high", "both"))


# ----------------------------------------------------------------------------- helpers
def _sample(values: np.ndarray) -> np.ndarray:
    """A deterministic strided subsample of a 1-D array (for medians of huge arrays)."""
    if values.size > _MAX_SAMPLE:
        step = int(math.ceil(values.size / _MAX_SAMPLE))
        return values[::step]
    return values


def _mask(image: np.ndarray, foreground: np.ndarray | None) -> np.ndarray:
    """Foreground (Otsu when ``None``) restricted to finite voxels."""
    finite = np.isfinite(image)
    fg = otsu_foreground(image) if foreground is None else np.asarray(foreground).astype(bool)
    if fg.shape != image.shape:
        raise ValueError(f"foreground shape {fg.shape} does not match image shape {image.shape}")
    return fg & finite


def _magnitude(image: np.ndarray) -> np.ndarray:
    """Finite-voxel values as float64, shifted to a minimum of 0 when negatives exist (z-scored data)."""
    x = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return x
    lo = float(x[finite].min())
    if lo < 0:
        x = x - lo
    return x


def otsu_threshold(array: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold over the finite values (histogram clipped to the 0.1-99.9 percentiles)."""
    v = np.asarray(array, dtype=np.float64)
    v = _sample(v[np.isfinite(v)])
    if v.size == 0:
        return float("nan")
    lo, hi = np.percentile(v, [0.1, 99.9])
    if hi <= lo:
        return float(lo)
    hist, edges = np.histogram(np.clip(v, lo, hi), bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between))])


def otsu_foreground(array: np.ndarray) -> np.ndarray:
    """Boolean head mask: voxels above the Otsu threshold, holes filled."""
    a = np.asarray(array)
    t = otsu_threshold(a)
    with np.errstate(invalid="ignore"):
        fg = np.isfinite(a) & (a > t)
    if fg.ndim == 3 and fg.any():
        fg = ndimage.binary_fill_holes(fg)
    return fg


# ----------------------------------------------------------------------------- metrics
def snr(image: np.ndarray, foreground: np.ndarray | None) -> float:
    """mean / std of the foreground (MRIQC ``snr`` definition). Meaningful on raw intensities only."""
    v = np.asarray(image)[_mask(image, foreground)].astype(np.float64)
    if v.size < 2:
        return float("nan")
    sd = float(v.std())
    return float(v.mean() / sd) if sd > 0 else float("nan")


def noise_sigma(image: np.ndarray, foreground: np.ndarray | None) -> float:
    """Robust noise sigma from in-plane neighbour differences inside the foreground.

    For i.i.d. noise of sigma s the difference of two neighbours has sigma s*sqrt(2);
    the MAD (x1.4826) of the differences ignores the minority of pairs that straddle an edge.
    """
    x = np.asarray(image, dtype=np.float32)
    m = _mask(x, foreground)
    diffs = []
    for axis in (-1, -2):  # x and y: the in-plane axes of an axial stack
        n = x.shape[axis]
        if n < 2:
            continue
        a = np.take(x, range(1, n), axis=axis)
        b = np.take(x, range(0, n - 1), axis=axis)
        mm = np.take(m, range(1, n), axis=axis) & np.take(m, range(0, n - 1), axis=axis)
        diffs.append((a - b)[mm])
    if not diffs:
        return float("nan")
    d = _sample(np.concatenate(diffs).astype(np.float64))
    if d.size < 8:
        return float("nan")
    mad = float(np.median(np.abs(d - np.median(d))))
    return 1.4826 * mad / math.sqrt(2.0)


def snr_noise(image: np.ndarray, foreground: np.ndarray | None) -> float:
    """std(foreground) / noise sigma; the same on raw and z-scored arrays."""
    m = _mask(image, foreground)
    v = np.asarray(image)[m].astype(np.float64)
    sigma = noise_sigma(image, m)
    if v.size < 2 or not np.isfinite(sigma) or sigma <= 0:
        return float("nan")
    return float(v.std() / sigma)


def cnr(image: np.ndarray, foreground: np.ndarray | None, label: np.ndarray | None = None) -> float:
    """Lesion vs. normal-foreground contrast-to-noise ratio; NaN without a (non-empty) label."""
    if label is None:
        return float("nan")
    x = np.asarray(image)
    fin = np.isfinite(x)
    les = (np.asarray(label) > 0) & fin
    rest = _mask(x, foreground) & ~les
    if les.sum() < 2 or rest.sum() < 2:
        return float("nan")
    a = x[les].astype(np.float64)
    b = x[rest].astype(np.float64)
    denom = math.sqrt(float(a.var() + b.var()))
    return float(abs(a.mean() - b.mean()) / denom) if denom > 0 else float("nan")


def efc(image: np.ndarray, foreground: np.ndarray | None = None) -> float:
    """Entropy focus criterion (MRIQC) over the whole image; ``foreground`` is not used."""
    x = _magnitude(image)
    v = x[np.isfinite(x)]
    n = v.size
    if n < 2:
        return float("nan")
    b = math.sqrt(float(np.sum(v * v)))
    if b <= 0:
        return float("nan")
    efc_max = n * (1.0 / math.sqrt(n)) * math.log(1.0 / math.sqrt(n))
    p = v / b
    return float(np.sum(p * np.log(p + 1e-16)) / efc_max)


def fber(image: np.ndarray, foreground: np.ndarray | None) -> float:
    """Foreground-background energy ratio median(fg²)/median(bg²) (MRIQC FBER)."""
    x = _magnitude(image)
    fin = np.isfinite(x)
    fg = _mask(x, foreground)
    bg = ~fg & fin
    if not fg.any() or not bg.any():
        return float("nan")
    fg_mu = float(np.median(_sample(x[fg]) ** 2))
    bg_mu = float(np.median(_sample(x[bg]) ** 2))
    if bg_mu <= 1e-6 * max(fg_mu, 1e-12):
        return float("nan")
    return fg_mu / bg_mu


def foreground_fraction(image: np.ndarray, foreground: np.ndarray | None) -> float:
    """Fraction of all voxels that are (finite) foreground."""
    m = _mask(image, foreground)
    return float(m.sum() / m.size) if m.size else float("nan")


def percentile(image: np.ndarray, foreground: np.ndarray | None, q: float) -> float:
    """The ``q``-th intensity percentile of the foreground."""
    v = np.asarray(image)[_mask(image, foreground)]
    return float(np.percentile(_sample(v), q)) if v.size else float("nan")


def _block_mean(a: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    crop = tuple(slice(0, (s // f) * f) for s, f in zip(a.shape, factors))
    a = a[crop]
    shape = []
    for s, f in zip(a.shape, factors):
        shape += [s // f, f]
    return a.reshape(shape).mean(axis=tuple(range(1, 2 * a.ndim, 2)))


def bias_index(image: np.ndarray, foreground: np.ndarray | None, spacing: Sequence[float] | None = None, sigma_mm: float = 20.0) -> float:
    """Inhomogeneity proxy: std of the heavily smoothed foreground intensity / std of the foreground.

    ``spacing`` is ITK (x, y, z) order in mm (1 mm assumed when ``None``). The image is block
    averaged to ~4 mm, then smoothed with a ``sigma_mm`` Gaussian by normalised convolution
    restricted to the foreground.
    """
    x = np.asarray(image, dtype=np.float64)
    m = _mask(x, foreground)
    v = x[m]
    if v.size < 8 or x.ndim != 3:
        return float("nan")
    sd = float(v.std())
    if sd <= 0:
        return float("nan")
    sp_zyx = np.asarray(spacing[::-1] if spacing is not None else (1.0, 1.0, 1.0), dtype=np.float64)
    factors = [max(1, min(int(round(4.0 / s)), n // 2 or 1)) for s, n in zip(sp_zyx, x.shape)]
    xs = _block_mean(np.where(m, x, 0.0), factors)
    ms = _block_mean(m.astype(np.float64), factors)
    sig_vox = sigma_mm / (sp_zyx * np.asarray(factors))
    num = ndimage.gaussian_filter(xs, sig_vox, mode="constant")
    den = ndimage.gaussian_filter(ms, sig_vox, mode="constant")
    keep = (ms > 0.5) & (den > 1e-6)
    if keep.sum() < 2:
        return float("nan")
    smooth = num[keep] / den[keep]
    return float(smooth.std() / sd)


def n_nonfinite(image: np.ndarray, foreground: np.ndarray | None = None) -> float:
    """Number of NaN/inf voxels in the whole array."""
    return float(np.size(image) - np.count_nonzero(np.isfinite(image)))


def volume_metrics(
    array: np.ndarray,
    foreground: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    label: np.ndarray | None = None,
) -> dict[str, float]:
    """All metrics of one 3-D volume, keyed as :data:`METRIC_NAMES`.

    ``foreground`` defaults to an Otsu head mask; ``spacing`` is (x, y, z) mm; ``label`` (a lesion
    mask on the same grid) enables ``cnr``. Works on raw or normalised arrays.
    """
    x = np.asarray(array)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"volume_metrics expects a 3-D array, got shape {x.shape}")
    fg = otsu_foreground(x) if foreground is None else np.asarray(foreground).astype(bool)
    if fg.shape != x.shape:
        raise ValueError(f"foreground shape {fg.shape} does not match image shape {x.shape}")
    fg = fg & np.isfinite(x)
    out = {
        "snr": snr(x, fg),
        "snr_noise": snr_noise(x, fg),
        "cnr": cnr(x, fg, label),
        "efc": efc(x, fg),
        "fber": fber(x, fg),
        "bias_index": bias_index(x, fg, spacing),
        "foreground_fraction": foreground_fraction(x, fg),
        "p01": percentile(x, fg, 1),
        "p50": percentile(x, fg, 50),
        "p99": percentile(x, fg, 99),
        "n_nonfinite": n_nonfinite(x),
    }
    return {k: float(out[k]) for k in METRIC_NAMES}


# ----------------------------------------------------------------------------- store
def case_metrics(store_root: str | Path, case_id: str, channels: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Metrics of each channel of a stored case: one dict per channel.

    Keys: ``case_id``, ``modality``, ``channel_index``, ``present`` (False for a channel the case
    lacks: its metrics are NaN), ``has_label``, ``snr_source`` and every metric name. ``snr`` comes
    from the raw foreground statistics the ingest recorded (``intensity_mean / intensity_std``)
    because the stored arrays are z-scored; it falls back to the array when those are absent.
    """
    from pipeline.store import foreground_mask, open_case, read_case_meta, reference_label

    g = open_case(store_root, case_id)
    meta = read_case_meta(store_root, case_id)
    names = list(g["image"].attrs.get("channels", meta.channels))
    fg_arr, label_arr = foreground_mask(g), reference_label(g)
    fg = np.asarray(fg_arr[...]).astype(bool) if fg_arr is not None else None
    label = np.asarray(label_arr[...]) if label_arr is not None else None
    info = {ci.modality: ci for ci in meta.channel_info}
    wanted = list(channels) if channels is not None else names
    rows: list[dict[str, Any]] = []
    for name in wanted:
        ci = info.get(name)
        present = name in names and ci is not None and ci.present
        row: dict[str, Any] = {
            "case_id": case_id,
            "modality": name,
            "channel_index": names.index(name) if name in names else -1,
            "present": bool(present),
            "has_label": label is not None,
            "snr_source": "",
        }
        if present:
            arr = np.asarray(g["image"][names.index(name)])
            m = volume_metrics(arr, fg, meta.geometry.spacing, label)
            row["snr_source"] = "array"
            if ci is not None and np.isfinite(ci.intensity_mean) and np.isfinite(ci.intensity_std) and ci.intensity_std > 0:
                m["snr"] = float(ci.intensity_mean / ci.intensity_std)
                row["snr_source"] = "ingest stats"
        else:
            m = {k: float("nan") for k in METRIC_NAMES}
        row.update(m)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- cohort
def _outlier_bounds(values: np.ndarray) -> tuple[str, float, float, float, float]:
    """(method, lower, upper, centre, spread) for one cohort of finite values."""
    n = values.size
    med = float(np.median(values))
    floor = SPREAD_FLOOR * abs(med)
    if n < ROBUST_MIN_N:
        q1, q3 = (float(q) for q in np.percentile(values, [25, 75]))
        iqr = max(q3 - q1, floor)
        return f"tukey(k={TUKEY_K:g})", q1 - TUKEY_K * iqr, q3 + TUKEY_K * iqr, med, iqr
    mad = max(float(np.median(np.abs(values - med))), floor)
    half = ROBUST_Z * mad / 0.6745
    return f"robust_z(|z|>{ROBUST_Z:g})", med - half, med + half, med, mad


def cohort_outliers(
    metrics: Any,
    metric_names: Iterable[str] = OUTLIER_METRICS,
    group_col: str = "modality",
    min_cases: int = MIN_COHORT,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Outliers of each metric within each modality.

    ``metrics`` is a DataFrame of :func:`case_metrics` rows (absent channels are ignored).
    Returns ``(outliers, methods)``: one dict per outlier (case_id, modality, metric, value,
    lower, upper, median, method, direction, flag, score) and, per ``"<modality>/<metric>"``,
    the method used with its bounds and n (``"none (n<4)"`` for small cohorts). ``n_nonfinite``
    is flagged whenever it is above 0, independent of the cohort.
    """
    import pandas as pd

    df = pd.DataFrame(metrics)
    outliers: list[dict[str, Any]] = []
    methods: dict[str, dict[str, Any]] = {}
    if df.empty:
        return outliers, methods
    if "present" in df:
        df = df[df["present"].astype(bool)]
    for modality, grp in df.groupby(group_col, sort=True):
        if "n_nonfinite" in grp:
            for _, r in grp[grp["n_nonfinite"] > 0].iterrows():
                outliers.append(
                    {
                        "case_id": r["case_id"], "modality": modality, "metric": "n_nonfinite", "value": float(r["n_nonfinite"]),
                        "lower": 0.0, "upper": 0.0, "median": 0.0, "method": "absolute (> 0)", "direction": "high",
                        "flag": METRIC_SPECS["n_nonfinite"].flag, "score": float("inf"),
                    }
                )
        for metric in metric_names:
            if metric not in grp:
                continue
            spec = METRIC_SPECS[metric]
            vals = grp[["case_id", metric]].copy()
            vals = vals[np.isfinite(vals[metric].astype(float))]
            key = f"{modality}/{metric}"
            floor = ABSOLUTE_FLOORS.get(metric)
            flagged_abs: set[str] = set()
            if floor is not None:  # bad in any cohort, however few cases or however spread
                for _, r in vals[vals[metric].astype(float) < floor].iterrows():
                    flagged_abs.add(r["case_id"])
                    outliers.append(
                        {
                            "case_id": r["case_id"], "modality": modality, "metric": metric, "value": float(r[metric]),
                            "lower": floor, "upper": float("inf"), "median": float(vals[metric].median()),
                            "method": f"absolute (< {floor:g})", "direction": "low", "flag": spec.flag, "score": float("-inf"),
                        }
                    )
            vals = vals[~vals["case_id"].isin(flagged_abs)] if flagged_abs else vals
            if len(vals) < min_cases:
                methods[key] = {"method": f"none (n<{min_cases})", "n": int(len(vals))}
                continue
            method, lower, upper, med, spread = _outlier_bounds(vals[metric].to_numpy(dtype=float))
            methods[key] = {"method": method, "n": int(len(vals)), "lower": lower, "upper": upper, "median": med, "spread": spread}
            for _, r in vals.iterrows():
                v = float(r[metric])
                low = v < lower and spec.direction in ("low", "both")
                high = v > upper and spec.direction in ("high", "both")
                if low or high:
                    outliers.append(
                        {
                            "case_id": r["case_id"], "modality": modality, "metric": metric, "value": v,
                            "lower": lower, "upper": upper, "median": med, "method": method,
                            "direction": "low" if low else "high", "flag": spec.flag,
                            "score": (v - med) / spread if spread > 0 else float("inf"),
                        }
                    )
    return outliers, methods


def flags_from_outliers(outliers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Turn outliers into ``{case_id, what, detail}`` flags, one per (case, flag).

    An outlier whose metric is ``implied_by`` another outlier of the same case and modality
    (e.g. a low CNR in a noisy series) is folded into that flag's detail.
    """
    by_cm: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for o in outliers:
        by_cm.setdefault((o["case_id"], o["modality"]), []).append(o)
    merged: dict[tuple[str, str], list[str]] = {}
    for (case_id, modality), items in by_cm.items():
        metrics_here = {o["metric"] for o in items}
        for o in items:
            parent = METRIC_SPECS[o["metric"]].implied_by
            if parent and parent in metrics_here:
                continue
            extra = [i for i in items if METRIC_SPECS[i["metric"]].implied_by == o["metric"]]
            text = f"{modality}: {_describe(o)}"
            if extra:
                text += " (also " + ", ".join(_describe(i) for i in extra) + ")"
            merged.setdefault((case_id, o["flag"]), []).append(text)
    return [{"case_id": c, "what": w, "detail": "; ".join(d)} for (c, w), d in sorted(merged.items())]


def _describe(o: dict[str, Any]) -> str:
    if o["metric"] == "n_nonfinite":
        return f"{int(o['value'])} NaN/inf voxels"
    bound = o["lower"] if o["direction"] == "low" else o["upper"]
    rel = "<" if o["direction"] == "low" else ">"
    return f"{o['metric']}={o['value']:.3g} {rel} {bound:.3g} (cohort median {o['median']:.3g}, {o['method']})"
