"""Monocular depth data: RGB frames with dense or sparse depth maps, in metres.

Layouts: ``<root>/<split>/<scene>/N.jpg + N.png`` (NYU mini, DenseDepth style), or
``<root>/<scene>/...`` without split folders, split by scene with :func:`split_scenes` (frames of
one scene are near duplicates, so a frame-level split would leak). Per frame the image is
``N.jpg`` (or ``N.png`` when the depth is ``N.npy``) and the depth ``N.png`` or ``N.npy``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError
from .camvid import FrameCache, read_rgb, resize_image, resize_nearest

ENCODINGS = ("nyu8", "mm16", "kitti16", "npy")
SPLIT_NAMES = ("train", "val", "test")


def decode_depth(array: np.ndarray, encoding: str) -> np.ndarray:
    """Decode a stored depth map to metres, float32 (H, W); 0 where there is no measurement.

    nyu8: 8-bit, metres = v / 255 * 10. mm16: 16-bit millimetres, 0 invalid. kitti16: 16-bit,
    metres = v / 256, 0 invalid. npy: metres as floats (NaN/inf -> 0).
    """
    if encoding not in ENCODINGS:
        raise DataError(f"unknown depth encoding {encoding!r}; expected one of {ENCODINGS}")
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise DataError(f"depth must be a single-channel map, got shape {array.shape}")
    if encoding == "npy":
        if array.dtype.kind not in "fui":
            raise DataError(f"npy depth must be numeric, got {array.dtype}")
        depth = array.astype(np.float32)
        depth[~np.isfinite(depth)] = 0.0
        return depth
    expected = np.uint8 if encoding == "nyu8" else np.uint16
    if array.dtype != expected:
        bits = 8 if encoding == "nyu8" else 16
        raise DataError(f"depth encoding {encoding!r} expects {bits}-bit PNGs, got {array.dtype}")
    scale = {"nyu8": 10.0 / 255.0, "mm16": 1e-3, "kitti16": 1.0 / 256.0}[encoding]
    return array.astype(np.float32) * np.float32(scale)


def split_scenes(
    scene_names, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Deterministic scene-level split -> (train scenes, val scenes), each sorted.

    The result depends only on the set of names, ``val_fraction`` and ``seed`` (not on listing
    order). At least one scene goes to val when there are two or more scenes.
    """
    names = sorted(set(scene_names))
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(len(names) * val_fraction))
    if len(names) >= 2 and val_fraction > 0:
        n_val = min(max(n_val, 1), len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:n_val])
    return [n for n in names if n not in set(val)], val


def _frame_stems(folder: Path) -> list[int]:
    suffixes = (".jpg", ".png", ".npy")
    stems = {int(p.stem) for p in folder.iterdir() if p.stem.isdigit() and p.suffix in suffixes}
    return sorted(stems)


