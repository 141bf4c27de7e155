"""A continuous synthetic head, defined as functions of LPS world position (mm).

Nothing here is tied to a voxel grid: :func:`sample` evaluates the phantom at the voxel
centres of any :class:`Grid` (oblique, anisotropic, any matrix), so every series of a
subject is a genuinely different acquisition of the same anatomy.

Model (in a *head frame*: x = towards the subject's left, y = posterior, z = superior,
origin at the head centre; ``world = head_center + head_rotation @ head``):

* head: an ellipsoid (semi-axes about 66 x 84 x 72 mm) with a smooth per-subject shape
  modulation; tissue layers are defined by the radial depth below its surface:
  scalp (4 mm), skull (6 mm), CSF (1-4 mm, thicker in "sulci"), cortical grey matter
  (2-4 mm), white matter below;
* deep grey matter (thalami, lentiform nuclei) and CSF (lateral and third ventricles)
  as ellipsoids;
* lesions: ellipsoids (semi-axes 2-6 mm) inside white matter, pairwise separated by a
  gap larger than the voxel diagonal of the grid the mask is written on, so that on that
  grid the 26-connected components of the mask are exactly the lesions.

The label mask is point-sampled at voxel centres (no partial volume), so the truth
volume of a mask is exactly ``voxel count x prod(spacing)``. Images are point-sampled,
lightly smoothed (sigma 0.5 voxel, a little partial-volume look), multiplied by a smooth
bias field (within +-15 %) and given Rician noise.

Example:
    >>> import numpy as np
    >>> p = random_subject(np.random.default_rng(0), "PH000")
    >>> g = make_grid("ax", (6.0, 6.0, 6.0), p)
    >>> img = sample(p, "FLAIR", g)
    >>> img.shape == g.shape_zyx and img.dtype == np.float32 and bool(img.min() >= 0)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import cc3d
import numpy as np
from scipy import ndimage

from pipeline.core.volume import Volume, affine_lps_of

# ------------------------------------------------------------------------------ tissues
BACKGROUND, SCALP, SKULL, CSF, GM, WM, LESION = range(7)
TISSUE_NAMES = ("background", "scalp", "skull", "csf", "gm", "wm", "lesion")

CONTRASTS = ("FLAIR", "T1", "T2")
#: Relative signal per tissue (index = tissue label) and contrast; multiplied by SIGNAL_SCALE.
INTENSITY: dict[str, tuple[float, ...]] = {
    #          bg    scalp  skull  csf    gm     wm     lesion
    "FLAIR": (0.0, 0.55, 0.05, 0.06, 0.62, 0.45, 1.00),  # lesion hyperintense, CSF dark
    "T1": (0.0, 0.95, 0.05, 0.15, 0.55, 0.80, 0.35),  # lesion dark, WM brighter than GM
    "T2": (0.0, 0.45, 0.05, 1.20, 0.70, 0.50, 0.95),  # lesion and CSF bright
}
SIGNAL_SCALE = 1000.0
#: Noise sigma = NOISE_REFERENCE * SIGNAL_SCALE / snr (a typical brain signal over SNR).
NOISE_REFERENCE = 0.5

NOMINAL_HEAD_AXES = (66.0, 84.0, 72.0)
SCALP_MM, SKULL_MM = 4.0, 6.0

# Deep structures in the nominal head frame: (center, semi-axes, yaw degrees, tissue).
_DEEP: tuple[tuple[tuple[float, float, float], tuple[float, float, float], float, int], ...] = (
    ((-11.0, 8.0, 2.0), (7.5, 11.0, 7.5), 0.0, GM),  # thalami
    ((11.0, 8.0, 2.0), (7.5, 11.0, 7.5), 0.0, GM),
    ((-23.0, -3.0, 2.0), (5.0, 13.0, 8.0), -12.0, GM),  # lentiform nuclei
    ((23.0, -3.0, 2.0), (5.0, 13.0, 8.0), 12.0, GM),
)
_VENTRICLES: tuple[tuple[tuple[float, float, float], tuple[float, float, float], float], ...] = (
    ((-8.5, -2.0, 13.0), (4.5, 23.0, 7.0), 8.0),  # lateral ventricles (semi-axes scaled by ventricle_scale)
    ((8.5, -2.0, 13.0), (4.5, 23.0, 7.0), -8.0),
    ((0.0, 7.0, 2.0), (1.5, 9.0, 6.0), 0.0),  # third ventricle
)


# ------------------------------------------------------------------------------ grids
class Grid(NamedTuple):
    """A voxel grid in ITK conventions: ``shape_xyz``, ``spacing`` (x, y, z) mm, LPS ``origin``
    of voxel (0, 0, 0) and 3x3 ``direction`` (column i = voxel axis i in LPS)."""

    shape_xyz: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        x, y, z = self.shape_xyz
        return (z, y, x)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    @property
    def affine_lps(self) -> np.ndarray:
        return affine_lps_of(self.spacing, self.origin, self.direction)

    def index_to_world(self, ijk: Any) -> np.ndarray:
        """LPS mm of voxel indices ``(..., 3)`` in (x, y, z) order."""
        a = self.affine_lps
        return np.asarray(ijk, float) @ a[:3, :3].T + a[:3, 3]

    def world_to_index(self, points: Any) -> np.ndarray:
        """Continuous voxel indices (x, y, z order) of LPS points ``(..., 3)``."""
        a = self.affine_lps
        return (np.asarray(points, float) - a[:3, 3]) @ np.linalg.inv(a[:3, :3]).T

    def world(self, box: tuple[slice, slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS coordinates (px, py, pz) of voxel centres, each ``[z, y, x]`` (optionally a sub-box
        given as array slices in ``[z, y, x]`` order)."""
        nz, ny, nx = self.shape_zyx
        box = box or (slice(0, nz), slice(0, ny), slice(0, nx))
        k = np.arange(nz, dtype=float)[box[0]][:, None, None]
        j = np.arange(ny, dtype=float)[box[1]][None, :, None]
        i = np.arange(nx, dtype=float)[box[2]][None, None, :]
        a = self.affine_lps
        return tuple(a[r, 3] + a[r, 0] * i + a[r, 1] * j + a[r, 2] * k for r in range(3))  # type: ignore[return-value]

    def shifted(self, voxels_xyz: Sequence[float], shape_delta_xyz: Sequence[int] = (0, 0, 0)) -> Grid:
        """The same orientation/spacing, origin moved by ``voxels_xyz`` voxels, shape changed."""
        origin = self.index_to_world(np.asarray(voxels_xyz, float))
        shape = tuple(int(s + d) for s, d in zip(self.shape_xyz, shape_delta_xyz))
        return Grid(shape, self.spacing, tuple(float(o) for o in origin), self.direction)  # type: ignore[arg-type]

    def to_volume(self, array: np.ndarray, meta: dict[str, Any] | None = None) -> Volume:
        return Volume(array, spacing=self.spacing, origin=self.origin, direction=self.direction, meta=dict(meta or {}))

    @classmethod
    def from_volume(cls, v: Volume) -> Grid:
        return cls(v.shape_xyz, v.spacing, v.origin, np.asarray(v.direction, float))

    def to_json(self) -> dict[str, Any]:
        return {
            "shape_xyz": [int(s) for s in self.shape_xyz],
            "spacing": [float(s) for s in self.spacing],
            "origin": [float(o) for o in self.origin],
            "direction": [float(d) for d in np.asarray(self.direction, float).reshape(-1)],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Grid:
        return cls(
            tuple(int(s) for s in d["shape_xyz"]),  # type: ignore[arg-type]
            tuple(float(s) for s in d["spacing"]),  # type: ignore[arg-type]
            tuple(float(o) for o in d["origin"]),  # type: ignore[arg-type]
            np.asarray(d["direction"], float).reshape(3, 3),
        )


#: Base direction matrices (columns = row dir, column dir, slice normal), all right-handed.
ORIENTATIONS: dict[str, np.ndarray] = {
    "ax": np.eye(3),
    "sag": np.column_stack([(0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)]),
    "cor": np.column_stack([(1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0)]),
}


def rotation(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """Right-handed rotation matrix about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    t = math.radians(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def euler(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` from angles in degrees."""
    return rotation((0, 0, 1), rz) @ rotation((0, 1, 0), ry) @ rotation((1, 0, 0), rx)


# ------------------------------------------------------------------------------ params
@dataclass(frozen=True)
class Lesion:
    """An ellipsoid lesion in the head frame (mm)."""

    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    rotation: np.ndarray  # columns = ellipsoid axes in the head frame
    intensity: float = 1.0  # multiplies the lesion signal of every contrast

    @property
    def radius(self) -> float:
        return float(max(self.semi_axes))


@dataclass(frozen=True)
class SubjectParams:
    """Everything that defines one synthetic subject's anatomy and image appearance."""

    label: str
    head_center: tuple[float, float, float]  # LPS mm
    head_rotation: np.ndarray  # head frame -> LPS
    head_axes: tuple[float, float, float]  # semi-axes of the scalp surface, mm
    shape_mod: tuple[float, float, float, float]  # small radial shape modulation coefficients
    sulcal_phase: tuple[float, float, float]
    gm_phase: tuple[float, float, float]
    ventricle_scale: float
    bias: dict[str, tuple[float, ...]]  # contrast -> 9 polynomial coefficients
    snr: float
    noise_seed: int
    lesions: tuple[Lesion, ...] = field(default_factory=tuple)

    # -------------------------------------------------------------- frame conversions
    def to_head(self, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r = self.head_rotation
        c = self.head_center
        dx, dy, dz = px - c[0], py - c[1], pz - c[2]
        return (
            r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
            r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
            r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz,
        )

    def head_to_world(self, h: Any) -> np.ndarray:
        return np.asarray(h, float) @ self.head_rotation.T + np.asarray(self.head_center)

    def lesion_world(self, lesion: Lesion) -> tuple[np.ndarray, np.ndarray]:
        """(centre in LPS mm, world rotation whose columns are the ellipsoid axes)."""
        return self.head_to_world(lesion.center), self.head_rotation @ lesion.rotation

    def head_half_extent(self, u: Sequence[float], margin: float = 0.0) -> float:
        """Half-extent (mm) of the head along world unit vector ``u``, about its centre."""
        hu = self.head_rotation.T @ np.asarray(u, float)
        a = np.asarray(self.head_axes) * (1.0 + float(np.sum(np.abs(self.shape_mod))))
        return float(np.sqrt(np.sum((a * hu) ** 2))) + margin

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "head_center": [float(v) for v in self.head_center],
            "head_rotation": [float(v) for v in self.head_rotation.reshape(-1)],
            "head_axes": [float(v) for v in self.head_axes],
            "shape_mod": [float(v) for v in self.shape_mod],
            "ventricle_scale": float(self.ventricle_scale),
            "snr": float(self.snr),
            "noise_seed": int(self.noise_seed),
            "lesions": [
                {
                    "center_lps": [float(v) for v in self.lesion_world(les)[0]],
                    "semi_axes": [float(v) for v in les.semi_axes],
                    "rotation_lps": [float(v) for v in self.lesion_world(les)[1].reshape(-1)],
                    "intensity": float(les.intensity),
                }
                for les in self.lesions
            ],
        }


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (det +1)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def random_subject(rng: np.random.Generator, label: str, snr: float | None = None) -> SubjectParams:
    """Draw a subject (anatomy, rigid head pose, bias fields, SNR); no lesions yet."""
    axes = tuple(float(a * rng.uniform(0.96, 1.04)) for a in NOMINAL_HEAD_AXES)
    rot = euler(*(float(v) for v in rng.uniform(-5.0, 5.0, size=3)))
    center = tuple(float(v) for v in rng.uniform(-5.0, 5.0, size=3))
    shape_mod = tuple(float(v) for v in rng.uniform(-0.025, 0.025, size=4))
    bias = {c: tuple(float(v) for v in rng.normal(0.0, 0.6, size=9)) for c in CONTRASTS}
    return SubjectParams(
        label=label,
        head_center=center,  # type: ignore[arg-type]
        head_rotation=rot,
        head_axes=axes,  # type: ignore[arg-type]
        shape_mod=shape_mod,  # type: ignore[arg-type]
        sulcal_phase=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, size=3)),  # type: ignore[arg-type]
        gm_phase=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, size=3)),  # type: ignore[arg-type]
        ventricle_scale=float(rng.uniform(0.8, 1.3)),
        bias=bias,
        snr=float(snr if snr is not None else rng.uniform(20.0, 30.0)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


# ------------------------------------------------------------------------------ tissue model
def _in_ellipsoid(hx, hy, hz, center, axes, rot: np.ndarray | None = None) -> np.ndarray:
    dx, dy, dz = hx - center[0], hy - center[1], hz - center[2]
    if rot is not None:  # coordinates along the ellipsoid's axes (columns of rot)
        dx, dy, dz = (
            rot[0, 0] * dx + rot[1, 0] * dy + rot[2, 0] * dz,
            rot[0, 1] * dx + rot[1, 1] * dy + rot[2, 1] * dz,
            rot[0, 2] * dx + rot[1, 2] * dy + rot[2, 2] * dz,
        )
    return (dx / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dz / axes[2]) ** 2 <= 1.0


def tissue_at(params: SubjectParams, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    """Tissue label (uint8, see ``TISSUE_NAMES``) at LPS points, *without* lesions."""
    px, py, pz = np.broadcast_arrays(np.asarray(px, float), np.asarray(py, float), np.asarray(pz, float))
    hx, hy, hz = params.to_head(px, py, pz)
    rn = np.sqrt(hx * hx + hy * hy + hz * hz)
    rs = np.maximum(rn, 1e-9)
    ux, uy, uz = hx / rs, hy / rs, hz / rs
    a, b, c = params.head_axes
    k0, k1, k2, k3 = params.shape_mod
    mod = 1.0 + k0 * ux * uy + k1 * (uz * uz - 1.0 / 3.0) + k2 * uy * uz + k3 * uy
    depth = mod / np.sqrt((ux / a) ** 2 + (uy / b) ** 2 + (uz / c) ** 2) - rn  # mm below the scalp surface

    lab = np.zeros(px.shape, np.uint8)
    lab[depth >= 0] = SCALP
    lab[depth >= SCALP_MM] = SKULL
    inner = SCALP_MM + SKULL_MM
    brain = depth >= inner
    lab[brain] = CSF
    # cortex: CSF 1-4 mm (deeper in "sulci"), grey matter 2-4 mm, white matter below
    idx = np.nonzero(brain & (depth < inner + 9.0))
    w = 2 * np.pi / 18.0
    sp, gp = params.sulcal_phase, params.gm_phase
    sul = np.sin(hx[idx] * w + sp[0]) * np.sin(hy[idx] * w + sp[1]) * np.sin(hz[idx] * w + sp[2])
    gmv = np.sin(hx[idx] * w * 0.7 + gp[0]) * np.sin(hy[idx] * w * 0.7 + gp[1]) * np.sin(hz[idx] * w * 0.7 + gp[2])
    csf_t = 1.0 + 3.0 * np.clip(sul, 0.0, 1.0) ** 2
    gm_t = 3.0 + 1.0 * gmv
    d = depth[idx] - inner
    sub = np.full(d.shape, WM, np.uint8)
    sub[d < csf_t + gm_t] = GM
    sub[d < csf_t] = CSF
    lab[idx] = sub
    lab[brain & (depth >= inner + 9.0)] = WM

    # deep grey matter and ventricles (only near the centre; evaluated on that subset)
    core = np.nonzero((np.abs(hx) < 40.0) & (np.abs(hy) < 45.0) & (np.abs(hz) < 30.0) & (lab >= GM))
    if core[0].size:
        cx, cy, cz = hx[core], hy[core], hz[core]
        scale = np.asarray(params.head_axes) / np.asarray(NOMINAL_HEAD_AXES)
        sub = lab[core]
        for ctr, ax, yaw, tissue in _DEEP:
            sub[_in_ellipsoid(cx, cy, cz, np.asarray(ctr) * scale, np.asarray(ax) * scale, rotation((0, 0, 1), yaw))] = tissue
        vs = params.ventricle_scale
        for n, (ctr, ax, yaw) in enumerate(_VENTRICLES):
            axs = np.asarray(ax) * scale * (np.array([vs, 1.0, vs]) if n < 2 else 1.0)
            sub[_in_ellipsoid(cx, cy, cz, np.asarray(ctr) * scale, axs, rotation((0, 0, 1), yaw))] = CSF
        lab[core] = sub
    return lab


# ------------------------------------------------------------------------------ lesions
def _lesion_box(params: SubjectParams, lesion: Lesion, grid: Grid) -> tuple[slice, slice, slice] | None:
    """Array-order ([z, y, x]) slices of the grid voxels that can lie inside ``lesion``."""
    centre, _ = params.lesion_world(lesion)
    ijk = grid.world_to_index(centre)
    half = lesion.radius / np.asarray(grid.spacing) + 1.0
    lo = np.maximum(np.floor(ijk - half).astype(int), 0)
    hi = np.minimum(np.ceil(ijk + half).astype(int) + 1, np.asarray(grid.shape_xyz))
    if np.any(hi <= lo):
        return None
    return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))


