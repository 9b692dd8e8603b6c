"""Inference-only rewrites of a U-Net decoder block's arithmetic (same numbers, fewer operations).

Used by :class:`~seguncert.models.unet.DecoderBlock` on a state that
:meth:`~seguncert.models.unet.BayesianUNet.prepare_suffix` prepared for MC sampling; training and
plain ``forward`` never see them. All weights are derived from the module's own parameters and
buffers (the decoder block keeps them until one of those changes), so the state_dict is
untouched.

- :func:`fold_bn`: an eval-mode BatchNorm after a bias-free convolution is a per-channel scale
  of the weights plus a shift, so conv + BN is one convolution (saves a full pass over the
  block's largest activation).
- :func:`up2_conv3x3`: a 3x3 convolution (padding 1) of a nearest x2 upsampling is, for each of
  the four output phases (row and column parity), a 2x2 convolution of the small map whose taps
  are sums of the 3x3 taps. One 2x2 convolution with 4x the output channels at the low
  resolution, then four interleaving copies, replace the upsampling copy and 9/4 of the
  multiply-adds (also for the 2h - 1 sizes of frames not divisible by 32).
- :func:`channels_last_pays`: on the CPU, oneDNN's convolutions of maps with few channels run
  2-4x faster in channels-last layout than in the default one (measured at 360x480 for a block
  with 16 output channels), which pays for converting a block's input and output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_bn(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight * g, shift) with g = gamma / sqrt(var + eps) per output channel and
    shift = beta - mean * g, so that bn(conv(x, weight)) == conv(x, weight * g) + shift.
    ``weight`` (O, ...) belongs to a bias-free convolution; ``bn`` must be in eval mode."""
    g = bn.running_var.add(bn.eps).rsqrt_()
    if bn.weight is not None:
        g = g.mul_(bn.weight)
    shift = -bn.running_mean * g
    if bn.bias is not None:
        shift = shift.add_(bn.bias)
    return weight * g.view(-1, *([1] * (weight.dim() - 1))).to(weight.dtype), shift


def phase_weights(w: torch.Tensor) -> torch.Tensor:
    """3x3 weights (O, I, 3, 3) -> 2x2 weights (4 O, I, 2, 2), phases (row, col) parity in the
    order 00, 01, 10, 11. An even output row 2i reads upsampled rows 2i-1, 2i, 2i+1 = small rows
    i-1, i, i (taps k0 | k1 + k2); an odd row 2i+1 reads i, i, i+1 (k0 + k1 | k2); columns
    alike."""
    even_r = torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2)
    odd_r = torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2)
    out = []
    for r in (even_r, odd_r):
        out.append(torch.stack([r[..., 0], r[..., 1] + r[..., 2]], -1))
        out.append(torch.stack([r[..., 0] + r[..., 1], r[..., 2]], -1))
    return torch.cat(out, 0)


def up2_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    size=None,
    phases: torch.Tensor | None = None,
) -> torch.Tensor:
    """``conv2d(interpolate(x, size, mode="nearest"), weight, bias, padding=1)`` for x
    (N, I, h, w) and weight (O, I, 3, 3), computed at the low resolution, in x's memory format
    (contiguous or channels_last). ``size`` (H, W) with H in (2h, 2h - 1), W in (2w, 2w - 1)
    (default (2h, 2w)): nearest resizing to 2h - 1 picks the same rows as x2 upsampling, only
    without the last one.

    With padding 1 the 2x2 convolution's output (h+1, w+1) holds phase (a, b) of output pixel
    (2i+a, 2j+b) at (i+a, j+b); four strided copies lay the phases out (one 6-d copy of the
    same data was ~2x slower: its inner loop ran over the 2 columns of a phase pair). For an odd
    H (W) the last output row (column) read the dropped upsampled row (column) as a copy of its
    neighbour instead of zero padding: it is recomputed from a two-row (two-column) strip.
    ``phases``: ``phase_weights(weight)`` when the caller keeps it (default: derived here)."""
    n, _, h, w = x.shape
    rows, cols = size if size is not None else (2 * h, 2 * w)
    o = weight.shape[0]
    b4 = None if bias is None else bias.repeat(4)
    y = F.conv2d(x, phase_weights(weight) if phases is None else phases, b4, padding=1)
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((n, o, rows, cols), dtype=y.dtype, device=y.device, memory_format=fmt)
    for a in (0, 1):
        for b in (0, 1):
            phase = 2 * a + b
            dst = out[:, :, a::2, b::2]
            ph = y[:, phase * o : (phase + 1) * o]
            dst.copy_(ph[:, :, a : a + dst.shape[2], b : b + dst.shape[3]])
    if rows == 2 * h - 1:  # last row: upsampled rows 2h-3, 2h-2 = x rows h-2, h-1, then zeros
        strip = F.interpolate(x[:, :, h - 2 :], size=(2, cols), mode="nearest")
        out[:, :, -1:] = F.conv2d(strip, weight, bias, padding=1)[:, :, 1:]
    if cols == 2 * w - 1:  # last column alike (after the row: this one is right at the corner)
        strip = F.interpolate(x[:, :, :, w - 2 :], size=(rows, 2), mode="nearest")
        out[:, :, :, -1:] = F.conv2d(strip, weight, bias, padding=1)[:, :, :, 1:]
    return out


def up2_fits(x: torch.Tensor, size) -> bool:
    """Whether :func:`up2_conv3x3` covers a nearest resize of x (N, I, h, w) to ``size``."""
    h, w = x.shape[-2:]
    return h >= 2 and w >= 2 and size[0] in (2 * h, 2 * h - 1) and size[1] in (2 * w, 2 * w - 1)


def channels_last_pays(x: torch.Tensor, out_channels: int) -> bool:
    """Whether a decoder block computes in channels-last layout: CPU, at most 16 output channels
    (where the default layout was measured 2-4x slower; from 32 channels on it was even)."""
    return x.device.type == "cpu" and x.dim() == 4 and out_channels <= 16
