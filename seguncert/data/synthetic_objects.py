"""Drawers for the objects of the synthetic street: cars, people, cyclists, trees, poles and
signs. Each takes the canvas and one placed object dict (see
synthetic_scene) whose ``z`` is its distance from the camera; shapes are unions of ellipses,
rectangles and thick segments evaluated in metric coordinates on the object's plane.
"""

from __future__ import annotations

import numpy as np

from .synthetic_raster import (
    BICYCLIST,
    CAR,
    DETAIL,
    PEDESTRIAN,
    POLE,
    SIGN,
    TREE,
    Canvas,
    tex,
)


def _ellipse(px, py, cx, cy, rx, ry):
    return ((px - cx) / rx) ** 2 + ((py - cy) / ry) ** 2 < 1.0


def _seg(px, py, a, b, r):
    """Pixels within r of the segment a-b (points as (x, y) tuples)."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    t = np.clip(((px - a[0]) * dx + (py - a[1]) * dy) / (dx * dx + dy * dy + 1e-9), 0.0, 1.0)
    return (px - a[0] - t * dx) ** 2 + (py - a[1] - t * dy) ** 2 < r * r


def _paint(shape, parts) -> np.ndarray:
    """Colour image (h, w, 3) from [(mask, rgb), ...]; later parts win."""
    rgb = np.zeros(shape + (3,), np.float32)
    for mask, colour in parts:
        np.copyto(rgb, np.asarray(colour, np.float32), where=mask[..., None])
    return rgb


def draw_car(cv: Canvas, ob: dict) -> None:
    """Two boxes (body and cabin): the face towards the camera, the visible side, the tops."""
    x0, x1, z0, length, h, c = (
        ob["x"] - ob["w"] / 2,
        ob["x"] + ob["w"] / 2,
        ob["z"],
        ob["len"],
        ob["h"],
        ob["rgb"],
    )
    front = ob["dir"] < 0  # oncoming: we see its front (bonnet first)
    hb = 0.52 * h + 0.1  # beltline
    cz0 = z0 + (0.32 if front else 0.22) * length
    cz1 = z0 + (0.78 if front else 0.7) * length
    glass = np.array([0.1, 0.12, 0.16], np.float32)
    l_face, l_top = cv.light((0.0, 0.0, -1.0)), cv.light((0.0, 1.0, 0.0))
    wheel_z = (z0 + 0.75, z0 + length - 0.8)
    side = x1 if x1 < 0 else (x0 if x0 > 0 else None)
    for sx, lo, hi, za, zb, inset in (
        (side, 0.0, hb, z0, z0 + length, 0.0),
        (side, hb, h, cz0, cz1, 0.12),
    ):
        if sx is None:
            break
        sxi = sx - np.sign(sx) * inset
        face = cv.side(sxi, za, zb, lo, hi)
        if face is None:
            continue
        sl, Z, py, mask = face
        light = cv.light((np.sign(sx), 0.0, 0.0))
        body = c * light * (1 + 0.05 * tex(DETAIL, Z * 40, py * 40))[..., None]
        parts = [(np.ones_like(mask), body)]
        if inset:  # cabin side: windows split by a pillar
            a = (Z - za) / (zb - za)
            win = (
                (py < hi - 0.06)
                & (py > lo + 0.04)
                & ((a > 0.08) & (a < 0.92) & (np.abs(a - 0.5) > 0.03))[None, :]
            )
            parts.append((win, glass + 0.1 * (py - lo)[..., None]))
        else:
            for wz in wheel_z:
                parts.append(
                    (
                        ((Z - wz)[None, :] / 0.33) ** 2 + ((py - 0.32) / 0.32) ** 2 < 1,
                        (0.05, 0.05, 0.05),
                    )
                )
            parts.append(((py < 0.12), (0.04, 0.04, 0.04)))
        cv.put(sl, mask, Z[None, :], CAR, _paint(mask.shape, parts))
    # tops (seen from above because they are lower than the camera)
    for y, xa, xb, za, zb in ((hb, x0, x1, z0, z0 + length), (h, x0 + 0.12, x1 - 0.12, cz0, cz1)):
        top = cv.flat(y, xa, xb, za, zb)
        if top is not None:
            sl, Z, X, mask = top
            cv.put(sl, mask, Z[:, None], CAR, c * (l_top * 0.95))
    # the face towards the camera: body with lights, plate, and the cabin's windscreen
    bb = cv.billboard(z0, x0, x1, 0.0, hb)
    if bb is not None:
        sl, px, py = bb
        u = (px - x0) / (x1 - x0)
        m = np.ones((py.shape[0], px.shape[1]), bool)
        lamp = (0.88, 0.86, 0.7) if front else (0.7, 0.05, 0.04)
        parts = [
            (m, c * l_face * (1 + 0.05 * tex(DETAIL, px * 40, py * 40))[..., None]),
            ((py > hb - 0.28) & (py < hb - 0.1) & ((u < 0.17) | (u > 0.83)), lamp),
            (
                (py > 0.3) & (py < 0.45) & (np.abs(u - 0.5) < 0.13),
                (0.9, 0.88, 0.6) if not front else (0.9, 0.9, 0.9),
            ),
            ((py < 0.12) | ((py < 0.3) & ((u < 0.14) | (u > 0.86))), (0.04, 0.04, 0.04)),
        ]
        if front:
            parts.append(
                ((py > 0.42) & (py < hb - 0.3) & (np.abs(u - 0.5) < 0.25), (0.08, 0.08, 0.08))
            )
        cv.put(sl, m, z0, CAR, _paint(m.shape, parts))
        for ux in (0.1, 0.9):
            cv.lights.append((x0 + ux * (x1 - x0), hb - 0.2, z0, lamp, 0.5 if front else 0.25))
    bb = cv.billboard(cz0, x0 + 0.12, x1 - 0.12, hb, h)
    if bb is not None:
        sl, px, py = bb
        u = (px - x0 - 0.12) / (x1 - x0 - 0.24)
        m = np.ones((py.shape[0], px.shape[1]), bool)
        win = (py < h - 0.07) & (py > hb + 0.05) & (u > 0.06) & (u < 0.94)
        shine = glass + 0.15 * ((py - hb) / (h - hb))[..., None]
        cv.put(sl, m, cz0, CAR, _paint(m.shape, [(m, c * l_face), (win, shine)]))


def draw_pedestrian(cv: Canvas, ob: dict) -> None:
    h, x = ob["h"], ob["x"]
    bb = cv.billboard(ob["z"], x - 0.45, x + 0.45, 0.0, h)
    if bb is None:
        return
    sl, px, py = bb
    dx = px - x
    phase = ob["phase"] + ob["world_z"] * 4.5  # legs swing as the person walks
    swing = 0.22 * np.sin(phase)
    hip = 0.52 * h
    head = _ellipse(dx, py, 0.0, h - 0.12, 0.1, 0.12)
    hair = head & (py > h - 0.1)
    torso = (np.abs(dx) < 0.19 - 0.05 * (py < hip + 0.1)) & (py >= hip) & (py < 0.83 * h)
    legs = _seg(dx, py, (-0.06, hip), (-0.06 + swing, 0.04), 0.07) | _seg(
        dx, py, (0.06, hip), (0.06 - swing, 0.04), 0.07
    )
    arms = _seg(dx, py, (-0.2, 0.81 * h), (-0.22 - 0.5 * swing, 0.52 * h), 0.05) | _seg(
        dx, py, (0.2, 0.81 * h), (0.22 + 0.5 * swing, 0.52 * h), 0.05
    )
    light = cv.light((0.0, 0.0, -1.0))
    mask = head | torso | legs | arms
    rgb = _paint(
        mask.shape,
        [
            (legs, ob["legs"] * light),
            (torso | arms, ob["top"] * light),
            (head, ob["skin"] * light),
            (hair, ob["hair"]),
        ],
    )
    cv.put(sl, mask, ob["z"], PEDESTRIAN, rgb)


def draw_cyclist(cv: Canvas, ob: dict) -> None:
    """Rider and bicycle in a three-quarter view (the side profile squeezed horizontally)."""
    x, q = ob["x"], 0.55
    bb = cv.billboard(ob["z"], x - 0.55, x + 0.55, 0.0, 1.85)
    if bb is None:
        return
    sl, px, py = bb
    p = (px - x) / q
    r = 0.34
    wheels = np.zeros((py.shape[0], px.shape[1]), bool)
    for cx in (-0.55, 0.55):
        d = np.sqrt((p - cx) ** 2 + (py - r) ** 2)
        wheels |= np.abs(d - r + 0.03) < 0.05
    seat, crank, bar = (-0.2, 0.92), (0.0, 0.32), (0.4, 1.0)
    frame = np.zeros_like(wheels)
    for a, b in (
        ((-0.55, r), seat),
        (seat, crank),
        (crank, (-0.55, r)),
        (seat, (0.35, 0.9)),
        ((0.35, 0.9), (0.55, r)),
        ((0.35, 0.9), bar),
    ):
        frame |= _seg(p, py, a, b, 0.035)
    ang = ob["phase"] + ob["world_z"] * 2.0
    pedal = (0.17 * np.cos(ang), 0.32 + 0.17 * np.sin(ang))
    knee = (0.15 + 0.05 * np.sin(ang), 0.72 + 0.06 * np.sin(ang))
    shoulder = (0.2, 1.45)
    legs = _seg(p, py, seat, knee, 0.09) | _seg(p, py, knee, pedal, 0.07)
    torso = _seg(p, py, (seat[0], seat[1] + 0.05), shoulder, 0.14)
    arms = _seg(p, py, shoulder, bar, 0.05)
    head = _ellipse(p, py, 0.32, 1.62, 0.13, 0.13)
    helmet = head & (py > 1.65)
    mask = wheels | frame | legs | torso | arms | head
    light = cv.light((0.0, 0.0, -1.0))
    rgb = _paint(
        mask.shape,
        [
            (wheels, (0.04, 0.04, 0.04)),
            (frame, ob["bike"] * light),
            (legs, ob["legs"] * light),
            (torso | arms, ob["top"] * light),
            (head, ob["skin"] * light),
            (helmet, ob["bike"] * 0.8),
        ],
    )
    cv.put(sl, mask, ob["z"], BICYCLIST, rgb)


def draw_tree(cv: Canvas, ob: dict) -> None:
    """Trunk plus a crown made of overlapping blobs with a ragged, leafy edge."""
    x, r, base = ob["x"], ob["r"], ob["h"]
    top = base + 2.0 * r
    bb = cv.billboard(ob["z"], x - 1.4 * r, x + 1.4 * r, 0.0, top + 0.3 * r)
    if bb is None:
        return
    sl, px, py = bb
    dx = px - x
    trunk = (np.abs(dx) < ob["trunk"] / 2 * (1 + 0.3 * (py < 0.3))) & (py < base + r)
    cy = base + r
    best = np.full((py.shape[0], px.shape[1]), 9.0, np.float32)
    for bx, by, br, _ in ob["blobs"]:
        rr = r * (0.6 + 0.2 * br)
        e = ((dx - 0.6 * r * bx) ** 2 + (py - cy - 0.5 * r * by) ** 2) / (rr * rr)
        best = np.minimum(best, e)
    leaf = tex(DETAIL, (dx + ob["world_z"]) * 25, py * 25)
    crown = best + 0.35 * leaf < 1.0
    light = cv.light((0.0, 0.0, -1.0))
    shade = (0.75 + 0.25 * np.clip((py - cy) / r, -1, 1) + 0.25 * leaf)[..., None]
    rgb = np.where(
        crown[..., None], ob["rgb"] * light * shade, np.float32([0.3, 0.22, 0.14]) * light
    )
    cv.put(sl, crown | trunk, ob["z"], TREE, rgb.astype(np.float32))


def draw_pole(cv: Canvas, ob: dict) -> None:
    """Lamp post (with an arm and lamp over the road) or a wooden utility pole."""
    x, h, w, side = ob["x"], ob["h"], ob["w"], ob["side"]
    reach = -side * 1.4 if ob["lamp"] else 0.0
    bb = cv.billboard(
        ob["z"], min(x - w, x + reach - 0.3), max(x + w, x + reach + 0.3), 0.0, h + 0.2
    )
    if bb is None:
        return
    sl, px, py = bb
    dx = px - x
    mask = (np.abs(dx) < w / 2 * (1.0 + 0.4 * (py < 1.0))) & (py < h)
    rgb = (
        ob["rgb"]
        * cv.light((0.0, 0.0, -1.0))
        * (1 + 0.1 * tex(DETAIL, px * 50, py * 20))[..., None]
    )
    if ob["lamp"]:
        mask = (
            mask
            | _seg(dx, py, (0.0, h - 0.05), (reach, h + 0.1), 0.05)
            | _ellipse(dx, py, reach, h, 0.3, 0.09)
        )
        cv.lights.append((x + reach, h - 0.1, ob["z"], (1.0, 0.8, 0.45), 1.2))
    cv.put(sl, mask, ob["z"], POLE, rgb)


def draw_sign(cv: Canvas, ob: dict) -> None:
    """A post (Pole) carrying a plate (SignSymbol): round, triangular, rectangular or a signal."""
    x, h, s, z = ob["x"], ob["h"], ob["size"], ob["z"]
    light = cv.light((0.0, 0.0, -1.0))
    post = cv.billboard(z + 0.02, x - 0.05, x + 0.05, 0.0, h)
    if post is not None:
        sl, px, py = post
        cv.put(
            sl,
            np.ones((py.shape[0], px.shape[1]), bool),
            z + 0.02,
            POLE,
            np.float32([0.45, 0.46, 0.45]) * light,
        )
    tall = 3.0 if ob["shape"] == "light" else 1.0
    bb = cv.billboard(z, x - s / 2, x + s / 2, h, h + s * tall)
    if bb is None:
        return
    sl, px, py = bb
    dx, dy = (px - x) / (s / 2), (py - h - s * tall / 2) / (s / 2)  # plate coordinates in [-1, 1]
    rr = dx * dx + dy * dy
    shape = ob["shape"]
    white, red = (0.92, 0.92, 0.9), (0.75, 0.08, 0.08)
    if shape == "circle":
        mask, parts = rr < 1, [(rr < 1, red), (rr < 0.55, white)]
    elif shape == "disc":
        mask, parts = (
            rr < 1,
            [(rr < 1, ob["rgb"]), ((np.abs(dx) < 0.5) & (np.abs(dy) < 0.15), white)],
        )
    elif shape == "triangle":
        mask = (dy > -0.85) & (np.abs(dx) < (1.0 - dy) * 0.58)
        inner = (dy > -0.6) & (np.abs(dx) < (0.65 - dy) * 0.58)
        parts = [(mask, red), (inner, white)]
    elif shape == "rect":
        inner = (np.abs(dx) < 0.88) & (np.abs(dy) < 0.85)
        parts = [
            (np.ones_like(rr, bool), white),
            (inner, ob["rgb"]),
            (inner & (np.abs(dy) < 0.12), white),
        ]
        mask = np.ones_like(rr, bool)
    else:  # traffic signal: dark housing with one lit lamp of three
        mask = np.ones_like(rr, bool)
        parts = [(mask, (0.08, 0.08, 0.08))]
        for i, col in enumerate(((0.95, 0.15, 0.1), (0.95, 0.7, 0.1), (0.2, 0.9, 0.3))):
            lamp = dx * dx + ((py - h - s * (2.5 - i)) / (s / 2)) ** 2 < 0.45
            parts.append((lamp, col if i == ob["lit"] else (0.15, 0.15, 0.15)))
            if i == ob["lit"]:
                cv.lights.append((x, h + s * (2.5 - i), z, col, 0.3))
    rgb = _paint(mask.shape, parts) * np.float32(light)
    cv.put(sl, mask, z, SIGN, rgb)


DRAWERS = {
    "car": draw_car,
    "pedestrian": draw_pedestrian,
    "cyclist": draw_cyclist,
    "tree": draw_tree,
    "pole": draw_pole,
    "sign": draw_sign,
}
