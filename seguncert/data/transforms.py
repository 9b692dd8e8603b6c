"""Sample transforms: raw numpy sample dict -> tensor dict (docs/architecture.md).

Geometry is applied identically to the image and every per-pixel target (label, depth, valid,
ood). Targets are only ever resampled with nearest neighbour, so a depth value is never blended
across a depth edge or with an invalid (0) pixel, and a label never becomes a class mix.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch

from .camvid import resize_nearest
from .common import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

# Fill value of each target where a crop or eval padding leaves the image.
PAD_VALUES = {
    "label": IGNORE_INDEX,
    "depth": 0.0,
    "valid": False,
    "depth_valid": False,
    "ood": False,
}
TARGETS = tuple(PAD_VALUES)


def normalize_image(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 tensor (3, H, W): (x / 255 - mean) / std."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return x.sub_(m).div_(s)


def denormalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Inverse of :func:`normalize_image`: (3, H, W) or (B, 3, H, W) tensor -> uint8 numpy
    (H, W, 3) or (B, H, W, 3) RGB, rounded and clipped to 0..255."""
    x = x.detach().to("cpu", torch.float32)
    shape = (1, 3, 1, 1) if x.dim() == 4 else (3, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(shape)
    s = torch.tensor(std, dtype=torch.float32).view(shape)
    img = (x * s + m).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return img.movedim(-3, -1).numpy()


def _to_tensors(sample: dict, mean, std) -> dict:
    out = {"image": normalize_image(sample["image"], mean, std)}
    dtypes = {
        "label": torch.int64,
        "depth": torch.float32,
        "valid": torch.bool,
        "depth_valid": torch.bool,
        "ood": torch.bool,
    }
    for key, dtype in dtypes.items():
        if key in sample:
            out[key] = torch.from_numpy(np.ascontiguousarray(sample[key])).to(dtype)
    for key, value in sample.items():
        if key not in out:
            out[key] = value  # name, and anything else passes through unchanged
    return out


def _pad_bottom_right(arr: np.ndarray, h: int, w: int, value) -> np.ndarray:
    pad_h, pad_w = h - arr.shape[0], w - arr.shape[1]
    if pad_h <= 0 and pad_w <= 0:
        return arr
    widths = ((0, max(pad_h, 0)), (0, max(pad_w, 0))) + ((0, 0),) * (arr.ndim - 2)
    return np.pad(arr, widths, constant_values=value)


class TrainTransform:
    """Random scale -> pad to the crop -> random crop -> horizontal flip -> colour jitter.

    The scale step runs outside albumentations because depth needs the sampled factor s:
    zooming an image in by s makes the scene look s times closer, so depth targets are divided
    by s (Eigen et al. 2014) to keep the image-depth relation consistent.
    """

    def __init__(
        self,
        crop=None,
        scale_range=(0.75, 1.5),
        hflip=True,
        color_jitter=0.2,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        depth_scale_consistent=True,
        seed=None,
    ):
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.crop = tuple(int(v) for v in crop) if crop is not None else None
        self.scale_range = (lo, hi)
        self.mean, self.std = tuple(mean), tuple(std)
        self.depth_scale_consistent = depth_scale_consistent
        # Padding the image with the mean colour makes padded pixels 0 after normalisation.
        self.image_fill = tuple(int(round(255 * m)) for m in self.mean)
        self.seed = seed
        steps = []
        if hflip:
            steps.append(A.HorizontalFlip(p=0.5))
        if color_jitter:
            cj = float(color_jitter)
            steps.append(
                A.ColorJitter(
                    brightness=cj, contrast=cj, saturation=cj, hue=min(cj / 4, 0.5), p=0.8
                )
            )
        self.augment = A.Compose(steps, additional_targets={k: "mask" for k in TARGETS}, seed=seed)
        self._rng = np.random.default_rng(seed)
        self._worker = None

    def set_random_seed(self, seed: int) -> None:
        """Reseed both random streams (scale/crop and the albumentations steps). The training
        loader calls this every epoch, so an epoch's augmentations depend only on its seed and
        a resumed run repeats them exactly."""
        self._rng = np.random.default_rng(seed)
        self.augment.set_random_seed(seed)

    def _reseed_for_worker(self) -> None:
        # DataLoader workers are forked copies holding the same RNG state: without reseeding
        # every worker would draw the same augmentations. torch gives each worker (and each
        # epoch, unless workers persist) a distinct seed derived from the loader's generator.
        info = torch.utils.data.get_worker_info()
        worker = None if info is None else (info.id, info.seed)
        if worker != self._worker and info is not None:
            self.set_random_seed(info.seed % 2**32)
        self._worker = worker

    def _scale(self, sample: dict) -> dict:
        lo, hi = self.scale_range
        s = float(self._rng.uniform(lo, hi)) if hi > lo else lo
        if s == 1.0:
            return sample
        h, w = sample["image"].shape[:2]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        out = dict(sample)
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        out["image"] = cv2.resize(sample["image"], size[::-1], interpolation=interp)
        for key in TARGETS:
            if key in sample:
                arr = sample[key]
                small = arr.astype(np.uint8) if arr.dtype in (np.bool_, np.int64) else arr
                out[key] = resize_nearest(small, size).astype(arr.dtype)
        if "depth" in out and self.depth_scale_consistent:
            out["depth"] = out["depth"] / np.float32(s)
        return out

    def _crop(self, sample: dict, h: int, w: int) -> dict:
        out = dict(sample)
        out["image"] = _pad_bottom_right(sample["image"], h, w, 0)
        if out["image"] is not sample["image"]:
            out["image"][sample["image"].shape[0] :, :] = self.image_fill
            out["image"][:, sample["image"].shape[1] :] = self.image_fill
        for key in TARGETS:
            if key in sample:
                out[key] = _pad_bottom_right(sample[key], h, w, PAD_VALUES[key])
        ph, pw = out["image"].shape[:2]
        y = int(self._rng.integers(0, ph - h + 1))
        x = int(self._rng.integers(0, pw - w + 1))
        out["image"] = out["image"][y : y + h, x : x + w]
        for key in TARGETS:
            if key in out:
                out[key] = out[key][y : y + h, x : x + w]
        return out

    def __call__(self, sample: dict) -> dict:
        self._reseed_for_worker()
        if "label" in sample:
            sample = {**sample, "label": sample["label"].astype(np.uint8)}  # 0..10 and 255
        h, w = self.crop or sample["image"].shape[:2]
        sample = self._crop(self._scale(sample), h, w)
        arrays = {k: np.ascontiguousarray(sample[k]) for k in ("image", *TARGETS) if k in sample}
        out = {**sample, **self.augment(**arrays)}
        if "label" in out:
            out["label"] = out["label"].astype(np.int64)
        return _to_tensors(out, self.mean, self.std)


class EvalTransform:
    """Normalise; pad bottom/right to a multiple of ``pad_to``; record ``orig_size``."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, pad_to=32):
        self.mean, self.std = tuple(mean), tuple(std)
        self.pad_to = int(pad_to)

    def __call__(self, sample: dict) -> dict:
        h, w = sample["image"].shape[:2]
        ph = -(-h // self.pad_to) * self.pad_to if self.pad_to > 1 else h
        pw = -(-w // self.pad_to) * self.pad_to if self.pad_to > 1 else w
        out = _to_tensors(sample, self.mean, self.std)
        # Pad after normalising so padded image pixels are exactly 0 (the mean colour).
        out["image"] = torch.nn.functional.pad(out["image"], (0, pw - w, 0, ph - h))
        for key, fill in PAD_VALUES.items():
            if key in out:
                padded = torch.full((ph, pw), fill, dtype=out[key].dtype)
                padded[:h, :w] = out[key]
                out[key] = padded
        out["orig_size"] = torch.tensor([h, w], dtype=torch.int64)
        return out


def image_sizes(batch: dict) -> list[tuple[int, int]]:
    """(h, w) of every image of a collated batch before evaluation padding (``orig_size``)."""
    sizes = batch.get("orig_size")
    if sizes is None:
        return [tuple(batch["image"].shape[-2:])] * batch["image"].shape[0]
    return [(int(h), int(w)) for h, w in sizes.tolist()]


def build_train_transform(
    crop=None,
    scale_range=(0.75, 1.5),
    hflip=True,
    color_jitter=0.2,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    depth_scale_consistent=True,
    seed=None,
) -> TrainTransform:
    """Training augmentation. ``crop`` = (H, W); None crops (or pads) back to each sample's own
    size after scaling, so equally sized inputs still batch. Pads use label 255, valid False,
    depth 0, ood False and the mean colour for the image. Returns tensors per the architecture
    (no ``orig_size``)."""
    return TrainTransform(
        crop, scale_range, hflip, color_jitter, mean, std, depth_scale_consistent, seed
    )


def build_eval_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD, pad_to=32) -> EvalTransform:
    """Deterministic evaluation transform: normalise, pad to a multiple of ``pad_to``, and add
    ``orig_size`` so predictions can be cropped back with ``[..., :h, :w]``."""
    return EvalTransform(mean, std, pad_to)
