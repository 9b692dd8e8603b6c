"""Run a checkpoint on camera frames: uint8 RGB in, per-frame numpy maps out.

:class:`FramePredictor` wraps an :class:`~seguncert.uncertainty.sampler.MCSampler` (frames
independent, batched) and :class:`TemporalPredictor` a
:class:`~seguncert.uncertainty.temporal.TemporalMC` (one frame at a time, in order, with the frame
itself for the optical flow). Both normalise with the checkpoint's mean/std, pad to a multiple
of 32 (the networks downsample 5 times) and crop the maps back to the frame.

Network size. Given ``net_size`` (the checkpoint's training size, see :func:`network_size`),
frames are first shrunk (area interpolation, aspect kept) to about that many pixels: a model
trained on CamVid frames resized to 180x240 sees a 360x480 frame's objects at twice the scale it
learned them at, and pays 4x the pixels for it. The maps come back at the frame's own size:
every map bilinearly upsampled, the class probabilities too, and ``pred`` their argmax (smooth
class boundaries rather than blocks). Given a
:class:`~seguncert.uncertainty.feature_density.NoveltyScorer` with a fitted density, both add
its map as ``novelty`` (one more eval-mode pass per frame: the cost of one deterministic
pass, encoder included, on top of the MC sampling).

:func:`check_memory` estimates the memory a frame size needs before anything runs, so a huge
input is refused (or its batch reduced) up front with the size named, instead of failing after
minutes of work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import normalize_image
from ..errors import SeguncertError
from ..uncertainty.masks import ActivationCounter

PAD_TO = 32
PROBE_SIZE = (128, 160)


def frames_to_batch(frames: Sequence[np.ndarray], meta: dict, device) -> torch.Tensor:
    """uint8 RGB frames (same size) -> normalised (B, 3, H', W'), padded to a multiple of 32."""
    h, w = frames[0].shape[:2]
    x = torch.stack([normalize_image(f, meta["mean"], meta["std"]) for f in frames]).to(device)
    ph, pw = -h % PAD_TO, -w % PAD_TO
    if ph or pw:  # reflect needs the pad smaller than the side; tiny frames replicate instead
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    return x


def network_size(frame_hw: tuple[int, int], train_hw) -> tuple[int, int]:
    """The size a frame is run at: ``frame_hw`` scaled (aspect kept) to the pixel count of
    ``train_hw`` (None: the frame's own size); never enlarged, and no side shrunk below 32."""
    h, w = frame_hw
    if train_hw is None:
        return h, w
    s = min(1.0, (train_hw[0] * train_hw[1] / (h * w)) ** 0.5)
    return (min(h, max(32, round(h * s))), min(w, max(32, round(w * s))))


def shrink(frames: Sequence[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Frames resized to ``size`` (H, W) with area interpolation (as is, when already there)."""
    h, w = size
    if frames[0].shape[:2] == (h, w):
        return list(frames)
    return [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames]


def upsample_maps(
    out: dict, net_hw: tuple[int, int], hw: tuple[int, int], keep_probs: bool = True
) -> dict:
    """The sampler's output, cropped to ``net_hw`` and brought to ``hw``: float (B, H, W) maps
    and the (B, C, H, W) ``probs`` bilinearly (one frame at a time, so full-size probabilities
    of a whole batch never coexist), ``pred`` = argmax of the upsampled probabilities; without
    ``keep_probs`` the upsampled probabilities are dropped once ``pred`` is taken."""
    h, w = net_hw
    crop = {k: v[..., :h, :w] for k, v in out.items() if v.dim() in (3, 4)}
    if (h, w) == tuple(hw):
        return crop if keep_probs else {k: v for k, v in crop.items() if k != "probs"}
    res = {
        k: F.interpolate(v[:, None].float(), size=hw, mode="bilinear", align_corners=False)[:, 0]
        for k, v in crop.items()
        if v.dim() == 3 and v.is_floating_point()
    }
    if "probs" in crop:
        ups = [F.interpolate(p[None].float(), size=hw, mode="bilinear", align_corners=False)[0]
               for p in crop["probs"]]  # fmt: skip
        res["pred"] = torch.stack([p.argmax(0) for p in ups])
        if keep_probs:
            res["probs"] = torch.stack(ups)
    elif "pred" in crop:
        res["pred"] = F.interpolate(crop["pred"][:, None].float(), size=hw, mode="nearest")[:, 0]
    return res


class FramePredictor:
    """``FramePredictor(sampler, meta, device, novelty=None, net_size=None)(frames) -> [{map
    name: (H, W) array}, ...]``; ``net_size``: the training size the frames are scaled to (see
    the module docstring; None runs them at their own size)."""

    batched = True

    def __init__(self, sampler, meta: dict, device, novelty=None, net_size=None) -> None:
        self.sampler, self.meta, self.device = sampler, meta, torch.device(device)
        self.novelty, self.net_size = novelty, net_size

    def __call__(self, frames: Sequence[np.ndarray]) -> list[dict]:
        return [self._numpy(o) for o in self.predict(frames, keep_probs=False)]

    def predict(self, frames: Sequence[np.ndarray], keep_probs: bool = True) -> list[dict]:
        """Like calling it, but torch tensors (probs included) on the device, not numpy."""
        hw = frames[0].shape[:2]
        net_hw = network_size(hw, self.net_size)
        small = shrink(frames, net_hw)
        x = frames_to_batch(small, self.meta, self.device)
        with torch.inference_mode():
            out = self._with_novelty(self._sample(x, small), x)
            out = upsample_maps(out, net_hw, hw, keep_probs)
        return [{k: v[i] for k, v in out.items()} for i in range(len(frames))]

    def _sample(self, x: torch.Tensor, small: list[np.ndarray]) -> dict:
        return self.sampler(x)

    @staticmethod
    def _numpy(one: dict) -> dict:
        return {k: v.float().cpu().numpy() for k, v in one.items() if v.dim() == 2}

    def _with_novelty(self, out: dict, x: torch.Tensor) -> dict:
        if self.novelty is not None:
            out = {**out, "novelty": self.novelty(x)["feature_density"]}
        return out

    def reset(self) -> None:
        """Start of a new input (nothing to forget: frames are independent)."""


class TemporalPredictor(FramePredictor):
    """Frames in video order, one per call (sample reuse across frames needs the order)."""

    batched = False

    def predict(self, frames: Sequence[np.ndarray], keep_probs: bool = True) -> list[dict]:
        if len(frames) != 1:
            raise SeguncertError(f"temporal sampling takes one frame at a time, got {len(frames)}")
        return super().predict(frames, keep_probs)

    def _sample(self, x: torch.Tensor, small: list[np.ndarray]) -> dict:
        return self.sampler(x, frame_rgb=small[0])  # unpadded: aligned top-left

    def reset(self) -> None:
        self.sampler.reset()


def bytes_per_pixel(model: torch.nn.Module) -> float:
    """Activation bytes per input pixel of one forward pass, measured on a small probe frame
    (every module output counted, an over-estimate of the live peak: the safe side)."""
    p = next(model.parameters())
    x = torch.zeros(1, 3, *PROBE_SIZE, device=p.device, dtype=p.dtype)
    with torch.inference_mode(), ActivationCounter(list(model.modules())) as counter:
        model.eval()(x)
    return counter.total(exclude={"x": x}) / (PROBE_SIZE[0] * PROBE_SIZE[1])


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (MemAvailable on Linux for the CPU); None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(model, size_hw: tuple[int, int], batch: int, budget_mb: float, device) -> int:
    """The largest batch (<= ``batch``) whose estimated peak fits in free memory; SeguncertError
    naming the frame size when not even one frame fits. Estimate: probe bytes per pixel x
    padded pixels x batch, plus the sampler's suffix budget."""
    if os.environ.get("SEGUNCERT_SKIP_MEMORY_CHECK"):
        return batch
    free = available_bytes(torch.device(device))
    if free is None:
        return batch
    h, w = size_hw
    pixels = (h + -h % PAD_TO) * (w + -w % PAD_TO)
    per_frame = bytes_per_pixel(model) * pixels
    fits = int((free - budget_mb * 2**20) // max(per_frame, 1.0))
    if fits >= 1:
        return min(batch, fits)
    scale = max(1.0, (per_frame / max(free - budget_mb * 2**20, 1.0)) ** 0.5)
    suggest = f"{max(32, int(h / scale) // 32 * 32)}x{max(32, int(w / scale) // 32 * 32)}"
    raise SeguncertError(
        f"frames of {w}x{h} pixels need about {per_frame / 2**30:.1f} GB each for inference "
        f"(estimated), more than the {free / 2**30:.1f} GB free; pass --size {suggest} "
        "(height x width) to resize them"
    )
