"""Run the data-quality expectation suites (:mod:`storage_schemas.expectations`) on a store.

Tables are derived from the catalog and the case metadata (:func:`build_tables`), validated
with Great Expectations 1.x in an ephemeral, quiet context (no data docs, no analytics, no
progress bars), and every expectation becomes one result row::

    {suite, table, id, expectation, column, kwargs, success, element_count, unexpected_count,
     unexpected: [{case_id, modality, value, ...}], unexpected_cases, observed_value,
     flag, explanation, error}

Results are written to ``<store>/quality/expectations.json`` (locally via a temporary file and
rename, on an object store with one PUT); failing rows become report flags
``{case_id, what, detail}`` (:func:`flags_from_results`). Great Expectations runs in memory on the
pandas tables, so a store on object storage (``s3://...``) needs no local folder.

What the checks read (columns, never the prose of a reason):

* ``CaseMeta.channel_info[*]``: native spacing/shape/orientation, raw intensity stats, sources.
* label on grid: the catalog's ``label_on_grid`` on the label rows (modality ``MASK``), which the
  ingest sets when it decides whether a mask lies on one of its session's image grids (schema
  1.2; unknown for older rows, which is not a failure).
* label binary: the stored label's values; for a label the ingest rejected, its ``reason_code``
  (``label_not_binary``).
* rejected / unused inputs: catalog rows with ``status``, ``reason_code`` and ``reason``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.jsonable import to_jsonable

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from storage_schemas.expectations import CONSISTENCY_MIN_SERIES, LABEL_VALUE_SETS, SuiteSpec, build_suites
from storage_schemas.models import ReasonCode

QUALITY_DIR = "quality"
EXPECTATIONS_FILE = "expectations.json"
LABEL_MODALITIES = ("MASK", "LABEL")

MODALITY_COLUMNS = [
    "row_key", "case_id", "modality", "source_format",
    "spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "spacing_min_mm", "spacing_max_mm", "anisotropy",
    "shape_z", "shape_y", "shape_x", "matrix_min", "matrix_max",
    "fov_x_mm", "fov_y_mm", "fov_z_mm", "fov_max_mm", "orientation", "geometry_source",
    "intensity_mean", "intensity_std", "intensity_p01", "intensity_p99", "intensity_stats_finite",
    "median_spacing_max_mm", "median_spacing_min_mm",
    "slice_spacing_ratio", "inplane_spacing_ratio", "coverage_ratio_min", "coverage_ratio_max",
]
SOURCE_COLUMNS = ["row_key", "case_id", "modality", "relpath", "sha256"]
INPUT_COLUMNS = ["row_key", "case_id", "modality", "status", "reason_code", "reason", "source_relpath"]
LABEL_CASE_COLUMNS = ["label_values", "label_values_source", "label_binary", "label_grid_ok", "label_grid_source",
                      "label_rejected_code", "label_rejected_reason"]
LABEL_REASON_CODES = frozenset({ReasonCode.LABEL_OFF_GRID.value, ReasonCode.LABEL_NOT_BINARY.value})
"""Rejections that the label checks name (``label off-grid``, ``label not binary``), not ``rejected input``."""


# ------------------------------------------------------------------------------ tables
def _label_values(group: Any) -> str | None:
    from pipeline.store import reference_label

    arr = reference_label(group)
    if arr is None:
        return None
    lab = np.asarray(arr[...])
    if lab.dtype.kind in "iu" and lab.size and lab.min() >= 0:
        vals = np.flatnonzero(np.bincount(lab.reshape(-1).astype(np.int64)))
    else:
        vals = np.unique(lab)
    return ",".join(f"{v:g}" for v in vals.tolist())


def _label_rows(cat_case: Any) -> Any:
    """The case's catalog rows of its label inputs (``None`` when there are none)."""
    if cat_case is None or not len(cat_case):
        return None
    rows = cat_case[cat_case["modality"].isin(LABEL_MODALITIES)]
    return rows if len(rows) else None


