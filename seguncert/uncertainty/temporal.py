"""Temporal reuse of MC samples on video (after Huang et al., ECCV 2018).

Consecutive frames look alike, so instead of T fresh dropout samples per frame, each frame runs K
fresh samples and fuses them with an exponentially decayed history of the per-pixel sample
statistics (sum p, sum p², sum of entropies, of the entropy the logit noise adds, learned
variances, depth sums and the per-pixel count); decay, warp and gate act on all of them alike.
With decay d the steady-state weight is K / (1 - d) samples (``effective_samples``). Every map
is computed from the fused statistics exactly as :class:`MCSampler` does from its samples, so
total = aleatoric + epistemic still holds and MI >= 0.

Following the video. The fresh samples' share of a pixel's weight is K / (d * n_hist + K), at
least 1 - d in the steady state (25% for the default d = 0.75), and the history is dropped where
the scene changed:
- ``flow=True``: the history is warped into the current frame with dense optical flow
  (``cv2.calcOpticalFlowFarneback`` from the current to the previous grey frame, computed at
  ``flow_scale`` of the frame size), so static scene structure stays aligned when the camera
  moves; pixels whose source lies outside the previous frame get no history.
- ``change_threshold`` (grey levels, 0-255): where the previous grey frame (warped, with flow)
  differs from the current one by more than this, the history weight is 0 -- occlusions, moving
  objects and flow failures use only the fresh samples, so the prediction follows them at once.
Both need ``frame_rgb``; without it the history is only decayed. Call :meth:`reset` at scene cuts
(a change of input size resets automatically). Frame n uses MC sample indices n*K .. n*K+K-1, so
fresh samples never repeat the masks of earlier frames and ``decay=0`` equals
``MCSampler(samples=K)(x, first_sample=n*K)`` exactly (with ``noise_samples`` too: the logit noise
is seeded per sample index as well).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..errors import ConfigError, SeguncertError
from .sampler import MCSampler, MCStats, finalize_stats


def _grey(frame_rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 grey frame at x's scale: frames larger than x (in either side) are resized to x;
    smaller or equal ones are taken as x before bottom/right eval padding."""
    if not (isinstance(frame_rgb, np.ndarray) and frame_rgb.ndim == 3 and frame_rgb.shape[2] == 3):
        raise SeguncertError("frame_rgb must be an (H, W, 3) RGB numpy array")
    grey = cv2.cvtColor(np.ascontiguousarray(frame_rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    h, w = size_hw
    if grey.shape[0] > h or grey.shape[1] > w:
        grey = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA)
    return grey


def _warp(t: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample (B, C, H, W) at grid (1, H, W, 2). Border padding, so sub-pixel overshoot at the
    edges (Farneback's noise) keeps the full weight; sources well outside are gated in _motion."""
    return torch.nn.functional.grid_sample(
        t,
        grid.to(t.dtype).expand(t.shape[0], -1, -1, -1),
        align_corners=True,
        padding_mode="border",
    )


class TemporalMC:
    """``TemporalMC(model, fresh_samples=K)(x (1, 3, H, W), frame_rgb) -> MCSampler's dict``.

    ``temperature``, ``noise_samples``, ``calibrator``, ``amp_dtype``, ``depth_dist``, ``seed`` and
    ``memory_budget_mb`` are passed to the per-frame :class:`MCSampler`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        fresh_samples: int = 2,
        decay: float = 0.75,
        flow: bool = False,
        memory_budget_mb: float = 1024.0,
        seed: int = 0,
        temperature: float | torch.Tensor = 1.0,
        change_threshold: float | None = 30.0,
        flow_scale: float = 0.5,
        amp_dtype: torch.dtype | None = None,
        depth_dist: str | None = None,
        noise_samples: int = 0,
        calibrator=None,
    ) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ConfigError(f"temporal decay must be in [0, 1), got {decay}")
        if change_threshold is not None and not float(change_threshold) > 0:
            raise ConfigError(f"change_threshold must be > 0 or None, got {change_threshold}")
        if not 0.0 < float(flow_scale) <= 1.0:
            raise ConfigError(f"flow_scale must be in (0, 1], got {flow_scale}")
        self.sampler = MCSampler(
            model,
            samples=fresh_samples,
            memory_budget_mb=memory_budget_mb,
            seed=seed,
            temperature=temperature,
            amp_dtype=amp_dtype,
            depth_dist=depth_dist,
            noise_samples=noise_samples,
            calibrator=calibrator,
        )
        self.fresh_samples = self.sampler.samples
        self.decay = float(decay)
        self.flow = flow
        self.change_threshold = None if change_threshold is None else float(change_threshold)
        self.flow_scale = float(flow_scale)
        self.reset()

    @property
    def effective_samples(self) -> float:
        """Steady-state weight of the fused statistics, in samples: K / (1 - decay)."""
        return self.fresh_samples / (1.0 - self.decay)

    def reset(self) -> None:
        """Forget the history (call at scene cuts)."""
        self._history: MCStats | None = None
        self._prev_grey: np.ndarray | None = None
        self._shape: tuple | None = None
        self.frame_index = 0

    def __call__(self, x: torch.Tensor, frame_rgb: np.ndarray | None = None) -> dict:
        if x.dim() != 4 or x.shape[0] != 1:
            raise SeguncertError(f"TemporalMC takes one frame (1, 3, H, W), got {tuple(x.shape)}")
        if self.flow and frame_rgb is None:
            raise SeguncertError("TemporalMC(flow=True) needs frame_rgb for the optical flow")
        size = tuple(x.shape[-2:])
        grey = _grey(frame_rgb, size) if frame_rgb is not None else None
        resized = grey is not None and self._prev_grey is not None
        if self._shape != tuple(x.shape) or (resized and grey.shape != self._prev_grey.shape):
            self.reset()
            self._shape = tuple(x.shape)
        first = self.frame_index * self.fresh_samples
        fused, _ = self.sampler.accumulate(x, first_sample=first)
        history = self._history
        if history is not None and self.decay > 0:
            weight: float | torch.Tensor = self.decay
            if grey is not None and self._prev_grey is not None:
                acc = fused.seg if fused.seg is not None else fused.reg
                device = next(iter(acc.sums.values())).device
                grid, gate = self._motion(self._prev_grey, grey, size, device)
                for acc in (history.seg, history.reg):
                    if acc is not None and grid is not None:
                        acc.apply_(lambda t, g=grid: _warp(t, g))
                weight = gate * self.decay
            for acc, new in ((history.seg, fused.seg), (history.reg, fused.reg)):
                if acc is not None and new is not None:
                    acc.scale_(weight)
                    new.merge_(acc)
        self._history = fused
        self._prev_grey = grey
        self.frame_index += 1
        return finalize_stats(fused)

    def _motion(self, prev: np.ndarray, cur: np.ndarray, size: tuple[int, int], device):
        """(sampling grid (1, H, W, 2) or None, history gate (1, 1, H, W)) at x's size."""
        h0, w0 = cur.shape
        sh, sw = max(8, round(h0 * self.flow_scale)), max(8, round(w0 * self.flow_scale))
        small_prev = cv2.resize(prev, (sw, sh), interpolation=cv2.INTER_AREA)
        small_cur = cv2.resize(cur, (sw, sh), interpolation=cv2.INTER_AREA)
        ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float32)
        flow = None
        if self.flow:
            # Flow from the current to the previous frame: cur(y, x) ~ prev(y + fy, x + fx),
            # i.e. where to fetch each current pixel's history (backward warping).
            flow = cv2.calcOpticalFlowFarneback(
                small_cur, small_prev, None, 0.5, 3, 15, 3, 5, 1.2, 0
            )
            small_prev = cv2.remap(
                small_prev,
                xs + flow[..., 0],
                ys + flow[..., 1],
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
        h, w = size
        gate = np.ones((h, w), np.float32)
        if self.change_threshold is not None:
            diff = cv2.absdiff(
                cv2.GaussianBlur(small_cur, (3, 3), 0), cv2.GaussianBlur(small_prev, (3, 3), 0)
            )
            changed = cv2.resize(
                (diff > self.change_threshold).astype(np.uint8),
                (w0, h0),
                interpolation=cv2.INTER_NEAREST,
            )
            gate[:h0, :w0] = 1.0 - changed
        gate_t = torch.from_numpy(gate).to(device)[None, None]
        if flow is None:
            return None, gate_t
        # Flow in full-frame pixels, then padded (zero flow) to x's size.
        full = cv2.resize(flow, (w0, h0), interpolation=cv2.INTER_LINEAR)
        full[..., 0] *= w0 / sw
        full[..., 1] *= h0 / sh
        padded = np.zeros((h, w, 2), np.float32)
        padded[:h0, :w0] = full
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        src_x, src_y = gx + padded[..., 0], gy + padded[..., 1]
        # Sources more than half a pixel outside the previous frame have no history there.
        inside = (src_x > -0.5) & (src_x < w - 0.5) & (src_y > -0.5) & (src_y < h - 0.5)
        gate_t = gate_t * torch.from_numpy(inside.astype(np.float32)).to(device)[None, None]
        grid = np.stack(
            [2.0 * src_x / max(w - 1, 1) - 1.0, 2.0 * src_y / max(h - 1, 1) - 1.0], axis=-1
        )
        return torch.from_numpy(grid).to(device)[None], gate_t
