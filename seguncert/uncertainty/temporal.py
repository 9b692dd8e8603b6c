"""Temporal reuse of MC samples on video (after Huang et al., ECCV 2018).

Consecutive frames look alike, so instead of T fresh dropout samples per frame, each frame runs K
fresh samples and fuses them with an exponentially decayed history of the per-pixel sample
statistics (sum p, sum p², sum of entropies, of the entropy the logit noise adds, learned
variances, depth sums and the per-pixel count); decay, warp and gate act on all of them alike.
With decay d the steady-state weight is K / (1 - d) samples (``effective_samples``). Every map
is computed from the fused statistics exactly as :class:`MCSampler` does from its samples, so
total = aleatoric + epistemic still holds and MI >= 0.

Never inventing uncertainty. Fusing samples of another view (or of a frame the model read
differently) adds their disagreement to the epistemic map: on CamVid 0016E5 at 96x128 with a
CamVid U-Net, a history gated only by the photometric error grew the mean MI per frame to a
median 6x per-frame T = 20 sampling's at 15 frames/s and 16x at 1 frame/s (flow did not help:
the model's own prediction drifts from frame to frame more than its MC spread). So a pixel keeps
its history only where every gate of :mod:`~seguncert.uncertainty.temporal_gates` passes
(elsewhere it takes only the fresh samples; the warp moves statistics to the nearest pixel and
never blends neighbours, whose mixture would read as MI):
- ``flow=True``: the history is warped into the current frame with dense optical flow
  (Farneback from the current to the previous grey frame at ``flow_scale`` of the frame size);
  pixels whose source lies outside the previous frame or whose flow fails the forward-backward
  check get no history.
- ``change_threshold`` (grey levels, 0-255): photometric error of the (warped) previous frame
  against the current one -- occlusions, moving objects, flow failures.
- ``consistency``: the between-frame term fusing would add to the MI (or depth variance) must
  stay below this multiple of the fresh samples' own local epistemic level (see
  :func:`~seguncert.uncertainty.temporal_gates.prediction_gate`). Skipped when the input is
  identical to the previous one (a repeated frame has the same predictive).
- Cuts: where the grey histograms differ by more than ``cut_distance`` (Hellinger) or more than
  ``cut_share`` of the frame lost its history, the whole history is dropped.
The first two need ``frame_rgb``. A frame without history (the first, a cut) runs
``reset_samples`` samples in all (default max(12, K / (1 - d))), not K, whose MI reads low
(about 1 - 1/K of the many-sample value, and rare disagreements go unseen). So does a frame
whose prediction gate drops pixels holding more than ``top_up_share`` of the pixels with
history (or of their epistemic level, fresh or in the history): it is topped up to
reset_samples, its gate recomputed from the better estimate, and the next frame starts with
reset_samples (it most likely needs them too). The cost therefore follows the video: where the
model's predictions are stable, K samples a frame; where they are not, about reset_samples.
Call :meth:`reset` at known cuts (a change of input size resets by itself).
Frame n uses MC sample indices n*K .. n*K+K-1, and the extra samples indices from 2^40 on, so
fresh samples never repeat the masks of earlier frames; ``decay=0`` equals
``MCSampler(samples=K)(x, first_sample=n*K)`` exactly (with ``noise_samples`` too: the logit noise
is seeded per sample index as well).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError, SeguncertError
from .sampler import MCSampler, MCStats, finalize_stats
from .temporal_gates import grey_frame, hist_distance, motion_gate, prediction_gate, warp

TOP_UP_BASE = 2**40  # first MC sample index of the extra samples (reset frames, top-ups)
LEVEL_FLOOR = 0.25  # the prediction gate's tolerance floor, in frame means of the fresh level
# Fewest samples of a frame without usable history: on CamVid the frame-mean MI of 8 samples
# reads 14% below T = 20's (median, 24% at worst), of 12 samples 6-9% (21%).
RESET_SAMPLES = 12


def _positive_or_none(name: str, value, upper: float | None = None) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not v > 0 or (upper is not None and v > upper):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ConfigError(f"{name} must be > 0{bound} or None, got {value}")
    return v


def _merge(into: MCStats, other: MCStats, weight: float | torch.Tensor = 1.0) -> None:
    """Add ``other``'s statistics (scaled by ``weight``) into ``into``."""
    for acc, new in ((other.seg, into.seg), (other.reg, into.reg)):
        if acc is not None and new is not None:
            if not (isinstance(weight, float) and weight == 1.0):
                acc.scale_(weight)
            new.merge_(acc)