def label_on_grid(cat_case: Any) -> tuple[bool | None, str | None]:
    """(on grid, source) of one case's label from the catalog's ``label_on_grid`` column:
    ``False`` when any label input was off the grid (``source`` "rejected" when the ingest
    rejected it for that), ``None`` when the catalog does not say (no label row, or rows older
    than schema 1.2)."""
    rows = _label_rows(cat_case)
    if rows is None or "label_on_grid" not in rows:
        return None, None
    known = rows[rows["label_on_grid"].notna()]
    if known.empty:
        return None, None
    ok = all(bool(v) for v in known["label_on_grid"])
    if not ok and _has_code(known, ReasonCode.LABEL_OFF_GRID):
        return False, "rejected"
    return ok, "catalog"


def rejected_label(cat_case: Any) -> tuple[ReasonCode | None, str | None]:
    """(reason code, reason) of the case's label input that the ingest rejected, if any."""
    rows = _label_rows(cat_case)
    if rows is None or "reason_code" not in rows:
        return None, None
    rej = rows[(rows["status"] == "rejected") & rows["reason_code"].notna()]
    if rej.empty:
        return None, None
    first = rej.iloc[0]
    return ReasonCode(first["reason_code"]), first.get("reason")


def _has_code(rows: Any, code: ReasonCode) -> bool:
    return "reason_code" in rows and bool((rows["reason_code"] == code.value).any())


def _binary(values: str | None) -> bool | None:
    return None if values is None else values in LABEL_VALUE_SETS