def _lesion_voxels(params: SubjectParams, lesion: Lesion, grid: Grid) -> tuple[tuple[slice, slice, slice] | None, np.ndarray]:
    box = _lesion_box(params, lesion, grid)
    if box is None:
        return None, np.zeros((0, 0, 0), bool)
    centre, rot = params.lesion_world(lesion)
    px, py, pz = grid.world(box)
    return box, _in_ellipsoid(px, py, pz, centre, lesion.semi_axes, rot)


def lesion_ids(params: SubjectParams, grid: Grid) -> np.ndarray:
    """int16 ``[z, y, x]`` map: 0 outside lesions, n inside ``params.lesions[n - 1]`` (voxel centres)."""
    ids = np.zeros(grid.shape_zyx, np.int16)
    for n, les in enumerate(params.lesions, start=1):
        box, inside = _lesion_voxels(params, les, grid)
        if box is not None:
            ids[box][inside] = n
    return ids


def sample_lesion_mask(params: SubjectParams, grid: Grid) -> np.ndarray:
    """Binary uint8 ``[z, y, x]`` lesion mask, membership evaluated at voxel centres (exact)."""
    return (lesion_ids(params, grid) > 0).astype(np.uint8)


def _fibonacci_sphere(n: int = 96) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.column_stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)])


