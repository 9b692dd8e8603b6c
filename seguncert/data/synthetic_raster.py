"""Rasteriser for the synthetic street: a pinhole camera, a depth-tested canvas, textures, the
sky/ground background, building facades and fences.

Geometry is metric and the camera model is defined relative to the image size (focal length a
fixed fraction of the width, horizon a fixed fraction of the height), so a scene renders the
same at any resolution. Every primitive is an axis-aligned planar patch (facing the camera,
parallel to the road, or horizontal); its pixels are computed in one vectorised pass over its
screen bounding box, and written where they are nearer than what is already there.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .synthetic_scene import CAMERA_HEIGHT, NEAR, Layout

SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)
MAX_DEPTH = 80.0  # sky and anything farther is stored at this depth
FOCAL_X = 0.8  # focal length / image width (about 64 degrees horizontal field of view)
FOCAL_Y = FOCAL_X * 4.0 / 3.0  # square pixels at 4:3; other aspect ratios stretch the view
HORIZON = 0.45  # horizon row / image height (camera axis parallel to the road)


def _noise_tile(seed: int, octaves: tuple, n: int = 256) -> np.ndarray:
    """A seamlessly repeating n x n noise tile in about [-1, 1] (sum of upsampled octaves)."""
    rng = np.random.default_rng(seed)
    tile = np.zeros((n, n), np.float32)
    for cells, amp in octaves:
        small = rng.standard_normal((cells, cells)).astype(np.float32)
        big = np.tile(small, (2, 2))  # wrap so the interpolation is periodic
        big = cv2.resize(big, (2 * n, 2 * n), interpolation=cv2.INTER_CUBIC)
        tile += amp * big[n // 2 : n // 2 + n, n // 2 : n // 2 + n]
    return np.clip(tile / (2.5 * tile.std()), -1.0, 1.0)


SMOOTH = _noise_tile(11, ((4, 1.0), (8, 0.5), (16, 0.25)))
DETAIL = _noise_tile(12, ((32, 0.4), (64, 0.4), (256, 0.6)))


def tex(tile: np.ndarray, a, b) -> np.ndarray:
    """Look up a repeating 256 x 256 tile at continuous coordinates (a, b) in tile pixels."""
    idx = ((np.asarray(b).astype(np.int32) & 255) << 8) | (np.asarray(a).astype(np.int32) & 255)
    return np.take(tile.ravel(), idx)


class Canvas:
    """Image, label and depth buffers plus the camera; primitives return their pixel patch."""

    def __init__(self, size: tuple[int, int], lay: Layout, cam_z: float):
        self.H, self.W = int(size[0]), int(size[1])
        self.fx, self.fy = FOCAL_X * self.W, FOCAL_Y * self.H
        self.cx, self.vh = self.W / 2.0, HORIZON * self.H
        self.us = np.arange(self.W, dtype=np.float32) + 0.5  # pixel centres
        self.vs = np.arange(self.H, dtype=np.float32) + 0.5
        self.image = np.zeros((self.H, self.W, 3), np.float32)
        self.label = np.full((self.H, self.W), 255, np.uint8)
        self.depth = np.full((self.H, self.W), np.inf, np.float32)
        self.lay, self.cam_z = lay, cam_z
        self.lights: list[tuple] = []  # (x, y, z, rgb, radius m) for the night shift
        o = lay.overcast
        self.ambient, self.diffuse = 0.62 + 0.2 * o, 0.5 * (1.0 - o) + 0.08

    def light(self, normal) -> float:
        """Brightness of a surface with this outward normal under the layout's sun."""
        return self.ambient + self.diffuse * max(0.0, float(np.dot(normal, self.lay.sun)))

    def u(self, x: float, z: float) -> float:
        return self.cx + self.fx * x / z

    def v(self, y: float, z: float) -> float:
        return self.vh + self.fy * (CAMERA_HEIGHT - y) / z

    def _cols(self, ua: float, ub: float) -> tuple[int, int]:
        return max(0, math.ceil(ua - 0.5)), min(self.W, math.floor(ub - 0.5) + 1)

    def _rows(self, va: float, vb: float) -> tuple[int, int]:
        return max(0, math.ceil(va - 0.5)), min(self.H, math.floor(vb - 0.5) + 1)

    def billboard(self, z, x0, x1, y0, y1):
        """Rectangle facing the camera at depth z -> (slices, px (1, w), py (h, 1)) or None."""
        if z < NEAR:
            return None
        c0, c1 = self._cols(self.u(x0, z), self.u(x1, z))
        r0, r1 = self._rows(self.v(y1, z), self.v(y0, z))
        if c1 <= c0 or r1 <= r0:
            return None
        px = (self.us[None, c0:c1] - self.cx) * (z / self.fx)
        py = CAMERA_HEIGHT - (self.vs[r0:r1, None] - self.vh) * (z / self.fy)
        return (r0, r1, c0, c1), px, py

    def side(self, x, z0, z1, y0, y1):
        """Rectangle in the plane at lateral x, parallel to the road, from z0 to z1.

        Returns (slices, Z (w,) depth of each column, py (h, w) height, inside mask) or None.
        """
        z0 = max(z0, NEAR)
        if z1 <= z0 or abs(x) < 1e-3:
            return None
        ua, ub = sorted((self.u(x, z0), self.u(x, z1)))
        c0, c1 = self._cols(ua, ub)
        va = min(self.v(y1, z0), self.v(y1, z1))
        vb = max(self.v(y0, z0), self.v(y0, z1))
        r0, r1 = self._rows(va, vb)
        if c1 <= c0 or r1 <= r0:
            return None
        du = self.us[c0:c1] - self.cx
        with np.errstate(divide="ignore"):
            Z = np.where(du * x > 0, x * self.fx / du, np.inf).astype(np.float32)
        py = CAMERA_HEIGHT - (self.vs[r0:r1, None] - self.vh) * (Z[None, :] / self.fy)
        mask = (py >= y0) & (py <= y1) & ((Z >= z0) & (Z <= z1))[None, :]
        return (r0, r1, c0, c1), Z, py, mask

    def flat(self, y, x0, x1, z0, z1):
        """Horizontal rectangle at height y < camera height -> (slices, Z (h,), X (h, w), mask)."""
        z0 = max(z0, NEAR)
        if z1 <= z0 or y >= CAMERA_HEIGHT:
            return None
        r0, r1 = self._rows(self.v(y, z1), self.v(y, z0))
        us = [self.u(x, z) for x in (x0, x1) for z in (z0, z1)]
        c0, c1 = self._cols(min(us), max(us))
        if c1 <= c0 or r1 <= r0:
            return None
        Z = (CAMERA_HEIGHT - y) * self.fy / (self.vs[r0:r1] - self.vh)
        X = (self.us[None, c0:c1] - self.cx) * (Z[:, None] / self.fx)
        mask = (X >= x0) & (X <= x1) & ((Z >= z0) & (Z <= z1))[:, None]
        return (r0, r1, c0, c1), Z, X, mask

    def put(self, sl, mask, z, cls: int, rgb) -> None:
        """Write colour/label/depth where ``mask`` holds and ``z`` is nearer than the buffer."""
        r0, r1, c0, c1 = sl
        d = self.depth[r0:r1, c0:c1]
        m = mask & (z < d)
        np.copyto(self.image[r0:r1, c0:c1], rgb, where=m[..., None])
        np.copyto(self.label[r0:r1, c0:c1], np.uint8(cls), where=m)
        np.copyto(d, z, where=m)


