"""training.infer: sliding-window masks of stored cases, written back into the store."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import zarr

from tests.training.conftest import PATCH, SHAPE
from training.checkpoint import load_model
from training.infer import (
    EVENTS,
    PREFETCH_ENV,
    default_prefetch,
    has_prediction,
    mask_path,
    predict_case,
    score_cases,
)


def test_predict_case_mask(trained, store):
    result, _ = trained
    model, info = load_model(result.checkpoint_path, device="cpu")
    mask = predict_case(model, info, store["root"], store["labelled"][2])
    assert mask.shape == SHAPE and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    mask_unlabelled = predict_case(model, info, store["root"], store["unlabelled"], roi_zyx=(16, 16, 16), overlap=0.5)
    assert mask_unlabelled.shape == SHAPE


def test_score_cases_writes_and_skips(trained, store):
    result, _ = trained
    root, version = store["root"], result.model_version
    ids = [store["labelled"][2], store["unlabelled"], store["two_channel"]]
    events = []
    first = score_cases(root, version, case_ids=ids, progress=events.append)
    assert [r["status"] for r in first] == ["scored", "scored", "skipped"]
    assert "T2" in first[2]["reason"] and first[2]["mask_path"] is None
    assert [e["index"] for e in events] == [1, 2, 3]
    for row in first[:2]:
        assert row["mask_path"] == mask_path(row["case_id"], version)
        assert row["mask_path"] == f"cases/{row['case_id']}/labels/prediction-{version}/0"  # an NGFF label of the case
        arr = zarr.open_array(str(root / row["mask_path"]), mode="r")
        mask = arr[...]
        assert mask.shape == SHAPE and mask.dtype == np.uint8
        attrs = arr.attrs["lesionflow_prediction"]
        assert attrs["model_version"] == version and attrs["overlap"] == 0.25 and attrs["roi_zyx"] == list(PATCH)
        assert attrs["lesion_voxels"] == int(mask.sum()) == row["lesion_voxels"]
    second = score_cases(root, version, case_ids=ids[:2])
    assert [r["status"] for r in second] == ["exists", "exists"]
    assert [r["mask_path"] for r in second] == [r["mask_path"] for r in first[:2]]
    third = score_cases(root, result.checkpoint_path / "model.pt", case_ids=ids[:1], overwrite=True)
    assert third[0]["status"] == "scored"
    assert not list((root / ".staging").iterdir())


# --- the prefetching reader: reading, inference and writing overlapped (score_cases(prefetch=True)) ---


def _copy_store(store, tmp_path, name):
    import shutil

    root = tmp_path / name
    shutil.copytree(store["root"], root)
    return root


def _stored(root, case_id, version, created=False):
    """A stored mask's bytes and its provenance without the time it was written (``created``: that time)."""
    arr = zarr.open_array(str(root / mask_path(case_id, version)), mode="r")
    if created:
        return arr.attrs["lesionflow_prediction"]["created_at"]
    attrs = {k: v for k, v in arr.attrs["lesionflow_prediction"].items() if k != "created_at"}
    return arr[...].tobytes(), str(arr.dtype), arr.shape, attrs


def _timeless(rows, root=None):
    """Rows without times (and with the store's location as ROOT in reasons: the two runs write two copies)."""
    def plain(v):
        return v.replace(str(root), "ROOT") if root is not None and isinstance(v, str) else v

    return [{k: plain(v) for k, v in r.items() if k != "seconds" and not k.endswith("_at")} for r in rows]


def test_prefetch_gives_the_sequential_outputs(trained, store, tmp_path):
    """Both ways over the same cases (a case lacking a channel and an unknown case among them): the
    same rows in the same order, the same stored masks byte for byte, the same lesion table rows."""
    from pipeline.lesions.tables import lesion_rows

    result, _ = trained
    model = result.checkpoint_path
    ids = [store["labelled"][0], store["two_channel"], store["labelled"][1], "sub-nobody_ses-01", store["unlabelled"], store["labelled"][2]]
    out = {}
    for prefetch in (False, True):
        root = _copy_store(store, tmp_path, f"prefetch-{prefetch}")
        progress = []
        rows = score_cases(root, model, case_ids=ids, overwrite=True, device="cpu", prefetch=prefetch, progress=progress.append)
        assert [p["index"] for p in progress] == list(range(1, len(ids) + 1))
        assert [p["case_id"] for p in progress] == ids
        scored = [r["case_id"] for r in rows if r["status"] == "scored"]
        out[prefetch] = {"rows": _timeless(rows, root), "masks": [_stored(root, c, result.model_version) for c in scored],
                         "tables": [_timeless(t) for t in lesion_rows(root, result.model_version, scored)]}
    assert [r["status"] for r in out[True]["rows"]] == ["scored", "skipped", "scored", "skipped", "scored", "scored"]
    assert out[True] == out[False]


