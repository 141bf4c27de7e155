"""Compare predictions with ground truth: Dice against the stored reference label and lesion
volume against a truth table (e.g. the phantom's ``truth/truth_cases.csv``).

The store and the truth table may be local paths or fsspec URLs (``s3://...``); everything is
read through :mod:`pipeline.store`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pipeline.lesions.tables import mask_of
from pipeline.lesions.components import dice
from pipeline.store import list_cases, location, read_bytes, read_case_meta, read_table


def read_truth(truth_cases_csv: str | Path) -> "Any":
    """The truth table (CSV with ``session_dir``, ``total_volume_ml``, ``lesion_count``) from a path or URL."""
    import pandas as pd

    blob = read_bytes(truth_cases_csv)
    if blob is None:
        raise FileNotFoundError(f"truth table {location(truth_cases_csv)} not found; give the truth_cases.csv written "
                                "with the phantom cohort (truth/truth_cases.csv), or no truth table")
    return pd.read_csv(io.BytesIO(blob))


def evaluate(store_root: str | Path, model_version: str, truth_cases_csv: str | Path | None = None, key: bytes | None = None) -> "Any":
    """One row per scored case: Dice vs the stored label, predicted vs truth volume (mL).

    Truth rows are matched to cases through lineage: a truth row's ``session_dir`` (relative to
    the ingested source folder) is the folder that holds the case's source files. The store keeps
    those paths sealed: with a truth table they are opened with ``key`` (default: the
    pseudonymisation key of the environment, :func:`pipeline.core.config.pseudonym_key`).
    """
    import pandas as pd

    truth = read_truth(truth_cases_csv) if truth_cases_csv else None
    if truth is not None:
        from pipeline.core.config import pseudonym_key
        from pipeline.core.lineage import lineage

        lin = lineage(key or pseudonym_key())
    rows = []
    volumes = read_table(store_root, "case_volumes")
    if volumes is None:
        volumes = pd.DataFrame(columns=["case_id", "model_version", "total_volume_ml", "lesion_count"])
    volumes = volumes[volumes["model_version"] == model_version].set_index("case_id")
    for case_id in list_cases(store_root):
        meta = read_case_meta(store_root, case_id)
        pred = mask_of(store_root, case_id, model_version)
        if pred is None:
            continue
        label = mask_of(store_root, case_id, None)
        row: dict[str, Any] = {"case_id": case_id}
        if case_id in volumes.index:
            row["pred_volume_ml"] = float(volumes.loc[case_id, "total_volume_ml"])
            row["pred_lesions"] = int(volumes.loc[case_id, "lesion_count"])
        row["dice"] = round(dice(pred, label), 4) if label is not None else None
        if truth is not None:
            sources = [lin.reveal(s.relpath) for ch in meta.channel_info for s in ch.sources]
            match = truth[[any(s.startswith(str(d).rstrip("/") + "/") for s in sources) for d in truth["session_dir"]]]
            if len(match) == 1:
                t = match.iloc[0]
                row["truth_volume_ml"] = float(t["total_volume_ml"])
                row["truth_lesions"] = int(t["lesion_count"])
                if "pred_volume_ml" in row and row["truth_volume_ml"] > 0:
                    row["volume_error_pct"] = round(100 * (row["pred_volume_ml"] - row["truth_volume_ml"]) / row["truth_volume_ml"], 1)
        rows.append(row)
    return pd.DataFrame(rows)
