"""Where :class:`~seguncert.uncertainty.temporal.TemporalMC` may reuse a pixel's sample history.

Every gate is a (1, 1, H, W) float map in {0, 1} (1: the history is kept there), at the size of
the network input x (frames are aligned top-left, the eval padding lies bottom/right):

- :func:`motion_gate` (needs the previous and the current grey frame): photometric error of the
  previous frame (warped along the optical flow with ``flow``) against the current one, and with
  ``flow`` forward-backward flow consistency (Sundaram et al., ECCV 2010) and sources outside
  the previous frame (occlusions, the border).
- :func:`prediction_gate` (needs only the MC statistics): fusing history adds to the
  mutual information exactly the between-group term JS_a(p_fresh, p_history) (the weighted
  Jensen-Shannon divergence of the two means; for depth a(1-a)(mu_f - mu_h)^2 to the epistemic
  variance). Where that term exceeds ``tolerance`` times the local epistemic level of the fresh
  samples alone, the history comes from another view (or the model changed its mind since)
  and would invent uncertainty, so it is dropped. The scale comes from the fresh samples only,
  so an inflated history can never license more inflation.
- :func:`hist_distance`: a global cut detector on grey histograms.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SeguncertError

# Forward-backward consistency: |f_b + f_f|^2 <= ALPHA (|f_b|^2 + |f_f|^2) + BETA, in (flow-scale)
# pixels (Sundaram et al.'s values): the relative term tolerates the error of large motions.
FB_ALPHA = 0.01
FB_BETA = 0.5
HIST_BINS = 32


def grey_frame(frame_rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 grey frame at x's scale: frames larger than x (in either side) are resized to x;
    smaller or equal ones are taken as x before bottom/right eval padding."""
    if not (isinstance(frame_rgb, np.ndarray) and frame_rgb.ndim == 3 and frame_rgb.shape[2] == 3):
        raise SeguncertError("frame_rgb must be an (H, W, 3) RGB numpy array")
    grey = cv2.cvtColor(np.ascontiguousarray(frame_rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    h, w = size_hw
    if grey.shape[0] > h or grey.shape[1] > w:
        grey = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA)
    return grey


def hist_distance(prev: np.ndarray, cur: np.ndarray) -> float:
    """Hellinger distance in [0, 1] of two uint8 grey frames' intensity histograms: about 0.05
    between frames of one shot, large across a cut between unlike scenes."""
    h = [np.bincount(g.ravel() // (256 // HIST_BINS), minlength=HIST_BINS) for g in (prev, cur)]
    p, q = (v / max(v.sum(), 1) for v in h)
    return float(np.sqrt(max(0.0, 1.0 - float(np.sqrt(p * q).sum()))))


def warp(t: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample (B, C, H, W) at grid (1, H, W, 2), nearest source pixel: interpolating would
    blend neighbouring pixels' sample statistics into a mixture, whose spread reads as
    epistemic uncertainty (and, warped every frame, blurs further). Border padding, so
    sub-pixel overshoot at the edges (Farneback's noise) keeps the full weight; sources well
    outside are gated."""
    return F.grid_sample(
        t, grid.to(t.dtype).expand(t.shape[0], -1, -1, -1), mode="nearest",
        align_corners=True, padding_mode="border",
    )  # fmt: skip


def _farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense flow (h, w, 2) such that a(y, x) ~ b(y + fy, x + fx)."""
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def _fb_consistent(back: np.ndarray, fwd: np.ndarray, xs, ys) -> np.ndarray:
    """(h, w) bool: following ``back`` (current -> previous) and then ``fwd`` (previous ->
    current) returns to the start, within the tolerance."""
    fx = cv2.remap(fwd[..., 0], xs + back[..., 0], ys + back[..., 1], cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    fy = cv2.remap(fwd[..., 1], xs + back[..., 0], ys + back[..., 1], cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    err = (back[..., 0] + fx) ** 2 + (back[..., 1] + fy) ** 2
    mag = back[..., 0] ** 2 + back[..., 1] ** 2 + fx**2 + fy**2
    return err <= FB_ALPHA * mag + FB_BETA


def _to_input_size(mask: np.ndarray, shape0: tuple[int, int], size) -> np.ndarray:
    """A flow-scale bool mask -> float32 (H, W) at x's size (1 in the padding)."""
    h0, w0 = shape0
    gate = np.ones(tuple(size), np.float32)
    gate[:h0, :w0] = cv2.resize(mask.astype(np.uint8), (w0, h0), interpolation=cv2.INTER_NEAREST)
    return gate


def _grid(flow: np.ndarray, shape0, size) -> tuple[np.ndarray, np.ndarray]:
    """Flow at flow scale -> (sampling grid (H, W, 2) in [-1, 1], sources inside (H, W) bool)
    at x's size, zero flow in the padding."""
    (h0, w0), (h, w) = shape0, size
    sh, sw = flow.shape[:2]
    full = cv2.resize(flow, (w0, h0), interpolation=cv2.INTER_LINEAR)
    full[..., 0] *= w0 / sw
    full[..., 1] *= h0 / sh
    padded = np.zeros((h, w, 2), np.float32)
    padded[:h0, :w0] = full
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    src_x, src_y = gx + padded[..., 0], gy + padded[..., 1]
    # Sources more than half a pixel outside the previous frame have no history there.
    inside = (src_x > -0.5) & (src_x < w - 0.5) & (src_y > -0.5) & (src_y < h - 0.5)
    grid = np.stack([2.0 * src_x / max(w - 1, 1) - 1.0, 2.0 * src_y / max(h - 1, 1) - 1.0], -1)
    return grid, inside


def motion_gate(
    prev: np.ndarray,
    cur: np.ndarray,
    size: tuple[int, int],
    device,
    flow: bool,
    flow_scale: float,
    change_threshold: float | None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(sampling grid (1, H, W, 2) or None without ``flow``, gate (1, 1, H, W)) at x's size
    ``size`` from the previous and current uint8 grey frames (same shape, <= size)."""
    h0, w0 = cur.shape
    sh, sw = max(8, round(h0 * flow_scale)), max(8, round(w0 * flow_scale))
    small_prev = cv2.resize(prev, (sw, sh), interpolation=cv2.INTER_AREA)
    small_cur = cv2.resize(cur, (sw, sh), interpolation=cv2.INTER_AREA)
    keep = np.ones((sh, sw), bool)
    field = None
    if flow:
        ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float32)
        # From the current to the previous frame: where to fetch each current pixel's history
        # (backward warping); the forward flow only checks it.
        field = _farneback(small_cur, small_prev)
        keep &= _fb_consistent(field, _farneback(small_prev, small_cur), xs, ys)
        small_prev = cv2.remap(small_prev, xs + field[..., 0], ys + field[..., 1],
                               cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    if change_threshold is not None:
        diff = cv2.absdiff(
            cv2.GaussianBlur(small_cur, (3, 3), 0), cv2.GaussianBlur(small_prev, (3, 3), 0)
        )
        keep &= diff <= change_threshold
    gate = torch.from_numpy(_to_input_size(keep, (h0, w0), size)).to(device)[None, None]
    if field is None:
        return None, gate
    grid, inside = _grid(field, (h0, w0), size)
    gate = gate * torch.from_numpy(inside.astype(np.float32)).to(device)[None, None]
    return torch.from_numpy(grid).to(device)[None], gate


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W), nats."""
    return torch.special.entr(p).sum(1, keepdim=True)


def _mean(acc, name: str) -> torch.Tensor:
    count = acc.count
    if isinstance(count, torch.Tensor):
        count = count.to(acc.sums[name].dtype).clamp_min(1e-12)
    return acc.sums[name] / count


def local_level(level: torch.Tensor, kernel: int, floor: float) -> torch.Tensor:
    """Local mean of a (B, 1, H, W) map over ``kernel`` x ``kernel`` pixels plus ``floor``
    times its frame mean (so confident, flat regions still get a small tolerance)."""
    level = level.float()
    local = F.avg_pool2d(level, kernel, 1, kernel // 2, count_include_pad=False)
    return local + floor * level.mean(dim=(1, 2, 3), keepdim=True)


def seg_between(fresh, hist, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(between-group MI term JS_a (1, 1, H, W), fresh MI (1, 1, H, W)) of fresh and history
    segmentation accumulators, ``a`` the fresh share of the fused weight (1, 1, H, W)."""
    pf, ph = _mean(fresh, "p"), _mean(hist, "p")
    hf, hh = _entropy(pf), _entropy(ph)
    between = _entropy(a * pf + (1 - a) * ph) - a * hf - (1 - a) * hh
    mi_f = (hf - _mean(fresh, "ent")).clamp_min(0.0)
    return between.clamp_min(0.0), mi_f


def reg_between(fresh, hist, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(between-group epistemic variance a(1-a)(mu_f - mu_h)^2, fresh epistemic variance), each
    (1, 1, H, W), of fresh and history regression accumulators."""
    mf, mh = _mean(fresh, "loc"), _mean(hist, "loc")
    var_f = (_mean(fresh, "loc2") - mf * mf).clamp_min(0.0)
    a = a.to(mf.dtype)
    return a * (1 - a) * (mf - mh) ** 2, var_f


def prediction_gate(fresh, history, weight, tolerance: float, kernel: int, floor: float):
    """(gate, fresh level, history level), each (1, 1, H, W): gate 1 where fusing the history
    (MCStats, warped, weighted by ``weight`` (1, 1, H, W)) adds at most ``tolerance`` x the
    fresh samples' local epistemic level (MI; the depth epistemic variance for depth-only
    models). The history's own epistemic level (not used by the gate, which would let an
    inflated history license more inflation) says how much a dropped pixel loses."""
    gate, levels = torch.ones_like(weight), None
    for name in ("seg", "reg"):
        new, old = getattr(fresh, name), getattr(history, name)
        if new is None or old is None:
            continue
        between_fn = seg_between if name == "seg" else reg_between
        count_f = float(new.count)
        count_h = old.count if isinstance(old.count, torch.Tensor) else torch.full_like(
            weight, float(old.count)
        )  # fmt: skip
        a = count_f / (count_f + weight * count_h).clamp_min(1e-12)
        between, level = between_fn(new, old, a)
        own = between_fn(old, old, a)[1]
        if count_f < 2:  # one fresh sample has no spread: the history's is the only scale
            level = own
        level = local_level(level, kernel, floor)
        gate = gate * (between.float() <= tolerance * level).to(weight.dtype)
        levels = levels or (level, own.float())
    return (gate, *levels)