class _Recorder:
    """The events hook: records ``(what, case_id)`` in order; at the end of case n's inference it waits
    (up to 30 s, then the test fails) until case n+1's read and case n-1's write have started, which
    only a run that overlaps them can give."""

    def __init__(self, ids, wait=True):
        import threading

        self.ids, self.wait, self.log, self.lock = ids, wait, [], threading.Lock()
        self.started = {(what, c): threading.Event() for what in ("read_start", "write_start") for c in ids}

    def __call__(self, what, case_id):
        with self.lock:
            self.log.append((what, case_id))
        if (what, case_id) in self.started:
            self.started[(what, case_id)].set()
        if what == "infer_end" and self.wait:
            n = self.ids.index(case_id)
            if n + 1 < len(self.ids):
                assert self.started[("read_start", self.ids[n + 1])].wait(30), f"case {n + 1} was not being read during inference of {n}"
            if n >= 1:
                assert self.started[("write_start", self.ids[n - 1])].wait(30), f"case {n - 1} was not being written during inference of {n}"

    def at(self, what, case_id):
        return self.log.index((what, case_id))

    def most_in_flight(self):
        """The most cases between their read's start and their write's end at any one time."""
        live, most = set(), 0
        for what, case_id in self.log:
            if what == "read_start":
                live.add(case_id)
            elif what == "write_end":
                live.discard(case_id)
            most = max(most, len(live))
        return most


def test_prefetch_overlaps_reading_inference_and_writing(trained, store, tmp_path):
    result, _ = trained
    root = _copy_store(store, tmp_path, "overlap")
    ids = [store["labelled"][0], store["labelled"][1], store["labelled"][2], store["unlabelled"]]
    hook = _Recorder(ids)
    rows = score_cases(root, result.checkpoint_path, case_ids=ids, overwrite=True, device="cpu", prefetch=True, events=hook)
    assert [r["status"] for r in rows] == ["scored"] * 4
    assert {what for what, _ in hook.log} == set(EVENTS)
    for n in range(len(ids) - 1):
        assert hook.at("read_start", ids[n + 1]) < hook.at("infer_end", ids[n])  # case n+1 read while case n is inferred
        assert hook.at("write_start", ids[n]) < hook.at("infer_end", ids[n + 1])  # case n written while case n+1 is inferred
    assert hook.most_in_flight() == 3  # the bound: one read ahead, one inferred, one being written

    sequential = _Recorder(ids, wait=False)
    score_cases(root, result.checkpoint_path, case_ids=ids, overwrite=True, device="cpu", prefetch=False, events=sequential)
    assert sequential.most_in_flight() == 1
    assert [what for what, _ in sequential.log] == list(EVENTS) * len(ids)


def test_prefetch_a_case_that_cannot_be_written_is_skipped(trained, store, tmp_path):
    """A case removed while it is inferred (real store, real write): its row says why, the others are
    scored, both ways alike."""
    import shutil

    result, _ = trained
    ids = [store["labelled"][0], store["labelled"][1], store["labelled"][2]]
    for prefetch in (False, True):
        root = _copy_store(store, tmp_path, f"gone-{prefetch}")

        def remove_during_inference(what, case_id, root=root):
            if what == "infer_start" and case_id == ids[1]:
                shutil.rmtree(root / "cases" / case_id)

        rows = score_cases(root, result.checkpoint_path, case_ids=ids, overwrite=True, device="cpu", prefetch=prefetch,
                           events=remove_during_inference)
        assert [r["status"] for r in rows] == ["scored", "skipped", "scored"], prefetch
        assert ids[1] in rows[1]["reason"] and "not in store" in rows[1]["reason"] and rows[1]["mask_path"] is None
        assert (root / mask_path(ids[2], result.model_version)).exists()


@pytest.mark.parametrize("prefetch", [False, True])
def test_an_error_in_inference_stops_the_run_and_its_threads(trained, store, tmp_path, prefetch):
    """An error in the calling thread (here from the hook, at case 2's inference) is raised; case 1 is
    written, cases 2 and 3 are not, and no reader or writer thread is left, both ways alike."""
    import threading

    result, _ = trained
    root = _copy_store(store, tmp_path, "boom")
    ids = [store["labelled"][0], store["labelled"][1], store["labelled"][2]]

    def boom(what, case_id):
        if what == "infer_start" and case_id == ids[1]:
            raise RuntimeError("boom")

    version = result.model_version
    before = datetime.now(UTC).isoformat()
    with pytest.raises(RuntimeError, match="boom"):
        score_cases(root, result.checkpoint_path, case_ids=ids, overwrite=True, device="cpu", prefetch=prefetch, events=boom)
    assert [t.name for t in threading.enumerate() if t.name.startswith("lesionflow-score")] == []
    written = [has_prediction(root, c, version) and _stored(root, c, version, created=True) >= before for c in ids]
    assert written == [True, False, False]  # (the store copy holds masks of earlier tests: only this run's count)


def test_default_prefetch(monkeypatch):
    import torch

    import training.infer as infer

    monkeypatch.delenv(PREFETCH_ENV, raising=False)
    assert default_prefetch("cuda") is True
    monkeypatch.setattr(infer, "_cores", lambda: 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert default_prefetch("cpu") is True  # a core left for the reader and the writer
        torch.set_num_threads(2)
        assert default_prefetch("cpu") is False  # torch on every core: they would only compete
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv(PREFETCH_ENV, "0")
    assert default_prefetch("cuda") is False and default_prefetch("cpu") is False
    monkeypatch.setenv(PREFETCH_ENV, "1")
    assert default_prefetch("cpu") is True