class TemporalMC:
    """``TemporalMC(model, fresh_samples=K)(x (1, 3, H, W), frame_rgb) -> MCSampler's dict``.

    ``temperature``, ``noise_samples``, ``calibrator``, ``amp_dtype``, ``depth_dist``, ``seed`` and
    ``memory_budget_mb`` are passed to the per-frame :class:`MCSampler`. After each call,
    ``last_cut`` says whether the frame was treated as a cut, ``last_kept`` which share of its
    pixels fused history (0 on a first frame or cut) and ``last_top_up`` whether it ran
    reset_samples samples.
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
        consistency: float | None = 0.5,
        cut_share: float | None = 0.5,
        cut_distance: float | None = 0.3,
        reset_samples: int | None = None,
        top_up_share: float | None = 0.25,
    ) -> None:
        if not 0.0 <= float(decay) < 1.0:
            raise ConfigError(f"temporal decay must be in [0, 1), got {decay}")
        if not 0.0 < float(flow_scale) <= 1.0:
            raise ConfigError(f"flow_scale must be in (0, 1], got {flow_scale}")
        self.change_threshold = _positive_or_none("change_threshold", change_threshold)
        self.consistency = _positive_or_none("consistency", consistency)
        self.cut_share = _positive_or_none("cut_share", cut_share, upper=1.0)
        self.cut_distance = _positive_or_none("cut_distance", cut_distance, upper=1.0)
        self.top_up_share = _positive_or_none("top_up_share", top_up_share, upper=1.0)
        self._opts = dict(
            memory_budget_mb=memory_budget_mb, seed=seed, temperature=temperature,
            amp_dtype=amp_dtype, depth_dist=depth_dist, noise_samples=noise_samples,
            calibrator=calibrator,
        )  # fmt: skip
        self.sampler = MCSampler(model, samples=fresh_samples, **self._opts)
        self.fresh_samples = self.sampler.samples
        self.decay = float(decay)
        self.flow = flow
        self.flow_scale = float(flow_scale)
        default_reset = max(self.fresh_samples, RESET_SAMPLES, round(self.effective_samples))
        self.reset_samples = default_reset if reset_samples is None else int(reset_samples)
        if self.reset_samples < self.fresh_samples:
            raise ConfigError(
                f"reset_samples must be >= fresh_samples ({self.fresh_samples}), "
                f"got {reset_samples}"
            )
        self._samplers: dict[int, MCSampler] = {}  # extra-stream samplers by sample count
        self.reset()

    @property
    def effective_samples(self) -> float:
        """Steady-state weight of the fused statistics, in samples: K / (1 - decay)."""
        return self.fresh_samples / (1.0 - self.decay)

    def reset(self) -> None:
        """Forget the history (call at scene cuts)."""
        self._history: MCStats | None = None
        self._prev_grey: np.ndarray | None = None
        self._prev_x: torch.Tensor | None = None
        self._shape: tuple | None = None
        self.frame_index = 0
        self._extra_used = 0  # extra-stream sample indices drawn so far
        self._needs_more = False  # the last frame needed reset_samples: start the next with them
        self.last_cut, self.last_kept, self.last_top_up = False, 0.0, False

    def __call__(self, x: torch.Tensor, frame_rgb: np.ndarray | None = None) -> dict:
        if x.dim() != 4 or x.shape[0] != 1:
            raise SeguncertError(f"TemporalMC takes one frame (1, 3, H, W), got {tuple(x.shape)}")
        if self.flow and frame_rgb is None:
            raise SeguncertError("TemporalMC(flow=True) needs frame_rgb for the optical flow")
        grey = grey_frame(frame_rgb, tuple(x.shape[-2:])) if frame_rgb is not None else None
        resized = grey is not None and self._prev_grey is not None
        if self._shape != tuple(x.shape) or (resized and grey.shape != self._prev_grey.shape):
            self.reset()
            self._shape = tuple(x.shape)
        history = self._history if self.decay > 0 else None
        more = self.decay > 0 and (history is None or self._needs_more)
        fused = self._fresh(x, self.reset_samples if more else self.fresh_samples)
        self.last_cut, self.last_kept = history is not None, 0.0
        self.last_top_up = more and self.reset_samples > self.fresh_samples
        self._needs_more = False
        weight = None if history is None else self._history_weight(x, grey, fused, history)
        if weight is not None:
            self.last_cut, self.last_kept = False, float((weight > 0).float().mean())
            _merge(fused, history, weight)
        else:
            self._needs_more = history is not None  # a cut: the next frame may be one too
            if self.decay > 0 and not self.last_top_up:
                self._top_up(x, fused)
        self._history = fused
        self._prev_grey = grey
        self._prev_x = x.detach().clone() if self.decay > 0 else None
        self.frame_index += 1
        return finalize_stats(fused)

    def _fresh(self, x: torch.Tensor, n: int) -> MCStats:
        """n fresh samples of x: the frame's own K (indices frame_index * K ...) or n from the
        extra stream (indices from TOP_UP_BASE on)."""
        if n == self.fresh_samples:
            return self.sampler.accumulate(x, first_sample=self.frame_index * n)[0]
        if n not in self._samplers:
            self._samplers[n] = MCSampler(self.sampler.model, samples=n, **self._opts)
        stats, _ = self._samplers[n].accumulate(x, first_sample=TOP_UP_BASE + self._extra_used)
        self._extra_used += n
        return stats

    def _top_up(self, x: torch.Tensor, fresh: MCStats) -> None:
        """Add reset_samples - K extra samples to a frame that ran K."""
        if self.reset_samples > self.fresh_samples:
            _merge(fresh, self._fresh(x, self.reset_samples - self.fresh_samples))
            self.last_top_up = True

    def _history_weight(self, x, grey, fresh: MCStats, history: MCStats):
        """Per-pixel history weight (1, 1, H, W) (decay x gates), warping ``history`` in place
        along the flow and topping ``fresh`` up where the gates leave too little; None where
        the frame is a cut (the whole history dropped)."""
        size = tuple(x.shape[-2:])
        acc = fresh.seg if fresh.seg is not None else fresh.reg
        device = next(iter(acc.sums.values())).device
        gate = torch.ones((1, 1, *size), device=device)
        if grey is not None and self._prev_grey is not None:
            if self.cut_distance is not None:
                if hist_distance(self._prev_grey, grey) > self.cut_distance:
                    return None
            grid, gate = self._motion(self._prev_grey, grey, size, device)
            for old in (history.seg, history.reg):
                if old is not None and grid is not None:
                    old.apply_(lambda t, g=grid: warp(t, g))
        same = self._prev_x is not None and torch.equal(x.to(self._prev_x.device), self._prev_x)
        if self.consistency is not None and not same:
            gate = self._consistent(x, fresh, history, gate)
        if self.cut_share is not None and float(1.0 - gate.mean()) > self.cut_share:
            return None
        return gate * self.decay

    def _consistent(self, x, fresh: MCStats, history: MCStats, gate: torch.Tensor):
        """``gate`` x the prediction gate. When the pixels it drops hold more than
        ``top_up_share`` of the pixels with history, of the fresh epistemic level or of the
        history's, they would be left with K samples, too few to see rare disagreements:
        ``fresh`` is topped up to reset_samples (the next frame starts with that many) and the
        gate recomputed from the better fresh estimate."""
        kernel = 2 * max(1, round(min(x.shape[-2:]) / 64)) + 1
        while True:
            pred, level, own = prediction_gate(
                fresh, history, gate * self.decay, self.consistency, kernel, LEVEL_FLOOR
            )
            dropped = gate * (1 - pred)
            lost = max(
                float((dropped * w).sum() / (gate * w).sum().clamp_min(1e-12))
                for w in (torch.ones_like(level), level, own)
            )
            if self.top_up_share is None or lost <= self.top_up_share:
                return gate * pred
            self._needs_more = True
            if self.last_top_up or self.reset_samples == self.fresh_samples:
                return gate * pred
            self._top_up(x, fresh)

    def _motion(self, prev: np.ndarray, cur: np.ndarray, size: tuple[int, int], device):
        """(sampling grid (1, H, W, 2) or None, history gate (1, 1, H, W)) at x's size."""
        return motion_gate(
            prev, cur, size, device, self.flow, self.flow_scale, self.change_threshold
        )
