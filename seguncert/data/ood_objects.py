"""Procedural out-of-distribution objects for pasting onto road frames (Fishyscapes Static
style): animals, rubble, boxes, furniture, fallen logs, tyres and lost cargo, none of them a
CamVid class.

An object is drawn in metres on a vertical plane facing the camera (x right, y up, the ground
contact at y = 0); boxy things show a top and one side in an oblique view. ``render(px_per_m)``
rasterises it with SS x SS supersampling, so alpha is each pixel's coverage (anti-aliased), then
blurs alpha and premultiplied colour together by FEATHER px, which both feathers the edge and
gives the object a camera's softness. Colours are albedo-like RGB in [0, 1] lit from above;
ood_paste matches them to the frame. Everything is drawn from the rng passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import ConfigError
from .synthetic_objects import _ellipse, _seg
from .synthetic_raster import DETAIL, SMOOTH, tex

SS = 4  # supersampling per axis
FEATHER = 0.6  # px, Gaussian sigma of the soft edge
ALPHA_MIN = 0.02  # alpha below this is set to 0, so the sprite has a finite footprint
OX, OY = 0.45, 0.3  # oblique view: image x and y offset per metre of depth behind the front
DARK = np.float32([0.04, 0.035, 0.03])
Layers = list[tuple[np.ndarray, np.ndarray]]  # (mask, rgb) pairs; later layers cover earlier


@dataclass(frozen=True)
class Sprite:
    """A rendered object. rgb float32 (h, w, 3) in [0, 1]; alpha float32 (h, w) in [0, 1],
    soft at the rim; ground: row (float, may lie inside the sprite) of the contact line y = 0;
    height_m: metres from the ground to the top of the alpha > 0.5 region."""

    kind: str
    rgb: np.ndarray
    alpha: np.ndarray
    ground: float
    height_m: float
    px_per_m: float


class _Grid:
    """Supersampled pixel centres in metres: px (1, w), py (h, 1), broadcasting to (h, w)."""

    def __init__(self, x0: float, y1: float, ppm: float, shape: tuple[int, int]):
        self.x0, self.y1, self.ppm, self.shape = x0, y1, ppm, shape
        self.px = (x0 + (np.arange(shape[1], dtype=np.float32) + 0.5) / ppm)[None, :]
        self.py = (y1 - (np.arange(shape[0], dtype=np.float32) + 0.5) / ppm)[:, None]

    def poly(self, pts) -> np.ndarray:
        """Mask of pixel centres inside a polygon given as (x, y) points in metres."""
        pts = np.asarray(pts, np.float64)
        cr = np.stack([(pts[:, 0] - self.x0) * self.ppm, (self.y1 - pts[:, 1]) * self.ppm], 1)
        m = np.zeros(self.shape, np.uint8)
        cv2.fillPoly(m, [np.round((cr - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        return m.view(bool)


def _tex(tile, a, b):
    return tex(tile, np.asarray(a) + 4096.0, np.asarray(b) + 4096.0)  # no mirror seam at 0


def _col(rgb, *factors) -> np.ndarray:
    """Base colour (3,) times per-pixel factors -> (h, w, 3)."""
    f = np.float32(1.0)
    for x in factors:
        f = f * x
    return np.asarray(rgb, np.float32) * np.asarray(f, np.float32)[..., None]


def _jitter(rgb, rng, s=0.1) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) * rng.uniform(1 - s, 1 + s, 3), 0, 1)


@dataclass(frozen=True)
class OODObject:
    """An object's drawing, before rasterisation; bounds = (x0, x1, top) in metres encloses
    it (height_m = top is the nominal height; the sprite measures the drawn one)."""

    kind: str
    bounds: tuple[float, float, float]
    paint: Callable[[_Grid], Layers]

    @property
    def height_m(self) -> float:
        return self.bounds[2]

    @property
    def width_m(self) -> float:
        return self.bounds[1] - self.bounds[0]

    def render(self, px_per_m: float) -> Sprite:
        x0, x1, top = self.bounds
        pad = 3.0 / px_per_m  # room for the feather
        h = int(np.ceil((top + 2 * pad) * px_per_m))
        w = int(np.ceil((x1 - x0 + 2 * pad) * px_per_m))
        g = _Grid(x0 - pad, top + pad, px_per_m * SS, (h * SS, w * SS))
        rgb = np.zeros((h * SS, w * SS, 3), np.float32)
        cover = np.zeros((h * SS, w * SS), bool)
        for mask, colour in self.paint(g):
            mask = np.broadcast_to(mask, cover.shape)
            np.copyto(rgb, np.broadcast_to(colour, rgb.shape), where=mask[..., None])
            cover |= mask
        alpha = cover.reshape(h, SS, w, SS).mean((1, 3), dtype=np.float32)
        prem = (rgb * cover[..., None]).reshape(h, SS, w, SS, 3).mean((1, 3))
        alpha = cv2.GaussianBlur(alpha, (0, 0), FEATHER)
        prem = cv2.GaussianBlur(prem, (0, 0), FEATHER)
        colour = np.clip(prem / np.maximum(alpha, 1e-6)[..., None], 0.0, 1.0)
        alpha = np.where(alpha < ALPHA_MIN, 0.0, np.minimum(alpha * 1.0005, 1.0))
        rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        alpha = alpha[r0:r1, c0:c1].astype(np.float32)
        colour = colour[r0:r1, c0:c1] * (alpha > 0)[..., None]
        ground = (top + pad) * px_per_m - r0
        top_row = np.flatnonzero((alpha > 0.5).any(1))[0]
        return Sprite(self.kind, colour, alpha, ground, (ground - top_row) / px_per_m, px_per_m)


def _cuboid(g: _Grid, box, side: float, rgb) -> Layers:
    """A box x0..x1 wide, y0..y1 high and z0..z1 deep (behind the front plane) in the oblique
    view: the side towards ``side`` (+1 right, -1 left), the top, then the front."""
    x0, x1, y0, y1, z0, z1 = box

    def p(x, y, z):
        return (x + z * OX * side, y + z * OY)

    xs = x1 if side > 0 else x0
    faces = (
        ([p(xs, y0, z0), p(xs, y0, z1), p(xs, y1, z1), p(xs, y1, z0)], 0.62),
        ([p(x0, y1, z0), p(x1, y1, z0), p(x1, y1, z1), p(x0, y1, z1)], 1.0),
        ([p(x0, y0, z0), p(x1, y0, z0), p(x1, y1, z0), p(x0, y1, z0)], 0.84),
    )
    return [(g.poly(pts), rgb * np.float32(k)) for pts, k in faces]


def _cuboid_bounds(boxes, side: float) -> tuple[float, float, float]:
    xs = [b[i] + b[j] * OX * side for b in boxes for i in (0, 1) for j in (4, 5)]
    return min(xs), max(xs), max(b[3] + b[5] * OY for b in boxes)


# -- animals --------------------------------------------------------------------------------------
SPECIES = {  # metres: legs, body height, half length, head centre (ahead of shoulder, above
    # body centre) and radii, neck and leg radii, tail tip and ear tip offsets
    "dog": dict(leg=0.3, body=0.26, half=0.36, head=(0.14, 0.24), head_r=(0.13, 0.085),
                neck=0.07, leg_r=0.045, tail=(-0.22, 0.18), ear=(-0.05, 0.13)),
    "deer": dict(leg=0.85, body=0.4, half=0.75, head=(0.35, 0.75), head_r=(0.24, 0.13),
                 neck=0.13, leg_r=0.06, tail=(-0.15, -0.1), ear=(-0.2, 0.18)),
    "cow": dict(leg=0.7, body=0.55, half=1.0, head=(0.35, 0.25), head_r=(0.24, 0.17),
                neck=0.2, leg_r=0.08, tail=(-0.15, -0.5), ear=(-0.24, 0.06)),
}  # fmt: skip
DOG_COATS = ((0.45, 0.3, 0.16), (0.12, 0.1, 0.09), (0.72, 0.56, 0.33), (0.82, 0.79, 0.74))
LEG_X = (-0.7, -0.5, 0.55, 0.75)  # fraction of the half length; legs 1 and 2 are the far pair


def _animal(rng) -> OODObject:
    name = tuple(SPECIES)[int(rng.integers(len(SPECIES)))]
    s = float(rng.uniform(0.85, 1.15))
    g = {k: np.multiply(v, s) for k, v in SPECIES[name].items()}
    facing = 1.0 if rng.random() < 0.5 else -1.0
    leg, bh, bl, lr = g["leg"], g["body"], g["half"], g["leg_r"]
    stride = rng.uniform(-0.2, 0.2, 4) * leg
    if name == "cow":
        main = np.float32([0.1, 0.09, 0.09] if rng.random() < 0.6 else [0.45, 0.25, 0.12])
        second = np.float32([0.88, 0.86, 0.82])
    else:
        main = _jitter((0.5, 0.33, 0.18) if name == "deer" else DOG_COATS[rng.integers(4)], rng)
        second = np.minimum(main * 1.4 + 0.1, 1.0)
    off = rng.uniform(0, 256, 2)
    antlers = name == "deer" and rng.random() < 0.6
    cy = leg + bh / 2
    hc = (bl + g["head"][0], cy + g["head"][1])
    ear = (hc[0] + g["ear"][0], hc[1] + g["ear"][1])
    tail = (-bl + g["tail"][0], cy + g["tail"][1])

    def paint(gr: _Grid) -> Layers:
        p, y = gr.px * facing, gr.py
        legs = [_seg(p, y, (x * bl, cy), (x * bl + d, lr), lr) for x, d in zip(LEG_X, stride)]
        body = _ellipse(p, y, 0.0, cy, bl, bh / 2 + 0.05 * s)
        head = _ellipse(p, y, hc[0], hc[1], *g["head_r"])
        horns = np.zeros_like(head)
        if antlers:
            base = (hc[0] - 0.1 * s, hc[1] + 0.08 * s)
            for tip in ((hc[0] - 0.05 * s, hc[1] + 0.5 * s), (hc[0] - 0.3 * s, hc[1] + 0.42 * s)):
                horns |= _seg(p, y, base, tip, 0.022 * s)
        fur = _tex(DETAIL, (p + off[0]) * 90, y * 30)
        light = 0.78 + 0.3 * np.clip((y - cy) / bh, -1, 1)
        if name == "cow":
            spots = _tex(SMOOTH, (p + off[0]) * 50, (y + off[1]) * 50) > 0.1
            base_rgb = np.where(spots[..., None], main, second)
        else:
            base_rgb = main
        coat = base_rgb * ((0.86 + 0.2 * fur) * light)[..., None]
        belly = np.clip((cy - 0.1 * bh - y) / (0.4 * bh), 0, 0.6 * (name != "cow"))[..., None]
        flank = coat * (1 - belly) + second * belly * ((0.86 + 0.2 * fur) * light)[..., None]
        nose = _ellipse(p, y, hc[0] + 0.85 * g["head_r"][0], hc[1], 0.035 * s, 0.03 * s)
        eye = _ellipse(p, y, hc[0] + 0.25 * g["head_r"][0], hc[1] + 0.3 * g["head_r"][1],
                       0.018 * s, 0.018 * s)  # fmt: skip
        return [
            (legs[1] | legs[2], coat * 0.7),
            (_seg(p, y, (-bl, cy + 0.1 * s), tail, 0.035 * s), coat * 0.85),
            (body, flank),
            (legs[0] | legs[3], coat),
            ((legs[0] | legs[1] | legs[2] | legs[3]) & (y < 1.6 * lr), DARK),
            (_seg(p, y, (0.7 * bl, cy + 0.1 * s), hc, g["neck"]), coat),
            (head, coat),
            (_seg(p, y, (hc[0] - 0.3 * g["head_r"][0], hc[1]), ear, 0.04 * s), coat * 0.8),
            (horns, np.float32([0.35, 0.28, 0.2])),
            (eye | nose, DARK),
        ]

    reach = max(hc[0] + g["head_r"][0], bl - g["tail"][0]) + 0.1 * s
    top = max(cy + bh / 2 + 0.05 * s, hc[1] + g["head_r"][1], ear[1] + 0.04 * s, tail[1])
    return OODObject("animal", (-reach, reach, top + (0.55 * s if antlers else 0.0)), paint)


# -- rubble, boxes and furniture -------------------------------------------------------------------
RUBBLE = ((0.45, 0.43, 0.4), (0.6, 0.58, 0.55), (0.42, 0.33, 0.25), (0.55, 0.27, 0.2))


def _debris(rng) -> OODObject:
    """A pile of irregular rocks (stone, concrete, earth or brick) with chips around it."""
    base = RUBBLE[int(rng.integers(len(RUBBLE)))]
    rocks = []
    n = int(rng.integers(1, 5))
    for i in range(n + int(rng.integers(3, 8))):
        r = rng.uniform(0.1, 0.35) if i < n else rng.uniform(0.02, 0.06)
        k = int(rng.integers(7, 12))
        ang = (np.arange(k) + rng.uniform(-0.35, 0.35, k)) * 2 * np.pi / k
        rad = r * rng.uniform(0.7, 1.15, len(ang))
        pts = np.stack([rng.uniform(-0.45, 0.45) * (n > 1 or i >= n) + rad * np.cos(ang),
                        rad * np.sin(ang) * rng.uniform(0.6, 0.9)], 1)  # fmt: skip
        pts[:, 1] -= pts[:, 1].min()  # rests on the ground
        rocks.append((pts, _jitter(base, rng), rng.normal(size=2)))

    def paint(g: _Grid) -> Layers:
        grain = _tex(DETAIL, g.px * 150, g.py * 150)
        cracks = np.abs(_tex(SMOOTH, g.px * 80, g.py * 80)) < 0.02
        out = []
        for pts, rgb, light in rocks:
            c, r = pts.mean(0), np.ptp(pts, 0).max() / 2
            d = (light[0] * (g.px - c[0]) + (abs(light[1]) + 1) * (g.py - c[1])) / r
            out.append((g.poly(pts), _col(rgb, 0.8 + 0.12 * np.clip(d, -2, 2) + 0.12 * grain)))
            out.append((out[-1][0] & cracks, rgb * 0.45))
        return out

    allpts = np.concatenate([r[0] for r in rocks])
    return OODObject("debris", (allpts[:, 0].min(), allpts[:, 0].max(), allpts[:, 1].max()), paint)


def _box(rng) -> OODObject:
    """A taped cardboard box with a shipping label, or a slatted wooden crate."""
    w, h, d = rng.uniform(0.3, 0.75), rng.uniform(0.25, 0.6), rng.uniform(0.3, 0.6)
    side = 1.0 if rng.random() < 0.5 else -1.0
    crate = rng.random() < 0.4
    rgb = _jitter((0.6, 0.45, 0.28) if crate else (0.62, 0.47, 0.3), rng)
    box = (-w / 2, w / 2, 0.0, h, 0.0, d)
    lab = (rng.uniform(-0.4, 0.0) * w, rng.uniform(0.3, 0.6) * h)

    def paint(g: _Grid) -> Layers:
        grain = _tex(DETAIL, g.px * 8, g.py * 120) if crate else _tex(DETAIL, g.px * 40, g.py * 40)
        faces = _cuboid(g, box, side, _col(rgb, 1 + 0.1 * grain))
        front = faces[2][0]
        if crate:
            seams = ((g.py / h * 4) % 1.0 < 0.06) | (np.abs(np.abs(g.px) - w / 2) < 0.04)
            return faces + [(front & seams, rgb * 0.4)]
        zx = g.px - (g.py - h) / OY * OX * side  # front-plane x of a point on the top face
        tape = (faces[1][0] & (np.abs(zx) < 0.035)) | (front & (np.abs(g.px) < 0.035))
        label = (g.px > lab[0]) & (g.px < lab[0] + 0.12) & (g.py > lab[1]) & (g.py < lab[1] + 0.08)
        return faces + [(tape, rgb * 1.12), (front & label, np.float32([0.85, 0.85, 0.82]))]

    return OODObject("box", _cuboid_bounds([box], side), paint)


FABRICS = (
    (0.55, 0.12, 0.1),
    (0.2, 0.38, 0.2),
    (0.7, 0.55, 0.15),
    (0.1, 0.4, 0.45),
    (0.4, 0.2, 0.45),
)


def _furniture(rng) -> OODObject:
    """A sofa (back, arms, seat, stubby legs) or a chair (seat, backrest, four legs)."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    if rng.random() < 0.5:
        rgb, hw = _jitter(FABRICS[int(rng.integers(len(FABRICS)))], rng), rng.uniform(0.75, 1.05)
        arms = ((-hw, -hw + 0.2), (hw - 0.2, hw))
        far, near = arms if side > 0 else arms[::-1]  # the arm on the visible side is nearer
        legs = [(x - 0.03, x + 0.03, 0.0, 0.1, z, z + 0.05) for z in (0.75, 0.05)
                for x in (-hw + 0.08, hw - 0.08)]  # fmt: skip
        back, seat = (-hw, hw, 0.35, 0.85, 0.65, 0.85), (-hw + 0.2, hw - 0.2, 0.1, 0.45, 0.0, 0.65)
        boxes = legs + [back, (*far, 0.1, 0.62, 0.0, 0.85), seat, (*near, 0.1, 0.62, 0.0, 0.85)]
        colours = [DARK] * 4 + [rgb] * 4
    else:
        rgb = _jitter(
            ((0.5, 0.32, 0.16), (0.85, 0.85, 0.82), (0.6, 0.12, 0.1))[rng.integers(3)], rng
        )
        legs = [
            (x - 0.02, x + 0.02, 0.0, 0.42, z, z + 0.04) for x in (-0.2, 0.2) for z in (0.4, 0.02)
        ]
        boxes = legs[::2] + [
            (-0.23, 0.23, 0.47, 0.95, 0.4, 0.45),
            (-0.23, 0.23, 0.42, 0.47, 0.0, 0.45),
        ]
        boxes += legs[1::2]
        colours = [rgb] * len(boxes)

    def paint(g: _Grid) -> Layers:
        weave = 0.92 + 0.1 * _tex(DETAIL, g.px * 80, g.py * 80)
        out = []
        for b, c in zip(boxes, colours):
            out += _cuboid(g, b, side, _col(c, weave))
        return out

    return OODObject("furniture", _cuboid_bounds(boxes, side), paint)