_SPHERE = np.vstack([np.zeros((1, 3)), _fibonacci_sphere(96)])


def place_lesions(
    params: SubjectParams,
    rng: np.random.Generator,
    n_lesions: int,
    mask_grid: Grid,
    *,
    min_gap_mm: float = 3.0,
    min_voxels: int = 3,
    max_tries: int = 5000,
) -> SubjectParams:
    """Return ``params`` with ``n_lesions`` lesions placed inside white matter.

    Each lesion has semi-axes 2-6 mm, lies in white matter with a 1.5 mm margin (tested on
    its surface), keeps a gap of at least ``max(min_gap_mm, voxel diagonal of mask_grid +
    0.5)`` to every other lesion (bounding spheres, so 26-neighbouring voxels of two lesions
    cannot exist on ``mask_grid``), and on ``mask_grid`` covers at least ``min_voxels``
    voxel centres forming exactly one 26-connected component.
    """
    gap = max(min_gap_mm, float(np.linalg.norm(mask_grid.spacing)) + 0.5)
    scale = np.asarray(params.head_axes) / np.asarray(NOMINAL_HEAD_AXES)
    box = np.array([40.0, 55.0, 42.0]) * scale
    placed: list[Lesion] = []
    for _ in range(max_tries):
        if len(placed) == n_lesions:
            break
        semi = tuple(float(v) for v in rng.uniform(2.0, 6.0, size=3))
        rot = random_rotation(rng)
        centre = rng.uniform(-box, box)
        intensity = float(rng.uniform(0.9, 1.1))
        les = Lesion(tuple(float(v) for v in centre), semi, rot, intensity)  # type: ignore[arg-type]
        if any(np.linalg.norm(centre - np.asarray(o.center)) < les.radius + o.radius + gap for o in placed):
            continue
        pts_head = centre + (_SPHERE * (np.asarray(semi) + 1.5)) @ rot.T
        pts = params.head_to_world(pts_head)
        if not np.all(tissue_at(params, pts[:, 0], pts[:, 1], pts[:, 2]) == WM):
            continue
        probe = replace(params, lesions=(les,))
        vbox, inside = _lesion_voxels(probe, les, mask_grid)
        if vbox is None or int(inside.sum()) < min_voxels:
            continue
        if cc3d.connected_components(inside.astype(np.uint8), connectivity=26, return_N=True)[1] != 1:
            continue
        placed.append(les)
    if len(placed) < n_lesions:
        raise RuntimeError(f"could not place {n_lesions} lesions for {params.label} in {max_tries} tries")
    return replace(params, lesions=tuple(placed))


