"""Prediction heads and the head stage shared by every architecture.

The heads are single 1x1 convolutions (one per named distribution part, TorchUncertainty
style) so that, with dropout only before the classifier, the stochastic suffix is a few
1x1 convolutions and MC sampling costs about one forward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks import get_task
from .base import State

LOG_VAR_LIMIT = 10.0  # |log variance| bound: exp(+-10) covers any sane logit/depth noise scale
LOG_DEPTH_LIMIT = 8.0  # |log depth| bound: exp(+-8) m spans 0.3 mm .. 3 km


def soft_clamp(x: torch.Tensor, limit: float) -> torch.Tensor:
    """limit * tanh(x / limit): ~identity near 0, bounded by +-limit, gradient never exactly 0
    (a hard clamp would stop learning for a pixel that strays out of range)."""
    return limit * torch.tanh(x / limit)


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationHead(nn.Module):
    """Features (B, F, h, w) -> ``logits`` (B, C, H, W) [+ ``logit_log_var`` (B, 1, H, W)]."""

    def __init__(self, in_channels: int, num_classes: int, heteroscedastic: bool = True):
        super().__init__()
        self.logits = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        # One log-variance per pixel, shared by the classes (Kendall & Gal 2017, eq. 12).
        self.log_var = nn.Conv2d(in_channels, 1, kernel_size=1) if heteroscedastic else None

    def forward(self, feats: torch.Tensor, size) -> dict[str, torch.Tensor]:
        out = {"logits": resize_to(self.logits(feats), size)}
        if self.log_var is not None:
            log_var = soft_clamp(self.log_var(feats), LOG_VAR_LIMIT)
            out["logit_log_var"] = resize_to(log_var, size)
        return out


class RegressionHead(nn.Module):
    """Features -> ``depth_loc`` (B, 1, H, W) metres > 0 [+ ``depth_log_scale`` (B, 1, H, W)].

    ``depth_log_scale`` is log sigma (``dist="gaussian"``) or log b (``dist="laplace"``);
    none for ``dist="l1"``.

    The depth is predicted in log space, ``depth = exp(z)`` (z soft-clamped): an optimiser step
    then changes depth *multiplicatively*, so a net starting near 1 m reaches 3 m indoors or
    80 m outdoors in tens of steps. A linear or softplus output moves by about the learning
    rate per step and took thousands of steps to span a street scene's 0.5-80 m.
    """

    def __init__(self, in_channels: int, dist: str = "laplace"):
        super().__init__()
        self.dist = dist
        self.loc = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.log_scale = nn.Conv2d(in_channels, 1, kernel_size=1) if dist != "l1" else None

    def forward(self, feats: torch.Tensor, size) -> dict[str, torch.Tensor]:
        # Resize before exp so the upsampled depth stays positive by construction.
        loc = torch.exp(soft_clamp(resize_to(self.loc(feats), size), LOG_DEPTH_LIMIT))
        out = {"depth_loc": loc}
        if self.log_scale is not None:
            # log sigma bound: half the log-variance bound.
            log_scale = soft_clamp(self.log_scale(feats), LOG_VAR_LIMIT / 2)
            out["depth_log_scale"] = resize_to(log_scale, size)
        return out


class HeadStage(nn.Module):
    """Last stage: optional classifier dropout, then the task head(s) on shared features.

    ``task`` segmentation | depth | joint. Outputs are resized to ``state["input_size"]``.
    """

    def __init__(
        self,
        in_channels: int,
        task: str,
        num_classes: int,
        heteroscedastic: bool,
        depth_dist: str,
        dropout: nn.Module,
    ):
        super().__init__()
        self.drop = dropout
        t = get_task(task)
        self.seg = (
            SegmentationHead(in_channels, num_classes, heteroscedastic) if t.segmentation else None
        )
        self.depth = RegressionHead(in_channels, depth_dist) if t.depth else None

    def forward(self, state: State) -> State:
        feats = self.drop(state["x"])
        size = state["input_size"]
        out: State = {"input_size": size}
        if self.seg is not None:
            out.update(self.seg(feats, size))
        if self.depth is not None:
            out.update(self.depth(feats, size))
        return out


def init_depth_range(model: nn.Module, min_depth: float, max_depth: float) -> None:
    """Start every depth head at the geometric middle of the data's depth range (0.5-80 m ->
    6.3 m; 0.1-10 m -> 1 m), so training spends its first steps on structure rather than on
    the overall scale."""
    if not 0 < min_depth < max_depth:
        return
    for m in model.modules():
        if isinstance(m, RegressionHead) and m.loc.bias is not None:
            nn.init.constant_(m.loc.bias, 0.5 * math.log(min_depth * max_depth))
