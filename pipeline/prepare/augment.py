"""Spatial augmentation of one patch, from explicit drawn parameters (the bank's costly part).

nnU-Net v2 augments every training sample on the CPU in the loop; its spatial transform
(rotation, scaling, optional elastic deformation) and the low-resolution simulation are the
expensive steps. lesionflow draws them once per bank sample in ``prepare``
(:mod:`pipeline.prepare.bank`) and stores the result; the cheap steps (mirroring, noise, blur,
brightness, contrast, gamma) run per batch at load time (:mod:`training.augment`).

The transform set and probabilities are nnU-Net v2's defaults
(``nnUNetTrainer.get_training_transforms``), as configuration:

=====================  =========  ==========================================  ================
transform              p          parameters                                  where
=====================  =========  ==========================================  ================
rotation               0.2        each axis uniform(-30°, 30°)                bank
scaling                0.2        uniform(0.7, 1.4), the same on every axis   bank
elastic deformation    0 (off)    sigma, magnitude (MONAI ``Rand3DElastic``)  bank
low resolution         0.25       zoom uniform(0.5, 1), each channel p 0.5    bank
Gaussian noise         0.1        variance uniform(0, 0.1)                    on the fly
Gaussian blur          0.2        sigma uniform(0.5, 1), each channel p 0.5   on the fly
brightness (multiply)  0.15       uniform(0.75, 1.25) per channel             on the fly
contrast               0.15       uniform(0.75, 1.25) per channel, range kept on the fly
gamma, inverted        0.1        uniform(0.7, 1.5), statistics kept          on the fly
gamma                  0.3        uniform(0.7, 1.5), statistics kept          on the fly
mirroring              0.5/axis   every spatial axis                          on the fly
=====================  =========  ==========================================  ================

Differences from nnU-Net, on purpose: the low-resolution simulation runs before the intensity
transforms (it is stored with the spatial ones), and upsamples trilinearly (nnU-Net: cubic, which
torch has no 3-D kernel for). The transforms themselves are MONAI's: :class:`monai.transforms.Affine`
(rotation and scaling, trilinear for images; labels as nnU-Net v2 resamples them: the lesion
indicator interpolated trilinearly and thresholded at 0.5; zero padding),
:class:`monai.transforms.Rand3DElasticd` (elastic, seeded), :class:`monai.transforms.Resize`
(low resolution: nearest down, trilinear up).

Conventions: voxels in array order ``(z, y, x)``; a centre ``c`` and patch ``p`` as in
:mod:`pipeline.prepare.patches` (the patch is ``[c - p // 2, c - p // 2 + p)``; outside the volume
is zero). Rotation angles are radians about the array axes 0, 1, 2 (MONAI's ``rotate_params``);
a scale ``s > 1`` samples ``s`` times wider, so the anatomy looks smaller. The 4x4 ``matrix`` of a
sample maps a patch voxel ``(z, y, x, 1)`` to the source voxel it was sampled from (elastic
displacement, when drawn, comes on top of it).

**2-D banks** (``BankConfig.spatial_dims = 2``, for networks on axial slices: ``TrainConfig.spatial_dims = 2``)
hold samples one slice thick, ``patch_zyx = (1, py, px)``, and every spatial step stays in the slice
plane, as nnU-Net v2's "2d" configuration (``nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size``
and ``get_training_transforms``, which see 2-D images): the rotation is about the slice normal (array axis 0)
only, recorded as ``rotation_rad = (a, 0, 0)``, with nnU-Net's 2-D range (uniform(-180°, 180°) when the
patch's longer side is at most 1.5 times its shorter one, else uniform(-15°, 15°); the 3-D default is 30°),
set in the config when it does not give ``max_rotation_deg``; scaling acts on y and x only
(``scale = (1, s, s)``); the low-resolution simulation is in-plane; the elastic deformation (off by
default, as in nnU-Net) is :class:`monai.transforms.Rand3DElastic`'s algorithm in the slice plane
(:func:`_elastic_in_plane`: a uniform(-1, 1) offset per output pixel and axis, Gaussian-smoothed with
``sigma``, times ``magnitude``, the rotation and scaling on top; MONAI's ``Rand2DElastic`` is another
algorithm, a coarse grid of control points, so its parameters would not mean what the 3-D ones do).
Like nnU-Net's, the same sigma and magnitude displace pixels further in 2-D than voxels in 3-D (the
smoothing averages over fewer neighbours: about 16 pixels' standard deviation at sigma 9 and magnitude
900, against 3 voxels in 3-D). The sample is resampled from its own slice with MONAI's 2-D ``Affine``
or ``Resample`` (bilinear), never reading a neighbouring slice. The probabilities and the other ranges are
the 3-D ones (nnU-Net uses the same in 2-D). Background samples come from slices without lesion
(``background_slices="lesion_free"``, the default; when the case has any), so ``lesion_share`` is the
share of lesion slices, as :class:`training.slices.SliceDataset` balances them.

Parameters are drawn with numpy from one seed per sample (:func:`draw_params`) and applied by
:func:`augment_patch`, which is deterministic: the same volume, centre, parameters and patch give
the same bytes (CPU, float32; MONAI's resampling is per output voxel).

Example:
    >>> import numpy as np
    >>> cfg = BankConfig(patch_zyx=(16, 16, 16))
    >>> params = draw_params(np.random.default_rng(3), cfg.spatial, n_channels=2)
    >>> image = np.random.default_rng(0).normal(size=(2, 30, 30, 30)).astype(np.float32)
    >>> label = np.zeros((30, 30, 30), np.uint8); label[14:17, 14:17, 14:17] = 1
    >>> out, lab, matrix = augment_patch(image, label, (15, 15, 15), cfg.patch_zyx, params)
    >>> out.shape, lab.shape, matrix.shape, out.dtype
    ((2, 16, 16, 16), (16, 16, 16), (4, 4), dtype('float32'))
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.prepare.patches import patch_bounds

TRANSFORMS_VERSION = 2
"""Bumped whenever :func:`augment_patch` or :func:`draw_params` would give other bytes for the same
inputs (2: labels interpolated linearly and thresholded, as nnU-Net v2, instead of nearest neighbour)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _range(v: tuple[float, float], name: str, lo: float = 0.0) -> tuple[float, float]:
    if v[0] > v[1] or v[0] < lo:
        raise ValueError(f"{name} must be (low, high) with {lo} <= low <= high, got {v}")
    return v