class DepthDataset:
    """RGB + depth frames as raw sample dicts (image, depth, valid, name), or transformed.

    Args:
        root: data root (see module docstring for layouts).
        split: split folder name; without split folders ``train``/``val`` pick a scene split.
        encoding: how PNG depth is stored (nyu8 | mm16 | kitti16); ``npy`` files are metres.
        min_depth, max_depth: valid range in metres. Measured depth outside it is clamped into
            the range (so targets stay finite for log losses) and marked invalid.
        size: (H, W) resize on load (image bilinear/area, depth nearest); None keeps native.
        cache: keep decoded frames in memory across epochs.
        scenes: restrict to these scene names (e.g. one scene as a short video).
        exclude_scenes: leave out scenes whose name starts with any of these prefixes (a room
            type: ``["basement"]`` holds basements out of training, for novelty studies).
    """

    def __init__(
        self,
        root,
        split="train",
        encoding="nyu8",
        min_depth=0.1,
        max_depth=10.0,
        size=None,
        cache=True,
        transform=None,
        scenes=None,
        val_fraction=0.2,
        seed=0,
        exclude_scenes=None,
    ):
        if encoding not in ENCODINGS:
            raise DataError(f"unknown depth encoding {encoding!r}; expected one of {ENCODINGS}")
        if not 0 < min_depth < max_depth:
            raise DataError(f"need 0 < min_depth < max_depth, got {min_depth} and {max_depth}")
        self.root = Path(root)
        self.split = split
        self.encoding = encoding
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.size = tuple(int(s) for s in size) if size is not None else None
        self.transform = transform
        self._cache = FrameCache(cache)
        if not self.root.is_dir():
            raise DataError(f"data root not found: {self.root}")
        scene_dirs = self._scene_dirs(val_fraction, seed)
        if scenes is not None:
            wanted = set(scenes)
            missing = wanted - {d.name for d in scene_dirs}
            if missing:
                raise DataError(f"scene(s) not found in {self.root} ({split}): {sorted(missing)}")
            scene_dirs = [d for d in scene_dirs if d.name in wanted]
        if exclude_scenes:
            scene_dirs = [d for d in scene_dirs if not d.name.startswith(tuple(exclude_scenes))]
        self.frames = [f for d in scene_dirs for f in self._scene_frames(d)]
        if not self.frames:
            raise DataError(f"no depth frames found under {self.root} (split {split!r})")

    def _scene_dirs(self, val_fraction: float, seed: int) -> list[Path]:
        if any((self.root / s).is_dir() for s in SPLIT_NAMES):
            base = self.root / self.split
            if not base.is_dir():
                raise DataError(f"split folder not found: {base}")
            return sorted(d for d in base.iterdir() if d.is_dir())
        dirs = {d.name: d for d in self.root.iterdir() if d.is_dir()}
        train, val = split_scenes(dirs, val_fraction, seed)
        chosen = {"train": train, "val": val}.get(self.split)
        if chosen is None:
            raise DataError(
                f"{self.root} has no split folders; split must be 'train' or 'val', "
                f"got {self.split!r}"
            )
        return [dirs[n] for n in chosen]

    def _scene_frames(self, scene: Path) -> list[tuple[str, Path, Path]]:
        frames = []
        for n in _frame_stems(scene):
            jpg, png, npy = (scene / f"{n}{ext}" for ext in (".jpg", ".png", ".npy"))
            if jpg.is_file():
                image, depth = jpg, (npy if self.encoding == "npy" else png)
            elif self.encoding == "npy":
                image, depth = png, npy  # a PNG image needs its depth in N.npy
            else:
                raise DataError(f"no image for frame {png} (expected {jpg})")
            if not image.is_file():
                raise DataError(f"no image for depth {depth} (expected {jpg} or {png})")
            if not depth.is_file():
                raise DataError(
                    f"no depth for image {image} (expected {depth}; "
                    f"data.depth_encoding is {self.encoding})"
                )
            frames.append((f"{scene.name}/{n}", image, depth))
        return frames

    def __len__(self) -> int:
        return len(self.frames)

    def frame_names(self) -> list[str]:
        """Each frame's name, in index order, without reading pixels."""
        return [f[0] for f in self.frames]

    def _read_stored_depth(self, path: Path) -> np.ndarray:
        """The depth map as stored (uint8/uint16 PNG or float npy), single channel."""
        if path.suffix == ".npy":
            try:
                raw = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read depth {path}: {e}") from None
        else:
            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise DataError(f"cannot read depth {path}")
        if raw.ndim == 3 and raw.shape[2] == 1:
            raw = raw[..., 0]
        if raw.ndim != 2:
            raise DataError(f"depth {path} must be a single-channel map, got shape {raw.shape}")
        try:
            decode_depth(raw[:1, :1], self.encoding)  # check dtype/encoding on load, not later
        except DataError as e:
            raise DataError(f"depth {path}: {e}") from None
        return raw

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        _, image_path, depth_path = self.frames[index]
        image = read_rgb(image_path)
        # Cache the stored encoding (1-2 bytes a pixel) and decode per access: cheap, and it
        # keeps the cache several times smaller than float metres.
        depth = self._read_stored_depth(depth_path)
        if depth.shape != image.shape[:2]:
            raise DataError(
                f"depth {depth_path} is {depth.shape[1]}x{depth.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        if self.size:
            image, depth = resize_image(image, self.size), resize_nearest(depth, self.size)
        self._cache.put(index, (image, depth))
        return image, depth

    def raw(self, index: int) -> dict:
        """Untransformed sample: image uint8 (H, W, 3), depth float32 metres, ``depth_valid`` bool
        (measured and within [min_depth, max_depth]; ``valid`` is the same mask), name."""
        image, stored = self._load(index)
        depth = decode_depth(stored, self.encoding)
        measured = depth > 0  # decode_depth already zeroed non-finite values
        valid = measured & (depth >= self.min_depth) & (depth <= self.max_depth)
        depth = np.where(measured, np.clip(depth, self.min_depth, self.max_depth), 0.0)
        return {
            "image": image.copy(),
            "depth": depth.astype(np.float32),
            "valid": valid,
            "depth_valid": valid,
            "name": self.frames[index][0],
        }

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        sample = self.raw(index % len(self))
        return self.transform(sample) if self.transform is not None else sample
