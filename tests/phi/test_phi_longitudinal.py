"""No identity in what lesion change writes: a longitudinal folder named after the fake patient
(its subject folder, NIfTI ``descrip``) through ingest, change by both methods' library path and
the NIfTI export; store, export folder and returned JSON are searched."""

from __future__ import annotations

import json

import nibabel as nib
import pytest

from pipeline.core.config import PipelineConfig, pseudonym_key
from tests import longitudinal_factory as lf
from tests.phi.cohort import BIRTH, GIVEN, MRN, SURNAME, find_phi, scan_tree, squash

pytestmark = pytest.mark.slow


def test_no_identity_in_change_outputs(tmp_path):
    from pipeline.export.change import export_change
    from pipeline.ingest import run_ingest
    from pipeline.longitudinal import run_change

    src = tmp_path / "exports"
    lf.write_source(src, transforms=True, subject=f"{SURNAME.upper()}^{GIVEN.upper()}_{MRN}_{BIRTH}")
    for path in src.rglob("*.nii.gz"):
        img = nib.load(path)
        img.header["descrip"] = f"{SURNAME}^{GIVEN} {MRN}".encode()
        nib.save(img, path)
    needles = [squash(n) for n in (SURNAME, GIVEN, "88231977", BIRTH, "14031958")]
    assert find_phi(str(next(src.rglob("gt.nii.gz"))), needles)  # the search is not vacuous
    store = tmp_path / "s.zarr"
    summary = run_ingest(src, store, PipelineConfig(), pseudonym_key())
    out = run_change(str(store), method="subtraction")
    files = export_change(store, tmp_path / "out", "subtraction")
    assert summary.converted == 2 and len(out["pairs"]) == 1 and len(files) == 1
    assert scan_tree(store, needles) == []
    assert scan_tree(tmp_path / "out", needles) == []
    assert find_phi(json.dumps(out, default=str) + json.dumps(summary.as_dict()), needles) == []
