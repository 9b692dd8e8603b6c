"""CamVid-C: image corruptions at five severities, deterministic by seed (ImageNet-C style).

Each corruption in :data:`CORRUPTIONS` maps ``(image uint8 (H, W, 3) RGB, severity 1..5,
rng np.random.Generator) -> uint8 (H, W, 3)`` and changes only the image (labels stay those of
the clean frame). Severities are graded as in Hendrycks & Dietterich (2019, ImageNet-C): 1 is
visible but mild, 5 is severe but a person still recognises the street. Values are ImageNet-C's
where they transfer (noise std, JPEG quality), otherwise chosen so the mean absolute difference
from the clean frame grows with every step.

Sizes marked px@360 are pixels on a 360-pixel-high frame (CamVid's native height) and scale with
``s = H / 360``, so a severity degrades the scene alike at any evaluation resolution; noise,
colour, compression and the relative factors (zoom, pixelate) do not scale.

==============  ==============================================  =================================
corruption      parameter                                       severity 1 / 2 / 3 / 4 / 5
==============  ==============================================  =================================
gaussian_noise  noise std, fraction of 255, per channel         .08 / .12 / .18 / .26 / .38
shot_noise      photons per unit linear intensity (Poisson)     120 / 60 / 30 / 15 / 8
motion_blur     line length px@360 (odd), angle U(-20, 20) deg  7 / 13 / 21 / 29 / 39
defocus_blur    disk radius px@360, then Gaussian 0.5 px@360    3 / 5 / 7 / 10 / 14
zoom_blur       largest of 10 zooms about the centre, averaged  1.06 / 1.10 / 1.15 / 1.20 / 1.26
fog             mean haze density (x 0.5..1.5 fractal, <= .95)  .30 / .42 / .54 / .64 / .74
                fractal amplitude decay per octave              2.0 / 2.0 / 1.7 / 1.5 / 1.4
rain            drops (albumentations rain_type)                drizzle H/4 / default H/3 /
                                                                heavy H / torrential 2H / 2H
                drop length px@360                              20 / 30 / 40 / 45 / 55
                brightness factor                               .90 / .85 / .80 / .75 / .60
                drop width 1 px, box blur 5 px@360, slant +-10 px@360
snow            fraction of cells holding a flake               .02 / .04 / .06 / .08 / .10
                flake size px@360                               3 / 4 / 4 / 5 / 5
                fall streak px@360, angle U(-135, -45) deg      5 / 7 / 9 / 11 / 13
                image kept (rest whitened to 1.5 gray + .5)     .90 / .85 / .80 / .75 / .70
darkness        gain                                            .80 / .65 / .52 / .42 / .33
                gamma                                           1.1 / 1.2 / 1.3 / 1.4 / 1.5
                red, green factor (blue cast)                   .95 .97 / .90 .94 / .85 .90 /
                                                                .80 .87 / .75 .84
                sensor noise std, fraction of 255, after gain   .010 / .015 / .020 / .025 / .030
contrast        factor about the image mean                     .50 / .40 / .30 / .20 / .12
jpeg            JPEG quality                                    25 / 18 / 15 / 10 / 7
pixelate        downscale factor (area down, nearest up)        .55 / .42 / .33 / .26 / .20
==============  ==============================================  =================================

Implementation: gaussian_noise, shot_noise, motion_blur, rain and jpeg are albumentations
transforms with every strength pinned (ranges (v, v)) and their own seed drawn from ``rng``. The
rest are numpy/cv2: albumentations' Defocus takes only integer radii (severities collide once
scaled to 180x240), RandomFog stacks opaque discs centred on the image (bokeh rather than haze),
RandomSnow's texture method wraps bright pixels round to black, and no transform scales contrast
about the mean or casts colour. shot_noise works in linear RGB (albumentations ShotNoise), where
ImageNet-C's sRGB photon counts (60..3) would black out CamVid's dark frames, hence larger counts.
motion_blur's angle stays within 20 degrees of horizontal (camera yaw) so that a random angle
never outweighs a severity step.

:func:`corrupt` draws its generator from ``np.random.SeedSequence((seed, crc32(name), severity,
index))`` only, so results never depend on global numpy/torch/python random state.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np

from ..errors import ConfigError, DataError

REF_HEIGHT = 360  # px: height at which "px@360" sizes hold
SEVERITIES = (1, 2, 3, 4, 5)

GAUSS_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_PHOTONS = (120, 60, 30, 15, 8)
MOTION_LENGTH = (7, 13, 21, 29, 39)
DEFOCUS_RADIUS = (3, 5, 7, 10, 14)
ZOOM_MAX = (1.06, 1.10, 1.15, 1.20, 1.26)
FOG = ((0.30, 2.0), (0.42, 2.0), (0.54, 1.7), (0.64, 1.5), (0.74, 1.4))  # density, decay
FOG_AIRLIGHT = np.float32([0.76, 0.77, 0.79])  # light grey, slightly blue
RAIN = (
    ("drizzle", 20, 0.90),
    ("default", 30, 0.85),
    ("heavy", 40, 0.80),
    ("torrential", 45, 0.75),
    ("torrential", 55, 0.60),
)
# fraction of noise cells that are flakes, flake size px@360, streak px@360, image kept
SNOW = (
    (0.02, 3, 5, 0.90),
    (0.04, 4, 7, 0.85),
    (0.06, 4, 9, 0.80),
    (0.08, 5, 11, 0.75),
    (0.10, 5, 13, 0.70),
)
# gain, gamma, red factor, green factor, noise std
DARKNESS = (
    (0.80, 1.10, 0.95, 0.97, 0.010),
    (0.65, 1.20, 0.90, 0.94, 0.015),
    (0.52, 1.30, 0.85, 0.90, 0.020),
    (0.42, 1.40, 0.80, 0.87, 0.025),
    (0.33, 1.50, 0.75, 0.84, 0.030),
)
CONTRAST = (0.50, 0.40, 0.30, 0.20, 0.12)
JPEG_QUALITY = (25, 18, 15, 10, 7)
PIXELATE = (0.55, 0.42, 0.33, 0.26, 0.20)

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _scale(img: np.ndarray) -> float:
    return img.shape[0] / REF_HEIGHT


def _odd(x: float) -> int:
    """Nearest odd integer >= 3 (kernel sizes)."""
    return max(3, 2 * int(np.floor(x / 2)) + 1)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8, rounding to nearest."""
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _albu(transform: A.BasicTransform, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Each transform gets its own generators, so albumentations never reads global state.
    transform.set_random_seed(int(rng.integers(2**32)))
    return transform(image=img)["image"]


def gaussian_noise(img, severity, rng):
    std = GAUSS_STD[severity - 1]
    return _albu(A.GaussNoise(std_range=(std, std), per_channel=True, p=1.0), img, rng)


def shot_noise(img, severity, rng):
    scale = 1.0 / SHOT_PHOTONS[severity - 1]
    return _albu(A.ShotNoise(scale_range=(scale, scale), p=1.0), img, rng)


def motion_blur(img, severity, rng):
    k = _odd(MOTION_LENGTH[severity - 1] * _scale(img))
    # The kernel is symmetric (direction 0), so 160..200 is -20..20 degrees.
    blur = A.MotionBlur(
        blur_limit=(k, k), angle_range=(160, 200), direction_range=(0, 0), allow_shifted=False, p=1
    )
    return _albu(blur, img, rng)


def defocus_blur(img, severity, rng):
    s = _scale(img)
    radius = DEFOCUS_RADIUS[severity - 1] * s
    r = int(np.ceil(radius)) + 1
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (x * x + y * y <= radius * radius).astype(np.float32)
    disk = cv2.GaussianBlur(disk, (0, 0), sigmaX=max(0.5 * s, 0.3))
    return cv2.filter2D(img, -1, disk / disk.sum(), borderType=cv2.BORDER_REFLECT)


def zoom_blur(img, severity, rng):
    h, w = img.shape[:2]
    zooms = np.linspace(1.0, ZOOM_MAX[severity - 1], 11)[1:]
    acc = img.astype(np.float32)
    for z in zooms:
        m = np.float32([[z, 0, (1 - z) * w / 2], [0, z, (1 - z) * h / 2]])
        acc += cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return _to_uint8(acc / (255.0 * (len(zooms) + 1)))


def _fractal(shape: tuple[int, int], decay: float, rng: np.random.Generator) -> np.ndarray:
    """Fractal noise in [0, 1], float32 (H, W): octaves of upsampled white noise whose amplitude
    falls by ``decay`` per halving of the cell size (lower decay = rougher)."""
    h, w = shape
    out = np.zeros((h, w), np.float32)
    cells, amp = 4, 1.0
    while cells <= 2 * max(h, w):
        small = rng.standard_normal((cells, cells), dtype=np.float32)
        out += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        cells, amp = cells * 2, amp / decay
    return (out - out.min()) / max(float(out.max() - out.min()), 1e-6)


def fog(img, severity, rng):
    density, decay = FOG[severity - 1]
    x = img.astype(np.float32) / 255.0
    haze = np.minimum(density * (0.5 + _fractal(img.shape[:2], decay, rng)), 0.95)[..., None]
    return _to_uint8(x * (1.0 - haze) + FOG_AIRLIGHT * haze)


def rain(img, severity, rng):
    kind, length, bright = RAIN[severity - 1]
    s = _scale(img)
    slant = 10 * s
    drops = A.RandomRain(
        rain_type=kind, slant_range=(-slant, slant), drop_length=max(1, round(length * s)),
        drop_width=max(1, round(s)), blur_value=max(1, round(5 * s)),
        brightness_coefficient=bright, p=1.0,
    )  # fmt: skip
    return _albu(drops, img, rng)


def _streak(layer: np.ndarray, length: float, angle: float) -> np.ndarray:
    """Blur a float32 (H, W) layer along a line of ``length`` px at ``angle`` degrees."""
    k = _odd(length)
    kernel = np.zeros((k, k), np.float32)
    dx, dy = np.cos(np.deg2rad(angle)) * k / 2, np.sin(np.deg2rad(angle)) * k / 2
    c = k // 2
    cv2.line(kernel, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1.0, 1)
    return cv2.filter2D(layer, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def snow(img, severity, rng):
    frac, flake, streak, keep = SNOW[severity - 1]
    h, w = img.shape[:2]
    s = _scale(img)
    cell = max(1.0, flake * s / 2)  # a flake spans about two noise cells
    shape = (max(2, round(h / cell)), max(2, round(w / cell)))
    flakes = np.where(rng.random(shape) < frac, rng.uniform(0.7, 1.0, shape), 0.0)
    layer = cv2.resize(flakes.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    # Streaking spreads a flake over the line; rescale so a streak keeps the flake's brightness.
    length = streak * s
    layer = _streak(layer, length, float(rng.uniform(-135, -45))) * max(1.0, length / (2 * cell))
    x = img.astype(np.float32) / 255.0
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, gray * 1.5 + 0.5)
    return _to_uint8(x + layer[..., None])


def darkness(img, severity, rng):
    gain, gamma, red, green, noise = DARKNESS[severity - 1]
    x = img.astype(np.float32) / 255.0
    x = gain * np.power(x, gamma) * np.float32([red, green, 1.0])
    # High-gain night exposure: read noise is fixed per pixel, so it grows relative to signal.
    x += rng.standard_normal(x.shape, dtype=np.float32) * noise
    return _to_uint8(x)


def contrast(img, severity, rng):
    x = img.astype(np.float32) / 255.0
    mean = float(x.mean())
    return _to_uint8((x - mean) * CONTRAST[severity - 1] + mean)


def jpeg(img, severity, rng):
    q = JPEG_QUALITY[severity - 1]
    return _albu(A.ImageCompression(compression_type="jpeg", quality_range=(q, q), p=1), img, rng)


def pixelate(img, severity, rng):
    h, w = img.shape[:2]
    f = PIXELATE[severity - 1]
    small = cv2.resize(
        img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "motion_blur": motion_blur,
    "defocus_blur": defocus_blur,
    "zoom_blur": zoom_blur,
    "fog": fog,
    "rain": rain,
    "snow": snow,
    "darkness": darkness,
    "contrast": contrast,
    "jpeg": jpeg,
    "pixelate": pixelate,
}


def check_corruption(name: str, severity: int) -> None:
    """ConfigError (one line, listing the valid names) unless ``name``/``severity`` are valid."""
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; expected one of {', '.join(CORRUPTIONS)}")
    if (
        isinstance(severity, bool)
        or not isinstance(severity, (int, np.integer))
        or not (1 <= severity <= 5)
    ):
        raise ConfigError(f"corruption {name!r} severity must be an integer 1..5, got {severity!r}")


def corruption_rng(name: str, severity: int, seed: int, index: int = 0) -> np.random.Generator:
    """The generator :func:`corrupt` uses: a function of (seed, name, severity, index) only."""
    if int(seed) < 0 or int(index) < 0:
        raise ConfigError(f"corruption seed and index must be >= 0, got {seed} and {index}")
    key = (int(seed), zlib.crc32(name.encode()), int(severity), int(index))
    return np.random.default_rng(np.random.SeedSequence(key))


def corrupt(image: np.ndarray, name: str, severity: int, seed: int, index: int = 0) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` to a uint8 (H, W, 3) RGB image.

    ``index`` (e.g. the frame's position in its split) gives each frame its own noise for one
    ``seed``. Returns a new uint8 (H, W, 3) array; the input is not modified.
    """
    check_corruption(name, severity)
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(
            f"corrupt expects a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}"
        )
    rng = corruption_rng(name, int(severity), seed, index)
    out = np.ascontiguousarray(CORRUPTIONS[name](image, int(severity), rng), dtype=np.uint8)
    return out.copy() if np.shares_memory(out, image) else out
