"""Visits in time, without dates: a subject's sessions ordered, and the change masks of visit pairs.

Order (:func:`order_visits`), per subject, over the sessions one ingest discovers:

* every session has a date (DICOM StudyDate; BIDS ``*_scans.tsv`` ``acq_time``): by date, and
  ``days_since_first`` = days since the subject's earliest session (``order_source`` the date's source);
* every session has a day in the configuration (``PipelineConfig.visit_days``, by session label):
  the same with those days (``config``);
* otherwise by the sessions' labels in natural order (BIDS ``ses-`` labels, file-name prefixes
  such as ``study1``/``study2``: ``ses-2`` before ``ses-10``), days unknown (``label``).

Only the order and the day counts are stored (``tables/visits``, :class:`~storage_schemas.models.VisitRow`);
dates and labels stay in memory. A session's supplied transform into the subject's common space
(``*_FLAIR_to_common_space.txt``) is stored with it as ITK parameters (numbers).

Pair labels (:func:`record_pair_labels`): a lesion-change mask beside the two sessions of a
longitudinal folder (``gt.nii.gz`` beside ``study1_*`` and ``study2_*``) is stored as the pair's
expert mask, ``pairs/<pair_id>/expert`` on its own grid (the common space), baseline and
follow-up by the visit order; it is catalogued like every input (converted, or rejected with
the reason).

Limitation: the order is computed among the sessions one run discovers; DICOM studies that
discovery finds unchanged keep the row of their earlier run (``--force`` orders them anew).

Example:
    >>> import datetime as dt
    >>> from pipeline.ingest.discover import SessionPlan
    >>> a, b = SessionPlan("sub-x", "ses-b", ""), SessionPlan("sub-x", "ses-a", "")
    >>> a.visit_date, b.visit_date = dt.date(2020, 3, 1), dt.date(2020, 1, 31)
    >>> a.visit_date_source = b.visit_date_source = "study_date"
    >>> order_visits([a, b])
    {'sub-x_ses-a': (0, 0, 'study_date'), 'sub-x_ses-b': (1, 30, 'study_date')}
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.ingest.context import IngestContext
from pipeline.ingest.discover import Discovery, PairLabel, SessionPlan, file_sha256
from pipeline.ingest.resample import read_transform
from pipeline.ingest.session import SessionResult, grid_fields
from pipeline.io.readers import read_volume
from pipeline.io.readers.errors import ReaderError
from pipeline.store import EXPERT, append_catalog, append_table, geometry_of, pair_id_of, read_pair_meta, write_pair_mask, write_pair_meta
from storage_schemas.models import CatalogRow, PairMeta, ReasonCode, SourceFile, VisitRow

log = logging.getLogger("lesionflow.ingest")

VISITS_TABLE = "visits"

__all__ = ["VISITS_TABLE", "committed_cases", "natural_key", "order_visits", "record_longitudinal", "record_pair_labels", "transform_json", "visit_rows"]


def natural_key(label: str | None) -> tuple[Any, ...]:
    """Sort key of a session label, numbers by value (``study2`` < ``study10``); None sorts last."""
    if label is None:
        return (1,)
    return (0, *((0, int(t)) if t.isdigit() else (1, t.lower()) for t in re.split(r"(\d+)", label) if t))


def order_visits(plans: Sequence[SessionPlan], visit_days: Any = None) -> dict[str, tuple[int, int | None, str]]:
    """Per case: ``(visit_index, days_since_first, order_source)`` (see the module docstring).

    ``visit_days`` (``PipelineConfig.visit_days``): a day number per session label, for sessions
    without a date of their own (order source ``config``)."""
    import datetime as dt

    visit_days = dict(visit_days or ())  # a mapping, or PipelineConfig's sorted (label, day) pairs
    by_subject: dict[str, list[SessionPlan]] = defaultdict(list)
    for p in plans:
        if p.visit_date is None and visit_days and p.visit_label in visit_days:
            p.visit_date = dt.date(2000, 1, 1) + dt.timedelta(days=int(visit_days[p.visit_label]))  # only differences are kept
            p.visit_date_source = "config"
        by_subject[p.subject].append(p)
    out: dict[str, tuple[int, int | None, str]] = {}
    for group in by_subject.values():
        if all(p.visit_date is not None for p in group):
            group = sorted(group, key=lambda p: (p.visit_date, natural_key(p.visit_label), p.case_id))
            first = group[0].visit_date
            for i, p in enumerate(group):
                out[p.case_id] = (i, int((p.visit_date - first).days), p.visit_date_source or "study_date")
        else:
            group = sorted(group, key=lambda p: (natural_key(p.visit_label), p.case_id))
            for i, p in enumerate(group):
                out[p.case_id] = (i, None, "label")
    return dict(sorted(out.items()))


def transform_json(tx: Any) -> str:
    """A SimpleITK transform as JSON: ``{"type", "parameters", "fixed_parameters"}`` (affine-like
    transforms: 12 parameters, the row-major matrix then the translation, and the centre)."""
    inner = tx
    try:  # ReadTransform gives a composite of one; keep its only member
        if tx.GetName() == "CompositeTransform" and tx.GetNumberOfTransforms() == 1:
            inner = tx.GetNthTransform(0)
    except AttributeError:
        pass
    return json.dumps({"type": inner.GetName(), "parameters": [float(v) for v in inner.GetParameters()],
                       "fixed_parameters": [float(v) for v in inner.GetFixedParameters()]})


def visit_rows(plans: Sequence[SessionPlan], ctx: IngestContext, case_ids: set[str]) -> list[VisitRow]:
    """The ``visits`` rows of the sessions in ``case_ids`` (committed), ordered among ``plans``."""
    order = order_visits(plans, ctx.cfg.visit_days)
    rows = []
    for p in plans:
        if p.case_id not in case_ids:
            continue
        index, days, source = order[p.case_id]
        tx_json = tx_sha = None
        if p.common_transform is not None:
            try:
                tx_json = transform_json(read_transform(p.common_transform))
                tx_sha = file_sha256(p.common_transform)
            except (ValueError, OSError) as exc:
                log.warning("%s: common-space transform %s not used: %s", p.case_id, p.sealed_common_transform, p.scrub(str(exc)))
        rows.append(VisitRow(case_id=p.case_id, subject=p.subject, session=p.session, visit_index=index, days_since_first=days,
                             order_source=source, common_transform=tx_json, common_transform_sha256=tx_sha, run_id=ctx.run_id))
    return rows


def _pair_row(ctx: IngestContext, label: PairLabel, status: str, **fields: Any) -> CatalogRow:
    return ctx.row(None, status, label.sealed, modality="MASK", **fields).model_copy(update={"subject": label.subject})


def record_pair_labels(labels: Sequence[PairLabel], plans: Sequence[SessionPlan], ctx: IngestContext, case_ids: set[str]) -> list[CatalogRow]:
    """Store each change mask as its pair's expert mask (see the module docstring); returns the catalog rows."""
    order = order_visits(plans, ctx.cfg.visit_days)
    rows: list[CatalogRow] = []
    for label in labels:
        cases = [f"{s}_{ses}" for s, ses in label.sessions]
        if not all(c in case_ids for c in cases):
            rows.append(_pair_row(ctx, label, "rejected", source_format="nifti", reason_code=ReasonCode.UNASSIGNABLE,
                                  reason="lesion-change mask of a visit pair whose two sessions were not both converted"))
            continue
        baseline, followup = sorted(cases, key=lambda c: order[c][0])
        try:
            mask = read_volume(label.path, limits=ctx.cfg.read_limits)
        except ReaderError as err:
            rows.append(_pair_row(ctx, label, "rejected", source_format="nifti", reason=f"{label.sealed}: {err.reason}", reason_code=err.code))
            continue
        fields = {"source_format": "nifti", **grid_fields(mask)}
        values = np.unique(mask.array)
        if mask.is_4d or not set(values.tolist()) <= {0, 1}:
            rows.append(_pair_row(ctx, label, "rejected", reason_code=ReasonCode.LABEL_NOT_BINARY, **fields,
                                  reason=f"lesion-change mask values {values[:10].tolist()} outside the allowed set {{0, 1}}"))
            continue
        digest = file_sha256(label.path)
        pid = pair_id_of(label.subject, baseline.split("_", 1)[1], followup.split("_", 1)[1])
        d_b, d_f = order[baseline][1], order[followup][1]
        old = read_pair_meta(ctx.store_root, pid)
        meta = PairMeta(pair_id=pid, subject=label.subject, baseline_case=baseline, followup_case=followup,
                        interval_days=None if d_b is None or d_f is None else d_f - d_b, geometry=geometry_of(mask), grid="expert",
                        expert_source=SourceFile(relpath=label.sealed, sha256=digest, size_bytes=label.path.stat().st_size),
                        registration=old.registration if old is not None and old.expert_source is not None
                        and old.expert_source.sha256 == digest else None)
        write_pair_meta(ctx.store_root, meta)
        write_pair_mask(ctx.store_root, pid, EXPERT, (mask.array > 0).astype(np.uint8))
        rows.append(_pair_row(ctx, label, "converted", source_sha256=digest, label_on_grid=True, **fields))
    return rows


