"""`lesionflow show`: one PNG of orthogonal slices through the largest lesion, label and prediction outlined."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline import store
from pipeline.export.show import REFERENCE_RGB, focus_voxel, render_case


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))


def test_focus_is_the_largest_lesion():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:4, 2:4, 2:4] = 1
    mask[10:15, 11:16, 5:10] = 1
    assert focus_voxel(mask, None, mask.shape)[0] == (12, 13, 7)
    assert focus_voxel(None, np.zeros_like(mask), mask.shape) == ((10, 10, 10), "middle of the volume (no lesion)")


def test_show_outlines_label_and_prediction(phantom_store, tmp_path):
    root = tmp_path / "s.zarr"
    shutil.copytree(phantom_store, root)
    case_id = store.list_cases(root)[0]
    ref = np.asarray(store.reference_label(store.open_case(root, case_id))[...])
    store.write_label(root, case_id, store.prediction_label("m-shifted"), np.roll(ref, 2, axis=1))
    info = render_case(root, case_id, tmp_path / "a.png")
    assert info["model_version"] == "m-shifted" and info["reference"] and info["channels"] == ["FLAIR", "T1", "T2"]
    z, y, x = info["voxel_zyx"]
    assert ref[z, y, x] == 1  # the slices go through the largest reference lesion
    rgb = _pixels(tmp_path / "a.png")
    assert rgb.shape[:2][::-1] == tuple(info["size_px"])
    colours = {tuple(int(v) for v in c) for c in rgb.reshape(-1, 3)}
    assert tuple(round(255 * v) for v in REFERENCE_RGB) in colours and (255, 217, 0) in colours  # red and yellow outlines

    out = subprocess.run([sys.executable, "-m", "lesionflow.cli", "show", "--store", str(root), "--case", case_id, "--middle",
                          "--out", str(tmp_path / "b.png"), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["voxel_zyx"] == [s // 2 for s in store.read_case_meta(root, case_id).geometry.shape_zyx]
    with pytest.raises(ValueError, match="no prediction by"):
        render_case(root, case_id, tmp_path / "c.png", model="nope")
