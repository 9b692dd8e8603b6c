"""Out-of-distribution objects pasted onto real road frames (Fishyscapes Static style).

Scale: a flat road seen by a pinhole camera at height CAM_HEIGHT with its axis parallel to the
road. A ground point imaged at row v (horizon row v_h) lies at distance d = f CAM_HEIGHT /
(v - v_h), where an object of height h spans f h / d = h (v - v_h) / CAM_HEIGHT pixels: the focal
length cancels and square pixels are assumed. v_h is estimated from the topmost road rows; the
height is then clamped to [MIN_PX, MAX_HEIGHT * H] pixels (and the width to MAX_WIDTH * W).

Placement: the object's ground contact lands on a road pixel, and every object pixel (alpha >
0.5) must cover a former road pixel not already taken by another object, so nothing is pasted
over a car or a pedestrian that might stand in front of it. The object is alpha-blended with its
feathered edge, casts a soft contact shadow on the road and is matched to the local road colour
and brightness (a gain and a mild colour cast) plus a little sensor grain.

Labels: pixels with alpha > 0.5 are the object: ``ood`` True and label 255 (void, so they never
count as in-distribution). The feathered rim, 0 < alpha <= 0.5, is labelled 255 with ``ood``
False; there is no separate ignore mask: ignored = (label == 255) & ~ood, which is what novelty
metrics see as neither positive (ood) nor negative (valid & ~ood).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import ConfigError, DataError
from .common import IGNORE_INDEX
from .ood_objects import KINDS, Sprite, make_object

CAM_HEIGHT = 1.3  # metres above the road
HORIZON_MARGIN = 0.02  # of H: the farthest visible road lies a little below the horizon
HORIZON_RANGE = (0.3, 0.65)  # of H: where the horizon estimate is clamped to
MIN_PX, MAX_HEIGHT, MAX_WIDTH = 8, 0.4, 0.5  # object height (px, of H) and width (of W) limits
MIN_ROAD_FRACTION = 0.02  # frames with less road are left unchanged
TRIES, POSITIONS = 12, 8  # objects drawn per placement, positions tried per drawn object
ROW_DRAWS = 16  # contact rows drawn per object until one passes the quick test
REF_ROAD_LUM = 0.32  # road luminance at which the sprites' colours are used unchanged
SHADOW = 0.5  # darkening at the centre of the contact shadow
GRAIN = 0.012  # std of the noise added to the object (the frame's own sensor noise)
LUMA = np.float32([0.299, 0.587, 0.114])


def horizon_row(road: np.ndarray) -> float:
    """Horizon row estimated from a road mask (H, W): the topmost road rows (the 0.5th
    percentile, robust to stray labels) less HORIZON_MARGIN * H, clamped to HORIZON_RANGE."""
    h = road.shape[0]
    rows = np.nonzero(road)[0]
    top = np.percentile(rows, 0.5) if rows.size else HORIZON_RANGE[1] * h
    return float(np.clip(top - HORIZON_MARGIN * h, HORIZON_RANGE[0] * h, HORIZON_RANGE[1] * h))


def ground_scale(row: float, horizon: float, cam_height: float = CAM_HEIGHT) -> float:
    """Pixels per metre of an upright object standing on image row ``row`` (pixel centre)."""
    return max(row + 0.5 - horizon, 0.0) / cam_height


def _clamp_scale(ppm: float, height_m: float, width_m: float, h: int, w: int) -> float:
    ppm = min(max(ppm, MIN_PX / height_m), MAX_HEIGHT * h / height_m)
    return min(ppm, MAX_WIDTH * w / width_m)


def _check(image: np.ndarray, label: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"paste_ood needs a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if label.shape != image.shape[:2]:
        raise DataError(f"label shape {label.shape} != image shape {image.shape[:2]}")


def _fit(sprite: Sprite, free: np.ndarray, row: int, col: int):
    """Top-left (r0, c0) for the sprite's contact at (row, col), or None when an object pixel
    would leave the free road or more than a tenth of the object lies outside the frame."""
    h, w = sprite.alpha.shape
    r0, c0 = int(round(row + 0.5 - sprite.ground)), int(col) - w // 2
    core = sprite.alpha > 0.5
    a0, a1 = max(0, -r0), min(h, free.shape[0] - r0)
    b0, b1 = max(0, -c0), min(w, free.shape[1] - c0)
    if a1 <= a0 or b1 <= b0:
        return None
    sub = core[a0:a1, b0:b1]
    if sub.sum() < 0.9 * core.sum():
        return None
    if not free[r0 + a0 : r0 + a1, c0 + b0 : c0 + b1][sub].all():
        return None
    return r0, c0


def _windows(shape, r0, c0, h, w):
    """Frame and sprite slices of a sprite (h, w) at (r0, c0), clipped to the frame."""
    a0, a1 = max(0, -r0), min(h, shape[0] - r0)
    b0, b1 = max(0, -c0), min(w, shape[1] - c0)
    frame = (slice(r0 + a0, r0 + a1), slice(c0 + b0, c0 + b1))
    return frame, (slice(a0, a1), slice(b0, b1))


def _shadow(img: np.ndarray, covered: np.ndarray, sprite: Sprite, r0: int, c0: int) -> None:
    """Darken the road in a blurred ellipse under the object's footprint, in place."""
    core = sprite.alpha > 0.5
    rows = np.flatnonzero(core.any(1))
    if rows.size == 0:  # a sprite with no solid pixel casts no shadow
        return
    low = core[max(rows[0], int(sprite.ground - 0.15 * (sprite.ground - rows[0]))) :]
    cols = np.flatnonzero(low.any(0))
    if cols.size == 0:  # footprint rows below the solid part (thin top-heavy shapes): use all
        cols = np.flatnonzero(core.any(0))
    rx = 0.6 * (cols[-1] - cols[0] + 1) / 2 + 1.0
    ry = max(1.5, 0.25 * rx)
    cx, cy = c0 + (cols[0] + cols[-1]) / 2, r0 + sprite.ground - 0.3 * ry
    m = np.zeros(img.shape[:2], np.float32)
    cv2.ellipse(m, (int(cx * 16), int(cy * 16)), (int(rx * 16), int(ry * 16)), 0, 0, 360, 1.0,
                -1, cv2.LINE_AA, 4)  # fmt: skip
    m = cv2.GaussianBlur(m, (0, 0), 0.35 * ry + 0.8)
    img *= (1.0 - SHADOW * m * (1.0 - covered))[..., None]