def build_tables(store_root: str | Path, channels: Sequence[str] | None = None, catalog: Any = None) -> dict[str, Any]:
    """Derive the ``modalities``, ``cases``, ``sources`` and ``inputs`` tables from a store
    (``catalog``: its current catalog when the caller has read it already).

    ``channels``: the modalities every case should have, None for the store's
    (:func:`pipeline.store.resolve_channels`).
    """
    import pandas as pd

    from pipeline.store import StoreError, list_cases, location, open_case, read_case_meta, read_catalog, resolve_channels

    root = location(store_root)  # a local Path or the store's URL
    channels = resolve_channels(root, channels)
    cat = read_catalog(root) if catalog is None else catalog
    cat_by_case = {cid: g for cid, g in cat.groupby("case_id")} if len(cat) else {}

    mod_rows: list[dict[str, Any]] = []
    case_rows: list[dict[str, Any]] = []
    src_rows: list[dict[str, Any]] = []
    for case_id in list_cases(root):
        try:
            meta = read_case_meta(root, case_id)
        except StoreError as exc:
            row = {"case_id": case_id, "meta_valid": False, "meta_error": str(exc)[:300], "n_channels": 0, "missing": ",".join(channels),
                   **{c: None for c in LABEL_CASE_COLUMNS}, "has_label": False}
            row.update({f"has_{ch}": False for ch in channels})
            case_rows.append(row)
            continue
        present = {ci.modality for ci in meta.channel_info if ci.present} & set(meta.channels)
        group = open_case(root, case_id)
        cat_case = cat_by_case.get(case_id)
        grid_ok, grid_src = label_on_grid(cat_case)
        rej_code, rej_reason = rejected_label(cat_case)
        values = _label_values(group)
        if values is not None:
            values_src, binary = "store", _binary(values)
        elif rej_code is ReasonCode.LABEL_NOT_BINARY:
            values_src, binary = "rejected", False
        else:
            values_src, binary = None, None
        row = {
            "case_id": case_id, "meta_valid": True, "meta_error": None, "n_channels": len(meta.channels),
            "missing": ",".join(ch for ch in channels if ch not in present),
            "has_label": bool(meta.has_label), "label_values": values, "label_values_source": values_src, "label_binary": binary,
            "label_grid_ok": grid_ok, "label_grid_source": grid_src, "label_rejected_code": rej_code.value if rej_code else None,
            "label_rejected_reason": rej_reason,
        }
        row.update({f"has_{ch}": ch in present for ch in channels})
        case_rows.append(row)
        for ci in meta.channel_info:
            if ci.source_format == "slicestack" and ci.sources:  # one source, the stack: single slices (an empty one) repeat across patients
                digest = hashlib.sha256("".join(sorted(x.sha256 for x in ci.sources)).encode()).hexdigest()
                src_rows.append({"case_id": case_id, "modality": ci.modality, "relpath": ci.sources[0].relpath, "sha256": digest})
                continue
            for s in ci.sources:
                src_rows.append({"case_id": case_id, "modality": ci.modality, "relpath": s.relpath, "sha256": s.sha256})
            if not ci.present:
                continue
            sx, sy, sz = (float(v) for v in ci.native_spacing)
            if meta.geometry.source == "unknown":  # unit spacing assumed, not measured: no spacing or field of view to check
                sx = sy = sz = math.nan
            nz, ny, nx = (int(v) for v in ci.native_shape_zyx)
            stats = [ci.intensity_mean, ci.intensity_std, ci.intensity_p01, ci.intensity_p99]
            mod_rows.append({
                "case_id": case_id, "modality": ci.modality, "source_format": ci.source_format,
                "spacing_x_mm": sx, "spacing_y_mm": sy, "spacing_z_mm": sz,
                "spacing_min_mm": min(sx, sy, sz), "spacing_max_mm": max(sx, sy, sz),
                "anisotropy": max(sx, sy, sz) / min(sx, sy, sz),
                "shape_z": nz, "shape_y": ny, "shape_x": nx, "matrix_min": min(nz, ny, nx), "matrix_max": max(nz, ny, nx),
                "fov_x_mm": nx * sx, "fov_y_mm": ny * sy, "fov_z_mm": nz * sz, "fov_max_mm": max(nx * sx, ny * sy, nz * sz),
                "orientation": ci.native_orientation, "geometry_source": meta.geometry.source,
                "intensity_mean": ci.intensity_mean, "intensity_std": ci.intensity_std,
                "intensity_p01": ci.intensity_p01, "intensity_p99": ci.intensity_p99,
                "intensity_stats_finite": bool(all(math.isfinite(float(v)) for v in stats)),
            })
        stack = any(ci.source_format == "slicestack" for ci in meta.channel_info)
        if meta.label_source is not None and not stack:  # a stack's label_source is one mask slice (an empty one repeats across patients)
            src_rows.append({"case_id": case_id, "modality": "MASK", "relpath": meta.label_source.relpath, "sha256": meta.label_source.sha256})

    mods = pd.DataFrame(mod_rows, columns=[c for c in MODALITY_COLUMNS if c != "row_key"])
    _add_cohort_ratios(mods)
    cases = pd.DataFrame(case_rows)
    if cases.empty:
        cases = pd.DataFrame(columns=["case_id", "meta_valid", "meta_error", "n_channels", "missing", "has_label", *LABEL_CASE_COLUMNS,
                                      *[f"has_{ch}" for ch in channels]])
    sources = pd.DataFrame(src_rows, columns=SOURCE_COLUMNS[1:]).drop_duplicates(["case_id", "sha256"])
    inputs = pd.DataFrame(
        {c: (cat[c] if c in cat else None) for c in INPUT_COLUMNS[1:]}, columns=INPUT_COLUMNS[1:]
    ) if len(cat) else pd.DataFrame(columns=INPUT_COLUMNS[1:])
    tables = {"modalities": mods, "cases": cases, "sources": sources, "inputs": inputs}
    for name, df in tables.items():
        df = df.reset_index(drop=True)
        df.insert(0, "row_key", np.arange(len(df), dtype=np.int64))
        tables[name] = df
    return tables


