"""The per-dataset data-quality report: one self-contained HTML page next to the data.

:func:`build_report` writes, under ``<store>/quality/``:

``report.html``        inline CSS, inline SVG plots, base64 PNG thumbnails; no external URLs, no JS.
                       Sections (element ids): ``summary``, ``flagged``, ``expectations``,
                       ``metrics``, ``thumbnails``, ``lineage``.
``metrics.parquet``    one row per (case, channel): :func:`pipeline.quality.metrics.case_metrics`.
``summary.json``       the ``summary`` dict (also returned) - counts, counts by reason code and by
                       reason, flags.
``expectations.json``  written by :func:`pipeline.quality.expectations.run_expectations`.

Each file is written whole: locally to a temporary name and renamed, on an object store
(``store_root`` an fsspec URL such as ``s3://bucket/store``) with one PUT, through
:func:`pipeline.store.put_bytes`; the result then holds URLs instead of paths.

Only what the store holds is shown (pseudonymised ids, sealed source paths, digests): inputs are
named by their sealed path (``src:…``), which ``lesionflow lineage`` opens with the key.

Example (a store with no cases still gets a report)::

    result = build_report("/data/store")
    result.flagged   # [{"case_id": "sub-...", "what": "thick slices", "detail": "FLAIR largest spacing 5 mm = ..."}]
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.core.jsonable import to_jsonable
from pipeline.core.png import png_bytes
from pipeline.quality.expectations import QUALITY_DIR, build_tables, run_expectations
from pipeline.quality.metrics import METRIC_NAMES, METRIC_SPECS, case_metrics, cohort_outliers, flags_from_outliers
from pipeline.store import store_name

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.parquet"
SUMMARY_FILE = "summary.json"
THUMB_PX = 176
NO_CODE = "(no reason code: catalog older than schema 1.2)"
"""The ``*_by_code`` key of rows without a ``reason_code``."""


@dataclass
class ReportResult:
    """Where the report went, its summary, and the flagged findings ``{case_id, what, detail}``.

    Locations are local paths, or URLs when the store (or ``out_html``) is on object storage.
    """

    html_path: Path | str
    summary: dict[str, Any]
    flagged: list[dict[str, Any]]
    metrics_path: Path | str | None = None
    summary_path: Path | str | None = None
    expectations_path: Path | str | None = None
    expectations: list[dict[str, Any]] = field(default_factory=list, repr=False)


# ----------------------------------------------------------------------------- PNG
def _resize_nearest(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    ys = np.minimum((np.arange(out_h) + 0.5) * a.shape[0] / out_h, a.shape[0] - 1).astype(int)
    xs = np.minimum((np.arange(out_w) + 0.5) * a.shape[1] / out_w, a.shape[1] - 1).astype(int)
    return a[ys][:, xs]


def _edge(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def overlay_png(slice2d: np.ndarray, label: np.ndarray | None = None, prediction: np.ndarray | None = None,
                spacing_yx: tuple[float, float] = (1.0, 1.0), window: tuple[float, float] | None = None, size: int = THUMB_PX) -> bytes:
    """A grey slice with the label filled in red and the prediction outlined in yellow, as PNG."""
    s = np.nan_to_num(np.asarray(slice2d, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = window if window is not None else (float(np.percentile(s, 1)), float(np.percentile(s, 99)))
    if not hi > lo:
        hi = lo + 1.0
    grey = np.clip((s - lo) / (hi - lo), 0, 1)
    ph, pw = s.shape[0] * spacing_yx[0], s.shape[1] * spacing_yx[1]
    scale = size / max(ph, pw, 1e-6)
    out_h, out_w = max(1, int(round(ph * scale))), max(1, int(round(pw * scale)))
    grey = _resize_nearest(grey, out_h, out_w)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if label is not None:
        lab = _resize_nearest(np.asarray(label) > 0, out_h, out_w)
        rgb[lab] = 0.45 * rgb[lab] + 0.55 * np.array([1.0, 0.0, 0.0])
    if prediction is not None:
        pred = _edge(_resize_nearest(np.asarray(prediction) > 0, out_h, out_w))
        rgb[pred] = np.array([1.0, 0.85, 0.0])
    return png_bytes((rgb * 255 + 0.5).astype(np.uint8))


def _latest_prediction(group: Any) -> tuple[str | None, np.ndarray | None]:
    """(model_version, mask) of the most recent prediction of a case; (None, None) if none."""
    from pipeline.store import prediction_mask, prediction_versions

    best: tuple[str, str] | None = None
    for name in prediction_versions(group):
        arr = prediction_mask(group, name)
        attrs = arr.attrs.asdict()
        stamp = str(attrs.get("scored_at") or attrs.get("created_at") or "")
        if best is None or (stamp, name) >= best:
            best = (stamp, name)
    if best is None:
        return None, None
    return best[1], np.asarray(prediction_mask(group, best[1])[...])


def case_thumbnail(store_root: str | Path, case_id: str, reference: str = "FLAIR") -> dict[str, Any]:
    """Base64 PNG of one case's reference channel: the slice with most label voxels, else the middle one."""
    from pipeline.store import foreground_mask, open_case, read_case_meta, reference_label

    g = open_case(store_root, case_id)
    meta = read_case_meta(store_root, case_id)
    names = list(g["image"].attrs.get("channels", meta.channels))
    present = [ci.modality for ci in meta.channel_info if ci.present and ci.modality in names]
    channel = reference if reference in present else (present[0] if present else names[0])
    label_arr, fg_arr = reference_label(g), foreground_mask(g)
    label = np.asarray(label_arr[...]) if label_arr is not None else None
    model, pred = _latest_prediction(g)
    nz = g["image"].shape[1]
    z = nz // 2
    if label is not None and label.any():
        z = int(np.argmax((label > 0).sum(axis=(1, 2))))
    img = np.asarray(g["image"][names.index(channel), z])
    fg = np.asarray(fg_arr[z]).astype(bool) if fg_arr is not None else None
    vals = img[fg] if fg is not None and fg.any() else img.reshape(-1)
    vals = vals[np.isfinite(vals)]
    window = (float(np.percentile(vals, 1)), float(np.percentile(vals, 99.5))) if vals.size else None
    sx, sy, _ = meta.geometry.spacing
    png = overlay_png(img, None if label is None else label[z], None if pred is None else pred[z], (sy, sx), window)
    return {
        "case_id": case_id, "channel": channel, "z": z, "nz": int(nz), "model_version": model,
        "has_label": label is not None, "png_b64": base64.b64encode(png).decode("ascii"),
        "note": "" if channel == reference else f"{reference} absent; showing {channel}",
    }


