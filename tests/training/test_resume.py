"""Resume: a run killed mid-training (SIGKILL, or an exception) and resumed from its last checkpoint
ends with the same weights, losses and validations as a run that was never interrupted (CPU, 1 thread);
best/last selection and early stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.training.conftest import THREADS
from training.checkpoint import load_model, state_dict_sha256
from training.loop import LAST_FILE, list_runs, resolve_run, train

REPO = Path(__file__).resolve().parents[2]


def _cfg(**more) -> dict:
    # a tiny U-Net on 16^3 patches; validation every 4 iterations, a checkpoint every 3
    return {"model": {"features": [4, 8, 16], "strides": [2, 2]}, "patch_zyx": [16, 16, 16], "batch_size": 2, "iterations": 10,
            "seed": 4, "threads": THREADS, "device": "cpu", "val_every": 4, "checkpoint_every": 3, "log_every": 1, "val_overlap": 0.0, **more}


def _weights(result) -> str:
    return state_dict_sha256(result.model.state_dict())


class _Crash(RuntimeError):
    pass


def test_a_run_stopped_by_an_exception_resumes_to_the_same_weights(store, tmp_path):
    cases, val = store["labelled"][:2], store["labelled"][2:]
    whole = train(store["root"], _cfg(), case_ids=cases, val_case_ids=val, runs_dir=tmp_path / "runs_a", models_dir=tmp_path / "models")

    def crash(event):
        if event["event"] == "train" and event["iteration"] == 6:
            raise _Crash("power cut")

    with pytest.raises(_Crash):
        train(store["root"], _cfg(), case_ids=cases, val_case_ids=val, runs_dir=tmp_path / "runs_b", models_dir=tmp_path / "models", progress=crash)
    (run,) = list_runs(store["root"], tmp_path / "runs_b")
    assert run["status"] == "running" and run["iteration"] == 4  # checkpoints at 3 and 4 (the validation)
    events = []
    resumed = train(store["root"], resume_run="latest", runs_dir=tmp_path / "runs_b", models_dir=tmp_path / "models", progress=events.append)
    assert resumed.metrics["resumed_from"] == 4 and events[0]["event"] == "start" and events[0]["resumed_from"] == 4
    assert [e["iteration"] for e in events if e["event"] == "train"][0] == 5
    assert _weights(resumed) == _weights(whole)
    assert resumed.metrics["loss_history"] == whole.metrics["loss_history"]
    assert resumed.metrics["val_history"] == whole.metrics["val_history"]
    assert (resumed.metrics["selected"], resumed.metrics["best_iteration"]) == (whole.metrics["selected"], whole.metrics["best_iteration"])
    assert resumed.run_id == run["run_id"]
    record = resolve_run(store["root"], run["run_id"], tmp_path / "runs_b")
    assert record["status"] == "finished" and record["model_version"] == resumed.model_version
    with pytest.raises(ValueError, match="has finished"):
        train(store["root"], resume_run=run["run_id"], runs_dir=tmp_path / "runs_b")
    with pytest.raises(ValueError, match="no unfinished run"):
        train(store["root"], resume_run="latest", runs_dir=tmp_path / "runs_b")
    with pytest.raises(ValueError, match="give only the run"):
        train(store["root"], resume_run="latest", iterations=3)


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_gives_the_weights_of_an_uninterrupted_run(store, tmp_path):
    """The issue's target: a SIGKILL mid-training, then ``--resume``, ends with identical weights (CPU)."""
    cases, val = store["labelled"][:2], store["labelled"][2:]
    whole = train(store["root"], _cfg(), case_ids=cases, val_case_ids=val, runs_dir=tmp_path / "runs_a", models_dir=tmp_path / "models")
    script = textwrap.dedent(f"""
        import os, signal, torch
        from training.loop import train
        def die(event):
            if event["event"] == "train" and event["iteration"] == 6:
                os.kill(os.getpid(), signal.SIGKILL)
        train({str(store["root"])!r}, {json.dumps(_cfg())!r} and __import__("json").loads({json.dumps(json.dumps(_cfg()))}),
              case_ids={cases!r}, val_case_ids={val!r}, runs_dir={str(tmp_path / "runs_b")!r}, models_dir={str(tmp_path / "models")!r}, progress=die)
        print("not killed")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "not killed" not in proc.stdout
    (run,) = list_runs(store["root"], tmp_path / "runs_b")
    assert run["status"] == "running" and run["iteration"] == 4 and (tmp_path / "runs_b" / run["run_id"] / LAST_FILE).exists()
    resumed = train(store["root"], resume_run=run["run_id"], runs_dir=tmp_path / "runs_b", models_dir=tmp_path / "models")
    assert _weights(resumed) == _weights(whole)
    assert resumed.metrics["loss_history"] == whole.metrics["loss_history"]
    _, info = load_model(resumed.checkpoint_path, device="cpu")
    assert info["weights_sha256"] == state_dict_sha256(whole.model.state_dict()) and info["run_id"] == run["run_id"]


def test_best_weights_are_exported_and_early_stopping_stops(store, tmp_path):
    cases, val = store["labelled"][:2], store["labelled"][2:]
    events = []
    result = train(store["root"], _cfg(iterations=40, val_every=2, early_stop_patience=2, early_stop_min_delta=0.5, optim={"lr": 1e-2}),
                   case_ids=cases, val_case_ids=val, runs_dir=tmp_path / "runs", models_dir=tmp_path / "models", progress=events.append)
    # min_delta 0.5 on a Dice: no validation after the first can count as an improvement, so two later ones stop the run
    assert result.metrics["stopped_early"] and result.metrics["iterations"] == 6
    assert [h["iteration"] for h in result.metrics["val_history"]] == [2, 4, 6]
    assert result.metrics["best_iteration"] == 2 and result.metrics["selected"] == "best"
    assert [e["event"] for e in events].count("early_stop") == 1
    best = torch.load(tmp_path / "runs" / result.run_id / "best.pt", weights_only=True)
    assert best["iteration"] == 2 and state_dict_sha256(best["model"]) == _weights(result)
    _, info = load_model(result.checkpoint_path, device="cpu")
    assert info["selected"] == "best" and info["best_iteration"] == 2 and info["stopped_early"]
    assert resolve_run(store["root"], result.model_version, tmp_path / "runs")["status"] == "stopped_early"
    last = train(store["root"], _cfg(iterations=6, val_every=2, select="last"), case_ids=cases, val_case_ids=val, save=False)
    assert last.metrics["selected"] == "last" and _weights(last) != _weights(result)