def _add_cohort_ratios(mods: Any) -> None:
    """Spacing and coverage of each series relative to its modality's median (in place)."""
    for col in ("median_spacing_max_mm", "median_spacing_min_mm", "slice_spacing_ratio", "inplane_spacing_ratio",
                "coverage_ratio_min", "coverage_ratio_max"):
        mods[col] = np.nan
    if mods.empty:
        return
    for _, grp in mods[mods["spacing_max_mm"].notna()].groupby("modality"):  # series of unknown geometry: no spacing to compare
        if len(grp) < CONSISTENCY_MIN_SERIES:
            continue
        idx = grp.index
        med_max = float(grp["spacing_max_mm"].median())
        med_min = float(grp["spacing_min_mm"].median())
        mods.loc[idx, "median_spacing_max_mm"] = med_max
        mods.loc[idx, "median_spacing_min_mm"] = med_min
        mods.loc[idx, "slice_spacing_ratio"] = grp["spacing_max_mm"] / med_max
        mods.loc[idx, "inplane_spacing_ratio"] = grp["spacing_min_mm"] / med_min
        fov = np.sort(grp[["fov_x_mm", "fov_y_mm", "fov_z_mm"]].to_numpy(dtype=float), axis=1)
        ratio = fov / np.median(fov, axis=0)[None, :]
        mods.loc[idx, "coverage_ratio_min"] = ratio.min(axis=1)
        mods.loc[idx, "coverage_ratio_max"] = ratio.max(axis=1)


# ------------------------------------------------------------------------------ running
@dataclass
class ExpectationsOutcome:
    """Result rows (one per expectation), report flags, the derived tables and the JSON path."""

    results: list[dict[str, Any]]
    flagged: list[dict[str, Any]]
    tables: dict[str, Any] = field(repr=False)
    path: Path | str | None = None
    """Where ``expectations.json`` went: a local path, or its URL on an object store."""

    @property
    def success(self) -> bool:
        return all(r["success"] for r in self.results)


def _quiet_context() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:  # quiet by default; an explicit user setting wins
        gx_logger.setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),  # no data docs
        analytics_enabled=False,
    )
    ctx = gx.get_context(project_config=config, mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx


def validate_tables(tables: dict[str, Any], specs: Sequence[SuiteSpec]) -> list[dict[str, Any]]:
    """Validate each suite against its table; one result row per expectation, in suite order."""
    ctx = _quiet_context()
    ds = ctx.data_sources.add_pandas("lesionflow_quality")
    batch_defs: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for spec in specs:
        df = tables[spec.table]
        if spec.table not in batch_defs:
            asset = ds.add_dataframe_asset(spec.table)
            batch_defs[spec.table] = asset.add_batch_definition_whole_dataframe(f"{spec.table}_all")
        batch = batch_defs[spec.table].get_batch(batch_parameters={"dataframe": df})
        index_cols = ["row_key", *[c for c in spec.index_columns if c in df.columns]]
        suite = ctx.suites.add(spec.suite)
        res = batch.validate(suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_cols})
        by_id = {r.expectation_config.meta.get("id"): r for r in res.results}
        for exp in spec.suite.expectations:
            r = by_id.get(exp.meta.get("id"))
            rows.append(_result_row(spec, exp, r, df))
    return rows


