"""Procedural street scenes: the built-in data set (no download) with CamVid's 11 classes and
metric depth for every pixel.

A pinhole camera 1.5 m above a straight road looks along it (FOCAL_X, HORIZON in
synthetic_raster). The street (synthetic_scene) has lanes with markings, kerbs and pavements,
building facades with windows, trees, lamp posts, signs, fences, moving and parked cars,
pedestrians and cyclists, under a sky with clouds and a sun that shades each face by its
orientation. Objects are drawn far to near (painter's order) with a depth test, so the label
and depth of a pixel always belong to the surface whose colour it shows.

Raw sample (docs/architecture.md): ``image`` uint8 (H, W, 3), ``label`` int64 (H, W) in 0..10
or 255 (only on the out-of-distribution object), ``depth`` float32 (H, W) metres, ``valid``
bool (H, W) = label != 255, ``depth_valid`` bool (H, W) = depth within [MIN_DEPTH, MAX_DEPTH]
(every rendered pixel), ``ood`` bool (H, W), ``name`` str.

Depth conventions: depth is the z-distance along the optical axis (as in NYU/KITTI). The sky
and anything farther than MAX_DEPTH = 80 m is *clamped* to 80 m and stays valid, so a depth
model learns "far" there; nearest possible depth is MIN_DEPTH = 0.5 m. Depth is correct on the
OOD object too (``valid`` is False there only because its label is void; ``depth_valid`` is
True).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from torch.utils.data import Dataset

from ..errors import ConfigError
from . import synthetic_shifts as shifts_mod
from .synthetic_objects import DRAWERS
from .synthetic_raster import (
    MAX_DEPTH,
    Canvas,
    draw_background,
    draw_building,
    draw_fence,
    draw_shadow,
)
from .synthetic_scene import CAMERA_HEIGHT, Layout, make_layout, scene_objects

MIN_DEPTH = 0.5
SPEED = 8.0  # m/s: default camera speed (about 29 km/h)
OOD_SPECIES = ("cow", "deer")
_DRAW = {
    "building": draw_building,
    "fence": draw_fence,
    "animal": shifts_mod.draw_animal,
    **DRAWERS,
}


@dataclass
class FrameParams:
    """Everything that determines one frame."""

    seed: int  # street layout
    t: float = 0.0  # time (s); the camera is at z = speed * t
    speed: float = SPEED
    ood: bool = False  # place an animal on the road ahead
    ood_dist: float = 18.0  # its distance (m)
    ood_x: float = 0.0  # its lateral position (m; 0 = camera lane centre)
    ood_species: str = "cow"
    ood_facing: int = 1
    shifts: dict = field(default_factory=dict)  # {"fog" | "night" | "motion_blur" | "noise": 1..5}
    noise_seed: int = 0
    name: str | None = None

    @classmethod
    def from_seed(cls, seed: int, ood: bool = False, shifts: dict | None = None) -> FrameParams:
        rng = np.random.default_rng([int(seed), 31337])
        return cls(
            seed=int(seed), t=float(rng.uniform(0.0, 400.0)), ood=ood,
            ood_dist=float(rng.uniform(9.0, 28.0)), ood_x=float(rng.uniform(-0.7, 0.7)),
            ood_species=OOD_SPECIES[int(rng.integers(2))], ood_facing=int(rng.choice([-1, 1])),
            shifts=dict(shifts or {}), noise_seed=int(seed),
        )  # fmt: skip


def _check_size(size) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ConfigError(f"synthetic size must be (H, W), got {size!r}") from None
    if h < 8 or w < 8:
        raise ConfigError(f"synthetic size must be at least 8 x 8 pixels, got {h} x {w}")
    return h, w


def _render(lay: Layout, p: FrameParams, size: tuple[int, int], noise_key: tuple) -> dict:
    cam_z = p.speed * p.t
    cv = Canvas(size, lay, cam_z)
    draw_background(cv)
    obs = scene_objects(lay, cam_z, p.t)
    if p.ood:
        animal = {
            "kind": "animal", "z": p.ood_dist, "world_z": cam_z + p.ood_dist, "x": p.ood_x,
            "species": p.ood_species, "facing": p.ood_facing, "pattern": float(p.seed % 50),
        }  # fmt: skip
        # the animal blocks its lane: drop cars that would hide it or stand inside it
        obs = [
            o for o in obs
            if not (o["kind"] == "car" and abs(o["x"] - p.ood_x) < 2.6 and o["z"] < p.ood_dist + 4)
        ] + [animal]  # fmt: skip
    for ob in obs:
        if ob["kind"] == "car":
            draw_shadow(cv, ob)
    for ob in sorted(obs, key=lambda o: -o["z"]):  # painter's order: far to near
        _DRAW[ob["kind"]](cv, ob)
    rng = np.random.default_rng([int(k) & 0xFFFFFFFF for k in noise_key])
    img = _camera_effects(cv, p, rng)
    label = cv.label.astype(np.int64)
    ood = label == 255
    depth = np.minimum(cv.depth, MAX_DEPTH).astype(np.float32)
    return {
        "image": img, "label": label, "depth": depth, "valid": ~ood, "ood": ood,
        "depth_valid": depth >= MIN_DEPTH, "name": p.name or f"synthetic_{p.seed}",
    }  # fmt: skip


def _camera_effects(cv: Canvas, p: FrameParams, rng: np.random.Generator) -> np.ndarray:
    """Shifts (fog, night, blur) on the scene, then exposure, white balance, vignetting and
    sensor noise, then the noise shift; returns uint8 RGB."""
    sh = shifts_mod.check_shifts(p.shifts)
    img = cv.image
    if "fog" in sh:
        img = shifts_mod.fog(img, np.minimum(cv.depth, MAX_DEPTH), sh["fog"])
    if "night" in sh:
        camera = (cv.fx, cv.fy, cv.cx, cv.vh, CAMERA_HEIGHT)
        img = shifts_mod.night(img, cv.depth, cv.label, cv.lights, camera, sh["night"], rng)
    if "motion_blur" in sh:
        img = shifts_mod.motion_blur(img, (cv.cx, cv.vh), sh["motion_blur"])
    # per-frame exposure and white balance, lens vignetting, read noise
    gain = rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    img = img * (_vignette(cv.H, cv.W) * gain)
    img += _read_noise(img.shape, rng)
    if "noise" in sh:
        img = shifts_mod.noise(img, sh["noise"], rng)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _vignette(h: int, w: int) -> np.ndarray:
    r2 = ((np.arange(w) + 0.5) / w - 0.5) ** 2 + ((np.arange(h)[:, None] + 0.5) / h - 0.5) ** 2
    return (1.0 - 0.35 * r2)[..., None].astype(np.float32)


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    return np.random.default_rng(2024).standard_normal(1 << 21, dtype=np.float32) * 0.012


def _read_noise(shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Faint sensor read noise (sigma 0.012): a random window of a fixed bank of normal samples,
    because drawing fresh samples would take a third of the frame budget."""
    n = int(np.prod(shape))
    bank = _noise_bank()
    if n > bank.size // 2:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.012)
    start = int(rng.integers(0, bank.size - n))
    return bank[start : start + n].reshape(shape)


