"""The evaluation page: one self-contained HTML page per model, next to the data-quality report.

:func:`build_evaluation_page` writes, under ``<store>/quality/evaluation/``:

``<model_version>.html``              inline CSS (the data-quality report's), the plot and thumbnails
                                      as base64 PNG; no external URL, no script. Sections (element
                                      ids): ``summary``, ``rules``, ``volumes``, ``cases``, ``thumbnails``.
``<model_version>-bland-altman.png``  predicted against reference total lesion volume, and the
                                      Bland-Altman plot of their difference (matplotlib)

from an :class:`~pipeline.lesions.evaluation.Evaluation` (or the store's evaluation tables).
Each file is written whole through :func:`pipeline.store.put_bytes` (a URL on an object store).
Only pseudonymised case ids appear.

Example::

    from pipeline.lesions.evaluation import evaluate_model, write_evaluation
    ev = evaluate_model("/data/store", "unet3d-…")
    write_evaluation("/data/store", ev)
    build_evaluation_page("/data/store", ev)["html"]   # …/quality/evaluation/unet3d-….html
"""

from __future__ import annotations

import base64
import io
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.lesions.evaluation import COHORT_TABLE, Evaluation, evaluate_model
from pipeline.quality.expectations import QUALITY_DIR
from pipeline.quality.report import _CSS, overlay_png
from pipeline.store import store_name

EVALUATION_DIR = f"{QUALITY_DIR}/evaluation"
MAX_THUMBNAILS = 60


def volume_plot_png(ref_ml: Any, pred_ml: Any, bias: float, loa: tuple[float, float], r: float = float("nan")) -> bytes | None:
    """Two panels as PNG: predicted vs reference total lesion volume (mL, identity line) and
    Bland-Altman (difference against mean, bias and 95 % limits). Cases without both volumes (a
    geometry unknown: no mL) are left out; None without matplotlib or without any such pair."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    ref = np.asarray(ref_ml, float)
    pred = np.asarray(pred_ml, float)
    both = np.isfinite(ref) & np.isfinite(pred)
    if not both.any():
        return None
    ref, pred = ref[both], pred[both]
    fig = Figure(figsize=(9.0, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    top = float(max(ref.max(initial=0.0), pred.max(initial=0.0), 1e-3)) * 1.08
    ax1.plot([0, top], [0, top], color="#888", lw=1, ls="--", label="identity")
    ax1.scatter(ref, pred, s=22, color="#2f6db5", alpha=0.8)
    title = "Total lesion volume" + (f" (Pearson r {r:.3f})" if math.isfinite(r) else "")
    ax1.set(xlim=(0, top), ylim=(0, top), xlabel="reference volume (mL)", ylabel="predicted volume (mL)", title=title)
    ax1.legend(loc="upper left", fontsize=8, frameon=False)
    mean, diff = (ref + pred) / 2, pred - ref
    ax2.scatter(mean, diff, s=22, color="#2f6db5", alpha=0.8)
    if math.isfinite(bias):
        ax2.axhline(bias, color="#222", lw=1.5, label=f"bias {bias:+.3g} mL")
    for v in loa:
        if math.isfinite(v):
            ax2.axhline(v, color="#c62828", lw=1, ls="--")
    if all(math.isfinite(v) for v in loa):
        ax2.plot([], [], color="#c62828", lw=1, ls="--", label=f"95 % limits {loa[0]:+.3g} / {loa[1]:+.3g} mL")
    ax2.axhline(0, color="#aab3bc", lw=0.8)
    ax2.set(xlabel="mean of reference and predicted (mL)", ylabel="predicted - reference (mL)", title="Bland-Altman")
    ax2.legend(loc="best", fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _thumbnail(store_root: str | Path, case_id: str, model_version: str) -> dict[str, Any] | None:
    """Base64 PNG of a case's first channel on the slice with most reference (else predicted)
    lesion: reference filled red, this model's prediction outlined yellow."""
    from pipeline.store import foreground_mask, open_case, prediction_mask, read_case_meta, reference_label

    g = open_case(store_root, case_id)
    pred_arr = prediction_mask(g, model_version)
    if pred_arr is None:
        return None
    pred = np.asarray(pred_arr[...])
    label_arr, fg_arr = reference_label(g), foreground_mask(g)
    label = np.asarray(label_arr[...]) if label_arr is not None else None
    weight = (label > 0) if label is not None and label.any() else (pred > 0)
    z = int(np.argmax(weight.sum(axis=(1, 2)))) if weight.any() else pred.shape[0] // 2
    meta = read_case_meta(store_root, case_id)
    img = np.asarray(g["image"][0, z])
    fg = np.asarray(fg_arr[z]).astype(bool) if fg_arr is not None else None
    vals = img[fg] if fg is not None and fg.any() else img.reshape(-1)
    vals = vals[np.isfinite(vals)]
    window = (float(np.percentile(vals, 1)), float(np.percentile(vals, 99.5))) if vals.size else None
    sx, sy, _ = meta.geometry.spacing
    png = overlay_png(img, None if label is None else label[z], pred[z], (sy, sx), window)
    return {"case_id": case_id, "z": z, "nz": int(pred.shape[0]), "channel": meta.channels[0],
            "png_b64": base64.b64encode(png).decode("ascii")}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "-" if not math.isfinite(float(v)) else f"{float(v):.{digits}g}"
    return str(v)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Evaluation - {{ model_version }} - {{ store }}</title>
