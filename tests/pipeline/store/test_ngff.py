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


def assert_valid_case(group: zarr.Group, expect_labels: set[str] | None = None, levels: int | None = None) -> None:
    """One case group: an OME-Zarr 0.5 image with these labels (None: at least the foreground) and
    ``levels`` resolution levels (None: as many as the grid calls for), as ome-zarr-models sees it."""
    image = Image.from_zarr(group)  # validates the multiscales, the arrays' dimension_names and every label image
    assert image.labels is not None
    if expect_labels is None:
        expect_labels = set(image.labels.label_paths)
        assert "foreground" in expect_labels
    assert set(image.labels.label_paths) == expect_labels
    (ms,) = image.ome_attributes.multiscales
    if levels is None:
        levels = 1 + len(ngff.pyramid_factors(CaseMeta.model_validate(group.attrs["lesionflow_case"]).geometry))
    assert [a.name for a in ms.axes] == ["c", "z", "y", "x"]
    assert [d.path for d in ms.datasets] == ["image"] + [f"image_{k}" for k in range(1, levels)]
    for name in expect_labels:
        label = image.labels.get_image_labels_group(name)
        (lab_ms,) = label.ome_attributes.multiscales
        assert [a.name for a in lab_ms.axes] == ["z", "y", "x"] and [d.path for d in lab_ms.datasets] == [str(k) for k in range(levels)]
        assert label.ome_attributes.image_label.colors[0].label_value == 1
        # every level's spatial transforms are the image's (the overlay lines up in a viewer at any zoom)
        for img_d, lab_d in zip(ms.datasets, lab_ms.datasets, strict=True):
            img_t, lab_t = img_d.coordinateTransformations, lab_d.coordinateTransformations
            assert list(lab_t[0].scale) == list(img_t[0].scale)[1:] and list(lab_t[1].translation) == list(img_t[1].translation)[1:]
            assert group[f"labels/{name}/{lab_d.path}"].shape == group[img_d.path].shape[1:]
    for path, arr in _walk_arrays(group).items():
        assert arr.metadata.dimension_names is not None, f"{path} has no dimension_names"


def read_as_viewer(path: Path) -> dict[str, object]:
    """What ome-zarr-py (napari-ome-zarr's reader) loads: the image pyramid and each label with its colour."""
    nodes = list(Reader(parse_url(str(path)))())
    out: dict[str, object] = {"image": [tuple(a.shape) for a in nodes[0].data]}
    for node in nodes[1:]:
        if node.data:
            out[node.metadata["name"]] = (tuple(node.data[0].shape), node.metadata["color"][1])
            out[f"{node.metadata['name']}:levels"] = [tuple(a.shape) for a in node.data]
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


# ------------------------------------------------------------------------------- the pyramid (schema 1.5)
def _big_case(root: Path, shape=(70, 132, 101), spacing=(0.9, 1.1, 1.3), origin=(-40.0, 12.5, 7.0)) -> tuple[str, dict[str, np.ndarray]]:
    """A case large enough for two downsampled levels, with odd sizes (edge blocks) and a non-zero origin."""
    from tests.store_factory import synthetic_case

    root = store.init_store(root)
    image, foreground, label = synthetic_case(shape, n_lesions=3, channels=("FLAIR", "T1"), rng=np.random.default_rng(5))
    vol = Volume(foreground, spacing=spacing, origin=origin)
    meta = CaseMeta(case_id="sub-big_ses-1", subject="sub-big", session="ses-1", channels=["FLAIR", "T1"], channel_info=[], has_label=True,
                    geometry=store.geometry_of(vol), source_fingerprint="f", config_hash="c", pipeline_version="0")
    store.write_case(root, meta, image, foreground, label)
    return meta.case_id, {"image": image, "foreground": foreground, "reference": label}


def _block_reference(data: np.ndarray, step: tuple[int, int, int], func) -> np.ndarray:
    """scikit-image's block_reduce (an independent implementation): NaN-padded edge blocks reduced over their own voxels."""
    from skimage.measure import block_reduce

    lead = (1,) * (data.ndim - 3)
    if func is np.nanmean:
        return block_reduce(data.astype(np.float64), (*lead, *step), func=np.nanmean, cval=np.nan).astype(np.float32)
    return block_reduce(data, (*lead, *step), func=np.max, cval=0)


