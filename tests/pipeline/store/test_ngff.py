"""Case groups as OME-Zarr 0.5 images with labels, checked by the field's own readers
(``ome-zarr-models``: the specification's pydantic models; ``ome-zarr``: ome-zarr-py, napari's reader),
and ``upgrade_store`` bringing a schema-1.2 store there without rewriting a voxel."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v05.image import Image

from pipeline import store
from pipeline.core.volume import Volume
from pipeline.store import ngff
from pipeline.store.upgrade import _move_node
from storage_schemas.models import SCHEMA_VERSION, CaseMeta
from tests.store_factory import make_store


def _walk_arrays(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    out: dict[str, zarr.Array] = {}
    for name, node in group.members():
        path = f"{prefix}{name}"
        if isinstance(node, zarr.Array):
            out[path] = node
        else:
            out.update(_walk_arrays(node, path + "/"))
    return out


def assert_valid_case(group: zarr.Group, expect_labels: set[str]) -> None:
    """One case group: an OME-Zarr 0.5 image with these labels, as ome-zarr-models and ome-zarr-py see it."""
    image = Image.from_zarr(group)  # validates the multiscales, the arrays' dimension_names and every label image
    assert image.labels is not None and set(image.labels.label_paths) == expect_labels
    (ms,) = image.ome_attributes.multiscales
    assert [a.name for a in ms.axes] == ["c", "z", "y", "x"] and [d.path for d in ms.datasets] == ["image"]
    for name in expect_labels:
        label = image.labels.get_image_labels_group(name)
        assert [a.name for a in label.ome_attributes.multiscales[0].axes] == ["z", "y", "x"]
        assert label.ome_attributes.image_label.colors[0].label_value == 1
        # the label's spatial transforms are the image's (the overlay lines up in a viewer)
        img_t = ms.datasets[0].coordinateTransformations
        lab_t = label.ome_attributes.multiscales[0].datasets[0].coordinateTransformations
        assert list(lab_t[0].scale) == list(img_t[0].scale)[1:] and list(lab_t[1].translation) == list(img_t[1].translation)[1:]
    for path, arr in _walk_arrays(group).items():
        assert arr.metadata.dimension_names is not None, f"{path} has no dimension_names"


def read_as_viewer(path: Path) -> dict[str, object]:
    """What ome-zarr-py (napari-ome-zarr's reader) loads: the image pyramid and each label with its colour."""
    nodes = list(Reader(parse_url(str(path)))())
    out: dict[str, object] = {"image": [tuple(a.shape) for a in nodes[0].data]}
    for node in nodes[1:]:
        if node.data:
            out[node.metadata["name"]] = (tuple(node.data[0].shape), node.metadata["color"][1])
    return out


def test_case_groups_validate_and_open_in_a_viewer(tmp_path):
    root = tmp_path / "s.zarr"
    (case_id,) = make_store(root, n_cases=1, shape_zyx=(20, 24, 22), seed=0)
    mask = np.zeros((20, 24, 22), np.uint8)
    mask[5:9, 6:10, 7:11] = 1
    store.write_case_array(root, case_id, "predictions/unet3d-a/mask", mask, attrs={"lesionflow_prediction": {"model_version": "unet3d-a"}})
    store.write_label(root, case_id, store.prediction_label("unet3d-b"), 1 - mask)
    store.write_case_array(root, case_id, "patch_index/lesion", np.zeros((5, 3), np.int32))
    group = store.open_case(root, case_id)
    assert_valid_case(group, {"reference", "foreground", "prediction-unet3d-a", "prediction-unet3d-b"})
    assert group["patch_index/lesion"].metadata.dimension_names == ("patch", "zyx")

    seen = read_as_viewer(root / "cases" / case_id)
    assert seen["image"] == [(3, 20, 24, 22)]
    assert seen["reference"][0] == seen["prediction-unet3d-a"][0] == (20, 24, 22)
    assert seen["reference"][1] != seen["prediction-unet3d-a"][1] != seen["prediction-unet3d-b"][1]  # distinct colours
    assert store.prediction_versions(group) == ["unet3d-a", "unet3d-b"]
    np.testing.assert_array_equal(store.prediction_mask(group, "unet3d-a")[:], mask)
    assert store.prediction_mask(group, "unet3d-a").attrs["lesionflow_prediction"]["model_version"] == "unet3d-a"
    with pytest.raises(store.StoreError, match="grid"):
        store.write_label(root, case_id, store.prediction_label("x"), mask[:-1])


def test_ingested_phantom_cases_validate(phantom_store):
    for case_id in store.list_cases(phantom_store):
        group = store.open_case(phantom_store, case_id)
        assert_valid_case(group, {"reference", "foreground"})
        assert read_as_viewer(phantom_store / "cases" / case_id)["image"][0][0] == 3


# ------------------------------------------------------------------------------- schema 1.2 → 1.3
def _legacy_store(root: Path) -> tuple[str, dict[str, np.ndarray]]:
    """A store as lesionflow 1.2 wrote it: masks beside the image, no dimension_names, 0.5 metadata without labels."""
    root = store.init_store(root, channels=("FLAIR", "T1"))
    doc = json.loads((root / "zarr.json").read_text())
    doc["attributes"]["lesionflow"]["schema_version"] = "1.2"
    (root / "zarr.json").write_text(json.dumps(doc))
    rng = np.random.default_rng(3)
    shape = (12, 14, 10)
    vol = Volume(np.zeros(shape, np.float32), spacing=(0.9, 1.1, 3.0), origin=(-5.0, 7.0, 2.0))
    case_id = "sub-a_ses-1"
    meta = CaseMeta(case_id=case_id, subject="sub-a", session="ses-1", channels=["FLAIR", "T1"], channel_info=[], has_label=True,
                    geometry=store.geometry_of(vol), source_fingerprint="f", config_hash="c", pipeline_version="0.1.0")
    arrays = {"image": rng.standard_normal((2, *shape)).astype(np.float32), "label": (rng.random(shape) > 0.9).astype(np.uint8),
              "foreground": (rng.random(shape) > 0.2).astype(np.uint8), "predictions/m1/mask": (rng.random(shape) > 0.8).astype(np.uint8),
              "patch_index/lesion": rng.integers(0, 10, (6, 3)).astype(np.int32)}
    g = zarr.open_group(str(root / "cases" / case_id), mode="w", zarr_format=3)
    for path, data in arrays.items():
        parent, _, name = path.rpartition("/")
        grp = g.require_group(parent) if parent else g
        grp.create_array(name, shape=data.shape, chunks=tuple(min(4, s) for s in data.shape), dtype=data.dtype)[...] = data
    old_ome = {"version": "0.5", "multiscales": [{"name": case_id, "axes": [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "millimeter"} for n in "zyx"], "datasets": [{"path": "image", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 3.0, 1.1, 0.9]}, {"type": "translation", "translation": [0.0, 2.0, 7.0, -5.0]}]}]}]}
    g.attrs.update({"lesionflow_case": {**meta.model_dump(mode="json"), "schema_version": "1.2"}, "ome": old_ome})
    return case_id, arrays


