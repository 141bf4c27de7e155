"""The evaluate flow on an ingested phantom cohort with a lesion-free subject: real Prefect flow
runs, a real model, the four evaluation tables and the evaluation page."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def lesion_free_store(tmp_path_factory):
    """3 phantom subjects at 3 mm (DICOM, MetaImage, BIDS), the BIDS one without lesions, ingested."""
    from pipeline.core.config import PipelineConfig, pseudonym_key
    from pipeline.ingest import run_ingest
    from pipeline.phantom import make_cohort

    out = tmp_path_factory.mktemp("evaluate-flow")
    cohort = make_cohort(out / "phantom", n_subjects=3, seed=7, spacing_mm=3.0, lesion_free=1)
    store = str(out / "store.zarr")
    summary = run_ingest(cohort.cohort_dir, store, PipelineConfig(), pseudonym_key())  # the session's key: evaluation opens the sealed paths with it
    assert summary.converted == 3
    return cohort, store


def test_case_auc_on_the_phantom_cohort_with_lesion_free_cases(lesion_free_store):
    """Lesion-free phantom subjects become cases with an empty label (has_lesion False); a
    prediction that is right about which case has lesions scores case AUC 1.0, whatever its Dice."""
    from pipeline.lesions.evaluation import evaluate_model
    from pipeline.store import list_cases, open_case, reference_label, write_case_array

    cohort, store = lesion_free_store
    for case_id in list_cases(store):
        label = np.asarray(reference_label(open_case(store, case_id))[...])
        pred = label.copy()  # lesion cases: the reference itself
        if not label.any():
            pred[10, 20, 20:22] = 1  # lesion-free case: a 2-voxel false positive (54 mm³)
        else:  # and a 2-voxel false positive far from any lesion, larger than on the lesion-free case
            far = ndimage.distance_transform_edt(label == 0) > 4
            z, y, x = np.argwhere(far[:, :, :-2] & far[:, :, 2:])[len(far) // 2]
            pred[z, y, x: x + 3] = 1
        write_case_array(store, case_id, "predictions/oracle/mask", pred.astype(np.uint8))
    ev = evaluate_model(store, "oracle", cohort.truth_cases_csv)
    assert (ev.cohort["n_cases"], ev.cohort["n_with_lesions"], ev.cohort["n_lesion_free"]) == (3, 2, 1)
    free = ev.cases[~ev.cases["has_lesion"]].iloc[0]
    assert free["truth_lesions"] == 0 and free["volume_ref_ml"] == 0.0 and free["msseg_pred_lesions"] == 1
    assert ev.cohort["case_auc"] == 1.0
    n_ref = int(ev.cases["msseg_ref_lesions"].sum())
    assert ev.cohort["msseg_sensitivity"] == 1.0 and ev.cohort["msseg_precision"] == pytest.approx(n_ref / (n_ref + 3))
    assert ev.cohort["isles_sensitivity"] == 1.0 and ev.cohort["dice_mean"] < 1.0
    truth = pd.read_csv(cohort.truth_cases_csv)
    assert sorted(ev.cases["truth_lesions"]) == sorted(truth["lesion_count"])
    assert (ev.cases["msseg_ref_lesions"] <= ev.cases["truth_lesions"]).all()  # 6-connected, > 3 mm³: never more than placed


def test_evaluate_flow_writes_tables_and_page(prefect_harness, lesion_free_store, tiny_model):
    from flows.evaluate import evaluate
    from pipeline.store import read_table

    cohort, store = lesion_free_store
    out = evaluate(store, str(tiny_model), truth_cases=str(cohort.truth_cases_csv), case_score="max_probability")
    mv = out["model_version"]
    assert (out["cases"], out["scored"]) == (3, 3)
    c = out["cohort"]
    assert c["case_score_kind"] == "max_probability" and c["n_lesion_free"] == 1 and np.isfinite(c["case_auc"])
    assert all("truth_volume_ml" in r for r in out["case_rows"])
    cases = read_table(store, "evaluation_cases")
    assert len(cases) == 3 and set(cases["model_version"]) == {mv} and cases["has_lesion"].sum() == 2
    assert ((cases["case_score"] >= 0) & (cases["case_score"] <= 1)).all()
    slices = read_table(store, "evaluation_slices")
    assert len(slices) == sum(int(n) for n in slices.groupby("case_id")["z"].max() + 1)
    lesions = read_table(store, "evaluation_lesions")
    assert set(lesions["rule"]) <= {"msseg", "isles"} and (lesions["case_id"].isin(cases["case_id"])).all()
    assert len(read_table(store, "evaluation_cohort")) == 1
    html = open(out["page"]["html"], encoding="utf-8").read()
    for section in ("summary", "rules", "volumes", "cases", "thumbnails"):
        assert f'<section id="{section}">' in html
    assert 'src="http' not in html and "<script" not in html  # offline, self-contained
    assert html.count("data:image/png;base64,") == 1 + 3  # the volume plot and a thumbnail per case
    assert open(out["page"]["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    # again, by predicted volume: nothing left to score, this model's rows replaced (not added)
    again = evaluate(store, str(tiny_model), page=False)
    assert (again["scored"], again["cohort"]["case_score_kind"]) == (0, "predicted_volume_ml")
    assert len(read_table(store, "evaluation_cases")) == 3 and len(read_table(store, "evaluation_cohort")) == 1