class SpatialAugmentConfig(_Strict):
    """Spatial transforms and the low-resolution simulation stored in the bank (nnU-Net v2's defaults)."""

    p_rotation: float = Field(0.2, ge=0.0, le=1.0, description="probability of a rotation")
    max_rotation_deg: float = Field(30.0, ge=0.0, le=180.0, description="each axis uniform(-max, max) degrees")
    p_scaling: float = Field(0.2, ge=0.0, le=1.0, description="probability of a scaling")
    scaling: tuple[float, float] = Field((0.7, 1.4), description="isotropic scale factor range (> 1: anatomy smaller)")
    p_elastic: float = Field(0.0, ge=0.0, le=1.0, description="probability of an elastic deformation (nnU-Net v2: off)")
    elastic_sigma: tuple[float, float] = Field((9.0, 13.0), description="MONAI Rand3DElastic sigma_range (voxels)")
    elastic_magnitude: tuple[float, float] = Field((0.0, 900.0), description="MONAI Rand3DElastic magnitude_range")
    p_lowres: float = Field(0.25, ge=0.0, le=1.0, description="probability of the low-resolution simulation")
    lowres_zoom: tuple[float, float] = Field((0.5, 1.0), description="zoom factor range of the simulated low resolution")
    lowres_p_per_channel: float = Field(0.5, ge=0.0, le=1.0, description="each channel is degraded with this probability")

    @field_validator("scaling", "elastic_sigma", "elastic_magnitude", "lowres_zoom")
    @classmethod
    def _ranges(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        v = _range(v, info.field_name)
        if info.field_name in ("scaling", "lowres_zoom") and v[0] <= 0:
            raise ValueError(f"{info.field_name} must be positive, got {v}")
        if info.field_name == "lowres_zoom" and v[1] > 1:
            raise ValueError(f"lowres_zoom must lie in (0, 1], got {v}")
        return v


class BankConfig(_Strict):
    """What an augmentation bank holds and how its samples are drawn; hashed into the bank."""

    samples_per_case: int = Field(64, ge=1, le=100_000, description="K: augmented samples stored per case")
    lesion_share: float = Field(0.5, ge=0.0, le=1.0, description="fraction of the K samples centred on a lesion voxel (0 without lesions)")
    patch_zyx: tuple[int, int, int] = Field((48, 48, 48), description="sample size in voxels (z, y, x); >= the training patch")
    dtype: Literal["int16", "float16"] = Field(
        "int16", description="stored image type: int16 times a per-case power-of-two scale (exact to scale/2), or float16")
    seed: int = Field(0, ge=0, description="with the case's source fingerprint, seeds every draw of the bank")
    spatial: SpatialAugmentConfig = Field(default_factory=SpatialAugmentConfig)
    spatial_dims: Literal[2, 3] = Field(
        3, description="3: patches and 3-D transforms; 2: axial slices (patch_zyx (1, py, px)), transforms in the slice plane only")
    background_slices: Literal["any", "lesion_free"] | None = Field(
        None, description="2-D only: background samples from any slice or only from slices without lesion (default lesion_free)")

    @field_validator("patch_zyx")
    @classmethod
    def _patch(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 1:
            raise ValueError(f"patch_zyx must be positive voxel counts, got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _defaults_2d(cls, data: Any) -> Any:
        """2-D: nnU-Net v2's 2-D rotation range unless the config gives one, and lesion-free background slices."""
        if not isinstance(data, dict) or int(data.get("spatial_dims", 3)) != 2:
            return data
        data = dict(data)
        spatial = data.get("spatial")
        given = spatial.model_fields_set if isinstance(spatial, SpatialAugmentConfig) else set(spatial or {})
        patch = data.get("patch_zyx")
        if "max_rotation_deg" not in given and patch is not None and len(patch) == 3 and min(int(v) for v in patch[1:]) > 0:
            in_plane = [int(v) for v in patch[1:]]
            degrees = nnunet_2d_rotation_deg(in_plane)
            if isinstance(spatial, SpatialAugmentConfig):
                data["spatial"] = spatial.model_copy(update={"max_rotation_deg": degrees})
            else:
                data["spatial"] = {**(spatial or {}), "max_rotation_deg": degrees}
        if data.get("background_slices") is None:
            data["background_slices"] = "lesion_free"
        return data

    @model_validator(mode="after")
    def _dims(self) -> BankConfig:
        if self.spatial_dims == 2 and self.patch_zyx[0] != 1:
            raise ValueError(f"a 2-D bank holds axial slices: patch_zyx must be (1, py, px), got {self.patch_zyx}")
        if self.spatial_dims == 3 and self.background_slices is not None:
            raise ValueError("background_slices applies to 2-D banks only (spatial_dims=2)")
        return self

    def config_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the whole config (every field shapes the samples) and
        :data:`TRANSFORMS_VERSION`, so banks built by an older implementation are rebuilt.

        ``spatial_dims`` and ``background_slices`` enter the hash of 2-D configs only, so a 3-D
        config hashes as before they existed (its banks stay up to date).
        """
        config = self.model_dump(mode="json")
        if self.spatial_dims == 3:
            config.pop("spatial_dims")
            config.pop("background_slices")
        payload = {"config": config, "transforms_version": TRANSFORMS_VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def nnunet_2d_rotation_deg(patch_yx: Sequence[int]) -> float:
    """nnU-Net v2's 2-D rotation range (degrees, each way) for an in-plane patch: 180 unless the patch's
    longer side exceeds 1.5 times its shorter one, then 15.

    >>> nnunet_2d_rotation_deg((128, 128)), nnunet_2d_rotation_deg((64, 160))
    (180.0, 15.0)
    """
    return 15.0 if max(patch_yx) / min(patch_yx) > 1.5 else 180.0


class SampleParams(BaseModel):
    """The drawn parameters of one bank sample (what :func:`augment_patch` applies)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rotation_rad: tuple[float, float, float] | None = None
    scale: tuple[float, float, float] | None = None
    elastic: dict[str, float | int] | None = Field(None, description="{'sigma', 'magnitude', 'seed'} of MONAI's Rand3DElasticd")
    lowres_zoom: tuple[float | None, ...] = Field((), description="per channel: the zoom of the simulated low resolution, or None")
    in_plane: bool = Field(False, description="2-D: every step in the (y, x) plane of a 1-slice patch; "
                           "rotation (a, 0, 0), scale (1, s, s), low resolution and elastic deformation in-plane")

    @model_validator(mode="after")
    def _finite(self) -> SampleParams:
        for v in (*(self.rotation_rad or ()), *(self.scale or ())):
            if not math.isfinite(v):
                raise ValueError("non-finite transform parameter")
        if self.in_plane and ((self.rotation_rad is not None and any(self.rotation_rad[1:]))
                              or (self.scale is not None and self.scale[0] != 1.0)):
            raise ValueError("in-plane parameters rotate about axis 0 only and keep z's scale at 1")
        return self

    @property
    def spatial(self) -> bool:
        """True when the sample is resampled (rotation, scaling or elastic), not just cropped."""
        return self.rotation_rad is not None or self.scale is not None or self.elastic is not None


def draw_params(rng: np.random.Generator, cfg: SpatialAugmentConfig, n_channels: int, spatial_dims: int = 3) -> SampleParams:
    """Draw one sample's parameters with ``rng`` (always the same number of draws, whatever fires).

    ``spatial_dims=2``: in-plane parameters (the first angle about axis 0; the scale on y and x);
    the same draws are made, so a 2-D sample's angle is the 3-D draw's first one.
    """
    u = rng.random(4)
    angles = rng.uniform(-1.0, 1.0, size=3) * math.radians(cfg.max_rotation_deg)
    scale = float(rng.uniform(*cfg.scaling))
    sigma, magnitude = float(rng.uniform(*cfg.elastic_sigma)), float(rng.uniform(*cfg.elastic_magnitude))
    elastic_seed = int(rng.integers(0, 2**31 - 1))
    per_channel = rng.random(n_channels)
    zooms = rng.uniform(*cfg.lowres_zoom, size=n_channels)
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    in_plane = spatial_dims == 2
    if in_plane:
        angles[1:] = 0.0
    rotation = tuple(float(a) for a in angles) if u[0] < cfg.p_rotation and cfg.max_rotation_deg > 0 else None
    return SampleParams(
        rotation_rad=rotation,  # type: ignore[arg-type]
        scale=((1.0 if in_plane else scale), scale, scale) if u[1] < cfg.p_scaling else None,
        elastic={"sigma": sigma, "magnitude": magnitude, "seed": elastic_seed} if u[2] < cfg.p_elastic else None,
        lowres_zoom=tuple(float(z) if (u[3] < cfg.p_lowres and per_channel[c] < cfg.lowres_p_per_channel) else None
                          for c, z in enumerate(zooms)),
        in_plane=in_plane,
    )


def crop(volume: np.ndarray, centre: Sequence[int], size: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """The block ``[c - s // 2, c - s // 2 + s)`` of the last three axes of ``volume``, zero outside it.

    ``out``: written into this array (leading axes as ``volume``'s, the last three ``size``; values cast
    to its type) and returned, so a caller can stack blocks without another copy.
    """
    spatial = volume.shape[-3:]
    slices, pad = patch_bounds(centre, spatial, size)
    lead = (slice(None),) * (volume.ndim - 3)
    part = volume[(*lead, *slices)]
    padded = any(p != (0, 0) for p in pad)
    if out is None and not padded:
        return np.ascontiguousarray(part)
    if out is None:  # zeros, the part copied in (np.pad's generic path took 4x as long)
        out = np.zeros(volume.shape[:-3] + tuple(int(v) for v in size), dtype=volume.dtype)
    elif padded:
        out[...] = 0
    inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(pad, part.shape[-3:]))
    out[(*lead, *inner)] = part
    return out


def _linear_part(params: SampleParams) -> np.ndarray:
    """The 3x3 matrix (patch → source voxel offsets) of the rotation and scaling, MONAI's order (rotate @ scale)."""
    from monai.transforms.utils import create_rotate, create_scale

    m = np.eye(4)
    if params.rotation_rad is not None:
        m = m @ np.asarray(create_rotate(3, params.rotation_rad, backend="numpy"))
    if params.scale is not None:
        m = m @ np.asarray(create_scale(3, params.scale, backend="numpy"))
    return m[:3, :3]


def source_block(patch_zyx: Sequence[int], params: SampleParams) -> tuple[int, int, int]:
    """Size (voxels) of the block around the centre that :func:`augment_patch` reads for ``params``.

    Cropping this block around ``c`` first and passing its centre voxel (``size // 2``) gives the same sample.
    """
    patch = tuple(int(p) for p in patch_zyx)
    if not params.spatial:
        return patch  # type: ignore[return-value]
    margin = 2
    if params.elastic is not None:
        margin += int(math.ceil(4 * float(params.elastic["sigma"])))
        if params.in_plane:  # 2-D displacements are larger (see the module docstring): six of their standard deviations too
            margin += int(math.ceil(6 * elastic_displacement_sd(float(params.elastic["sigma"]), float(params.elastic["magnitude"]), 2)))
    return _region(patch, _linear_part(params), margin, in_plane=params.in_plane)


def elastic_displacement_sd(sigma: float, magnitude: float, spatial_dims: int) -> float:
    """Standard deviation (voxels) of the elastic displacement along one axis: a uniform(-1, 1) field
    (sd 1/sqrt(3)) smoothed by MONAI's Gaussian kernel (``GaussianFilter(dims, sigma, truncated=3)``), times
    ``magnitude``.

    >>> round(elastic_displacement_sd(9.0, 900.0, 2), 1), round(elastic_displacement_sd(9.0, 900.0, 3), 1)
    (16.3, 2.9)
    """
    import torch
    from monai.networks.layers.convutils import gaussian_1d

    w = gaussian_1d(torch.tensor(float(sigma)), truncated=3.0).double()
    return float(magnitude * float((w**2).sum()) ** (spatial_dims / 2) / math.sqrt(3.0))


def _region(patch: Sequence[int], linear: np.ndarray, margin: int, in_plane: bool = False) -> tuple[int, int, int]:
    """Size of the block around the centre that holds every source voxel the transformed patch reads.

    Same parity as the patch on each axis, so the block's centre voxel and the patch's fall on the same source voxel.
    ``in_plane``: z is not resampled, the block is the patch's slice(s) along z.
    """
    half = np.abs(linear) @ (np.asarray(patch, float) / 2.0)
    out = []
    for ax, (h, p) in enumerate(zip(half, patch)):
        if in_plane and ax == 0:
            out.append(p)
            continue
        m = 2 * int(math.ceil(h)) + 2 * margin + (p % 2)
        out.append(max(m, p))
    return tuple(out)  # type: ignore[return-value]


def augment_patch(
    image: np.ndarray,
    label: np.ndarray | None,
    centre: Sequence[int],
    patch_zyx: Sequence[int],
    params: SampleParams,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Apply ``params`` to the patch of ``image`` (and ``label``) around ``centre``.

    Args:
        image: float32 ``(C, Z, Y, X)`` (z-scored channels).
        label: uint8 ``(Z, Y, X)`` or None.
        centre: source voxel ``(z, y, x)``; it lands at patch voxel ``p // 2`` without a transform.
        patch_zyx: output size in voxels.
        params: from :func:`draw_params`; ``lowres_zoom`` has one entry per channel (or none).

    Returns:
        ``(image float32 (C, pz, py, px), label uint8 (pz, py, px) or None, matrix float64 (4, 4))``;
        ``matrix`` maps a patch voxel ``(z, y, x, 1)`` to the source voxel it samples.
    """
    patch = tuple(int(p) for p in patch_zyx)
    centre = tuple(int(c) for c in centre)
    if params.in_plane and patch[0] != 1:
        raise ValueError(f"in-plane (2-D) parameters need a 1-slice patch (1, py, px), got {patch}")
    if not params.spatial:
        out = crop(image, centre, patch).astype(np.float32, copy=False)
        lab = None if label is None else crop(label, centre, patch).astype(np.uint8, copy=False)
        matrix = crop_matrix(centre, patch)
    elif params.in_plane:
        out, lab, matrix = _resample_in_plane(image, label, centre, patch, params)
    else:
        out, lab, matrix = _resample(image, label, centre, patch, params)
    if params.lowres_zoom and any(z is not None for z in params.lowres_zoom):
        out = _low_resolution(out, params.lowres_zoom, in_plane=params.in_plane)
    return np.ascontiguousarray(out, dtype=np.float32), lab, matrix


def is_plain(params: SampleParams) -> bool:
    """True when :func:`augment_patch` only crops: no rotation, scaling, elastic deformation or low resolution."""
    return not params.spatial and not any(z is not None for z in params.lowres_zoom)


def crop_matrix(centre: Sequence[int], patch_zyx: Sequence[int]) -> np.ndarray:
    """The 4x4 matrix of a plain crop: patch voxel ``(z, y, x, 1)`` → source voxel (a translation)."""
    matrix = np.eye(4)
    matrix[:3, 3] = [int(c) - int(p) // 2 for c, p in zip(centre, patch_zyx)]
    return matrix


def _resample(image: np.ndarray, label: np.ndarray | None, centre: tuple[int, ...], patch: tuple[int, ...],
              params: SampleParams) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    import torch
    from monai.transforms import Affine, Rand3DElasticd

    linear = _linear_part(params)
    region = source_block(patch, params)
    offset = np.eye(4)
    offset[:3, 3] = [c - m // 2 for c, m in zip(centre, region)]
    if params.elastic is None:
        kwargs = {"rotate_params": params.rotation_rad, "scale_params": params.scale, "spatial_size": patch,
                  "padding_mode": "zeros", "image_only": False}
        # the label indicator as one more channel: one grid for both (each channel is sampled on its own, so the
        # bytes are those of two calls); both blocks cropped straight into one array. A block without lesion
        # resamples to zeros: its label is not resampled at all (a quarter of the work with three channels)
        n_img = image.shape[0]
        lab_block = None if label is None else crop(label, centre, region)
        with_label = lab_block is not None and bool(lab_block.any())
        both_np = np.empty((n_img + with_label, *region), np.float32)
        crop(image, centre, region, out=both_np[:n_img])
        if with_label:
            both_np[n_img] = lab_block != 0
        out, mat = Affine(mode="bilinear", **kwargs)(torch.from_numpy(both_np))
        lab = None
        if with_label:
            out, lab = out[:-1], out[-1]
        elif label is not None:
            lab = np.zeros(patch, np.float32)
        matrix = offset @ np.asarray(mat, dtype=np.float64)
    else:
        img_region = torch.from_numpy(crop(image, centre, region).astype(np.float32, copy=False))
        lab_region = None if label is None else torch.from_numpy((crop(label, centre, region)[None] != 0).astype(np.float32))
        e = params.elastic
        rot = params.rotation_rad or (0.0, 0.0, 0.0)
        scl = params.scale or (1.0, 1.0, 1.0)
        keys = ["image"] if lab_region is None else ["image", "label"]
        t = Rand3DElasticd(keys=keys, sigma_range=(float(e["sigma"]),) * 2, magnitude_range=(float(e["magnitude"]),) * 2,
                           spatial_size=patch, prob=1.0, rotate_range=[(a, a) for a in rot], scale_range=[(s - 1.0, s - 1.0) for s in scl],
                           mode="bilinear", padding_mode="zeros")
        t.set_random_state(seed=int(e["seed"]))
        data = {"image": img_region} if lab_region is None else {"image": img_region, "label": lab_region}
        res = t(data)
        out, lab = res["image"], res.get("label")
        # the affine part about the centre of the block, like Affine's (the elastic field comes on top)
        centred = np.eye(4)
        centred[:3, :3] = linear
        to_centre = np.eye(4)
        to_centre[:3, 3] = [(m - 1) / 2 for m in region]
        from_patch = np.eye(4)
        from_patch[:3, 3] = [-(p - 1) / 2 for p in patch]
        matrix = offset @ to_centre @ centred @ from_patch
    out_np = np.asarray(out.detach().cpu() if hasattr(out, "detach") else out, dtype=np.float32)
    lab_np = None
    if lab is not None:  # the lesion indicator interpolated linearly, then thresholded (nnU-Net v2's mode_seg "bilinear")
        lab_t = lab[0] if lab.ndim == 4 else lab
        lab_np = (np.asarray(lab_t.detach().cpu() if hasattr(lab_t, "detach") else lab_t) >= 0.5).astype(np.uint8)
    return out_np, lab_np, matrix


def _resample_in_plane(image: np.ndarray, label: np.ndarray | None, centre: tuple[int, ...], patch: tuple[int, ...],
                       params: SampleParams) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The 2-D path: the source slice's block ``(C, 1, my, mx)`` resampled in its plane with MONAI's 2-D
    ``Affine``; the label as in 3-D (indicator bilinear, thresholded at 0.5)."""
    import torch
    from monai.transforms import Affine

    region = source_block(patch, params)
    img_region = torch.from_numpy(crop(image, centre, region)[:, 0].astype(np.float32, copy=False))  # (C, my, mx)
    lab_region = None if label is None else torch.from_numpy((crop(label, centre, region)[0][None] != 0).astype(np.float32))
    offset = np.eye(4)
    offset[:3, 3] = [c - m // 2 for c, m in zip(centre, region)]
    size_yx = patch[1:]
    angle = params.rotation_rad[0] if params.rotation_rad is not None else None
    scale_yx = params.scale[1:] if params.scale is not None else None
    if params.elastic is not None:
        out, lab = _elastic_in_plane(img_region, lab_region, size_yx, angle, scale_yx, params.elastic)
        # the affine part about the centre of the block, as in 3-D (the elastic field comes on top)
        centred, to_centre, from_patch = np.eye(4), np.eye(4), np.eye(4)
        centred[:3, :3] = _linear_part(params)
        to_centre[:3, 3] = [(m - 1) / 2 for m in region]
        from_patch[:3, 3] = [-(p - 1) / 2 for p in patch]
        matrix = offset @ to_centre @ centred @ from_patch
    else:
        kwargs = {"rotate_params": angle, "scale_params": scale_yx, "spatial_size": size_yx, "padding_mode": "zeros", "image_only": False}
        both = img_region if lab_region is None else torch.cat([img_region, lab_region])  # as in 3-D: one grid for both
        out, mat = Affine(mode="bilinear", **kwargs)(both)
        lab = None
        if lab_region is not None:
            out, lab = out[:-1], out[-1]
        in_plane = np.asarray(mat, dtype=np.float64)  # 3x3: patch (y, x, 1) -> block (y, x, 1)
        matrix = np.eye(4)
        matrix[1:3, 1:3], matrix[1:3, 3] = in_plane[:2, :2], in_plane[:2, 2]
        matrix = offset @ matrix
    out_np = np.asarray(out.detach().cpu() if hasattr(out, "detach") else out, dtype=np.float32)[:, None]
    lab_np = None
    if lab is not None:
        lab_t = lab[0] if lab.ndim == 3 else lab
        lab_np = (np.asarray(lab_t.detach().cpu() if hasattr(lab_t, "detach") else lab_t) >= 0.5).astype(np.uint8)[None]
    return out_np, lab_np, matrix


def _elastic_in_plane(image: Any, label: Any, size_yx: Sequence[int], angle: float | None, scale_yx: Sequence[float] | None,
                      elastic: dict[str, float | int]) -> tuple[Any, Any]:
    """:class:`monai.transforms.Rand3DElastic`'s steps in two dimensions, with its seeding: the offsets
    ``RandomState(seed).uniform(-1, 1, (2, py, px))`` smoothed by ``GaussianFilter(2, sigma, 3.0)`` and
    times ``magnitude`` are added to the output grid, MONAI's ``AffineGrid`` rotates and scales it, and
    ``Resample`` (bilinear, zero padding) samples the block ``(C, my, mx)`` (and the label indicator) there."""
    import torch
    from monai.networks.layers import GaussianFilter
    from monai.transforms import AffineGrid, Resample
    from monai.transforms.utils import create_grid

    size = tuple(int(v) for v in size_yx)
    offsets = np.random.RandomState(int(elastic["seed"])).uniform(-1.0, 1.0, [2, *size]).astype(np.float32, copy=False)
    grid = create_grid(spatial_size=size, backend="torch")
    grid[:2] += GaussianFilter(2, float(elastic["sigma"]), 3.0)(torch.as_tensor(offsets)[None])[0] * float(elastic["magnitude"])
    grid, _ = AffineGrid(rotate_params=angle, scale_params=None if scale_yx is None else tuple(scale_yx))(grid=grid)
    both = image if label is None else torch.cat([image, label])  # one call, the label indicator as the last channel
    out = Resample(mode="bilinear", padding_mode="zeros")(both, grid)
    return (out, None) if label is None else (out[:-1], out[-1])


def _low_resolution(image: np.ndarray, zooms: Sequence[float | None], in_plane: bool = False) -> np.ndarray:
    """Per channel with a zoom: nearest-neighbour down to ``round(p * zoom)`` voxels, trilinear back up (MONAI ``Resize``).

    ``in_plane``: y and x only, bilinear back up (each slice of the patch on its own).
    """
    import torch
    from monai.transforms import Resize

    out = image.copy()
    spatial = image.shape[1:]
    if in_plane:
        spatial = spatial[1:]
    for c, zoom in enumerate(zooms):
        if zoom is None:
            continue
        small = tuple(max(1, int(round(s * zoom))) for s in spatial)
        if small == tuple(spatial):
            continue
        # 2-D: the patch's slices stand on the channel axis, so Resize sees (slices, y, x)
        x = torch.from_numpy(np.ascontiguousarray(image[c] if in_plane else image[c : c + 1]))
        down = Resize(small, mode="nearest-exact")(x)
        up = Resize(spatial, mode="bilinear" if in_plane else "trilinear", align_corners=False)(down)
        up_np = np.asarray(up.detach().cpu() if hasattr(up, "detach") else up, dtype=np.float32)
        out[c] = up_np if in_plane else up_np[0]
    return out


def sample_seed(source_fingerprint: str, config_hash: str, index: int) -> int:
    """The seed of bank sample ``index``: 63 bits of SHA-256 over (fingerprint, config hash, index).

    The bank's seed is part of the config hash, so this is (case, augmentation config, seed) → seed.
    """
    digest = hashlib.sha256(f"{source_fingerprint}|{config_hash}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def int16_scale(max_abs: float) -> float:
    """The power of two ``2**-k`` (``0 <= k <= 14``) with which ``max_abs`` still fits in int16.

    Resampling (trilinear, nearest) never leaves the range of its input, so a case's samples fit.

    >>> int16_scale(12.3), int16_scale(0.0), int16_scale(40000.0)
    (0.00048828125, 6.103515625e-05, 2.0)
    """
    if not math.isfinite(max_abs):
        raise ValueError(f"image has non-finite values (max |x| = {max_abs})")
    k = 14 if max_abs <= 0 else int(math.floor(math.log2(32767.0 / max_abs)))
    return float(2.0 ** -min(14, k))


def quantize(image: np.ndarray, dtype: str, scale: float) -> np.ndarray:
    """float32 → the stored type: ``round(x / scale)`` as int16, or float16 (``scale`` 1)."""
    if dtype == "float16":
        return image.astype(np.float16)
    x = np.divide(image, np.float32(scale), dtype=np.float32)  # one temporary, then in place
    np.clip(x, -32768, 32767, out=x)
    return np.rint(x, out=np.empty(x.shape, np.int16), casting="unsafe")