def _draw_sky(cv: Canvas, hr: int) -> None:
    """Sky gradient with perspective clouds, then a hazy skyline of roofs and trees 140 m away."""
    lay = cv.lay
    o = lay.overcast
    zenith = np.float32([0.25, 0.45, 0.82]) * (1 - o) + np.float32([0.6, 0.62, 0.66]) * o
    horizon = np.float32([0.72, 0.8, 0.92]) * (1 - o) + np.float32([0.8, 0.81, 0.83]) * o
    e = (cv.vh - cv.vs[:hr, None]) / cv.fy  # tangent of the elevation angle, (hr, 1)
    t = np.clip(e / 0.5, 0, 1)[..., None]
    grad = horizon * (1 - t) + zenith * t  # (hr, 1, 3)
    cz = 60.0 / np.maximum(e, 0.02)  # clouds on a plane 60 units up, seen in perspective
    du = (cv.us[None, :] - cv.cx) / cv.fx
    c = tex(SMOOTH, du * cz * 0.6 + lay.seed % 97, cz * 0.6)
    cover = np.clip((c - 0.35 + 0.5 * o) * 2.5, 0, 1) * (0.85 * np.clip(e * 8, 0, 1))
    cloud = np.float32(0.93 - 0.25 * o)
    cv.image[:hr] = grad + (cloud - grad) * cover[..., None]
    cv.label[:hr] = SKY
    cv.depth[:hr] = MAX_DEPTH
    su = cv.us * (140.0 / cv.fx) + lay.seed % 89
    tall = 7.0 + 12.0 * np.maximum(tex(SMOOTH, su * 2.0, 40), 0) * (tex(SMOOTH, su * 0.7, 3) > -0.2)
    leafy = tex(SMOOTH, su * 3.0, 100) > 0.15
    sk = cv.vs[:hr, None] >= (cv.vh - tall * cv.fy / 140.0)[None, :]
    far = np.where(leafy[:, None], np.float32([0.3, 0.4, 0.3]), np.float32([0.55, 0.53, 0.52]))
    haze = 0.45 * far + 0.55 * horizon
    np.copyto(cv.image[:hr], haze[None, :, :], where=sk[..., None])
    np.copyto(cv.label[:hr], np.where(leafy, TREE, BUILDING).astype(np.uint8)[None], where=sk)