<style>{{ css }}</style></head>
<body>
<header><h1>Evaluation: {{ model_version }}</h1>
<p>store {{ store }} &middot; generated {{ generated_at }} by lesionflow {{ version }} &middot; the store's data-quality report: <a style="color:#c9d3dc" href="../report.html">report.html</a></p></header>
<nav><a href="#summary">Summary</a><a href="#rules">Rules</a><a href="#volumes">Volumes</a><a href="#cases">Cases</a><a href="#change">Change</a><a href="#thumbnails">Thumbnails</a></nav>

<section id="summary"><h2>Summary</h2>
<div class="cards">
<div class="card"><b>{{ c.n_cases }}</b>cases with a reference ({{ c.n_with_lesions }} with lesions, {{ c.n_lesion_free }} lesion-free)</div>
<div class="card"><b>{{ f(c.dice_mean) }}</b>Dice, mean (median {{ f(c.dice_median) }})</div>
<div class="card"><b>{{ f(c.hd95_median_mm) }}</b>HD95 mm, median</div>
<div class="card"><b>{{ f(c.msseg_f1) }}</b>lesion F1, MSSEG-1 (sens. {{ f(c.msseg_sensitivity) }}, prec. {{ f(c.msseg_precision) }})</div>
<div class="card"><b>{{ f(c.isles_f1) }}</b>lesion F1, ISLES'22</div>
<div class="card"><b>{{ f(c.abs_rel_volume_error_pct_mean) }}</b>|volume error| %, mean</div>
<div class="card"><b>{{ f(c.volume_pearson_r) }}</b>volume correlation r</div>
<div class="card"><b>{{ f(c.case_auc) }}</b>case AUC ("is there a lesion?")</div>
<div class="card"><b>{{ f(c.slice_auc) }}</b>slice AUC ({{ c.n_slices }} slices)</div>
</div>
<p class="small muted">Dice and HD95 over the {{ c.n_with_lesions }} cases whose reference has lesions; lesion counts pooled over cases
(MSSEG-1: {{ c.msseg_tp_ref }}/{{ c.msseg_ref_lesions }} reference lesions detected, {{ c.msseg_tp_pred }}/{{ c.msseg_pred_lesions }} predicted lesions true;
mean of the case F1s {{ f(c.msseg_f1_case_mean) }}). Case score: {{ c.case_score_kind }}.
{% if c.n_train_cases %}<b>{{ c.n_train_cases }} of these cases were used to train this model</b> (column "split"): their figures flatter it.{% endif %} Tables: <code>tables/evaluation_cases</code>,
<code>evaluation_lesions</code>, <code>evaluation_slices</code>, <code>evaluation_cohort</code>.</p>
</section>