# ------------------------------------------------------------------------------ images
def bias_field(params: SubjectParams, contrast: str, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    """Smooth multiplicative field within [0.85, 1.15] (quadratic polynomial in the head frame)."""
    hx, hy, hz = params.to_head(px, py, pz)
    x, y, z = hx / 80.0, hy / 80.0, hz / 80.0
    c = params.bias[contrast]
    poly = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * z * z + c[6] * x * y + c[7] * x * z + c[8] * y * z
    return 1.0 + 0.15 * np.tanh(poly)


def sample_tissue(params: SubjectParams, grid: Grid) -> np.ndarray:
    """Tissue labels (uint8 ``[z, y, x]``) at the voxel centres of ``grid``, lesions included."""
    lab = tissue_at(params, *grid.world())
    lab[lesion_ids(params, grid) > 0] = LESION
    return lab


def sample(
    params: SubjectParams,
    contrast: str,
    grid: Grid,
    *,
    noise: bool = True,
    smooth_voxels: float = 0.5,
    noise_key: int = 0,
) -> np.ndarray:
    """Image of ``contrast`` ("FLAIR", "T1", "T2") on ``grid``: float32 ``[z, y, x]``, values >= 0.

    Deterministic: the noise comes from ``(params.noise_seed, contrast, noise_key)``.
    """
    if contrast not in INTENSITY:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of {sorted(INTENSITY)}")
    px, py, pz = grid.world()
    lab = tissue_at(params, px, py, pz)
    ids = lesion_ids(params, grid)
    table = np.asarray(INTENSITY[contrast], np.float32) * np.float32(SIGNAL_SCALE)
    img = table[lab]
    if params.lesions:
        factors = np.asarray([1.0] + [les.intensity for les in params.lesions], np.float32)
        inl = ids > 0
        img[inl] = table[LESION] * factors[ids[inl]]
    if smooth_voxels > 0:
        img = ndimage.gaussian_filter(img, smooth_voxels, truncate=3.0)
    img *= bias_field(params, contrast, px, py, pz).astype(np.float32)
    if noise:
        rng = np.random.default_rng([params.noise_seed, CONTRASTS.index(contrast), noise_key])
        sigma = np.float32(NOISE_REFERENCE * SIGNAL_SCALE / params.snr)
        n1 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
        n2 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
        img = np.sqrt((img + n1) ** 2 + n2 * n2)
    return np.ascontiguousarray(img, dtype=np.float32)


# ------------------------------------------------------------------------------ grid building
def make_grid(
    orientation: str,
    spacing: Sequence[float],
    params: SubjectParams,
    *,
    tilt_deg: float = 0.0,
    tilt_axis: Sequence[float] = (1.0, 0.0, 0.0),
    center: Sequence[float] = (0.0, 0.0, 0.0),
    margin_mm: float = 5.0,
    n_slices: int | None = None,
) -> Grid:
    """A grid of ``orientation`` ("ax", "sag", "cor"), tilted by ``tilt_deg`` about the world
    ``tilt_axis``, centred on ``center`` (LPS) and covering the whole head of ``params``.

    ``n_slices`` fixes the number of slices (e.g. 1 for a localizer slice through ``center``).
    """
    base = ORIENTATIONS[orientation]
    direction = rotation(tilt_axis, tilt_deg) @ base if tilt_deg else base.copy()
    spacing = np.asarray(spacing, float)
    center = np.asarray(center, float)
    off = np.asarray(params.head_center) - center
    shape = []
    for ax in range(3):
        u = direction[:, ax]
        half = abs(float(u @ off)) + params.head_half_extent(u, margin_mm)
        shape.append(int(math.ceil(2 * half / spacing[ax])) + 1)
    if n_slices is not None:
        shape[2] = n_slices
    shape_a = np.asarray(shape, float)
    origin = center - direction @ (spacing * (shape_a - 1) / 2.0)
    return Grid(tuple(shape), tuple(float(s) for s in spacing), tuple(float(o) for o in origin), direction)  # type: ignore[arg-type]