def _result_row(spec: SuiteSpec, exp: Any, r: Any, df: Any) -> dict[str, Any]:
    cfg = exp.configuration if hasattr(exp, "configuration") else exp
    kwargs = {k: v for k, v in dict(cfg.kwargs).items() if k not in ("batch_id",)}
    column = kwargs.get("column")
    row: dict[str, Any] = {
        "suite": spec.name, "table": spec.table, "id": exp.meta.get("id"), "expectation": cfg.type, "column": column,
        "kwargs": to_jsonable(kwargs), "success": False, "element_count": len(df), "unexpected_count": 0, "unexpected": [],
        "unexpected_cases": [], "observed_value": None, "flag": exp.meta.get("flag"), "explanation": exp.meta.get("explanation"),
        "error": None,
    }
    if r is None:
        row["error"] = "expectation was not evaluated"
        return row
    result = dict(r.result or {})
    info = r.exception_info or {}
    if isinstance(info, dict) and info.get("raised_exception"):
        row["error"] = str(info.get("exception_message"))[:500]
    row["success"] = bool(r.success)
    row["element_count"] = int(result.get("element_count", len(df)) or 0)
    row["unexpected_count"] = int(result.get("unexpected_count", 0) or 0)
    row["observed_value"] = to_jsonable(result.get("observed_value"))
    unexpected = []
    for item in result.get("unexpected_index_list") or []:
        item = dict(item)
        key = item.pop("row_key", None)
        value = item.pop(column, None) if column else None
        entry = {k: to_jsonable(v) for k, v in item.items()}
        entry["value"] = to_jsonable(value)
        if key is not None:
            entry["row_key"] = int(key)
        unexpected.append(entry)
    row["unexpected"] = unexpected
    row["unexpected_cases"] = sorted({u["case_id"] for u in unexpected if u.get("case_id")})
    return row


# ------------------------------------------------------------------------------ flags
def _fmt(v: Any, unit: str = "") -> str:
    try:
        return f"{float(v):.3g}{unit}"
    except (TypeError, ValueError):
        return str(v)


def _detail(result: dict[str, Any], u: dict[str, Any], tables: dict[str, Any]) -> str:
    """A one-line human explanation of one unexpected row."""
    df = tables.get(result["table"])
    rec = None
    if df is not None and u.get("row_key") is not None and len(df):
        hit = df[df["row_key"] == u["row_key"]]
        rec = hit.iloc[0].to_dict() if len(hit) else None
    mod = u.get("modality") or (rec or {}).get("modality") or ""
    rid = result["id"] or ""
    if rec is not None:
        if rid == "slice_spacing_consistent":
            return (f"{mod} largest spacing {_fmt(rec['spacing_max_mm'], ' mm')} = {_fmt(rec['slice_spacing_ratio'])}x the {mod} "
                    f"median {_fmt(rec['median_spacing_max_mm'], ' mm')}")
        if rid == "inplane_spacing_consistent":
            return (f"{mod} smallest spacing {_fmt(rec['spacing_min_mm'], ' mm')} = {_fmt(rec['inplane_spacing_ratio'])}x the {mod} "
                    f"median {_fmt(rec['median_spacing_min_mm'], ' mm')}")
        if rid.startswith("coverage"):
            return (f"{mod} field of view {_fmt(rec['fov_x_mm'])} x {_fmt(rec['fov_y_mm'])} x {_fmt(rec['fov_z_mm'], ' mm')} "
                    f"(ratio to median {_fmt(rec['coverage_ratio_min'])}-{_fmt(rec['coverage_ratio_max'])})")
        if rid.startswith("spacing_"):
            return f"{mod} native spacing {_fmt(rec['spacing_x_mm'])} x {_fmt(rec['spacing_y_mm'])} x {_fmt(rec['spacing_z_mm'], ' mm')}"
        if rid == "voxels_not_anisotropic":
            return (f"{mod} {_fmt(rec['spacing_x_mm'])} x {_fmt(rec['spacing_y_mm'])} x {_fmt(rec['spacing_z_mm'], ' mm')} voxels "
                    f"({_fmt(rec['anisotropy'])}x longer than wide)")
        if rid == "fov_plausible":
            return f"{mod} field of view {_fmt(rec['fov_x_mm'])} x {_fmt(rec['fov_y_mm'])} x {_fmt(rec['fov_z_mm'], ' mm')}"
        if rid.startswith("matrix"):
            return f"{mod} matrix (z,y,x) {rec['shape_z']} x {rec['shape_y']} x {rec['shape_x']}"
        if rid.startswith("has_"):
            return f"no {rid[4:]} series (channel stored as zeros / absent)"
        if rid == "label_on_grid":
            if rec.get("label_grid_source") == "rejected":
                return f"the ingest rejected the label: {rec.get('label_rejected_reason')}"
            return "reference label was not on the grid of any image of its session (recorded by the ingest)"
        if rid == "label_binary":
            if rec.get("label_values_source") == "rejected":
                return f"the ingest rejected the label: {rec.get('label_rejected_reason')}"
            return f"label values {{{rec.get('label_values')}}}"
        if rid == "sources_unique":
            others = df[(df["sha256"] == rec["sha256"]) & (df["case_id"] != rec["case_id"])]["case_id"].tolist()
            return f"{rec['modality']} source {rec['relpath']} (sha256 {str(rec['sha256'])[:12]}...) also used by {', '.join(sorted(set(others)))}"
        if rid in ("no_rejected_inputs", "reason_recorded"):
            return f"{rec.get('source_relpath')}: {rec.get('reason') or 'no reason recorded'}"
    value = u.get("value")
    return f"{mod + ': ' if mod else ''}{result.get('column')}={value}"