def _match(rgb: np.ndarray, img: np.ndarray, road: np.ndarray, r0, c0, h, w) -> np.ndarray:
    """Scale the sprite colours to the road around the object: gain from the road's luminance
    and a mild pull towards its colour cast."""
    win = (slice(max(0, r0 - h), r0 + 2 * h), slice(max(0, c0 - w), c0 + 2 * w))
    near = road[win]
    ref = img[win][near] if near.sum() >= 20 else img[road]
    mean = ref.mean(0)
    lum = float(mean @ LUMA)
    gain = float(np.clip(lum / REF_ROAD_LUM, 0.5, 1.5))
    cast = (mean / max(lum, 1e-3)) ** 0.3
    return rgb * (gain * cast).astype(np.float32)


def _paste_one(img, out, free, road, horizon, rng, kinds) -> dict | None:
    H, W = free.shape
    rows, _ = np.nonzero(free & (np.arange(H)[:, None] > horizon + 2))
    if rows.size == 0:
        return None
    kind = kinds[int(rng.integers(len(kinds)))]  # kept over the tries: tall kinds fit less often
    for _ in range(TRIES):
        obj = make_object(kind, rng)
        for row in rows[rng.integers(rows.size, size=ROW_DRAWS)]:
            ppm = _clamp_scale(ground_scale(row, horizon), obj.height_m, obj.width_m, H, W)
            # a cheap test before rendering: road under the contact and near the object's top
            top = max(0, int(row - 0.8 * obj.height_m * ppm))
            cand = np.flatnonzero(free[row] & free[top])
            if cand.size:
                break
        else:
            continue
        sprite = obj.render(ppm)
        for col in rng.choice(cand, size=min(POSITIONS, cand.size), replace=False):
            pos = _fit(sprite, free, int(row), int(col))
            if pos is not None:
                return _composite(img, out, free, road, sprite, pos, (int(row), int(col)), rng)
    return None


