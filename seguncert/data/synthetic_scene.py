"""Procedural street layout and the objects along it, generated lazily chunk by chunk.

World coordinates (metres): x lateral (right positive), y up from the road surface, z along the
road (forward positive). The camera sits at x = 0, y = CAMERA_HEIGHT, z = cam_z and looks along
+z. The street's cross-section (lanes, pavements, facades) is constant along the road.

Objects come in *streams* (buildings on the left, traffic in one lane, pedestrians walking one
way, ...). A stream moves at a fixed velocity v; an object at stream position s is at world
z = s + v * t. A stream is cut into fixed-length chunks of s, and a chunk's content depends only
on (layout seed, stream code, chunk index), so any stretch of any stream can be regenerated on
demand: a camera driving forward sees a coherent world, and new objects keep appearing far ahead
while the ones it passed drop out of range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CAMERA_HEIGHT = 1.5
NEAR = 0.5  # nothing closer than this (metres along z) is drawn
# Beyond these distances an object is at most a pixel or two at the default sizes.
DRAW_DISTANCE = {"building": 160.0, "car": 110.0, "default": 75.0}
_CHUNK_OFFSET = 1 << 30  # SeedSequence entropy must be non-negative

BUILDING_RGB = (
    (0.55, 0.30, 0.22),  # red brick
    (0.45, 0.26, 0.20),  # dark brick
    (0.78, 0.70, 0.55),  # sandstone
    (0.85, 0.82, 0.74),  # cream render
    (0.62, 0.62, 0.60),  # concrete
    (0.70, 0.60, 0.48),  # beige
    (0.50, 0.50, 0.55),  # slate grey
)
CAR_RGB = (
    (0.85, 0.85, 0.85),
    (0.62, 0.63, 0.66),
    (0.10, 0.10, 0.11),
    (0.60, 0.08, 0.07),
    (0.10, 0.20, 0.50),
    (0.12, 0.30, 0.18),
    (0.80, 0.65, 0.10),
    (0.35, 0.36, 0.40),
)
FENCE_RGB = ((0.1, 0.1, 0.1), (0.15, 0.3, 0.2), (0.45, 0.32, 0.2), (0.6, 0.6, 0.6))
CLOTH_RGB = (
    (0.12, 0.12, 0.15),
    (0.20, 0.25, 0.45),
    (0.55, 0.10, 0.10),
    (0.80, 0.78, 0.70),
    (0.30, 0.35, 0.20),
    (0.45, 0.30, 0.20),
    (0.15, 0.35, 0.55),
    (0.75, 0.55, 0.15),
)


@dataclass
class Layout:
    """One street: its cross-section, materials, sky and lighting, and its object streams."""

    seed: int
    speed: float  # camera speed (m/s); cars in the camera's lane follow at this speed
    lane_width: float
    lanes: list[tuple[float, int]]  # (centre x, +1 same direction as camera / -1 oncoming)
    road_left: float
    road_right: float
    parking: bool  # a strip of parked cars along the left kerb
    pave: tuple[float, float]  # pavement width (left, right)
    facade: tuple[float, float]  # x of the building line (left < 0, right > 0)
    road_rgb: np.ndarray
    pave_rgb: tuple[np.ndarray, np.ndarray]
    overcast: float  # 0 clear blue sky .. 1 grey overcast
    sun: np.ndarray  # unit vector towards the sun
    streams: list[tuple[int, str, float, float, dict]] = field(default_factory=list)
    # (code, kind, chunk length, velocity, spawn args)
    cache: dict = field(default_factory=dict, repr=False)

    def kerb(self, side: int) -> float:
        return self.road_left if side < 0 else self.road_right

    def pave_outer(self, side: int) -> float:
        return self.kerb(side) + side * self.pave[0 if side < 0 else 1]


def make_layout(seed: int, speed: float = 8.0) -> Layout:
    """Draw a street cross-section, its materials and its object streams from ``seed``."""
    rng = np.random.default_rng([int(seed), 7919])
    lw = rng.uniform(3.1, 3.7)
    n_same = 1 + int(rng.random() < 0.3)
    n_onc = 1 + int(rng.random() < 0.25)
    cam_idx = int(rng.integers(n_same))  # which same-direction lane the camera drives in
    centres = [(i - cam_idx) * lw for i in range(n_same + n_onc)]
    lanes = [(c, 1 if i < n_same else -1) for i, c in enumerate(centres)]
    parking = bool(rng.random() < 0.6)
    road_left = centres[0] - lw / 2 - (2.2 if parking else 0.0)
    road_right = centres[-1] + lw / 2
    pave = (rng.uniform(2.0, 4.5), rng.uniform(2.0, 4.5))
    setback = rng.uniform(0.0, 3.0, size=2)
    facade = (road_left - pave[0] - setback[0], road_right + pave[1] + setback[1])
    grey = rng.uniform(0.28, 0.42)
    road_rgb = np.array([grey, grey, grey * rng.uniform(1.0, 1.08)], np.float32)

    def pave_colour() -> np.ndarray:
        if rng.random() < 0.25:  # red brick paving
            return np.array([0.55, 0.38, 0.32], np.float32) * rng.uniform(0.85, 1.1)
        g = rng.uniform(0.5, 0.68)
        return np.array([g, g * 0.98, g * 0.93], np.float32)

    pave_rgb = (pave_colour(), pave_colour())
    overcast = float(rng.uniform(0.0, 1.0))
    az = rng.uniform(-1.2, 1.2)
    el = rng.uniform(0.35, 0.9)
    sun = np.array([np.sin(az) * np.cos(el), np.sin(el), -np.cos(az) * np.cos(el)], np.float32)
    lay = Layout(
        int(seed), float(speed), lw, lanes, road_left, road_right, parking, pave, facade,
        road_rgb, pave_rgb, overcast, sun,
    )  # fmt: skip
    density = rng.uniform(0.35, 0.7)
    streams = lay.streams
    for side, code in ((-1, 0), (1, 1)):
        streams.append((code, "buildings", 40.0, 0.0, {"side": side}))
        trees = rng.uniform(0.2, 1.6)
        streams.append((code + 2, "furniture", 20.0, 0.0, {"side": side, "trees": trees}))
        for k, v in enumerate((1.0, -1.0)):
            walk = v * rng.uniform(1.0, 1.6)
            streams.append((10 + 2 * code + k, "pedestrians", 24.0, walk, {"side": side}))
    if parking:
        streams.append((4, "parked", 12.0, 0.0, {"x": road_left + 1.1, "p": rng.uniform(0.4, 0.8)}))
    cyc_x = road_left + (2.2 if parking else 0.0) + 0.7
    streams.append((5, "cyclists", 45.0, rng.uniform(3.5, 5.5), {"x": cyc_x}))
    for i, (cx, d) in enumerate(lanes):
        v = speed if cx == 0 else (speed + rng.uniform(-3, 3) if d > 0 else -rng.uniform(7, 12))
        args = {"x": cx, "dir": d, "p": density, "own": cx == 0}
        streams.append((20 + i, "traffic", 22.0, v, args))
    return lay


def _rgb(rng: np.random.Generator, table, jitter: float = 0.06) -> np.ndarray:
    base = np.asarray(table[int(rng.integers(len(table)))], np.float32)
    return np.clip(base + rng.uniform(-jitter, jitter, 3), 0.02, 1.0).astype(np.float32)


def _between(rng, a: float, b: float) -> float:
    """Uniform between a and b in either order (lateral ranges flip sign with the side)."""
    return a + (b - a) * rng.random()


def _buildings(lay: Layout, rng, s0: float, s1: float, side: int) -> list[dict]:
    out, z, gap, prev_x = [], s0, True, 0.0
    while z < s1 - 3.0:
        if rng.random() < 0.2:
            z += rng.uniform(3.0, 10.0)  # gap between buildings: sky and trees show through
            gap = True
            continue
        length = min(rng.uniform(8.0, 28.0), s1 - z)
        x = lay.facade[0 if side < 0 else 1] + side * rng.choice([0.0, 0.0, rng.uniform(0.5, 2)])
        floor = rng.uniform(2.9, 3.6)
        out.append({
            "kind": "building", "s": z, "x": x, "side": side, "len": length,
            "h": floor * int(rng.integers(2, 7)) + rng.uniform(0.3, 1.5), "floor": floor,
            "rgb": _rgb(rng, BUILDING_RGB), "bay": rng.uniform(2.2, 3.6),
            "win": rng.uniform(0.35, 0.6), "shop": bool(rng.random() < 0.4),
            "shop_rgb": _rgb(rng, CAR_RGB, 0.1), "glass": rng.uniform(0.08, 0.22),
            "open": gap or abs(prev_x) > abs(x),  # is its near end wall visible?
        })  # fmt: skip
        z, gap, prev_x = z + length, False, x
    return out


def _furniture(lay: Layout, rng, s0: float, s1: float, side: int, trees: float) -> list[dict]:
    kerb, outer = lay.kerb(side), lay.pave_outer(side)
    out = []
    if rng.random() < 0.75:
        wood = rng.random() < 0.2
        out.append({
            "kind": "pole", "s": rng.uniform(s0, s1), "x": kerb + side * 0.45, "side": side,
            "h": rng.uniform(5.5, 8.5), "w": rng.uniform(0.12, 0.2), "lamp": not wood,
            "rgb": np.array([0.35, 0.25, 0.15] if wood else [0.5, 0.52, 0.5], np.float32),
        })  # fmt: skip
    for _ in range(int(rng.poisson(trees))):
        x = (
            _between(rng, kerb + side * 0.9, outer - side * 0.6)
            if abs(outer - kerb) > 1.6
            else outer
        )
        out.append({
            "kind": "tree", "s": rng.uniform(s0, s1), "x": x, "h": rng.uniform(2.0, 3.5),
            "r": rng.uniform(1.3, 2.6), "trunk": rng.uniform(0.18, 0.35),
            "blobs": rng.uniform(-1, 1, size=(5, 4)).astype(np.float32),
            "rgb": rng.uniform((0.12, 0.3, 0.05), (0.3, 0.48, 0.18)).astype(np.float32),
        })  # fmt: skip
    if rng.random() < 0.45:
        shape = ("circle", "disc", "triangle", "rect", "rect", "light")[int(rng.integers(6))]
        out.append({
            "kind": "sign", "s": rng.uniform(s0, s1), "x": kerb + side * rng.uniform(0.3, 0.8),
            "shape": shape, "h": rng.uniform(2.1, 2.8), "size": rng.uniform(0.6, 0.95),
            "rgb": _rgb(rng, ((0.1, 0.25, 0.6), (0.1, 0.4, 0.2), (0.75, 0.6, 0.1)), 0.05),
            "lit": int(rng.integers(3)),
        })  # fmt: skip
    if rng.random() < 0.4:
        z0 = rng.uniform(s0, s1 - 4.0)
        at_kerb = rng.random() < 0.35
        out.append({
            "kind": "fence", "s": z0, "len": rng.uniform(4.0, s1 - z0),
            "x": kerb + side * 0.15 if at_kerb else outer, "side": side,
            "h": rng.uniform(0.9, 1.4), "style": "panel" if rng.random() < 0.35 else "railing",
            "rgb": _rgb(rng, FENCE_RGB),
        })  # fmt: skip
    return out


def _person(rng, x: float, s: float) -> dict:
    skin = np.array([0.85, 0.65, 0.5], np.float32) * rng.uniform(0.45, 1.05)
    return {
        "kind": "pedestrian", "s": s, "x": x, "h": rng.uniform(1.5, 1.9),
        "phase": rng.uniform(0, 6.3),
        "skin": skin, "top": _rgb(rng, CLOTH_RGB, 0.1), "legs": _rgb(rng, CLOTH_RGB[:3], 0.05),
        "hair": np.array([0.1, 0.07, 0.05], np.float32) * rng.uniform(0.5, 4.0),
    }  # fmt: skip


def _spawn(lay: Layout, kind: str, rng, s0: float, s1: float, args: dict) -> list[dict]:
    if kind == "buildings":
        return _buildings(lay, rng, s0, s1, args["side"])
    if kind == "furniture":
        return _furniture(lay, rng, s0, s1, args["side"], args["trees"])
    if kind == "pedestrians":
        side = args["side"]
        kerb, outer = lay.kerb(side), lay.pave_outer(side)
        return [
            _person(rng, _between(rng, kerb + side * 0.5, outer - side * 0.4), rng.uniform(s0, s1))
            for _ in range(int(rng.random() < 0.6) + int(rng.random() < 0.3))
        ]
    if kind == "cyclists":
        if rng.random() > 0.5:
            return []
        ob = _person(rng, args["x"] + rng.uniform(-0.2, 0.2), rng.uniform(s0, s1 - 2))
        ob.update(kind="cyclist", bike=_rgb(rng, CAR_RGB, 0.1), phase=rng.uniform(0, 6.3))
        return [ob]
    # cars: traffic in a lane (one per chunk) or parked along the kerb (6 m bays)
    bays = 2 if kind == "parked" else 1
    out, bay = [], (s1 - s0) / bays
    for b in range(bays):
        if rng.random() > args["p"]:
            continue
        length = rng.uniform(3.8, 4.9)
        lo = s0 + b * bay
        out.append({
            "kind": "car", "s": _between(rng, lo, max(lo, lo + bay - length - 0.4)),
            "x": args["x"] + rng.uniform(-0.15, 0.15),
            "dir": args.get("dir", 1) if kind == "traffic" else int(rng.choice([-1, 1])),
            "w": rng.uniform(1.65, 1.95), "len": length, "h": rng.uniform(1.35, 1.65),
            "rgb": _rgb(rng, CAR_RGB), "own": args.get("own", False),
        })  # fmt: skip
    return out


def chunk_objects(lay: Layout, stream: tuple, k: int) -> list[dict]:
    """Objects of chunk ``k`` of ``stream`` (cached on the layout for sequences)."""
    code, kind, length, _, args = stream
    key = (code, k)
    hit = lay.cache.get(key)
    if hit is None:
        rng = np.random.default_rng([lay.seed, code, k + _CHUNK_OFFSET])
        hit = _spawn(lay, kind, rng, k * length, (k + 1) * length, args)
        if len(lay.cache) > 4000:  # a long sequence: forget chunks far behind
            lay.cache.clear()
        lay.cache[key] = hit
    return hit


_STREAM_KIND = {"buildings": "building", "traffic": "car", "parked": "car"}


def scene_objects(lay: Layout, cam_z: float, t: float) -> list[dict]:
    """All objects within drawing range at time ``t`` for a camera at ``cam_z``.

    Each returned dict is a shallow copy of the chunk object with ``z`` added: the distance
    (metres along the road) from the camera to the object's near end.
    """
    out = []
    for stream in lay.streams:
        _, kind, length, v, args = stream
        far = DRAW_DISTANCE.get(_STREAM_KIND.get(kind, ""), DRAW_DISTANCE["default"])
        behind = 30.0 if kind in ("buildings", "furniture") else 6.0  # long objects start behind
        lo = cam_z - v * t - behind
        hi = cam_z - v * t + far
        for k in range(int(np.floor(lo / length)), int(np.floor(hi / length)) + 1):
            for ob in chunk_objects(lay, stream, k):
                z = ob["s"] + v * t - cam_z
                extent = ob.get("len", 0.5)
                if z + extent < NEAR or z > DRAW_DISTANCE.get(ob["kind"], DRAW_DISTANCE["default"]):
                    continue
                if ob.get("own") and z < 8.0:  # the camera's lane: keep a safe gap ahead
                    continue
                placed = dict(ob, z=z, t=t, world_z=z + cam_z)
                out.append(placed)
    return out