# -- round things: logs, tyres, drums -------------------------------------------------------------
def _cylinder_light(n):
    """Shading across a cylinder lit from above-front; n = normal's component up (or sideways)."""
    n = np.clip(n, -1.0, 1.0)
    return 0.3 + 0.5 * np.sqrt(1.0 - n * n) + 0.3 * n


def _log(rng) -> OODObject:
    """A fallen trunk lying across the view: furrowed bark, one sawn end with growth rings,
    a few broken branch stubs."""
    length, r = rng.uniform(1.8, 4.0), rng.uniform(0.13, 0.3)
    tilt, end = rng.uniform(-0.08, 0.08), (1.0 if rng.random() < 0.5 else -1.0)
    cy = r + abs(np.sin(tilt)) * length / 2
    stubs = [(rng.uniform(-0.4, 0.4) * length, rng.uniform(0.3, 0.7) * np.pi,
              rng.uniform(0.15, 0.45), rng.uniform(0.25, 0.45) * r)
             for _ in range(int(rng.integers(2, 5)))]  # fmt: skip
    bark, wood = _jitter((0.3, 0.22, 0.15), rng), _jitter((0.72, 0.56, 0.36), rng)
    off = rng.uniform(0, 256)

    def paint(g: _Grid) -> Layers:
        dx, dy = g.px, g.py - cy
        a = dx * np.cos(tilt) + dy * np.sin(tilt)  # along the trunk
        b = dy * np.cos(tilt) - dx * np.sin(tilt)  # across it, up
        rad = r * (1.0 - 0.1 * a * end / length + 0.06 * _tex(SMOOTH, a * 5 + off, 0.0))
        body = (np.abs(a) < length / 2) & (np.abs(b) < rad)
        rounded = ((a + end * length / 2) / (0.2 * r)) ** 2 + (b / rad) ** 2 < 1
        cut = ((a - end * length / 2) / (0.25 * r)) ** 2 + (b / rad) ** 2 < 1
        rings = np.sqrt(((a - end * length / 2) / 0.25) ** 2 + b * b)
        furrows = 0.75 + 0.35 * _tex(DETAIL, a * 12 + off, b * 90)
        out = [(body | rounded, _col(bark, furrows, _cylinder_light(b / rad)))]
        for s_a, ang, s_len, s_r in stubs:
            root = (s_a, 0.7 * r)
            tip = (s_a + s_len * np.cos(ang), 0.7 * r + s_len * np.sin(ang))
            out.append((_seg(a, b, root, tip, s_r), _col(bark, furrows, 0.75)))
            out.append((_ellipse(a, b, tip[0], tip[1], s_r, s_r), wood * 0.9))
        out.append((cut, _col(wood, 0.9 + 0.1 * np.sin(rings * 60.0))))
        return out

    reach = length / 2 + r + 0.5
    return OODObject("log", (-reach, reach, cy + abs(np.sin(tilt)) * length / 2 + r + 0.5), paint)


