"""No patient-identifying data in the store, catalog, tables, logs or report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests import dicom_factory as fac
from tests.session_factory import blob_image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PHI = {
    "PatientName": "Zyxwort^Quintessa^Marguerite",
    "PatientID": "MRN-88231977",
    "PatientBirthDate": "19580314",
    "AccessionNumber": "ACC7741209",
}
NEEDLES = ["Zyxwort", "Quintessa", "Marguerite", "MRN-88231977", "88231977", "19580314", "ACC7741209", "7741209"]


def write_phi_study(folder: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.4242"
    for number, desc, seed in ((3, "AX FLAIR", 1), (4, "SAG T1 MPRAGE", 2), (5, "AX T2 TSE", 3)):
        arr = blob_image((12, 40, 40), (1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0), seed=seed).array.astype(np.int16)
        fac.write_series(folder / f"s{number}", arr, spacing=(1.0, 1.0, 3.0), origin=(0.5, 0.5, 0.0), series_number=number,
                         description=desc, study_uid=study, extra=dict(PHI))


def scan_for_phi(root: Path) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        texts = [data.decode("latin-1")]
        if path.suffix == ".parquet":
            texts.append(pd.read_parquet(path).astype(str).to_csv())
        for needle in NEEDLES:
            if any(needle.lower() in t.lower() for t in texts):
                hits.append(f"{path.relative_to(root)}: {needle}")
    return hits


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")


def test_no_phi_anywhere(prefect_harness, tmp_path, capfd):
    from flows.ingest import ingest
    from pipeline.lesions.tables import write_lesion_tables
    from pipeline.store import list_cases, open_case, write_case_array

    src = tmp_path / "incoming"
    write_phi_study(src / "study_a")
    store = tmp_path / "store.zarr"
    collect = Collect()
    loggers = [logging.getLogger(n) for n in ("prefect", "lesionflow", "distributed")]
    for lg in loggers:
        lg.addHandler(collect)
    try:
        summary = ingest(str(src), str(store), n_workers=1, report=True)
    finally:
        for lg in loggers:
            lg.removeHandler(collect)
    assert summary["converted"] == 1
    assert summary["report"] and Path(summary["report"]["html"]).exists()

    # a "prediction" and the lesion tables, through the same code as scoring
    (case_id,) = list_cases(store)
    label = (open_case(store, case_id)["image"][0] > 1.0).astype(np.uint8)
    write_case_array(store, case_id, "predictions/model-x/mask", label)
    write_lesion_tables(store, "model-x")

    captured = capfd.readouterr()
    logs = "\n".join(collect.lines) + captured.out + captured.err
    assert "ingest:" in logs and "scan:" in logs  # the flow's and its tasks' log lines were captured
    for needle in NEEDLES:
        assert needle.lower() not in logs.lower(), f"{needle} in the logs"
        assert needle.lower() not in repr(summary).lower(), f"{needle} in the summary"
    hits = scan_for_phi(store)
    assert hits == [], hits
    # the source itself does carry it (the test would be vacuous otherwise)
    assert scan_for_phi(src)
