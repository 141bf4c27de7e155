"""Cheap augmentation on the fly, per batch, on the training device; and the training side of the bank.

The costly spatial transforms are stored in the case's augmentation bank by ``prepare``
(:mod:`pipeline.prepare.augment`, :mod:`pipeline.prepare.bank`). What stays in the loop is cheap
and runs on whole batch tensors where training runs (the GPU when there is one), so the bank is
not seen twice the same way: mirroring, Gaussian noise, Gaussian blur, multiplicative brightness,
contrast and gamma (also on the inverted image), with nnU-Net v2's probabilities
(:class:`IntensityAugmentConfig`; the table is in :mod:`pipeline.prepare.augment`). The
operations are those of MONAI's array transforms (``GaussianSmooth``, ``ScaleIntensity``,
``ScaleIntensityFixedMean``, ``AdjustContrast``; the tests compare each with MONAI's), applied
to the drawn (sample, channel) slices, written so that nothing waits for the GPU: MONAI's
``AdjustContrast`` and ``GaussianSmooth`` turn a device value into a Python number
(``float(range)``, ``float(sigma)``), which stops the host until the GPU has finished all the
work queued before it, once per augmented channel (on an H200, 2026-11-29, the training step then
kept the GPU busy 65 % of the time). Here the statistics stay on the device and the Gaussian
kernels are made on the CPU (MONAI's ``gaussian_1d``, filtered by its ``separable_filtering`` on a GPU
and by SciPy's ``correlate1d``, 4x faster, on the CPU). On the CPU, where the transforms run in the
loader's threads, every step works in place on the batch: a fresh buffer of a channel costs about as
much as the arithmetic on it.
Noise is drawn with torch on the device (MONAI's ``RandGaussianNoise`` draws with numpy on the
CPU, which would cost a host-to-device copy per noisy sample) and mirroring is ``torch.flip``.

Single slices (2-D training: batches ``(B, C, 1, Y, X)``): an axis one voxel long is neither
mirrored nor blurred (a Gaussian along it would see only zero padding and darken the slice by its
kernel's centre weight); noise, brightness, contrast and gamma use the statistics of the slice.
The draws are the same whatever the shape, so nothing else shifts.

Parameters are drawn on the CPU from a seeded ``torch.Generator`` (one per batch: ``(seed,
batch number)``; one per sample when the transforms run in loader workers: ``(seed, sample
index)``), noise on the device from a generator seeded the same way, so a run is reproducible
on a given device.

Example:
    >>> import torch
    >>> aug = BatchAugment(IntensityAugmentConfig(), flip_prob=0.5)
    >>> image, label = torch.randn(2, 3, 16, 16, 16), torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)
    >>> out, lab = aug(image, label, seed=(0, 1))
    >>> out.shape, lab.shape, out.dtype
    (torch.Size([2, 3, 16, 16, 16]), torch.Size([2, 1, 16, 16, 16]), torch.float32)
    >>> torch.equal(aug(image, label, seed=(0, 1))[0], out)
    True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntensityAugmentConfig(_Strict):
    """The transforms applied per batch at load time (nnU-Net v2's defaults); mirroring uses ``TrainConfig.flip_prob``."""

    p_noise: float = Field(0.1, ge=0.0, le=1.0)
    noise_variance: tuple[float, float] = Field((0.0, 0.1), description="variance uniform in this range, the same for every channel")
    p_blur: float = Field(0.2, ge=0.0, le=1.0)
    blur_sigma: tuple[float, float] = Field((0.5, 1.0), description="voxels, drawn per channel and axis")
    blur_p_per_channel: float = Field(0.5, ge=0.0, le=1.0)
    p_brightness: float = Field(0.15, ge=0.0, le=1.0)
    brightness: tuple[float, float] = Field((0.75, 1.25), description="multiplier, drawn per channel")
    p_contrast: float = Field(0.15, ge=0.0, le=1.0)
    contrast: tuple[float, float] = Field((0.75, 1.25), description="factor about the channel mean, range kept, drawn per channel")
    p_gamma_inverted: float = Field(0.1, ge=0.0, le=1.0, description="gamma on the inverted image (nnU-Net: 0.1)")
    p_gamma: float = Field(0.3, ge=0.0, le=1.0)
    gamma: tuple[float, float] = Field((0.7, 1.5), description="drawn per channel; mean and standard deviation kept")

    @field_validator("noise_variance", "blur_sigma", "brightness", "contrast", "gamma")
    @classmethod
    def _range(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        if v[0] > v[1] or v[0] < 0 or (info.field_name != "noise_variance" and v[0] <= 0):
            raise ValueError(f"{info.field_name} must be (low, high) with 0 < low <= high, got {v}")
        return v


class AugmentationConfig(_Strict):
    """``TrainConfig.augmentation``: where samples come from and what is done to them on the fly.

    ``bank``: ``auto`` trains from the cases' augmentation banks when every training case has a
    usable one (up to date with the case, patch at least the training patch, holding the
    channels), else from the raw volumes with flips only, as before (with a warning naming the
    cases); ``require`` refuses to train without them; ``off`` always uses the raw volumes.
    """

    bank: Literal["auto", "require", "off"] = "auto"
    fresh_fraction: float = Field(0.0, ge=0.0, le=1.0, description="share of samples cut fresh from the raw volumes, "
                                  "with the bank's spatial transforms drawn anew (variety beyond the bank's K)")
    intensity: IntensityAugmentConfig = Field(default_factory=IntensityAugmentConfig)
    where: Literal["auto", "device", "workers"] = Field(
        "auto", description="where the per-batch transforms run: the training device (auto on CUDA) or the loader workers (auto on CPU)")


def gaussian_blur(x: torch.Tensor, sigma_zyx: Sequence[float], truncated: float = 4.0) -> torch.Tensor:
    """MONAI's ``GaussianSmooth(sigma=sigma_zyx)`` of one channel ``(1, Z, Y, X)`` ("erf" kernels cut at
    ``truncated`` sigma, zero padding), with the kernels made on the CPU: no wait for the device.

    On the CPU the three passes are SciPy's ``ndimage.correlate1d`` with MONAI's kernels (equal to
    MONAI's result within 1e-6; one channel of 112 x 160 x 128 in 33 ms on one core, against 128 ms
    for MONAI's convolutions, 2026-11-30; it releases the GIL, so loader threads blur side by side);
    on a GPU, MONAI's ``separable_filtering``.

    An axis one voxel long (the z of a single slice) is not blurred: its kernel is ``[1]``, where
    MONAI's would meet zero padding on both sides and scale the slice by the kernel's centre weight.

    >>> x = torch.ones(1, 1, 8, 8)
    >>> bool(torch.allclose(gaussian_blur(x, (1.0, 0.7, 0.7))[0, 0, 3:5, 3:5], torch.ones(2, 2)))
    True
    """
    from monai.networks.layers.convutils import gaussian_1d

    kernels = [torch.ones(1) if n == 1 else gaussian_1d(torch.tensor(float(s)), truncated=truncated, approx="erf")
               for s, n in zip(sigma_zyx, x.shape[1:])]
    if x.device.type == "cpu" and x.dtype == torch.float32:
        from scipy.ndimage import correlate1d

        out = x.detach().numpy()
        blurred = False
        for axis, k in enumerate(kernels, start=1):
            if len(k) > 1:
                out, blurred = correlate1d(out, k.numpy(), axis=axis, mode="constant", cval=0.0, output=np.float32), True
        return torch.from_numpy(out) if blurred else x.clone()
    from monai.networks.layers.simplelayers import separable_filtering

    return separable_filtering(x.unsqueeze(0), kernels).squeeze(0)


def contrast(x: torch.Tensor, factor: float, inplace: bool = False) -> torch.Tensor:
    """MONAI's ``ScaleIntensityFixedMean(factor=factor - 1, preserve_range=True, fixed_mean=True)``:
    scaled by ``factor`` about the mean, clipped to the input's range (kept on the device).
    ``inplace``: ``x`` is overwritten (no temporaries: a fresh 9 MB buffer costs as much as the arithmetic)."""
    lo, hi = torch.aminmax(x)
    mean = x.mean()
    out = x if inplace else x.clone()
    return out.sub_(mean).mul_(factor).add_(mean).clamp_(lo, hi)


def gamma_correct(x: torch.Tensor, gamma: float, invert: bool = False, eps: float = 1e-7, inplace: bool = False) -> torch.Tensor:
    """MONAI's ``AdjustContrast(gamma, invert_image=invert, retain_stats=True)`` (nnU-Net's gamma
    transform): the range mapped to [0, 1], raised to ``gamma``, mapped back, then the input's mean
    and standard deviation restored; on the inverted image when ``invert``. Statistics stay on the device.
    ``inplace``: ``x`` is overwritten (no temporaries)."""
    out = x if inplace else x.clone()
    if invert:
        out.neg_()
    mean, std = out.mean(), out.std()
    lo, hi = torch.aminmax(out)
    rng = hi - lo
    # x ** gamma on [0, 1] as exp(gamma log x): within 6e-8 of torch.pow, 4x faster on the CPU (log 0 = -inf gives 0)
    out.sub_(lo).div_(rng + eps).log_().mul_(gamma).exp_().mul_(rng).add_(lo)
    out.sub_(out.mean())
    out.div_(out.std() + 1e-8).mul_(std).add_(mean)
    return out.neg_() if invert else out


def seed_of(*parts: int | str) -> int:
    """A 63-bit seed from a tuple (e.g. ``(run seed, batch number)``)."""
    return int.from_bytes(hashlib.sha256(repr(tuple(parts)).encode()).digest()[:8], "big") >> 1


class BatchAugment:
    """Mirroring and intensity transforms on a batch ``(B, C, Z, Y, X)`` float32 tensor, on its device
    (``Z = 1`` for single slices: no mirroring or blur along z).

    Args:
        cfg: probabilities and ranges (:class:`IntensityAugmentConfig`).
        flip_prob: probability of a flip along each spatial axis (labels flipped alike).
    """

    def __init__(self, cfg: IntensityAugmentConfig, flip_prob: float = 0.5) -> None:
        self.cfg = cfg
        self.flip_prob = float(flip_prob)

    def draw(self, n_batch: int, n_channels: int, seed: Sequence[int | str],
             spatial_shape: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """The parameters of every sample of a batch, drawn on the CPU with a generator seeded by ``seed``.

        ``spatial_shape`` ``(Z, Y, X)``: no flip is kept along an axis one voxel long (a single slice's z).
        Each sample's dict: ``flips`` (tensor dims 1-3 of the sample), ``noise_std`` (or None) and,
        per channel, ``blur`` sigmas ``(z, y, x)``, ``brightness``, ``contrast``, ``gamma_inverted``,
        ``gamma`` (None where the transform does not fire). Every draw is made whether or not it fires,
        so one probability does not shift the other draws.
        """
        cfg = self.cfg
        gen = torch.Generator().manual_seed(seed_of(*seed))

        def u(n: int = 1) -> list[float]:
            return torch.rand(n, generator=gen, dtype=torch.float64).tolist()

        def uniform(lo_hi: tuple[float, float], n: int = 1) -> list[float]:
            lo, hi = lo_hi
            return [lo + (hi - lo) * v for v in u(n)]

        out = []
        for _ in range(n_batch):
            fire = u(6)
            noise_var = uniform(cfg.noise_variance)[0]
            blur_ch, sigma = u(n_channels), uniform(cfg.blur_sigma, 3 * n_channels)
            bright, contrast = uniform(cfg.brightness, n_channels), uniform(cfg.contrast, n_channels)
            gamma_inv, gamma = uniform(cfg.gamma, n_channels), uniform(cfg.gamma, n_channels)
            flips = [ax + 1 for ax, v in enumerate(u(3)) if v < self.flip_prob and (spatial_shape is None or spatial_shape[ax] > 1)]
            out.append({
                "flips": flips,
                "noise_std": math.sqrt(noise_var) if fire[0] < cfg.p_noise and noise_var > 0 else None,
                "blur": [tuple(sigma[3 * c : 3 * c + 3]) if fire[1] < cfg.p_blur and blur_ch[c] < cfg.blur_p_per_channel else None
                         for c in range(n_channels)],
                "brightness": [f if fire[2] < cfg.p_brightness else None for f in bright],
                "contrast": [f if fire[3] < cfg.p_contrast else None for f in contrast],
                "gamma_inverted": [g if fire[4] < cfg.p_gamma_inverted else None for g in gamma_inv],
                "gamma": [g if fire[5] < cfg.p_gamma else None for g in gamma],
            })
        return out

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None, seed: Sequence[int | str],
                 params: list[dict[str, Any]] | None = None, mirrored: bool = False,
                 inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment ``image`` (and mirror ``label``) with draws seeded by ``seed``.

        Args:
            image: float32 ``(B, C, Z, Y, X)`` on any device.
            label: ``(B, 1, Z, Y, X)`` or None; mirrored with the image.
            seed: seeds the draws (:meth:`draw`) and the noise (drawn on the image's device).
            params: draws made already (:meth:`draw` with the same ``seed``).
            mirrored: the flips of ``params`` were applied already (the loader folds them into
                its float conversion on the CPU).
            inplace: ``image`` and ``label`` may be modified (the caller owns them).
        """
        n_batch, n_chan = image.shape[:2]
        params = params if params is not None else self.draw(n_batch, n_chan, seed, spatial_shape=image.shape[2:])
        noise_gen = None
        if not inplace:
            image = image.clone()
            label = None if label is None else label.clone()
        for b, p in enumerate(params):
            x = image[b]
            if p["noise_std"] is not None:
                if noise_gen is None:
                    noise_gen = torch.Generator(device=image.device).manual_seed(seed_of(*seed, "noise"))
                x.add_(torch.randn(x.shape, generator=noise_gen, device=x.device, dtype=x.dtype), alpha=p["noise_std"])
            for c in range(n_chan):  # in place on the channel's view of the (owned) batch
                xc = x[c : c + 1]
                if p["blur"][c] is not None:
                    xc.copy_(gaussian_blur(xc, p["blur"][c]))
                if p["brightness"][c] is not None:
                    xc.mul_(p["brightness"][c])
                if p["contrast"][c] is not None:
                    contrast(xc, p["contrast"][c], inplace=True)
                if p["gamma_inverted"][c] is not None:
                    gamma_correct(xc, p["gamma_inverted"][c], invert=True, inplace=True)
                if p["gamma"][c] is not None:
                    gamma_correct(xc, p["gamma"][c], inplace=True)
            if p["flips"] and not mirrored:
                image[b] = torch.flip(x, p["flips"])
                if label is not None:
                    label[b] = torch.flip(label[b], p["flips"])
        return image, label