_GROUND_LABEL = np.array([ROAD, PAVEMENT, PAVEMENT, PAVEMENT, ROAD], np.uint8)  # by material


def draw_background(cv: Canvas) -> None:
    """Sky, distant skyline and the ground plane: road with markings, kerbs, paved pavements."""
    lay, H = cv.lay, cv.H
    hr = min(H, max(0, math.ceil(cv.vh - 0.5)))  # first ground row
    if hr > 0:
        _draw_sky(cv, hr)
    if hr >= H:
        return
    Z = CAMERA_HEIGHT * cv.fy / (cv.vs[hr:, None] - cv.vh)  # (h, 1) ground distance
    X = (cv.us[None, :] - cv.cx) * (Z / cv.fx)  # (h, w) lateral position
    Zw = Z + np.float32(cv.cam_z)  # world z: markings and textures stay put as the camera moves
    fade = np.minimum(12.0 / Z, 1.0)  # hide texture detail that would alias far away
    grain = tex(DETAIL, X * 30, Zw * 30) * fade
    # material index per pixel -> palette colour, times one brightness map
    kl, kr = lay.road_left, lay.road_right
    mat = np.where(X < kl, 1, np.where(X > kr, 2, 0)).astype(np.uint8)
    mat[np.abs(X - kl) < 0.2] = 3
    mat[np.abs(X - kr) < 0.2] = 3
    lines = [(kl + (2.2 if lay.parking else 0.0) + 0.25, 0), (kr - 0.25, 0)]
    for (ca, da), (_, db) in zip(lay.lanes[:-1], lay.lanes[1:], strict=True):
        lines.append((ca + lay.lane_width / 2, 1 if da == db else 2))
    for xl, style in lines:  # solid edge lines, dashed lane lines, longer-dashed centre line
        on = np.abs(X - xl) < 0.07
        if style:
            on &= (Zw % 9.0) < (3.0 if style == 1 else 6.0)
        mat[on] = 4
    palette = np.stack(
        [
            lay.road_rgb,
            lay.pave_rgb[0],
            lay.pave_rgb[1],
            np.float32([0.72, 0.72, 0.7]),
            np.float32([0.85, 0.85, 0.8]),
        ]
    )
    palette *= np.float32(cv.light((0.0, 1.0, 0.0)) * 0.95)
    patch = tex(SMOOTH, X * 3, Zw * 3)
    shade = 1.0 + 0.1 * grain + 0.07 * patch
    paved = (mat == 1) | (mat == 2)
    joint = (((np.abs(X) % 0.9) < 0.06) | ((Zw % 0.9) < 0.06)) & paved
    shade -= 0.18 * joint * fade  # paving-slab joints
    cv.image[hr:] = palette[mat] * shade[..., None]
    cv.label[hr:] = _GROUND_LABEL[mat]
    cv.depth[hr:] = np.minimum(Z, MAX_DEPTH)


