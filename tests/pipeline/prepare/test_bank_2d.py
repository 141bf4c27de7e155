"""2-D augmentation banks (axial slices): config, in-plane transforms, bit-identical regeneration, slice balance."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from pipeline.prepare.augment import TRANSFORMS_VERSION, BankConfig, SampleParams, augment_patch, draw_params, source_block
from pipeline.prepare.bank import bank_status, build_bank, open_bank, read_bank, read_sample, regenerate_sample
from tests.store_factory import make_store

SHAPE = (12, 40, 36)
CFG = BankConfig(spatial_dims=2, samples_per_case=12, patch_zyx=(1, 24, 24), lesion_share=0.5,
                 spatial={"p_rotation": 0.6, "p_scaling": 0.6, "p_lowres": 0.6})


@pytest.fixture(scope="module")
def banked(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank2d") / "s.zarr"
    cases = make_store(root, n_cases=2, shape_zyx=SHAPE, seed=7, n_lesions=2)
    rows = [build_bank(root, c, CFG) for c in cases]
    return root, cases, rows


def _label(root, case_id):
    from pipeline import store

    return np.asarray(store.reference_label(store.open_case(root, case_id))[...])


def test_config_2d_fields_defaults_and_hash():
    cfg = BankConfig(spatial_dims=2, patch_zyx=(1, 128, 128))
    assert cfg.spatial.max_rotation_deg == 180.0 and cfg.background_slices == "lesion_free"  # nnU-Net v2's 2d range
    assert BankConfig(spatial_dims=2, patch_zyx=(1, 64, 160)).spatial.max_rotation_deg == 15.0  # longer side > 1.5x the shorter
    assert BankConfig(spatial_dims=2, patch_zyx=(1, 64, 64), spatial={"max_rotation_deg": 45}).spatial.max_rotation_deg == 45.0
    assert BankConfig.model_validate(json.loads(json.dumps(cfg.model_dump(mode="json")))) == cfg  # the record round-trips
    flat = BankConfig(patch_zyx=(1, 128, 128), spatial={"max_rotation_deg": 180})
    assert cfg.config_hash() != flat.config_hash()  # spatial_dims changes the hash
    assert cfg.config_hash() != cfg.model_copy(update={"background_slices": "any"}).config_hash()
    # a 3-D config hashes as before the 2-D fields existed: existing banks stay up to date
    old_payload = {"config": {k: v for k, v in BankConfig().model_dump(mode="json").items() if k not in ("spatial_dims", "background_slices")},
                   "transforms_version": TRANSFORMS_VERSION}
    assert BankConfig().config_hash() == hashlib.sha256(json.dumps(old_payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    with pytest.raises(ValueError, match="axial slices"):
        BankConfig(spatial_dims=2, patch_zyx=(4, 64, 64))
    with pytest.raises(ValueError, match="2-D banks only"):
        BankConfig(background_slices="any")
    assert BankConfig(spatial_dims=2, patch_zyx=(1, 64, 64), spatial={"p_elastic": 0.1}).spatial.p_elastic == 0.1  # in-plane elastic


def test_draws_are_in_plane():
    cfg = BankConfig(spatial_dims=2, patch_zyx=(1, 64, 64), spatial={"p_rotation": 1.0, "p_scaling": 1.0})
    for i in range(50):
        p = draw_params(np.random.default_rng([2, i]), cfg.spatial, 3, spatial_dims=2)
        assert p.in_plane and p.rotation_rad[1:] == (0.0, 0.0) and abs(p.rotation_rad[0]) <= math.pi
        assert p.scale[0] == 1.0 and p.scale[1] == p.scale[2]
        assert source_block(cfg.patch_zyx, p)[0] == 1  # never reads a neighbouring slice
    angles = [abs(draw_params(np.random.default_rng([2, i]), cfg.spatial, 3, spatial_dims=2).rotation_rad[0]) for i in range(400)]
    assert max(angles) > math.radians(150)  # the 2-D range, not 3-D's 30 degrees


def _lesion_slice():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.1, size=(2, 5, 80, 80)).astype(np.float32)
    label = np.zeros((5, 80, 80), np.uint8)
    label[2, 42:52, 28:38] = 1  # centroid (46.5, 32.5); the samples are centred at (40, 40)
    image[0][label != 0] += 4.0
    image[:, 1] += 50.0  # a neighbouring slice: must not leak into the sample
    return image, label


@pytest.mark.parametrize("degrees,scale", [(90.0, None), (-37.0, 1.25), (150.0, 0.8)])
def test_label_and_image_move_as_the_recorded_transform_says(degrees, scale):
    """A synthetic lesion off the patch centre: after an in-plane rotation (and scaling) its centroid in
    the sample maps, through the recorded matrix, onto its centroid in the source slice; the image's
    bright spot moves with it; neighbouring slices are never read."""
    image, label = _lesion_slice()
    params = SampleParams(rotation_rad=(math.radians(degrees), 0.0, 0.0), scale=None if scale is None else (1.0, scale, scale), in_plane=True)
    out, lab, matrix = augment_patch(image, label, (2, 40, 40), (1, 48, 48), params)
    assert out.shape == (2, 1, 48, 48) and lab.shape == (1, 48, 48) and lab.any()
    zz, yy, xx = np.nonzero(lab)
    mapped = matrix @ np.array([zz.mean(), yy.mean(), xx.mean(), 1.0])
    np.testing.assert_allclose(mapped[:3], [2.0, 46.5, 32.5], atol=0.5)
    np.testing.assert_array_equal(matrix[0], [1.0, 0.0, 0.0, 2.0])  # z: the source slice, untouched
    # the transform moved it (not a plain crop), the bright voxels follow the label, nothing of slice 1 came in
    assert np.linalg.norm(np.array([yy.mean(), xx.mean()]) - np.array([46.5 - 16, 32.5 - 16])) > 3
    assert out[0, 0][lab[0] != 0].mean() > 3.0 and out[0, 0][lab[0] == 0].mean() < 0.5
    assert float(np.abs(out).max()) < 10.0
    with pytest.raises(ValueError, match="1-slice patch"):
        augment_patch(image, label, (2, 40, 40), (3, 48, 48), params)


def test_in_plane_elastic_without_displacement_is_the_affine_sample():
    """The elastic path (offsets on the output grid, then MONAI's AffineGrid and Resample) with magnitude 0
    gives the rotated and scaled sample of MONAI's ``Affine``, and the same recorded matrix."""
    image, label = _lesion_slice()
    affine = SampleParams(rotation_rad=(0.7, 0.0, 0.0), scale=(1.0, 1.2, 1.2), in_plane=True)
    still = affine.model_copy(update={"elastic": {"sigma": 9.0, "magnitude": 0.0, "seed": 4}})
    a, b = augment_patch(image, label, (2, 40, 40), (1, 48, 48), affine), augment_patch(image, label, (2, 40, 40), (1, 48, 48), still)
    np.testing.assert_allclose(b[0], a[0], atol=1e-4)
    np.testing.assert_array_equal(b[1], a[1])
    np.testing.assert_allclose(b[2], a[2], atol=1e-5)


def test_in_plane_elastic_is_seeded_and_moves_label_and_image_together():
    image, label = _lesion_slice()
    params = SampleParams(rotation_rad=(0.5, 0.0, 0.0), elastic={"sigma": 9.0, "magnitude": 60.0, "seed": 3}, in_plane=True)
    out, lab, matrix = augment_patch(image, label, (2, 40, 40), (1, 48, 48), params)
    again = augment_patch(image, label, (2, 40, 40), (1, 48, 48), params)
    assert out.tobytes() == again[0].tobytes() and lab.tobytes() == again[1].tobytes()
    other = augment_patch(image, label, (2, 40, 40), (1, 48, 48), params.model_copy(update={"elastic": {"sigma": 9.0, "magnitude": 60.0, "seed": 4}}))
    assert not np.array_equal(other[0], out)
    plain = augment_patch(image, label, (2, 40, 40), (1, 48, 48), params.model_copy(update={"elastic": None}))
    assert not np.array_equal(plain[0], out)  # displaced
    # the bright pixels follow the label; the lesion's centroid lands, through the recorded (affine) matrix, within
    # the displacement's spread (sd 1.1 pixels here) of its source centroid; nothing of slice 1 came in
    assert out[0, 0][lab[0] != 0].mean() > 3.0 and out[0, 0][lab[0] == 0].mean() < 0.5
    zz, yy, xx = np.nonzero(lab)
    mapped = matrix @ np.array([zz.mean(), yy.mean(), xx.mean(), 1.0])
    np.testing.assert_allclose(mapped[:3], [2.0, 46.5, 32.5], atol=4.0)
    assert float(np.abs(out).max()) < 10.0


def test_a_2d_bank_with_elastic_samples_regenerates_bit_identically(tmp_path):
    cfg = CFG.model_copy(update={"samples_per_case": 4, "spatial": CFG.spatial.model_copy(update={"p_elastic": 1.0, "elastic_magnitude": (100.0, 300.0)})})
    root = tmp_path / "s.zarr"
    case = make_store(root, n_cases=1, shape_zyx=SHAPE, seed=7, n_lesions=2)[0]
    build_bank(root, case, cfg)
    image, label, bank = open_bank(root, case)
    assert all(s.elastic for s in bank.samples)
    for s in bank.samples:
        q, lab, _ = regenerate_sample(root, case, s.index)
        assert q.tobytes() == np.asarray(image[s.index]).tobytes() and lab.tobytes() == np.asarray(label[s.index]).tobytes()


def test_in_plane_low_resolution_keeps_each_slice_its_own():
    image = np.random.default_rng(1).normal(size=(2, 3, 40, 40)).astype(np.float32)
    out, _, _ = augment_patch(image, None, (1, 20, 20), (1, 32, 32), SampleParams(lowres_zoom=(None, 0.5), in_plane=True))
    np.testing.assert_array_equal(out[0], image[0, 1:2, 4:36, 4:36])  # channel 0 untouched
    assert not np.array_equal(out[1], image[1, 1:2, 4:36, 4:36])
    assert out[1].min() >= image[1, 1].min() - 1e-5 and out[1].max() <= image[1, 1].max() + 1e-5  # from its own slice's range


def test_samples_regenerate_bit_identically_and_rebuild_the_same_bytes(banked, tmp_path):
    root, cases, rows = banked
    image, label, bank = open_bank(root, cases[0])
    assert image.shape == (12, 3, 1, 24, 24) and image.chunks == (1, 3, 1, 24, 24) and label.shape == (12, 1, 24, 24)
    assert bank.bank_config["spatial_dims"] == 2 and bank.bank_config_hash == CFG.config_hash()
    assert any(s.rotation_rad for s in bank.samples) and any(s.scale for s in bank.samples)
    for s in bank.samples:
        assert s.rotation_rad is None or s.rotation_rad[1:] == (0.0, 0.0)
        stored = np.asarray(image[s.index])
        q, lab, record = regenerate_sample(root, cases[0], s.index)
        assert q.tobytes() == stored.tobytes() and lab.tobytes() == np.asarray(label[s.index]).tobytes()
        assert record.seed == s.seed and record.matrix_zyx == s.matrix_zyx
    # a second store with the same case: the same bytes
    other = tmp_path / "again.zarr"
    again = make_store(other, n_cases=2, shape_zyx=SHAPE, seed=7, n_lesions=2)
    build_bank(other, again[0], CFG)
    np.testing.assert_array_equal(np.asarray(open_bank(other, again[0])[0][...]), np.asarray(image[...]))
    # incremental: up to date; a 3-D or an 'any'-background config is another config
    assert bank_status(root, cases[0], CFG) == "up-to-date"
    assert bank_status(root, cases[0], CFG.model_copy(update={"background_slices": "any"})) == "stale-config"
    assert bank_status(root, cases[0], BankConfig(patch_zyx=(1, 24, 24), samples_per_case=12, spatial=CFG.spatial)) == "stale-config"


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_lesion_and_lesion_free_slices_by_the_configured_share(tmp_path, share):
    root = tmp_path / "s.zarr"
    case = make_store(root, n_cases=1, shape_zyx=SHAPE, seed=7, n_lesions=2)[0]
    truth = _label(root, case)
    free = ~truth.reshape(truth.shape[0], -1).any(axis=1)
    assert free.any() and not free.all()  # the fixture has both kinds of slices
    cfg = CFG.model_copy(update={"samples_per_case": 20, "lesion_share": share})
    build_bank(root, case, cfg)
    bank = read_bank(root, case)
    kinds = [s.kind for s in bank.samples]
    assert kinds.count("lesion") == bank.n_lesion == round(20 * share)
    for s in bank.samples:
        _, lab = read_sample(root, case, s.index)
        z = s.centre_zyx[0]
        if s.kind == "lesion":
            assert truth[s.centre_zyx] and s.lesion_voxels > 0
        else:  # a slice without lesion, so the sample's label is empty
            assert free[z] and s.lesion_voxels == 0 and not lab.any()
    # with background from any slice, background centres may sit on lesion slices
    anyb = cfg.model_copy(update={"background_slices": "any", "samples_per_case": 200, "lesion_share": 0.0})
    from pipeline import store
    from pipeline.prepare.bank import plan_samples

    fg = np.asarray(store.foreground_mask(store.open_case(root, case))[...])
    plans = plan_samples(truth, fg, anyb, "fp", 3)
    assert any(not free[p["centre_zyx"][0]] for p in plans)
