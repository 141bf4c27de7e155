"""Lesion tables (pipeline/lesions/tables.py): keyed by (model_version, case_id), one part per
scoring run; two scoring runs of different models on one store at once keep every row of both."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from pipeline import store
from pipeline.lesions.tables import case_lesion_rows, write_lesion_tables
from tests.conftest import REPO
from tests.store_factory import make_store

SHAPE = (24, 32, 32)


def test_rescoring_replaces_the_rows_of_the_cases_it_scored(tmp_path):
    root = tmp_path / "s.zarr"
    cases = make_store(root, n_cases=2, shape_zyx=SHAPE, seed=0)
    label = {c: np.asarray(store.reference_label(store.open_case(root, c))[:]) for c in cases}
    for c in cases:
        store.write_case_array(root, c, "predictions/m1/mask", label[c])
    first = write_lesion_tables(root, "m1")
    assert sorted(first["case_volumes"]["case_id"]) == cases
    n_lesions = {c: int((first["lesions"]["case_id"] == c).sum()) for c in cases}
    assert min(n_lesions.values()) > 0
    # the first case re-scored with an empty mask: its lesion rows go, the other case's stay
    store.write_case_array(root, cases[0], "predictions/m1/mask", np.zeros_like(label[cases[0]]))
    write_lesion_tables(root, "m1", case_ids=[cases[0]])
    volumes, lesions = store.read_table(root, "case_volumes"), store.read_table(root, "lesions")
    assert volumes.set_index("case_id")["lesion_count"].to_dict() == {cases[0]: 0, cases[1]: n_lesions[cases[1]]}
    assert lesions["case_id"].tolist() == [cases[1]] * n_lesions[cases[1]]
    assert lesions["lesion_id"].tolist() == list(range(1, n_lesions[cases[1]] + 1))


# Each run scores the store with its model, then waits at its table write until the other run is
# there too, so the two table writes happen at the same moment (a read-modify-write loses rows).
SCORING_RUN = textwrap.dedent("""
    import os, sys, time
    from pipeline.lesions import tables
    from training.infer import score_cases

    store, model, rendezvous, me = sys.argv[1:5]
    score_cases(store, model, device="cpu")
    write_part = tables.append_table
    held = []

    def at_the_same_moment(*args, **kwargs):
        if not held:
            held.append(1)
            open(os.path.join(rendezvous, me), "w").close()
            deadline = time.time() + 120
            while len(os.listdir(rendezvous)) < 2 and time.time() < deadline:
                time.sleep(0.005)
        return write_part(*args, **kwargs)

    tables.append_table = at_the_same_moment
    tables.write_lesion_tables(store, model)
""")


@pytest.mark.slow
@pytest.mark.integration
def test_two_scoring_runs_of_different_models_at_once_keep_every_row(tmp_path):
    import torch

    from training.loop import train

    root = tmp_path / "s.zarr"
    cases = make_store(root, n_cases=3, shape_zyx=SHAPE, seed=0)
    versions = []
    threads = torch.get_num_threads()
    try:
        for seed in (0, 1):  # two tiny models (two optimiser steps each): different weights, different versions
            result = train(root, case_ids=cases[:2], val_case_ids=cases[2:], patch_zyx=(16, 16, 16), batch_size=1, iterations=2,
                           seed=seed, num_threads=1)
            versions.append(result.model_version)
    finally:
        torch.set_num_threads(threads)
    assert versions[0] != versions[1]

    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "LESIONFLOW_TORCH_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-c", SCORING_RUN, str(root), v, str(rendezvous), f"run{i}"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i, v in enumerate(versions)]
    outs = []
    for run in runs:
        try:
            outs.append(run.communicate(timeout=240))
        except subprocess.TimeoutExpired:
            for r in runs:
                r.kill()
            raise
    for run, (_, err) in zip(runs, outs):
        assert run.returncode == 0, err[-3000:]
    assert sorted(os.listdir(rendezvous)) == ["run0", "run1"]  # both were held until the other came

    # every row of both runs: one per (model, case) in case_volumes, every lesion of each in lesions
    expected_cases, expected_lesions = set(), set()
    for v in versions:
        for c in cases:
            case_row, lesion_rows = case_lesion_rows(root, c, v)
            expected_cases.add((v, c, case_row["lesion_count"]))
            expected_lesions |= {(v, c, r["lesion_id"], r["voxels"]) for r in lesion_rows}
    volumes, lesions = store.read_table(root, "case_volumes"), store.read_table(root, "lesions")
    assert set(zip(volumes["model_version"], volumes["case_id"], volumes["lesion_count"])) == expected_cases
    assert len(volumes) == len(versions) * len(cases)
    assert set(zip(lesions["model_version"], lesions["case_id"], lesions["lesion_id"], lesions["voxels"])) == expected_lesions
    assert len(lesions) == len(expected_lesions)
    # and the exports for people hold them too
    csv = pd.read_csv(io.BytesIO(store.read_bytes(root, "tables/lesions.csv")))
    assert set(zip(csv["model_version"], csv["case_id"], csv["lesion_id"], csv["voxels"])) == expected_lesions
    csv = pd.read_csv(io.BytesIO(store.read_bytes(root, "tables/case_volumes.csv")))
    assert len(csv) == len(volumes)
    assert [p.name for p in (root / "tables").rglob("*") if ".tmp-" in p.name] == []