<section id="rules"><h2>Rules</h2>
<p><b>MSSEG-1</b>, as Anima's segmentation performance analyzer computes it: lesions are 6-connected components; lesions of 3 mm³
or less are removed from both masks; a reference lesion is detected when more than 10 % of its voxels are covered and the predicted
lesions overlapping it, taken in decreasing overlap until they make up 65 % of the covered voxels, each have no more than 70 % of
their voxels outside the reference. A predicted lesion is a true positive by the same test with the masks swapped.
F1 = 2 &times; sensitivity &times; precision / (sensitivity + precision).</p>
<p><b>ISLES'22</b>: 26-connected lesions, no size floor; a reference lesion is detected by any overlap; a predicted lesion that
touches no reference voxel is a false positive; F1 = TP / (TP + (FP + FN) / 2).</p>
<p><b>Voxel-wise</b>: Dice; HD95 = the larger of the two directed 95th percentiles of boundary-to-boundary distances, in mm on the
stored grid; volumes from every lesion voxel. <b>Case level</b>: ROC AUC of the case score against "the reference has a lesion",
and per slice (array axis 0) of the predicted area or the slice's maximum probability.</p>
<p class="small muted mono">{{ rules_json }}</p>
</section>

<section id="volumes"><h2>Volumes</h2>
<p>Bland-Altman: bias {{ f(c.bland_altman_bias_ml) }} mL, 95 % limits of agreement {{ f(c.bland_altman_loa_low_ml) }} to {{ f(c.bland_altman_loa_high_ml) }} mL;
Pearson r {{ f(c.volume_pearson_r) }}, Spearman &rho; {{ f(c.volume_spearman_rho) }}; mean absolute error {{ f(c.abs_volume_error_ml_mean) }} mL.</p>
{% if plot_b64 %}<img alt="predicted against reference volume, and Bland-Altman plot" src="data:image/png;base64,{{ plot_b64 }}" style="max-width:100%">
{% else %}<p class="muted">No plot (matplotlib is not installed, or no case has a reference).</p>{% endif %}
</section>

<section id="cases"><h2>Cases</h2>
<table class="small"><tr><th>case</th><th>split</th><th>lesion?</th><th>Dice</th><th>HD95 mm</th><th>ref mL</th><th>pred mL</th><th>error %</th>
<th>MSSEG ref / pred / found / true</th><th>sens.</th><th>prec.</th><th>F1</th><th>ISLES F1</th><th>case score</th></tr>
{% for r in cases %}<tr><td class="mono">{{ r.case_id }}</td><td>{{ r.split }}</td><td>{{ r.has_lesion }}</td><td class="n">{{ r.dice }}</td><td class="n">{{ r.hd95_mm }}</td>
<td class="n">{{ r.volume_ref_ml }}</td><td class="n">{{ r.volume_pred_ml }}</td><td class="n">{{ r.rel_volume_error_pct }}</td>
<td class="n">{{ r.msseg_ref_lesions }} / {{ r.msseg_pred_lesions }} / {{ r.msseg_tp_ref }} / {{ r.msseg_tp_pred }}</td>
<td class="n">{{ r.msseg_sensitivity }}</td><td class="n">{{ r.msseg_precision }}</td><td class="n">{{ r.msseg_f1 }}</td><td class="n">{{ r.isles_f1 }}</td>
<td class="n">{{ r.case_score }}</td></tr>{% else %}<tr><td colspan="14" class="muted">No scored case with a reference.</td></tr>{% endfor %}
</table></section>

<section id="change"><h2>Lesion change</h2>
<p class="small muted">Between each subject's consecutive visits, from this model's masks of both visits (<code>lesionflow change --method model</code>,
table <code>change_pairs</code>); against the pair's expert change mask where one was ingested: voxel Dice of the new and enlarged voxels,
lesion-wise sensitivity and false positives per true change by the MSSEG-1 rules.</p>
<table class="small"><tr><th>pair</th><th>days</th><th>new</th><th>enlarging</th><th>shrinking</th><th>disappeared</th><th>stable</th>
<th>registration (NCC)</th><th>Dice</th><th>sens.</th><th>FP / true change</th></tr>
{% for r in change %}<tr><td class="mono">{{ r.pair_id }}</td><td class="n">{{ r.interval_days }}</td><td class="n">{{ r.n_new }}</td>
<td class="n">{{ r.n_enlarging }}</td><td class="n">{{ r.n_shrinking }}</td><td class="n">{{ r.n_disappeared }}</td><td class="n">{{ r.n_stable }}</td>
<td>{{ r.registration_method }} ({{ r.registration_ncc }})</td><td class="n">{{ r.dice }}</td><td class="n">{{ r.change_sensitivity }}</td>
<td class="n">{{ r.fp_per_true_change }}</td></tr>{% else %}<tr><td colspan="11" class="muted">No visit pair compared with this model.</td></tr>{% endfor %}
</table></section>