def _chunk_files(case_dir: Path) -> dict[str, tuple[int, str]]:
    """chunk file (relative to its array) → (inode, sha256), for every array folder under ``case_dir``."""
    out = {}
    for path in case_dir.rglob("*"):
        if path.is_file() and "/c/" in path.as_posix():
            array, _, chunk = path.relative_to(case_dir).as_posix().partition("/c/")
            out[f"{array}|{chunk}"] = (path.stat().st_ino, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _read_all(root, case_id: str) -> dict[str, np.ndarray]:
    g = store.open_case(root, case_id)
    return {"image": g["image"][:], "label": store.reference_label(g)[:], "foreground": store.foreground_mask(g)[:],
            "predictions/m1/mask": store.prediction_mask(g, "m1")[:], "patch_index/lesion": g["patch_index/lesion"][:]}


def test_upgrade_moves_masks_into_labels_without_rewriting_a_voxel(tmp_path):
    root = tmp_path / "s.zarr"
    case_id, arrays = _legacy_store(root)
    with pytest.raises(Exception, match="dimension_names"):
        Image.from_zarr(zarr.open_group(str(root / "cases" / case_id), mode="r"))
    for name, data in _read_all(root, case_id).items():  # the 1.2 layout reads through pipeline.store
        np.testing.assert_array_equal(data, arrays[name])
    assert store.has_prediction(root, case_id, "m1") and store.has_node(root, f"cases/{case_id}/predictions/m1/mask")

    before = _chunk_files(root / "cases" / case_id)
    dry = store.upgrade_store(root, dry_run=True)
    assert dry["cases_changed"] == 1 and _chunk_files(root / "cases" / case_id) == before
    assert (root / "cases" / case_id / "label").is_dir()
    out = store.upgrade_store(root)
    assert out["schema_before"] == "1.2" and out["schema_after"] == SCHEMA_VERSION == store.read_manifest(root).schema_version
    lines = out["actions"][case_id]
    assert "moved label -> labels/reference/0" in lines and "moved predictions/m1/mask -> labels/prediction-m1/0" in lines

    after = _chunk_files(root / "cases" / case_id)
    renamed = {"label": "labels/reference/0", "foreground": "labels/foreground/0", "predictions/m1/mask": "labels/prediction-m1/0"}
    expected = {f"{renamed.get(k.split('|')[0], k.split('|')[0])}|{k.split('|')[1]}": v for k, v in before.items()}
    assert after == expected  # same files (inodes) with the same bytes: moved, never rewritten
    assert not (root / "cases" / case_id / "predictions").exists() and not (root / "cases" / case_id / "label").exists()
    assert_valid_case(zarr.open_group(str(root / "cases" / case_id), mode="r"), {"reference", "foreground", "prediction-m1"})
    for name, data in _read_all(root, case_id).items():
        np.testing.assert_array_equal(data, arrays[name])
    assert store.read_case_meta(root, case_id).schema_version == SCHEMA_VERSION
    assert store.upgrade_store(root)["cases_changed"] == 0  # idempotent


def test_an_interrupted_upgrade_reads_and_finishes(tmp_path):
    root = tmp_path / "s.zarr"
    case_id, arrays = _legacy_store(root)
    b = store.open_store(root).backend
    b.ensure_groups(f"cases/{case_id}", "labels/reference")
    _move_node(b, f"cases/{case_id}/label", f"cases/{case_id}/labels/reference/0")  # crash after the first move
    for name, data in _read_all(root, case_id).items():
        np.testing.assert_array_equal(data, arrays[name])
    store.upgrade_store(root)
    assert_valid_case(store.open_case(root, case_id), {"reference", "foreground", "prediction-m1"})


def test_upgrade_on_an_object_store_copies_objects(tmp_path):
    """Object stores have no rename: the mask objects are copied byte for byte, then the old ones deleted."""
    import fsspec

    local = tmp_path / "s.zarr"
    case_id, arrays = _legacy_store(local)
    fs = fsspec.filesystem("memory")
    url = f"memory://upgrade-{os.getpid()}/s.zarr"
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{url}/{path.relative_to(local).as_posix()}", path.read_bytes())
    old = {p: fs.cat_file(p) for p in fs.find(f"{url}/cases/{case_id}/label/c")}
    store.upgrade_store(url)
    new = {p.replace("/label/c/", "/labels/reference/0/c/"): v for p, v in old.items()}
    assert {p: fs.cat_file(p) for p in fs.find(f"{url}/cases/{case_id}/labels/reference/0/c")} == new
    assert not fs.exists(f"{url}/cases/{case_id}/label/zarr.json")
    for name, data in _read_all(url, case_id).items():
        np.testing.assert_array_equal(data, arrays[name])
    group = store.open_case(url, case_id)
    assert store.prediction_versions(group) == ["m1"] and set(group.attrs["ome"]) == {"version", "multiscales", "omero"}
    assert ngff.reference_label(group).metadata.dimension_names == ("z", "y", "x")
    fs.rm(url.split("/s.zarr")[0], recursive=True)
