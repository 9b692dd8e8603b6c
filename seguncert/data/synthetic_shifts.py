"""What lies outside the synthetic training distribution: image-only corruptions of a rendered
frame, and the out-of-distribution object (an animal on the road).

Each shift has a severity 1..5 (0 = off) and changes only the image: labels and depth stay those
of the clean scene. Images here are float32 RGB in [0, 1] (before quantisation).

- fog: Koschmieder's law, I = J t + A (1 - t) with transmission t = exp(-beta d), where d is the
  metric depth and the extinction coefficient beta grows with severity (visibility ~3/beta:
  250 m at severity 1 down to 25 m at 5).
- night: the scene is darkened with a gamma curve, lit by the camera car's own headlights (a
  cone on the road that fades with depth), with glows around street lamps, car head/tail lights
  and traffic signals, plus the extra sensor noise of a high-gain exposure.
- motion_blur: the radial (zoom) blur of a forward-moving camera, centred on the vanishing
  point, averaging copies scaled by up to 1.5 %..12 %.
- noise: additive Gaussian sensor noise with sigma 0.03..0.2.

The OOD object is a cow or a deer standing side-on on the road, drawn like any other object
(so its depth is right) but labelled void (255); no training frame contains one.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import ConfigError
from .synthetic_objects import _ellipse, _seg
from .synthetic_raster import DETAIL, SMOOTH, Canvas, tex

OOD_LABEL = 255
SHIFTS = ("fog", "night", "motion_blur", "noise")
FOG_BETA = (0.012, 0.025, 0.045, 0.075, 0.12)  # per metre
NIGHT_GAIN = (0.5, 0.34, 0.24, 0.16, 0.1)
NIGHT_GAMMA = (1.2, 1.4, 1.6, 1.8, 2.0)
NIGHT_NOISE = (0.012, 0.018, 0.024, 0.03, 0.036)
BLUR_ZOOM = (0.015, 0.03, 0.05, 0.08, 0.12)
NOISE_SIGMA = (0.03, 0.06, 0.1, 0.15, 0.2)


def check_shifts(shifts: dict | None) -> dict[str, int]:
    """Validate {name: severity}; drop severity-0 entries. Raises ConfigError on bad input."""
    out = {}
    for name, sev in (shifts or {}).items():
        if name not in SHIFTS:
            raise ConfigError(
                f"unknown synthetic shift {name!r}; expected one of {', '.join(SHIFTS)}"
            )
        if isinstance(sev, bool) or not isinstance(sev, (int, np.integer)) or not 0 <= sev <= 5:
            raise ConfigError(
                f"synthetic shift {name!r} severity must be an integer 0..5, got {sev!r}"
            )
        if sev:
            out[name] = int(sev)
    return out


def fog(img: np.ndarray, depth: np.ndarray, severity: int) -> np.ndarray:
    t = np.exp(-FOG_BETA[severity - 1] * depth)[..., None]
    air = np.float32([0.74, 0.75, 0.77])
    return img * t + air * (1.0 - t)


def _glow(img: np.ndarray, u: float, v: float, radius: float, rgb, strength: float) -> None:
    """Add a Gaussian glow of the given pixel radius in place."""
    H, W = img.shape[:2]
    r = int(3 * radius) + 1
    u0, u1, v0, v1 = (
        max(0, int(u) - r),
        min(W, int(u) + r + 1),
        max(0, int(v) - r),
        min(H, int(v) + r + 1),
    )
    if u1 <= u0 or v1 <= v0:
        return
    du = np.arange(u0, u1, dtype=np.float32) + 0.5 - u
    dv = np.arange(v0, v1, dtype=np.float32)[:, None] + 0.5 - v
    g = np.exp(-(du * du + dv * dv) / (2 * radius * radius)) * strength
    img[v0:v1, u0:u1] += g[..., None] * np.float32(rgb)


def night(img, depth, label, lights, camera, severity, rng) -> np.ndarray:
    """camera = (fx, fy, cx, vh, height) of the pinhole model; lights = [(x, y, z, rgb, r)]."""
    fx, fy, cx, vh, cam_h = camera
    H, W = depth.shape
    s = severity - 1
    albedo = img
    out = NIGHT_GAIN[s] * np.power(np.clip(img, 0, 1), NIGHT_GAMMA[s])
    sky = (label == 0)[..., None]
    out = np.where(sky, out * np.float32([0.35, 0.4, 0.7]), out)
    # the camera car's headlights: a cone ahead on the road, falling off with distance
    u = (np.arange(W, dtype=np.float32) + 0.5 - cx) / fx
    vv = np.clip((np.arange(H, dtype=np.float32) + 0.5 - vh) / fy, 0, None)[:, None]
    cone = np.exp(-((u[None, :] / (0.35 + 0.8 * vv)) ** 2)) * (vv > 0)
    beam = cone / (1.0 + (depth / 18.0) ** 2)
    out = out + 0.8 * beam[..., None] * albedo
    for x, y, z, rgb, radius in lights:
        if z < 0.5:
            continue
        pu, pv = cx + fx * x / z, vh + fy * (cam_h - y) / z
        if not (0 <= pu < W and 0 <= pv < H):
            continue
        if depth[int(pv), int(pu)] < z - 1.0:  # hidden behind something nearer
            continue
        _glow(out, pu, pv, min(max(1.0, radius * fx / z), 0.04 * W), rgb, 0.9)
    return out + rng.standard_normal(out.shape, dtype=np.float32) * NIGHT_NOISE[s]


def motion_blur(img: np.ndarray, centre: tuple[float, float], severity: int) -> np.ndarray:
    """Zoom blur about the vanishing point: average of copies scaled 1 .. 1 + zoom."""
    zoom, n = BLUR_ZOOM[severity - 1], 8
    H, W = img.shape[:2]
    cx, cy = centre
    acc = np.zeros_like(img)
    for i in range(n):
        s = 1.0 + zoom * i / (n - 1)
        m = np.float32([[s, 0, (1 - s) * cx], [0, s, (1 - s) * cy]])
        acc += cv2.warpAffine(img, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return acc / n


def noise(img: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return img + rng.standard_normal(img.shape, dtype=np.float32) * NOISE_SIGMA[severity - 1]


def draw_animal(cv: Canvas, ob: dict) -> None:
    """Out-of-distribution object: a cow or a deer standing side-on on the road (label void)."""
    x, z, k, f = ob["x"], ob["z"], ob["species"], ob["facing"]
    deer = k == "deer"
    leg, body_h = (0.85, 0.4) if deer else (0.7, 0.5)
    bl = 0.75 if deer else 1.0  # half body length
    bb = cv.billboard(z, x - bl - 0.8, x + bl + 0.8, 0.0, 2.3)
    if bb is None:
        return
    sl, px, py = bb
    p = (px - x) * f  # body coordinates with the head at +p
    cy = leg + body_h / 2
    body = _ellipse(p, py, 0.0, cy, bl, body_h / 2 + 0.05)
    legs = np.zeros_like(body)
    for lx in (-0.7 * bl, -0.5 * bl, 0.55 * bl, 0.75 * bl):
        legs |= _seg(p, py, (lx, cy), (lx + 0.03, 0.02), 0.06 if deer else 0.08)
    head_c = (bl + 0.35, cy + (0.75 if deer else 0.25))
    neck = _seg(p, py, (bl * 0.7, cy + 0.1), head_c, 0.13 if deer else 0.2)
    head = _ellipse(p, py, head_c[0] + 0.1, head_c[1], 0.24, 0.13 if deer else 0.17)
    ears = _seg(p, py, head_c, (head_c[0] - 0.2, head_c[1] + 0.18), 0.04)
    if deer:
        ears |= _seg(p, py, head_c, (head_c[0] - 0.1, head_c[1] + 0.5), 0.025)
        ears |= _seg(
            p, py, (head_c[0] - 0.06, head_c[1] + 0.3), (head_c[0] - 0.3, head_c[1] + 0.45), 0.02
        )
    tail = _seg(p, py, (-bl, cy + 0.1), (-bl - 0.15, cy - (0.1 if deer else 0.5)), 0.04)
    mask = body | legs | neck | head | ears | tail
    light = cv.light((0.0, 0.0, -1.0))
    if deer:
        coat = np.float32([0.5, 0.33, 0.18]) * (1 + 0.1 * tex(DETAIL, p * 30, py * 30))[..., None]
    else:  # black-and-white patches
        patch = tex(SMOOTH, (p + ob["pattern"]) * 60, py * 60) > 0.0
        coat = np.where(
            patch[..., None], np.float32([0.9, 0.88, 0.84]), np.float32([0.1, 0.09, 0.09])
        )
    rgb = np.where(
        ((py < 0.12) & legs)[..., None], np.float32([0.1, 0.08, 0.06]), coat
    ) * np.float32(light)
    cv.put(sl, mask, z, OOD_LABEL, rgb.astype(np.float32))
