"""training.augment: the per-batch transforms (seeded, label mirrored with the image, nnU-Net's probabilities)."""

from __future__ import annotations

import pytest
import torch

from training.augment import AugmentationConfig, BatchAugment, IntensityAugmentConfig

OFF = {"p_noise": 0, "p_blur": 0, "p_brightness": 0, "p_contrast": 0, "p_gamma": 0, "p_gamma_inverted": 0}


def _batch(n=2):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(n, 2, 12, 14, 10, generator=g)
    label = torch.zeros(n, 1, 12, 14, 10, dtype=torch.long)
    label[:, :, 2:5, 3:6, 1:3] = 1  # off-centre, so a flip moves it
    image[:, 0][label[:, 0].bool()] += 5.0  # the lesion is bright in channel 0
    return image, label


def test_seeded_and_not_in_place():
    image, label = _batch()
    aug = BatchAugment(IntensityAugmentConfig(), flip_prob=0.5)
    a = aug(image, label, seed=(1, 7))
    b = aug(image, label, seed=(1, 7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(image, _batch()[0])  # the input is untouched
    others = [aug(image, label, seed=(1, k))[0] for k in range(8)]
    assert any(not torch.equal(o, a[0]) for o in others)


def test_mirroring_moves_label_and_image_together():
    image, label = _batch(8)
    out, lab = BatchAugment(IntensityAugmentConfig(**OFF), flip_prob=0.5)(image, label, seed=(0, 0))
    moved = 0
    for b in range(8):
        lesion = lab[b, 0].bool()
        assert torch.allclose(out[b, 0][lesion].mean(), image[b, 0][label[b, 0].bool()].mean())
        moved += not torch.equal(lab[b], label[b])
    assert moved > 0


def test_everything_off_is_the_identity():
    image, label = _batch()
    out, lab = BatchAugment(IntensityAugmentConfig(**OFF), flip_prob=0.0)(image, label, seed=(0, 0))
    assert torch.equal(out, image) and torch.equal(lab, label)


@pytest.mark.parametrize("name", ["p_noise", "p_blur", "p_brightness", "p_contrast", "p_gamma", "p_gamma_inverted"])
def test_each_transform_changes_the_image_and_keeps_it_finite(name):
    image, label = _batch()
    cfg = IntensityAugmentConfig(**{**OFF, name: 1.0, "blur_p_per_channel": 1.0})
    out, lab = BatchAugment(cfg, flip_prob=0.0)(image, label, seed=(0, 3))
    assert out.shape == image.shape and torch.isfinite(out).all() and torch.equal(lab, label)
    assert not torch.allclose(out, image)
    if name == "p_contrast":  # the range is kept
        assert out.min() >= image.min() - 1e-4 and out.max() <= image.max() + 1e-4
    if name in ("p_gamma", "p_gamma_inverted"):  # the mean and standard deviation of each channel are kept
        assert torch.allclose(out.mean(dim=(2, 3, 4)), image.mean(dim=(2, 3, 4)), atol=1e-3)
        assert torch.allclose(out.std(dim=(2, 3, 4)), image.std(dim=(2, 3, 4)), atol=1e-3)


def test_draws_follow_nnunet_probabilities():
    aug = BatchAugment(IntensityAugmentConfig(), flip_prob=0.5)
    draws = aug.draw(4000, 2, seed=(0, 0))
    rate = lambda key: sum(d[key][0] is not None for d in draws) / len(draws)
    assert abs(sum(d["noise_std"] is not None for d in draws) / 4000 - 0.1) < 0.02
    assert abs(rate("brightness") - 0.15) < 0.02 and abs(rate("contrast") - 0.15) < 0.02
    assert abs(rate("gamma") - 0.3) < 0.025 and abs(rate("gamma_inverted") - 0.1) < 0.02
    assert abs(rate("blur") - 0.2 * 0.5) < 0.02
    assert abs(sum(1 in d["flips"] for d in draws) / 4000 - 0.5) < 0.03


def test_config_defaults_and_refusals():
    cfg = AugmentationConfig()
    assert cfg.bank == "auto" and cfg.fresh_fraction == 0.0 and cfg.intensity.p_gamma == 0.3
    with pytest.raises(ValueError):
        AugmentationConfig(bank="sometimes")
    with pytest.raises(ValueError, match="gamma"):
        IntensityAugmentConfig(gamma=(1.5, 0.7))


def _channel(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 11, 13, 9, generator=g) * 2.0 + 0.5
    x[0, 3:6, 4:8, 2:5] += 4.0
    return x


def _plain(x):
    return x.as_tensor() if hasattr(x, "as_tensor") else x


@pytest.mark.parametrize("sigma", [(0.5, 0.5, 0.5), (1.0, 0.6, 0.8)])
def test_blur_is_monai_gaussian_smooth(sigma):
    from monai.transforms import GaussianSmooth

    from training.augment import gaussian_blur

    x = _channel()
    assert torch.allclose(gaussian_blur(x, sigma), _plain(GaussianSmooth(sigma=sigma)(x)), atol=1e-6)


@pytest.mark.parametrize("factor", [0.75, 1.2])
def test_contrast_is_monai_scale_intensity_fixed_mean(factor):
    from monai.transforms import ScaleIntensityFixedMean

    from training.augment import contrast

    x = _channel(1)
    ref = _plain(ScaleIntensityFixedMean(factor=factor - 1.0, preserve_range=True, fixed_mean=True)(x))
    assert torch.allclose(contrast(x, factor), ref, atol=1e-5)


@pytest.mark.parametrize("gamma,invert", [(0.7, False), (1.5, False), (0.8, True), (1.3, True)])
def test_gamma_is_monai_adjust_contrast(gamma, invert):
    from monai.transforms import AdjustContrast

    from training.augment import gamma_correct

    x = _channel(2)
    ref = _plain(AdjustContrast(gamma, invert_image=invert, retain_stats=True)(x))
    assert torch.allclose(gamma_correct(x, gamma, invert=invert), ref, atol=1e-5)


def test_the_transforms_never_read_a_value_back_from_the_device():
    """A GPU idles while the host waits to read a device value (``float(t)``, ``t.item()``): with every
    transform firing, BatchAugment must not read one. Tensors on the "meta" device hold no values, so
    any such read raises; MONAI's AdjustContrast and GaussianSmooth do read (float(range), float(sigma)).
    Noise is left out: torch has no random generator for the meta device (it reads nothing back either)."""
    cfg = IntensityAugmentConfig(p_noise=0, p_blur=1, blur_p_per_channel=1, p_brightness=1, p_contrast=1, p_gamma=1, p_gamma_inverted=1)
    image = torch.empty(2, 3, 12, 14, 10, device="meta")
    label = torch.empty(2, 1, 12, 14, 10, device="meta", dtype=torch.long)
    out, lab = BatchAugment(cfg, flip_prob=1.0)(image, label, seed=(0, 5))
    assert out.shape == image.shape and lab.shape == label.shape
    with pytest.raises(RuntimeError):  # the premise: a read on the meta device raises
        float(out.mean())


def test_single_slice_batches_no_z_blur_darkening_and_no_z_flip():
    """Batches of axial slices (B, C, 1, Y, X): a Gaussian along z would meet zero padding on both sides and
    scale the slice by its kernel's centre weight; a constant image must stay constant under blur."""
    aug = BatchAugment(IntensityAugmentConfig(**{**OFF, "p_blur": 1.0, "blur_p_per_channel": 1.0}), flip_prob=0.0)
    image = torch.full((3, 2, 1, 20, 20), 2.5)
    out, _ = aug(image, None, seed=(0, 0))
    inner = out[..., 6:-6, 6:-6]  # away from the in-plane border (zero padding there, as in 3-D)
    assert torch.allclose(inner, torch.full_like(inner, 2.5), rtol=1e-4), float(inner.min())  # the erf kernels' truncated tails: < 1e-4
    from monai.transforms import GaussianSmooth  # what a z kernel does to one slice: the bug this guards against

    darkened = GaussianSmooth(sigma=(0.75, 0.75, 0.75))(image[0, :1])[..., 6:-6, 6:-6]
    assert float(darkened.max()) < 2.5 * 0.7
    assert aug.draw(3, 2, (0, 0))[0]["blur"][0][0] >= 0.5  # a z sigma was drawn; it is not applied to one slice
    # in-plane blur still acts
    ramp = torch.arange(20.0).repeat(20, 1)[None, None, None].repeat(1, 1, 1, 1, 1)
    ramp[..., 10, 10] = 100.0
    assert not torch.equal(aug(ramp, None, seed=(0, 1))[0], ramp)
    # mirroring: never along z for a single slice, the same draws otherwise
    flipper = BatchAugment(IntensityAugmentConfig(**OFF), flip_prob=1.0)
    assert flipper.draw(1, 2, (0, 0), spatial_shape=(1, 20, 20))[0]["flips"] == [2, 3]
    assert flipper.draw(1, 2, (0, 0))[0]["flips"] == [1, 2, 3]
    image, label = _batch()
    image, label = image[:, :, :1], label[:, :, :1]
    out, lab = flipper(image, label, seed=(0, 0))
    assert torch.equal(out, torch.flip(image, (3, 4))) and torch.equal(lab, torch.flip(label, (3, 4)))
    # every transform at once on single slices: finite, same shape
    everything = BatchAugment(IntensityAugmentConfig(**{k: 1.0 for k in OFF}), flip_prob=0.5)
    out, _ = everything(torch.randn(4, 2, 1, 16, 16), None, seed=(1, 2))
    assert out.shape == (4, 2, 1, 16, 16) and torch.isfinite(out).all()