# ----------------------------------------------------------------------------- SVG plots
def _esc(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def strip_plot_svg(metric: str, df: Any, outliers: Sequence[dict[str, Any]], methods: dict[str, dict[str, Any]], width: int = 560, height: int = 210) -> str:
    """An inline SVG strip plot of one metric, one band per modality, outliers red and named."""
    data = df[df["present"].astype(bool)] if "present" in df else df
    modalities = sorted(data["modality"].dropna().unique().tolist())
    vals = data[metric].to_numpy(dtype=float) if metric in data else np.array([])
    finite = vals[np.isfinite(vals)]
    left, right, top, bottom = 60, 10, 22, 28
    pw, ph = width - left - right, height - top - bottom
    parts = [f'<svg role="img" aria-label="{_esc(metric)} by modality" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f'<text x="{left}" y="14" class="t">{_esc(metric)}</text>']
    if finite.size == 0 or not modalities:
        parts.append(f'<text x="{left}" y="{top + ph / 2}" class="m">no finite values</text></svg>')
        return "".join(parts)
    lo, hi = float(finite.min()), float(finite.max())
    for m in modalities:
        info = methods.get(f"{m}/{metric}", {})
        for k in ("lower", "upper"):
            if k in info and math.isfinite(info[k]):
                lo, hi = min(lo, info[k]), max(hi, info[k])
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    pad = 0.06 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def ypos(v: float) -> float:
        return top + ph - (v - lo) / (hi - lo) * ph

    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" class="ax"/>')
    for v in (lo + pad, (lo + hi) / 2, hi - pad):
        parts.append(f'<text x="{left - 4}" y="{ypos(v) + 4:.1f}" class="k" text-anchor="end">{v:.3g}</text>')
    band = pw / len(modalities)
    flagged = {(o["case_id"], o["modality"]) for o in outliers if o["metric"] == metric}
    for i, m in enumerate(modalities):
        x0 = left + i * band
        cx = x0 + band / 2
        parts.append(f'<text x="{cx:.1f}" y="{height - 8}" class="k" text-anchor="middle">{_esc(m)}</text>')
        info = methods.get(f"{m}/{metric}", {})
        if "median" in info:
            y = ypos(info["median"])
            parts.append(f'<line x1="{cx - band * 0.3:.1f}" y1="{y:.1f}" x2="{cx + band * 0.3:.1f}" y2="{y:.1f}" class="med"/>')
        for k in ("lower", "upper"):
            if k in info and math.isfinite(info[k]):
                y = ypos(info[k])
                parts.append(f'<line x1="{x0 + 6:.1f}" y1="{y:.1f}" x2="{x0 + band - 6:.1f}" y2="{y:.1f}" class="fence"/>')
        sub = data[data["modality"] == m]
        for j, (_, r) in enumerate(sub.iterrows()):
            v = float(r[metric])
            if not math.isfinite(v):
                continue
            jitter = ((j * 0.618034) % 1.0 - 0.5) * band * 0.4
            y = ypos(v)
            bad = (r["case_id"], m) in flagged
            parts.append(f'<circle cx="{cx + jitter:.1f}" cy="{y:.1f}" r="{4 if bad else 3}" class="{"o" if bad else "p"}"><title>{_esc(r["case_id"])}: {v:.4g}</title></circle>')
            if bad:
                parts.append(f'<text x="{cx + jitter + 6:.1f}" y="{y + 4:.1f}" class="ol">{_esc(r["case_id"])}</text>')
        if info.get("method"):
            parts.append(f'<text x="{x0 + 4:.1f}" y="{top + 10}" class="k">{_esc(info["method"])} n={info.get("n", 0)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------------- summary
def _summary(root: Path | str, catalog: Any, cases: list[str], channels: Sequence[str], exp_results: list[dict[str, Any]],
             flagged: list[dict[str, Any]], methods: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def rows(status: str) -> list[dict[str, Any]]:
        if not len(catalog):
            return []
        sub = catalog[catalog["status"] == status]
        return [to_jsonable({"case_id": r.get("case_id"), "modality": r.get("modality"), "source_relpath": r.get("source_relpath"),
                             "reason_code": r.get("reason_code"), "reason": r.get("reason")}) for _, r in sub.iterrows()]

    rejected, unused = rows("rejected"), rows("unused")

    def counts(items: list[dict[str, Any]], field: str, missing: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for it in items:
            key = it.get(field) or missing
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def by_reason(items: list[dict[str, Any]]) -> dict[str, int]:
        return counts(items, "reason", "(no reason recorded)")

    def by_code(items: list[dict[str, Any]]) -> dict[str, int]:
        return counts(items, "reason_code", NO_CODE)

    converted = catalog[catalog["status"].isin(["converted", "skipped"])] if len(catalog) else catalog
    by_what: dict[str, list[str]] = {}
    for f in flagged:
        by_what.setdefault(f["what"], []).append(f["case_id"] or "-")
    mod_methods: dict[str, str] = {}
    for key, info in methods.items():
        mod = key.split("/", 1)[0]
        mod_methods.setdefault(mod, info["method"])
    failed = [r for r in exp_results if not r["success"]]
    return to_jsonable({
        "store": store_name(root),
        "generated_at": datetime.now(UTC).isoformat(),
        "report_version": __version__,
        "channels": list(channels),
        "n_cases": len(cases),
        "n_cases_catalog": int(converted["case_id"].dropna().nunique()) if len(converted) else 0,
        "n_series_converted": int((catalog["status"] == "converted").sum()) if len(catalog) else 0,
        "n_skipped": int((catalog["status"] == "skipped").sum()) if len(catalog) else 0,
        "n_rejected": len(rejected),
        "rejected_by_code": by_code(rejected),
        "rejected_by_reason": by_reason(rejected),
        "rejected": rejected,
        "n_unused": len(unused),
        "unused_by_code": by_code(unused),
        "unused_by_reason": by_reason(unused),
        "unused": unused,
        "expectations": {
            "evaluated": len(exp_results),
            "passed": len(exp_results) - len(failed),
            "failed": len(failed),
            "failed_ids": [r["id"] for r in failed],
        },
        "n_flagged": len(flagged),
        "n_flagged_cases": len({f["case_id"] for f in flagged if f["case_id"]}),
        "flagged_by_what": by_what,
        "outlier_method": mod_methods,
    })


def report_markdown(summary: dict[str, Any], max_rows: int = 30) -> str:
    """A short Markdown rendering of ``summary`` (for a Prefect markdown artifact)."""
    e = summary.get("expectations", {})
    lines = [
        f"# Data quality: {summary.get('store', '')}",
        "",
        "| | |",
        "|---|---|",
        f"| cases ingested | {summary.get('n_cases', 0)} |",
        f"| series converted | {summary.get('n_series_converted', 0)} |",
        f"| inputs rejected | {summary.get('n_rejected', 0)} |",
        f"| series unused | {summary.get('n_unused', 0)} |",
        f"| expectations passed | {e.get('passed', 0)} / {e.get('evaluated', 0)} |",
        f"| findings flagged | {summary.get('n_flagged', 0)} ({summary.get('n_flagged_cases', 0)} cases) |",
        *([f"| geometry unknown | {summary['n_geometry_unknown']} cases |"] if summary.get("n_geometry_unknown") else []),
        "",
    ]
    for key, title in (("rejected_by_code", "Rejected inputs by reason code"), ("unused_by_code", "Unused inputs by reason code")):
        if summary.get(key):
            lines += [f"## {title}", "", "| reason code | count |", "|---|---|"]
            lines += [f"| {_md(k)} | {v} |" for k, v in summary[key].items()]
            lines.append("")
    if summary.get("rejected_by_reason"):
        lines += ["## Rejected inputs by reason", "", "| reason | count |", "|---|---|"]
        lines += [f"| {_md(k)} | {v} |" for k, v in summary["rejected_by_reason"].items()]
        lines.append("")
    if summary.get("flagged_by_what"):
        lines += ["## Flagged", "", "| finding | cases |", "|---|---|"]
        items = list(summary["flagged_by_what"].items())
        for what, cases in items[:max_rows]:
            shown = ", ".join(cases[:10]) + (f" (+{len(cases) - 10})" if len(cases) > 10 else "")
            lines.append(f"| {_md(what)} | {_md(shown)} |")
        if len(items) > max_rows:
            lines.append(f"| ... | {len(items) - max_rows} more |")
        lines.append("")
    if e.get("failed_ids"):
        lines += ["Failed expectations: " + ", ".join(f"`{i}`" for i in e["failed_ids"]), ""]
    if summary.get("report_html"):
        lines.append(f"Full report: `{summary['report_html']}`")
    return "\n".join(lines)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------- HTML
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#22303c;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}header p{margin:4px 0 0;color:#c9d3dc}
nav{padding:6px 24px;background:#e8ecf0}nav a{margin-right:14px;color:#22303c}
section{background:#fff;margin:14px 24px;padding:12px 18px;border-radius:6px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:17px;margin:4px 0 10px}h3{font-size:14px;margin:12px 0 6px}
table{border-collapse:collapse;width:100%;margin:6px 0}th,td{border-bottom:1px solid #e3e6ea;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#fff;background:#2e7d32;padding:1px 6px;border-radius:3px;font-size:12px}
.fail{color:#fff;background:#c62828;padding:1px 6px;border-radius:3px;font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#f0f2f5;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:22px}.card.bad b{color:#c62828}
.grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;background:#111;color:#ddd;padding:4px;border-radius:4px;width:184px}
figure img{display:block;image-rendering:pixelated}figcaption{font-size:11px;padding-top:3px;word-break:break-all}
figure.flag{outline:3px solid #c62828}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;overflow-wrap:anywhere;word-break:break-word}
td{overflow-wrap:anywhere}
.muted{color:#68727d}.small{font-size:12px}
svg{background:#fafbfc;border:1px solid #e3e6ea;margin:4px 8px 8px 0}
svg .t{font:600 13px system-ui,sans-serif}svg .k{font:10px system-ui,sans-serif;fill:#55606b}svg .m{font:12px system-ui,sans-serif;fill:#888}
svg .ax{stroke:#aab3bc}svg .p{fill:#2f6db5;fill-opacity:.75}svg .o{fill:#c62828}svg .ol{font:10px system-ui,sans-serif;fill:#c62828}
svg .med{stroke:#222;stroke-width:2}svg .fence{stroke:#c62828;stroke-dasharray:4 3;stroke-opacity:.6}
.plots{display:flex;flex-wrap:wrap}
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Data quality - {{ s.store }}</title>
<style>{{ css }}</style></head>
<body>
<header><h1>Data-quality report: {{ s.store }}</h1>
<p>generated {{ s.generated_at }} by lesionflow {{ s.report_version }} &middot; channels {{ s.channels|join(", ") }}</p></header>
<nav><a href="#summary">Summary</a><a href="#flagged">Flagged</a><a href="#expectations">Expectations</a><a href="#metrics">Metrics</a><a href="#thumbnails">Thumbnails</a><a href="#bank">Augmentation bank</a><a href="#pairs">Visit pairs</a><a href="#lineage">Lineage</a></nav>

<section id="summary"><h2>Summary</h2>
<div class="cards">
<div class="card"><b>{{ s.n_cases }}</b>cases ingested</div>
<div class="card"><b>{{ s.n_series_converted }}</b>series converted</div>
<div class="card{% if s.n_rejected %} bad{% endif %}"><b>{{ s.n_rejected }}</b>inputs rejected</div>
<div class="card"><b>{{ s.n_unused }}</b>series unused</div>
<div class="card{% if s.expectations.failed %} bad{% endif %}"><b>{{ s.expectations.passed }}/{{ s.expectations.evaluated }}</b>expectations passed</div>
<div class="card{% if s.n_flagged %} bad{% endif %}"><b>{{ s.n_flagged }}</b>findings ({{ s.n_flagged_cases }} cases)</div>
{% if s.n_geometry_unknown %}<div class="card bad"><b>{{ s.n_geometry_unknown }}</b>cases with geometry unknown</div>{% endif %}
</div>
<h3>Rejected inputs by reason</h3>
{% if s.rejected %}<table><tr><th>reason code</th><th>count</th></tr>
{% for code, n in s.rejected_by_code.items() %}<tr><td class="mono">{{ code }}</td><td class="n">{{ n }}</td></tr>{% endfor %}</table>
<table><tr><th>reason</th><th>count</th></tr>
{% for reason, n in s.rejected_by_reason.items() %}<tr><td>{{ reason }}</td><td class="n">{{ n }}</td></tr>{% endfor %}</table>
<table><tr><th>input</th><th>case</th><th>modality</th><th>code</th><th>reason</th></tr>
{% for r in s.rejected %}<tr><td class="mono">{{ r.source_relpath }}</td><td>{{ r.case_id or "-" }}</td><td>{{ r.modality or "-" }}</td><td class="mono">{{ r.reason_code or "-" }}</td><td>{{ r.reason or "(none)" }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">No input was rejected.</p>{% endif %}
<h3>Unused series</h3>
{% if s.unused %}<table><tr><th>reason code</th><th>count</th></tr>
{% for code, n in s.unused_by_code.items() %}<tr><td class="mono">{{ code }}</td><td class="n">{{ n }}</td></tr>{% endfor %}</table>
<table><tr><th>series</th><th>case</th><th>modality</th><th>code</th><th>reason</th></tr>
{% for r in s.unused %}<tr><td class="mono">{{ r.source_relpath }}</td><td>{{ r.case_id or "-" }}</td><td>{{ r.modality or "-" }}</td><td class="mono">{{ r.reason_code or "-" }}</td><td>{{ r.reason or "(none)" }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">Every series found was used.</p>{% endif %}
</section>

<section id="flagged"><h2>Flagged findings</h2>
{% if flagged %}<table><tr><th>case</th><th>finding</th><th>detail</th></tr>
{% for f in flagged %}<tr><td class="mono">{{ f.case_id or "-" }}</td><td><b>{{ f.what }}</b></td><td>{{ f.detail }}</td></tr>{% endfor %}</table>
{% else %}<p>Nothing flagged.</p>{% endif %}
</section>

<section id="expectations"><h2>Expectations</h2>
<p class="small muted">Great Expectations suites over tables derived from the catalog and the case metadata. Saved in <code>quality/expectations.json</code>.</p>
<table><tr><th>suite</th><th>check</th><th>result</th><th>unexpected</th><th>what it means</th></tr>
{% for r in exp %}<tr><td>{{ r.suite }}</td><td><code>{{ r.id }}</code><br><span class="small muted">{{ r.expectation }}{% if r.column %} on <code>{{ r.column }}</code>{% endif %}</span></td>
<td>{% if r.success %}<span class="pass">PASS</span>{% else %}<span class="fail">FAIL</span>{% endif %}<br><span class="small muted">{{ r.unexpected_count }}/{{ r.element_count }}</span></td>
<td class="small">{% for u in r.unexpected[:20] %}<span class="mono">{{ u.case_id or u.source_relpath or "-" }}{% if u.modality %} {{ u.modality }}{% endif %}</span>{% if u.value is not none %}: {{ u.value }}{% endif %}<br>{% endfor %}{% if r.unexpected|length > 20 %}... {{ r.unexpected|length - 20 }} more{% endif %}{% if r.error %}<span class="fail">error</span> {{ r.error }}{% endif %}</td>
<td class="small">{{ r.explanation }}</td></tr>{% endfor %}
</table></section>

<section id="metrics"><h2>Image-quality metrics</h2>
<p class="small muted">Per case and channel, computed on the stored arrays (see <code>quality/metrics.parquet</code>). Black bar: cohort median; dashed red: outlier fences; red points: flagged outliers (named).
Outliers per modality: {% for m, meth in s.outlier_method.items() %}{{ m }}: {{ meth }}{% if not loop.last %}; {% endif %}{% else %}none computed{% endfor %}. With fewer than 4 series no outlier is flagged.</p>
<div class="plots">{% for p in plots %}<div><div class="small">{{ p.description }}</div>{{ p.svg|safe }}</div>{% endfor %}</div>
<h3>Values</h3>
<table class="small"><tr><th>case</th><th>modality</th>{% for m in metric_names %}<th>{{ m }}</th>{% endfor %}</tr>
{% for r in metric_rows %}<tr><td class="mono">{{ r.case_id }}</td><td>{{ r.modality }}{% if not r.present %} (absent){% endif %}</td>{% for m in metric_names %}<td class="n">{{ r[m] }}</td>{% endfor %}</tr>{% endfor %}
</table></section>

<section id="thumbnails"><h2>Thumbnails</h2>
<p class="small muted">Reference channel ({{ reference }}), the axial slice with the most label voxels (else the middle slice). Red fill: reference label; yellow outline: latest prediction.</p>
<div class="grid">{% for t in thumbs %}<figure{% if t.case_id in flagged_cases %} class="flag"{% endif %}><img alt="{{ t.case_id }} {{ t.channel }} slice {{ t.z }}" src="data:image/png;base64,{{ t.png_b64 }}">
<figcaption>{{ t.case_id }} &middot; {{ t.channel }} z={{ t.z }}/{{ t.nz }}{% if t.model_version %} &middot; pred {{ t.model_version }}{% endif %}{% if t.note %}<br>{{ t.note }}{% endif %}</figcaption></figure>{% else %}<p class="muted">No cases.</p>{% endfor %}</div>
</section>

<section id="bank"><h2>Augmentation bank</h2>
{% if bank %}<p class="small muted">Stored samples of {{ bank.case_id }} (lesion-centred first), channel {{ bank.channel }}, the axial slice through each sample's centre; red outline: label. Built by <code>lesionflow prepare</code>; <code>lesionflow augment-preview</code> draws any case.</p>
<figure><img alt="augmentation bank of {{ bank.case_id }}" src="data:image/png;base64,{{ bank.png_b64 }}"></figure>
<table class="small"><tr><th>case</th><th>samples</th><th>lesion-centred</th><th>patch</th><th>type</th><th>MB</th><th>bytes/sample</th><th>config</th></tr>
{% for r in bank.rows %}<tr><td class="mono">{{ r.case_id }}</td><td class="n">{{ r.n_samples }}</td><td class="n">{{ r.n_lesion }}</td><td>{{ r.patch_zyx|join("x") }}</td><td>{{ r.dtype }}</td><td class="n">{{ r.mb }}</td><td class="n">{{ r.bytes_per_sample }}</td><td class="mono">{{ r.bank_config_hash }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">No augmentation bank in this store (<code>lesionflow prepare</code> builds it).</p>{% endif %}
</section>

<section id="pairs"><h2>Visit pairs</h2>
<p class="small muted">Each subject's consecutive visits brought into one space (<code>lesionflow change</code>): supplied transforms or
rigid-then-affine registration of the follow-up FLAIR onto the baseline; NCC = normalised cross-correlation of the two FLAIR images
in the common brain mask after it (1 = identical up to a linear intensity change; a low value says the change figures are not to be trusted).
The change figures per method and model are in the table <code>change_pairs</code> and, for a model, its evaluation page.</p>
<table class="small"><tr><th>pair</th><th>days apart</th><th>grid</th><th>registration</th><th>NCC</th><th>Mattes MI</th><th>expert change mask</th></tr>
{% for p in pairs %}<tr><td class="mono">{{ p.pair_id }}</td><td class="n">{{ p.days }}</td><td>{{ p.grid }}</td><td>{{ p.method }}</td>
<td class="n">{{ p.ncc }}</td><td class="n">{{ p.mattes_mi }}</td><td>{{ p.expert }}</td></tr>{% else %}<tr><td colspan="7" class="muted">No visit pair compared yet.</td></tr>{% endfor %}
</table></section>

<section id="lineage"><h2>Lineage</h2>
<p class="small muted">Source paths are sealed (<code>src:…</code>): <code>lesionflow lineage CASE --store STORE</code> lists a case's files, and <code>lesionflow lineage TOKEN</code> opens one path, for holders of the pseudonymisation key.</p>
<table class="small"><tr><th>case</th><th>pipeline</th><th>config hash</th><th>created</th><th>sources (files, sha256 prefix of the first)</th></tr>
{% for l in lineage %}<tr><td class="mono">{{ l.case_id }}</td><td>{{ l.pipeline_version }}</td><td class="mono">{{ l.config_hash }}</td><td>{{ l.created_at }}</td>
<td>{% for src in l.sources %}<span class="mono">{{ src.modality }}: {{ src.relpath }} &middot; {{ src.sha }}</span><br>{% endfor %}</td></tr>{% endfor %}
</table></section>
</body></html>
"""


def _pairs(root: Path | str) -> list[dict[str, Any]]:
    """One row per visit pair: interval, grid, registration method and quality, expert mask (or '-')."""
    from pipeline.store import StoreError, list_pairs, read_pair_meta

    out = []
    for pid in list_pairs(root):
        try:
            meta = read_pair_meta(root, pid)
        except StoreError:
            continue
        if meta is None:
            continue
        reg = meta.registration
        out.append({"pair_id": pid, "days": "-" if meta.interval_days is None else meta.interval_days, "grid": meta.grid,
                    "method": reg.method if reg else "not yet", "ncc": _fmt_cell(reg.ncc) if reg else "-",
                    "mattes_mi": _fmt_cell(reg.mattes_mi) if reg and reg.mattes_mi is not None else "-",
                    "expert": "yes" if meta.expert_source else "-"})
    return out


def _lineage(root: Path | str, cases: list[str]) -> list[dict[str, Any]]:
    from pipeline.store import StoreError, read_case_meta

    out = []
    for cid in cases:
        try:
            meta = read_case_meta(root, cid)
        except StoreError as exc:
            out.append({"case_id": cid, "pipeline_version": "?", "config_hash": "?", "created_at": "?", "sources": [{"modality": "error", "relpath": str(exc)[:200], "sha": ""}]})
            continue
        # one line per channel (a DICOM series has a sealed path per file): its file count
        srcs = [{"modality": ci.modality, "relpath": f"{len(ci.sources)} file(s)", "sha": ci.sources[0].sha256[:12] if ci.sources else ""}
                for ci in meta.channel_info]
        if meta.label_source is not None:
            srcs.append({"modality": "label", "relpath": "1 file", "sha": meta.label_source.sha256[:12]})
        out.append({"case_id": cid, "pipeline_version": meta.pipeline_version, "config_hash": meta.config_hash,
                    "created_at": meta.created_at.isoformat(timespec="seconds"), "sources": srcs})
    return out


def _bank_section(root: Path | str, cases: list[str]) -> dict[str, Any] | None:
    """Sizes of the cases' augmentation banks and a grid of one case's samples (a case with lesions first); None without banks."""
    from pipeline.prepare.bank import bank_table, read_bank
    from pipeline.prepare.preview import bank_grid
    from pipeline.store import StoreError

    try:
        rows = [r for r in bank_table(root, cases) if "n_samples" in r]
        if not rows:
            return None
        case_id = next((r["case_id"] for r in rows if r["n_lesion"]), rows[0]["case_id"])
        bank = read_bank(root, case_id)
        png = png_bytes(bank_grid(root, case_id, n_samples=16))
    except (StoreError, KeyError, ValueError) as exc:
        return {"case_id": "-", "channel": "-", "png_b64": "", "rows": [], "error": str(exc)[:300]}
    return {"case_id": case_id, "channel": bank.channels[0] if bank else "-", "png_b64": base64.b64encode(png).decode("ascii"), "rows": rows}


def _fmt_cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(float(v)):
            return "-"
        return f"{float(v):.4g}"
    return str(v)


GEOMETRY_UNKNOWN = "geometry unknown"
"""The finding of a case whose source holds no spacing or orientation (a slice stack)."""


def geometry_flags(store_root: str | Path, cases: Sequence[str]) -> list[dict[str, Any]]:
    """A "geometry unknown" finding per case whose :attr:`Geometry.source <storage_schemas.models.Geometry.source>`
    is not the files' header: its spacing was assumed (unit) or configured, its orientation is unknown."""
    from pipeline.store import StoreError, read_case_meta

    out = []
    for cid in cases:
        try:
            source = read_case_meta(store_root, cid).geometry.source
        except (StoreError, KeyError, ValueError):
            continue
        if source == "unknown":
            out.append({"case_id": cid, "what": GEOMETRY_UNKNOWN, "detail": "the source (a 2-D slice stack) holds no spacing or orientation: "
                        "unit spacing assumed, lesion sizes in voxels (set slice_stack.spacing_mm for mm³)"})
        elif source == "configured_spacing":
            out.append({"case_id": cid, "what": GEOMETRY_UNKNOWN, "detail": "spacing from the configuration (slice_stack.spacing_mm), "
                        "orientation unknown"})
    return out


def build_report(store_root: str | Path, out_html: str | Path | None = None, channels: Sequence[str] | None = None,
                 reference: str | None = None) -> ReportResult:
    """Run the expectations and metrics on a store and write the HTML report + metrics + summary.

    ``store_root`` and ``out_html`` may be local paths or fsspec URLs (``s3://...``). ``channels``:
    the modalities to check, None for the store's (:func:`pipeline.store.resolve_channels`; a
    channel the store does not have raises :class:`pipeline.store.StoreError`). ``reference``
    defaults to the first of them.
    """
    import jinja2
    import pandas as pd

    from pipeline.store import StoreError, list_cases, location, put_bytes, read_catalog, resolve_channels, write_bytes_atomic, write_json_atomic

    root = location(store_root)  # a local Path or the store's URL
    channels = resolve_channels(root, channels)
    reference = reference or channels[0]
    html_path = location(out_html) if out_html is not None else location(root, f"{QUALITY_DIR}/{REPORT_FILE}")

    catalog = read_catalog(root)
    cases = list_cases(root)
    tables = build_tables(root, channels, catalog=catalog)
    exp = run_expectations(root, channels, tables=tables)

    rows: list[dict[str, Any]] = []
    thumbs: list[dict[str, Any]] = []
    for cid in cases:
        try:
            rows += case_metrics(root, cid, channels)
            thumbs.append(case_thumbnail(root, cid, reference))
        except (StoreError, KeyError, ValueError) as exc:
            rows.append({"case_id": cid, "modality": "?", "present": False, "error": str(exc)[:300]})
    cols = ["case_id", "modality", "channel_index", "present", "has_label", "snr_source", *METRIC_NAMES]
    metrics = pd.DataFrame(rows)
    for c in cols:
        if c not in metrics:
            metrics[c] = np.nan if c in METRIC_NAMES else None
    metrics = metrics[[*cols, *[c for c in metrics.columns if c not in cols]]]
    metrics["present"] = metrics["present"].fillna(False).astype(bool)
    buf = io.BytesIO()
    metrics.to_parquet(buf, index=False)
    metrics_path = put_bytes(root, f"{QUALITY_DIR}/{METRICS_FILE}", buf.getvalue())

    outliers, methods = cohort_outliers(metrics)
    flagged = exp.flagged + flags_from_outliers(outliers) + geometry_flags(root, cases)
    flagged.sort(key=lambda f: (f["case_id"] is None, f["case_id"] or "", f["what"]))
    summary = _summary(root, catalog, cases, channels, exp.results, flagged, methods)
    summary["n_geometry_unknown"] = sum(f["what"] == GEOMETRY_UNKNOWN for f in flagged)
    summary["report_html"] = str(html_path)
    summary["metrics"] = str(metrics_path)
    summary["expectations_json"] = str(exp.path) if exp.path else None

    plots = [{"metric": m, "description": f"{m}: {METRIC_SPECS[m].description}", "svg": strip_plot_svg(m, metrics, outliers, methods)}
             for m in METRIC_NAMES if not metrics.empty]
    metric_rows = [{k: (_fmt_cell(v) if k in METRIC_NAMES else v) for k, v in r.items()} for r in metrics.to_dict("records")]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    html = env.from_string(_TEMPLATE).render(
        s=summary, css=_CSS, flagged=flagged, exp=exp.results, plots=plots, metric_names=list(METRIC_NAMES),
        metric_rows=metric_rows, thumbs=thumbs, reference=reference, lineage=_lineage(root, cases),
        flagged_cases={f["case_id"] for f in flagged}, bank=_bank_section(root, cases), pairs=_pairs(root),
    )
    write_bytes_atomic(html_path, html.encode("utf-8"))
    summary_path = location(root, f"{QUALITY_DIR}/{SUMMARY_FILE}")
    write_json_atomic(summary_path, to_jsonable(summary))
    return ReportResult(html_path=html_path, summary=summary, flagged=flagged, metrics_path=metrics_path,
                        summary_path=summary_path, expectations_path=exp.path, expectations=exp.results)