def _composite(img, out, free, road, sprite: Sprite, pos, contact, rng) -> dict:
    (r0, c0), (h, w) = pos, sprite.alpha.shape
    fr, sp = _windows(free.shape, r0, c0, h, w)
    rgb = _match(sprite.rgb, img, road, r0, c0, h, w)[sp]
    rgb = rgb + rng.normal(0.0, GRAIN, rgb.shape).astype(np.float32)
    a = sprite.alpha[sp]
    _shadow(img, out["alpha"], sprite, r0, c0)
    img[fr] = img[fr] * (1.0 - a[..., None]) + np.clip(rgb, 0, 1) * a[..., None]
    out["alpha"][fr] = np.maximum(out["alpha"][fr], a)
    out["ood"][fr] |= a > 0.5
    out["label"][fr][a > 0] = IGNORE_INDEX
    free[fr] &= ~(a > 0)
    ys, xs = np.nonzero(a > 0.5)
    box = (c0 + sp[1].start + int(xs.min()), r0 + sp[0].start + int(ys.min()))
    box += (c0 + sp[1].start + int(xs.max()) + 1, r0 + sp[0].start + int(ys.max()) + 1)
    return {"kind": sprite.kind, "box": box, "contact": contact, "px_per_m": sprite.px_per_m,
            "height_px": sprite.height_m * sprite.px_per_m}  # fmt: skip


def paste_ood(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    n_objects: int = 1,
    road_class: int = 3,
    kinds=tuple(KINDS),
    min_road_fraction: float = MIN_ROAD_FRACTION,
) -> dict:
    """Paste up to ``n_objects`` random objects (of ``kinds``) on the road of one frame.

    image uint8 (H, W, 3) RGB; label int (H, W), classes 0..10 and 255. Returns a dict:
    image uint8 (H, W, 3); label int64 (H, W), 255 wherever alpha > 0; ood bool (H, W), alpha >
    0.5; alpha float32 (H, W), the pasted coverage; boxes: one dict per placed object (kind,
    box = (x0, y0, x1, y1) of its ood pixels, end-exclusive; contact = (row, col); px_per_m;
    height_px). Fewer objects than asked are placed when no fitting spot is found within the
    tries; a frame with less than ``min_road_fraction`` road is returned unchanged.
    """
    image, label = np.asarray(image), np.asarray(label)
    _check(image, label)
    road = label == road_class
    out = {
        "image": image.copy(),
        "label": label.astype(np.int64),
        "ood": np.zeros(label.shape, bool),
        "alpha": np.zeros(label.shape, np.float32),
        "boxes": [],
    }
    if road.mean() < min_road_fraction or n_objects <= 0:
        return out
    img = image.astype(np.float32) / 255.0
    free, horizon = road.copy(), horizon_row(road)
    for _ in range(int(n_objects)):
        placed = _paste_one(img, out, free, road, horizon, rng, tuple(kinds))
        if placed is not None:
            out["boxes"].append(placed)
    out["image"] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


class OODPasteDataset:
    """A raw frame dataset with OOD objects pasted on its road (a novelty benchmark).

    ``base[i]`` must return raw sample dicts (uint8 image, int label with 255 = void: build it
    with transform=None). Item i is a function of (seed, i) only (np.random.SeedSequence([seed,
    i])); it holds the base sample's keys with image and label replaced, ood (bool (H, W)),
    valid = label != 255 and name + ``_ood<seed>``; ``transform`` (a project transform, which
    carries 'ood' along) is applied last. n_objects: an int or an inclusive (low, high) range.
    """

    def __init__(self, base, seed=0, n_objects=(1, 2), transform=None, kinds=tuple(KINDS),
                 road_class: int = 3):  # fmt: skip
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"OODPasteDataset seed must be a non-negative integer, got {seed!r}")
        lo, hi = (n_objects, n_objects) if np.isscalar(n_objects) else tuple(n_objects)
        if not 0 <= int(lo) <= int(hi):
            raise ConfigError(
                f"OODPasteDataset n_objects must be n or (low, high), got {n_objects!r}"
            )
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ConfigError(f"unknown OOD object kinds {unknown}; expected {', '.join(KINDS)}")
        self.base, self.seed, self.n_objects = base, int(seed), (int(lo), int(hi))
        self.transform, self.kinds, self.road_class = transform, tuple(kinds), int(road_class)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        sample = self.base[index]
        image = sample.get("image") if isinstance(sample, dict) else None
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise DataError("OODPasteDataset needs raw samples (uint8 numpy image): build the "
                            "base dataset with transform=None")  # fmt: skip
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        n = int(rng.integers(self.n_objects[0], self.n_objects[1] + 1))
        r = paste_ood(image, sample["label"], rng, n, self.road_class, self.kinds)
        out = {**sample, "image": r["image"], "label": r["label"], "ood": r["ood"]}
        out["valid"] = r["label"] != IGNORE_INDEX
        out["name"] = f"{sample.get('name', index)}_ood{self.seed}"
        return self.transform(out) if self.transform is not None else out