def _facade_rgb(ob: dict, a, py, light: float) -> np.ndarray:
    """Wall colour with windows, sills, cornice and a shop front or door on the ground floor.

    a: metres along the wall, py: height (broadcastable to each other).
    """
    floor, bay, h = ob["floor"], ob["bay"], ob["h"]
    fa = (a % bay) / bay
    col = np.abs(fa - 0.5) < ob["win"] / 2
    fl = (py % floor) / floor
    upper = (py > floor) & (py < h - 0.6)
    glass = col & (fl > 0.3) & (fl < 0.82) & upper
    dark = (col & (fl > 0.25) & (fl <= 0.3) & upper) | (py > h - 0.35)  # sills, cornice
    ground = py <= floor
    if ob["shop"]:
        glass |= ground & (py > 0.35) & (py < floor * 0.68) & (np.abs(fa - 0.5) < 0.42)
        fascia = ground & (py >= floor * 0.72) & (py < floor * 0.93)
    else:
        glass |= ground & col & (py > 0.9) & (py < floor * 0.8)  # doors
        fascia = np.zeros((1, 1), bool)
    # material index -> palette colour; one brightness map for wall texture and pane sheen
    mat = dark.astype(np.uint8) * 2
    mat[np.broadcast_to(fascia, mat.shape)] = 3
    mat[np.broadcast_to(glass, mat.shape)] = 1
    g = ob["glass"]
    palette = np.stack(
        [
            ob["rgb"] * light,
            np.float32([g, g * 1.1, g * 1.3 + 0.03]),
            ob["rgb"] * (0.7 * light),
            ob["shop_rgb"] * light,
        ]
    )
    pane = tex(SMOOTH, (a // bay) * 37.0, (py // floor) * 53.0)  # each pane reflects differently
    grain = tex(DETAIL, a * 20, py * 20)
    k = np.where(mat == 1, 1.0 + 0.7 * pane, 1.0 + 0.07 * grain)
    return palette[mat] * k[..., None]


def draw_building(cv: Canvas, ob: dict) -> None:
    side, x, h = ob["side"], ob["x"], ob["h"]
    z0, z1 = ob["z"], ob["z"] + ob["len"]
    face = cv.side(x, z0, z1, 0.0, h)
    if face is not None:
        sl, Z, py, mask = face
        a = (Z + cv.cam_z - ob["world_z"])[None, :]
        rgb = _facade_rgb(ob, a, py, cv.light((-side, 0.0, 0.0)))
        cv.put(sl, mask, Z[None, :], BUILDING, rgb)
    # the near end wall faces the camera; it shows through a gap before the building
    bb = (
        None
        if not ob["open"]
        else cv.billboard(z0, min(x, x + side * 12.0), max(x, x + side * 12.0), 0.0, h)
    )
    if bb is not None:
        sl, px, py = bb
        rgb = _facade_rgb(ob, np.abs(px - x) + 1.0, py, cv.light((0.0, 0.0, -1.0)))
        cv.put(sl, np.ones(rgb.shape[:2], bool), z0, BUILDING, rgb)


def draw_fence(cv: Canvas, ob: dict) -> None:
    """Railings (see-through, posts and rails) or a solid panel fence along the road."""
    face = cv.side(ob["x"], ob["z"], ob["z"] + ob["len"], 0.0, ob["h"])
    if face is None:
        return
    sl, Z, py, mask = face
    a = (Z + cv.cam_z - ob["world_z"])[None, :]
    h = ob["h"]
    light = cv.light((-ob["side"], 0.0, 0.0))
    base = ob["rgb"] * light * (1.0 + 0.1 * tex(DETAIL, a * 25, py * 25))[..., None]
    if ob["style"] == "panel":
        plank = (a % 0.15) < 0.02
        cv.put(sl, mask, Z[None, :], FENCE, np.where(plank[..., None], base * 0.7, base))
        return
    solid = ((a % 2.0) < 0.1) | (py > h - 0.07) | ((py > 0.1) & (py < 0.17))
    bars = (a % 0.25) < 0.05
    # where a pixel spans more than ~one bar spacing, draw the railing as a see-through veil
    foot = (Z * Z / (abs(ob["x"]) * cv.fx))[None, :]
    veil = (foot > 0.12) & ~solid
    r0, r1, c0, c1 = sl
    behind = cv.image[r0:r1, c0:c1]
    rgb = np.where(veil[..., None], 0.5 * behind + 0.5 * base, base)
    cv.put(sl, mask & (solid | bars | veil), Z[None, :], FENCE, rgb)


def draw_shadow(cv: Canvas, ob: dict) -> None:
    """Darken the ground under a car (drawn after the background, before any object)."""
    hw = ob["w"] / 2 + 0.15
    patch = cv.flat(0.0, ob["x"] - hw, ob["x"] + hw, ob["z"] - 0.2, ob["z"] + ob["len"] + 0.2)
    if patch is None:
        return
    (r0, r1, c0, c1), _, _, mask = patch
    img = cv.image[r0:r1, c0:c1]
    dark = np.float32(0.45 + 0.3 * cv.lay.overcast)
    np.copyto(img, img * dark, where=mask[..., None])