def _tyre(rng) -> OODObject:
    """A car tyre standing (seen at an angle, tread showing) or lying flat; with or without
    its wheel rim."""
    r, tw, rim = rng.uniform(0.28, 0.4), rng.uniform(0.17, 0.26), rng.random() < 0.6
    upright, c = rng.random() < 0.55, rng.uniform(0.3, 1.0)
    k = rng.uniform(0.25, 0.4)  # flattening of a lying tyre's ellipse (seen from above)
    rubber = np.float32([0.08, 0.08, 0.085])
    metal = _jitter((0.55, 0.56, 0.58), rng, 0.05)
    shift = tw * np.sqrt(1 - c * c) * (1.0 if rng.random() < 0.5 else -1.0)

    def paint(g: _Grid) -> Layers:
        x, y = g.px, g.py
        grooves = 0.75 + 0.25 * (np.sin(np.arctan2(y - r, x) * 40) > 0.3)
        if upright:
            chord = c * r * np.sqrt(np.clip(1 - ((y - r) / r) ** 2, 0, None))
            tread = (x > min(0, shift) - chord) & (x < max(0, shift) + chord)
            face = _ellipse(x - shift, y, 0, r, c * r, r)
            hole = _ellipse(x - shift, y, 0, r, 0.62 * c * r, 0.62 * r)
            lugs = np.zeros_like(hole)
            for t in np.arange(5) * 2 * np.pi / 5:
                lugs |= _ellipse(x - shift, y, 0.35 * c * r * np.cos(t), r + 0.35 * r * np.sin(t),
                                 0.07 * c * r, 0.07 * r)  # fmt: skip
            through = hole & _ellipse(x, y, 0, r, 0.62 * c * r, 0.62 * r)  # both faces' holes
            if not rim:
                tread &= ~through  # the road shows through; the rest of the hole is inner tread
            out = [(tread, _col(rubber, grooves, 0.8)), (face & ~hole, _col(rubber, 1.1))]
            if not rim:
                return out + [(hole & ~through, rubber * 0.5)]
            return out + [(hole, _col(metal, _cylinder_light((y - r) / r))), (lugs, DARK)]
        across = np.sqrt(np.clip(1 - (x / r) ** 2, 0, None)) * k * r
        band = (np.abs(x) < r) & (y > k * r - across) & (y < tw + k * r + across)
        top = _ellipse(x, y, 0, tw + k * r, r, k * r)
        hole = _ellipse(x, y, 0, tw + k * r, 0.62 * r, 0.62 * k * r)
        lid = hole if rim else np.zeros_like(hole)
        return [(band, _col(rubber, 0.75 + 0.25 * (np.sin(x / r * 30) > 0.3))),
                (top, _col(rubber, 1.4)), (hole, rubber * 0.4), (lid, metal * 0.9)]  # fmt: skip

    if upright:
        return OODObject("tyre", (-r - tw, r + tw, 2 * r), paint)
    return OODObject("tyre", (-r, r, tw + 2 * k * r), paint)