def committed_cases(results: Sequence[SessionResult], unchanged: Sequence[str]) -> set[str]:
    """Case ids a run leaves committed: converted or up to date."""
    return {r.case_id for r in results if r.status in ("converted", "skipped")} | set(unchanged)


def record_longitudinal(disc: Discovery, ctx: IngestContext, committed: set[str]) -> dict[str, Any]:
    """After the sessions of a run: the ``visits`` rows of its committed sessions (``committed``,
    :func:`committed_cases`) and the pairs' expert masks, with their catalog rows. Returns
    ``{"visits": n, "pair_labels": n, "rejected": [{"path", "reason", "code"}]}`` (the change
    masks that could not be stored, for the run summary)."""
    rows = visit_rows(disc.sessions, ctx, committed)
    if rows:
        import pandas as pd

        append_table(ctx.store_root, VISITS_TABLE, pd.DataFrame([r.model_dump(mode="json") for r in rows]), keys=["case_id"])
    catalog = record_pair_labels(disc.pair_labels, disc.sessions, ctx, committed)
    if catalog:
        append_catalog(ctx.store_root, catalog)
    rejected = [{"path": r.source_relpath, "reason": r.reason or "", "code": r.reason_code or ""} for r in catalog if r.status == "rejected"]
    return {"visits": len(rows), "pair_labels": sum(r.status == "converted" for r in catalog), "rejected": rejected}