def test_pyramid_levels_match_an_independent_block_reduction_and_line_up_in_space(tmp_path):
    root = tmp_path / "s.zarr"
    case_id, arrays = _big_case(root)
    group = store.open_case(root, case_id)
    assert_valid_case(group, {"reference", "foreground"}, levels=3)
    # 1.1 mm is finest: x (1.3 mm) and y are halved with it, z (0.9) too: all within twice the finest
    factors = ngff.pyramid_factors(store.read_case_meta(root, case_id).geometry)
    assert factors == [(2, 2, 2), (4, 4, 4)]
    np.testing.assert_array_equal(group["image"][:], arrays["image"])  # level 0 is the data, untouched
    level1 = _block_reference(arrays["image"], (2, 2, 2), np.nanmean)
    np.testing.assert_allclose(group["image_1"][:], level1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(group["image_2"][:], _block_reference(level1, (2, 2, 2), np.nanmean), rtol=0, atol=1e-5)
    for name in ("reference", "foreground"):
        lv1 = _block_reference(arrays[name], (2, 2, 2), np.max)
        np.testing.assert_array_equal(group[f"labels/{name}/1"][:], lv1)
        np.testing.assert_array_equal(group[f"labels/{name}/2"][:], _block_reference(lv1, (2, 2, 2), np.max))
    assert group["labels/reference/2"][:].sum() > 0  # every lesion still shows in the coarsest overview

    # space: a level-k voxel's centre (its NGFF scale and translation) is the centre of the level-0 voxels it covers
    geo = store.read_case_meta(root, case_id).geometry
    vol = Volume(np.zeros(geo.shape_zyx, np.uint8), spacing=geo.spacing, origin=geo.origin)
    datasets = Image.from_zarr(group).ome_attributes.multiscales[0].datasets
    for k, factor in ((1, 2), (2, 4)):
        scale, translation = datasets[k].coordinateTransformations[0].scale[1:], datasets[k].coordinateTransformations[1].translation[1:]
        i = np.array([3, 5, 2])  # level-k voxel (z, y, x), away from the edge
        ngff_zyx = np.asarray(translation) + np.asarray(scale) * i
        block = np.stack(np.meshgrid(*[np.arange(v * factor, (v + 1) * factor) for v in i[::-1]], indexing="ij"), -1).reshape(-1, 3)
        centre_xyz = vol.index_to_world(block).mean(axis=0)  # (x, y, z) of the level-0 voxels in the block
        np.testing.assert_allclose(ngff_zyx, centre_xyz[::-1], atol=1e-9)

    seen = read_as_viewer(root / "cases" / case_id)  # ome-zarr-py: the pyramid of the image and of each label
    assert seen["image"] == [(2, 70, 132, 101), (2, 35, 66, 51), (2, 18, 33, 26)]
    assert seen["reference:levels"] == seen["foreground:levels"] == [(70, 132, 101), (35, 66, 51), (18, 33, 26)]

    # a prediction added later gets the same levels
    store.write_label(root, case_id, store.prediction_label("m1"), arrays["reference"])
    assert_valid_case(store.open_case(root, case_id), {"reference", "foreground", "prediction-m1"}, levels=3)


def test_anisotropic_grids_are_halved_in_plane_first():
    geo = store.geometry_of(Volume(np.zeros((40, 512, 512), np.uint8), spacing=(0.47, 0.47, 4.0)))
    assert ngff.pyramid_factors(geo, max_levels=3) == [(1, 2, 2), (1, 4, 4), (1, 8, 8)]  # 0.94, 1.88, 3.76 mm: z stays 4 mm
    geo = store.geometry_of(Volume(np.zeros((192, 512, 512), np.uint8), spacing=(0.47, 0.47, 0.8)))
    assert ngff.pyramid_factors(geo) == [(2, 2, 2), (4, 4, 4)]
    assert ngff.pyramid_factors(store.geometry_of(Volume(np.zeros((64, 64, 64), np.uint8)))) == []  # one chunk: no pyramid


def test_upgrade_adds_the_pyramid_without_touching_level_zero(tmp_path, monkeypatch):
    root = tmp_path / "s.zarr"
    monkeypatch.setattr(ngff, "PYRAMID_MAX_LEVELS", 0)  # as lesionflow 1.4 wrote it: one level
    case_id, arrays = _big_case(root)
    store.write_label(root, case_id, store.prediction_label("m1"), arrays["reference"])
    doc = json.loads((root / "zarr.json").read_text())
    doc["attributes"]["lesionflow"]["schema_version"] = "1.4"
    (root / "zarr.json").write_text(json.dumps(doc))
    monkeypatch.setattr(ngff, "PYRAMID_MAX_LEVELS", 2)
    # scored by the new lesionflow before the upgrade: the new label gets the image's one level
    store.write_label(root, case_id, store.prediction_label("m2"), arrays["foreground"])
    labels = {"reference", "foreground", "prediction-m1", "prediction-m2"}
    assert_valid_case(store.open_case(root, case_id), labels, levels=1)  # still valid, one level
    before = _chunk_files(root / "cases" / case_id)

    dry = store.upgrade_store(root, dry_run=True)
    assert "level image_1 from image (block mean)" in dry["actions"][case_id] and _chunk_files(root / "cases" / case_id) == before
    out = store.upgrade_store(root)
    lines = out["actions"][case_id]
    assert "level labels/prediction-m1/2 from labels/prediction-m1/0 (block maximum)" in lines
    assert out["schema_after"] == SCHEMA_VERSION == "1.6"  # 1.6 (slice stacks) adds fields only: no upgrade step of its own
    after = _chunk_files(root / "cases" / case_id)
    assert {k: v for k, v in after.items() if k in before} == before  # level 0: same files (inodes), same bytes
    assert {k.split("|")[0] for k in after} - {k.split("|")[0] for k in before} == {
        "image_1", "image_2", *(f"labels/{n}/{k}" for n in ("reference", "foreground", "prediction-m1", "prediction-m2") for k in (1, 2))}
    group = store.open_case(root, case_id)
    assert_valid_case(group, labels, levels=3)
    np.testing.assert_allclose(group["image_1"][:], _block_reference(arrays["image"], (2, 2, 2), np.nanmean), atol=1e-5)
    assert read_as_viewer(root / "cases" / case_id)["prediction-m1:levels"] == [(70, 132, 101), (35, 66, 51), (18, 33, 26)]
    assert store.upgrade_store(root)["cases_changed"] == 0  # idempotent


def test_upgrade_adds_the_pyramid_on_an_object_store(monkeypatch):
    """No rename on an object store: each level is built in memory and uploaded marker last; the
    level-0 objects are not touched."""
    import fsspec

    url = f"memory://pyramid-{os.getpid()}/s.zarr"
    monkeypatch.setattr(ngff, "PYRAMID_MAX_LEVELS", 0)
    case_id, arrays = _big_case(url)
    fs = fsspec.filesystem("memory")
    level0 = {p: fs.cat_file(p) for p in fs.find(f"{url}/cases/{case_id}/image")}
    monkeypatch.setattr(ngff, "PYRAMID_MAX_LEVELS", 2)
    store.upgrade_store(url)
    assert {p: fs.cat_file(p) for p in fs.find(f"{url}/cases/{case_id}/image") if not p.split("/cases/")[1].startswith(f"{case_id}/image_")} == level0
    group = store.open_case(url, case_id)
    assert_valid_case(group, {"reference", "foreground"}, levels=3)
    np.testing.assert_array_equal(group["labels/reference/1"][:], _block_reference(arrays["reference"], (2, 2, 2), np.max))
    fs.rm(url.split("/s.zarr")[0], recursive=True)


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


# ------------------------------------------------------------------------------- every case of the real data
@pytest.mark.realdata
@pytest.mark.slow
def test_every_case_of_the_shared_real_data_validates_and_opens_in_a_viewer(shared_data, tmp_path):
    """All of ../shared/data ingested (whatever cases its readers make of it: the MNI patients, the
    longitudinal studies, and any cohort a newer reader adds); every case group validates as an
    OME-Zarr 0.5 image with labels, and ome-zarr-py reads its pyramid and its labels."""
    from pipeline.core.config import PipelineConfig
    from pipeline.ingest import run_ingest

    root = tmp_path / "real.zarr"
    summary = run_ingest(shared_data, root, PipelineConfig(), b"ngff-realdata-key")
    cases = store.list_cases(root)
    assert summary.converted == len(cases) >= 4  # at least the 2 MNI patients and the 2 longitudinal studies
    pyramids = 0
    for case_id in cases:
        group = store.open_case(root, case_id)
        meta = store.read_case_meta(root, case_id)
        labels = {"foreground"} | ({"reference"} if meta.has_label else set())
        factors = ngff.pyramid_factors(meta.geometry)
        assert_valid_case(group, labels, levels=1 + len(factors))
        seen = read_as_viewer(root / "cases" / case_id)
        assert seen["image"][0] == (len(meta.channels), *meta.geometry.shape_zyx)
        assert len(seen["image"]) == 1 + len(factors) and seen["foreground:levels"] == [s[1:] for s in seen["image"]]
        if meta.has_label:
            assert seen["reference:levels"] == seen["foreground:levels"]
        pyramids += bool(factors)
    assert pyramids >= 2  # the 1 mm MNI cases (182 x 218 x 182) get levels