def render_frame(
    params: FrameParams | int,
    size: tuple[int, int] = (120, 160),
    shift: str | None = None,
    severity: int = 0,
    ood: bool | None = None,
) -> dict:
    """Render one frame from a seed (a random place on a random street) or FrameParams.

    ``shift``/``severity`` add one image shift; ``ood`` overrides whether an OOD animal is
    placed on the road. With ``ood`` the animal is guaranteed visible (moved nearer if hidden).
    """
    p = params if isinstance(params, FrameParams) else FrameParams.from_seed(int(params))
    shifts = dict(p.shifts)
    if shift is not None:
        shifts[shift] = severity
    p = FrameParams(**{**p.__dict__, "shifts": shifts, "ood": p.ood if ood is None else ood})
    shifts_mod.check_shifts(shifts)
    size = _check_size(size)
    lay = make_layout(p.seed, p.speed)
    sample = _render(lay, p, size, (p.noise_seed, 1))
    if p.ood and not sample["ood"].any():  # hidden: bring it close and into the camera lane
        p.ood_dist, p.ood_x = 9.0, 0.0
        sample = _render(lay, p, size, (p.noise_seed, 1))
    return sample


def render_sequence(
    n_frames: int,
    size: tuple[int, int] = (120, 160),
    seed: int = 0,
    fps: float = 10.0,
    speed: float = SPEED,
    shifts: dict | list[dict] | Callable[[int], dict] | None = None,
    ood_frames: Iterable[int] | None = None,
) -> Iterator[dict]:
    """Yield ``n_frames`` raw samples of a camera driving along one street at ``speed`` m/s.

    ``shifts``: one {name: severity} dict for all frames, a list with one dict per frame, or a
    function of the frame index. ``ood_frames``: indices of frames showing an animal standing
    on the road (it stays put as the camera approaches, and is kept at least 9 m ahead).
    """
    size = _check_size(size)
    if fps <= 0 or speed < 0:
        raise ConfigError(
            f"render_sequence needs fps > 0 and speed >= 0, got fps={fps}, speed={speed}"
        )
    base = FrameParams.from_seed(seed)
    lay = make_layout(base.seed, speed)
    ood_set = set(int(i) for i in (ood_frames or ()))
    first = min(ood_set) if ood_set else 0
    animal_z = speed * (base.t + first / fps) + 26.0
    for f in range(int(n_frames)):
        t = base.t + f / fps
        if callable(shifts):
            sh = shifts(f)
        elif isinstance(shifts, (list, tuple)):
            sh = shifts[f] if f < len(shifts) else {}
        else:
            sh = shifts or {}
        p = FrameParams(
            seed=base.seed, t=t, speed=speed, ood=f in ood_set,
            ood_dist=max(animal_z - speed * t, 9.0), ood_x=base.ood_x,
            ood_species=base.ood_species, ood_facing=base.ood_facing, shifts=dict(sh),
            noise_seed=seed, name=f"synthetic_seq{seed}_{f:05d}",
        )  # fmt: skip
        yield _render(lay, p, size, (seed, f, 2))