SUITCASES = ((0.1, 0.13, 0.3), (0.6, 0.1, 0.12), (0.7, 0.72, 0.74), (0.08, 0.08, 0.09))


def _cargo(rng) -> OODObject:
    """Lost cargo: a blue plastic drum with ribs and bungs, or a hard-shell suitcase (upright on
    its wheels or lying flat)."""
    if rng.random() < 0.5:
        r, h, k = 0.29, rng.uniform(0.8, 0.95), 0.25
        blue, ls = _jitter((0.1, 0.28, 0.62), rng), (1.0 if rng.random() < 0.5 else -1.0)

        def drum(g: _Grid) -> Layers:
            x, y = g.px, g.py
            sq = np.sqrt(np.clip(1 - (x / r) ** 2, 0, None))
            body = (np.abs(x) < r) & (y > k * r * (1 - sq)) & (y < h + k * r * (1 + sq))
            shade = _cylinder_light(ls * x / r) + 0.25 * np.exp(-(((x / r - 0.4 * ls) / 0.1) ** 2))
            ribs = np.zeros_like(body)
            for f in (1 / 3, 2 / 3):
                ribs |= np.abs(y - f * h - k * r * (1 - sq)) < 0.015
            lid = _ellipse(x, y, 0, h, r, k * r)
            bungs = _ellipse(x, y, -0.14, h, 0.03, 0.012) | _ellipse(x, y, 0.14, h, 0.03, 0.012)
            return [(body, _col(blue, shade)), (ribs & body, _col(blue, shade, 0.7)),
                    (lid, _col(blue, 1.05)), (bungs, blue * 0.45)]  # fmt: skip

        return OODObject("cargo", (-r, r, h + 2 * k * r), drum)
    w, h, d = rng.uniform(0.4, 0.55), rng.uniform(0.55, 0.75), rng.uniform(0.22, 0.3)
    upright, side = rng.random() < 0.5, (1.0 if rng.random() < 0.5 else -1.0)
    box = (-w / 2, w / 2, 0.05, h, 0.0, d) if upright else (-h / 2, h / 2, 0.0, d, 0.0, w)
    rgb = _jitter(SUITCASES[int(rng.integers(len(SUITCASES)))], rng)

    def case(g: _Grid) -> Layers:
        faces = _cuboid(g, box, side, _col(rgb, 0.9 + 0.1 * np.sin(g.px * 2 * np.pi / 0.06)))
        x0, x1, y0, y1 = box[:4]
        edge = np.minimum(np.abs(g.px - x0), np.abs(g.px - x1))
        zip_ = faces[2][0] & (
            np.minimum(edge, np.minimum(np.abs(g.py - y0), np.abs(g.py - y1))) < 0.03
        )
        hx, hy = (0.0, y1) if upright else (x1 - 0.1, 0.6 * y1)
        grip = _seg(g.px, g.py, (hx - 0.08, hy + 0.06), (hx + 0.08, hy + 0.06), 0.012)
        grip |= _seg(g.px, g.py, (hx - 0.08, hy), (hx - 0.08, hy + 0.06), 0.012)
        grip |= _seg(g.px, g.py, (hx + 0.08, hy), (hx + 0.08, hy + 0.06), 0.012)
        wheels = np.zeros_like(grip)
        if upright:
            for wx in (x0 + 0.04, x1 - 0.04):
                wheels |= _ellipse(g.px, g.py, wx, 0.03, 0.03, 0.03)
        return faces + [(zip_, rgb * 0.55), (grip | wheels, DARK)]

    x0, x1, top = _cuboid_bounds([box], side)
    return OODObject("cargo", (x0 - 0.1, x1 + 0.1, top + 0.1), case)


KINDS = {
    "animal": _animal,
    "debris": _debris,
    "box": _box,
    "furniture": _furniture,
    "log": _log,
    "tyre": _tyre,
    "cargo": _cargo,
}


def make_object(kind: str, rng: np.random.Generator) -> OODObject:
    """One random object of ``kind`` (a key of KINDS), drawn from ``rng``."""
    if kind not in KINDS:
        raise ConfigError(f"unknown OOD object kind {kind!r}; expected one of {', '.join(KINDS)}")
    return KINDS[kind](rng)


def random_object(rng: np.random.Generator, kinds=tuple(KINDS)) -> OODObject:
    """An object of a kind drawn uniformly from ``kinds``."""
    return make_object(kinds[int(rng.integers(len(kinds)))], rng)


def make_sprite(kind: str, rng: np.random.Generator, height_px: float = 64.0) -> Sprite:
    """Render a random ``kind`` object so its nominal height spans ``height_px`` pixels."""
    obj = make_object(kind, rng)
    return obj.render(height_px / obj.height_m)