def flags_from_results(results: Sequence[dict[str, Any]], tables: dict[str, Any]) -> list[dict[str, Any]]:
    """``{case_id, what, detail}`` per failing (case, flag); table-level failures get ``case_id`` None."""
    merged: dict[tuple[Any, str], list[str]] = {}
    for r in results:
        if r["success"]:
            continue
        what = r.get("flag") or r["id"]
        if r.get("error"):
            merged.setdefault((None, f"check failed: {r['id']}"), []).append(r["error"])
            continue
        if not r["unexpected"]:
            merged.setdefault((None, what), []).append(f"{r['expectation']} observed {r.get('observed_value')}")
            continue
        for u in r["unexpected"]:
            if r["id"] == "no_rejected_inputs" and u.get("reason_code") in LABEL_REASON_CODES:
                continue  # named by the label checks (label off-grid / not binary)
            key = (u.get("case_id"), what)
            d = _detail(r, u, tables)
            if d not in merged.get(key, []):
                merged.setdefault(key, []).append(d)
    # a series with thick slices among thin ones is anisotropic by definition: name it once
    thick = {c for (c, w) in merged if w == "thick slices"}
    return [{"case_id": c, "what": w, "detail": "; ".join(d)} for (c, w), d in merged.items()
            if not (w == "anisotropic voxels" and c in thick)]


# ------------------------------------------------------------------------------ entry point
def run_expectations(
    store_root: str | Path,
    channels: Sequence[str] | None = None,
    tables: dict[str, Any] | None = None,
    save: bool = True,
    spacing_range_mm: dict[str, tuple[float, float]] | None = None,
) -> ExpectationsOutcome:
    """Derive the tables, run every suite, save ``<store>/quality/expectations.json`` (one PUT on an object store).

    ``channels``: the modalities every case should have, None for the store's
    (:func:`pipeline.store.resolve_channels`).
    """
    from pipeline.store import location, resolve_channels, write_json_atomic

    root = location(store_root)  # a local Path or the store's URL
    channels = resolve_channels(root, channels)
    tables = build_tables(root, channels) if tables is None else tables
    specs = build_suites(tuple(channels), spacing_range_mm)
    results = validate_tables(tables, specs)
    flagged = flags_from_results(results, tables)
    path = None
    if save:
        path = location(root, f"{QUALITY_DIR}/{EXPECTATIONS_FILE}")
        payload = {
            "generated_at": datetime.now(UTC).isoformat(),
            "channels": list(channels),
            "statistics": {
                "evaluated": len(results),
                "successful": sum(r["success"] for r in results),
                "unsuccessful": sum(not r["success"] for r in results),
            },
            "results": to_jsonable(results),
            "flagged": to_jsonable(flagged),
        }
        write_json_atomic(path, payload)
    return ExpectationsOutcome(results=results, flagged=flagged, tables=tables, path=path)