def sample_seed(seed: int, index: int) -> int:
    """Street seed of sample ``index`` of a data set seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


class SyntheticStreetScenes(Dataset):
    """``n`` procedurally rendered street frames; sample i depends only on (seed, i).

    The same (seed, i) gives the same scene whatever ``shift``/``ood``: a shifted or OOD
    data set shows the training-style scenes with only the shift or the animal added.
    """

    def __init__(
        self,
        n: int,
        size: tuple[int, int] = (120, 160),
        seed: int = 0,
        shift: str | None = None,
        severity: int = 0,
        ood: bool = False,
        transform: Callable[[dict], dict] | None = None,
        cache: bool = True,
    ):
        if int(n) < 0:
            raise ConfigError(f"synthetic data set size must be >= 0, got {n}")
        self.n, self.size, self.seed = int(n), _check_size(size), int(seed)
        self.shifts = shifts_mod.check_shifts({shift: severity} if shift else {})
        if shift and not severity:
            raise ConfigError(f"synthetic shift {shift!r} needs a severity 1..5")
        self.ood, self.transform = bool(ood), transform
        # Rendered frames are kept (about 0.2 MB each at 120x160): rendering is ~10x the cost of
        # augmenting, and every epoch would otherwise render the same frames again.
        self._cache: dict[int, dict] | None = {} if cache else None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not -self.n <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} synthetic samples")
        i %= self.n
        sample = self._cache.get(i) if self._cache is not None else None
        if sample is None:
            p = FrameParams.from_seed(sample_seed(self.seed, i), ood=self.ood, shifts=self.shifts)
            p.name = f"synthetic_{self.seed}_{i:05d}"
            sample = render_frame(p, self.size)
            if self._cache is not None:
                self._cache[i] = sample
        # Transforms get a shallow copy, so they can never alter the cached arrays' dict.
        return self.transform(dict(sample)) if self.transform is not None else dict(sample)