<section id="thumbnails"><h2>Thumbnails</h2>
<p class="small muted">First channel, the slice with the most reference lesion (else predicted lesion). Red fill: reference; yellow outline: this model's prediction.
{% if more %}First {{ thumbs|length }} cases shown.{% endif %}</p>
<div class="grid">{% for t in thumbs %}<figure><img alt="{{ t.case_id }} slice {{ t.z }}" src="data:image/png;base64,{{ t.png_b64 }}">
<figcaption>{{ t.case_id }} &middot; {{ t.channel }} z={{ t.z }}/{{ t.nz }}</figcaption></figure>{% else %}<p class="muted">No cases.</p>{% endfor %}</div>
</section>
</body></html>
"""


def build_evaluation_page(store_root: str | Path, evaluation: Evaluation | None = None, model_version: str | None = None,
                          thumbnails: bool = True) -> dict[str, str]:
    """Write the evaluation page (and its PNG) of one model; returns ``{"html": ..., "png": ...}``.

    ``evaluation`` comes from :func:`pipeline.lesions.evaluation.evaluate_model`; without it the
    store's cases are evaluated again for ``model_version``.
    """
    import jinja2

    from pipeline.store import put_bytes, read_table

    if evaluation is None:
        if model_version is None:
            raise ValueError("give an evaluation or a model_version")
        evaluation = evaluate_model(store_root, model_version)
    mv = evaluation.model_version
    cohort = dict(evaluation.cohort)
    if not cohort:
        table = read_table(store_root, COHORT_TABLE)
        rows = table[table["model_version"] == mv] if table is not None else []
        cohort = rows.iloc[-1].to_dict() if len(rows) else {}
    cases = evaluation.cases
    with_ref = cases[cases["has_reference"].astype(bool)] if len(cases) else cases
    png = None
    if len(with_ref):
        def num(key: str) -> float:
            return float(cohort.get(key, float("nan")))

        png = volume_plot_png(with_ref["volume_ref_ml"], with_ref["volume_pred_ml"], num("bland_altman_bias_ml"),
                              (num("bland_altman_loa_low_ml"), num("bland_altman_loa_high_ml")), num("volume_pearson_r"))
    out: dict[str, str] = {}
    if png is not None:
        out["png"] = str(put_bytes(store_root, f"{EVALUATION_DIR}/{mv}-bland-altman.png", png))
    columns = ["case_id", "split", "has_lesion", "dice", "hd95_mm", "volume_ref_ml", "volume_pred_ml", "rel_volume_error_pct",
               "msseg_ref_lesions", "msseg_pred_lesions", "msseg_tp_ref", "msseg_tp_pred", "msseg_sensitivity", "msseg_precision",
               "msseg_f1", "isles_f1", "case_score"]
    rows = [{k: _fmt(r.get(k)) for k in columns} for r in with_ref.sort_values("case_id").to_dict("records")] if len(with_ref) else []
    thumbs: list[dict[str, Any]] = []
    if thumbnails:
        for cid in sorted(with_ref["case_id"])[:MAX_THUMBNAILS] if len(with_ref) else []:
            t = _thumbnail(store_root, cid, mv)
            if t is not None:
                thumbs.append(t)
    change_table = read_table(store_root, "change_pairs")
    change_cols = ["pair_id", "interval_days", "n_new", "n_enlarging", "n_shrinking", "n_disappeared", "n_stable", "registration_method",
                   "registration_ncc", "dice", "change_sensitivity", "fp_per_true_change"]
    change = ([{k: _fmt(r.get(k)) for k in change_cols} for r in change_table[(change_table["method"] == "model")
                                                                             & (change_table["model_version"] == mv)].to_dict("records")]
              if change_table is not None and len(change_table) else [])
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    html = env.from_string(_TEMPLATE).render(
        css=_CSS, model_version=mv, store=store_name(store_root), version=__version__,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"), c=cohort, f=_fmt, cases=rows,
        rules_json=cohort.get("rules_json", ""), plot_b64=base64.b64encode(png).decode("ascii") if png else None,
        thumbs=thumbs, more=len(with_ref) > MAX_THUMBNAILS, change=change,
    )
    out["html"] = str(put_bytes(store_root, f"{EVALUATION_DIR}/{mv}.html", html.encode("utf-8")))
    return out
