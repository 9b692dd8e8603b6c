"""Depth losses with a learned per-pixel scale (Kendall & Gal 2017): Gaussian and Laplace
negative log-likelihoods (constants dropped), plain L1, and the implied variance.

Shapes: loc / log_scale (B, 1, H, W) or (B, H, W); target (B, H, W) metres; valid (B, H, W)
bool. Only valid pixels enter (boolean indexing, so NaN/0 depth elsewhere never reaches a
gradient). Every loss is a mean over the valid pixels; 0 (in the graph) when there are none.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


def _flat(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if pred.dim() == target.dim() + 1 and pred.shape[1] == 1:
        pred = pred.squeeze(1)
    if pred.shape != target.shape or valid.shape != target.shape:
        raise ValueError(
            f"shape mismatch: prediction {tuple(pred.shape)}, target {tuple(target.shape)}, "
            f"valid {tuple(valid.shape)}"
        )
    return pred[valid].float()


def gaussian_nll(
    loc: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """mean_valid ½ exp(-2 log σ) (y - ŷ)² + log σ  (= ½ e^{-s}(y - ŷ)² + ½ s, s = log σ²)."""
    mu, s, y = _flat(loc, target, valid), _flat(log_scale, target, valid), target[valid].float()
    if y.numel() == 0:
        return loc.sum() * 0.0 + log_scale.sum() * 0.0
    return (0.5 * torch.exp(-2.0 * s) * (y - mu) ** 2 + s).mean()


def laplace_nll(
    loc: torch.Tensor, log_scale: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """mean_valid |y - ŷ| / b + log b  with log b = ``log_scale``."""
    mu, s, y = _flat(loc, target, valid), _flat(log_scale, target, valid), target[valid].float()
    if y.numel() == 0:
        return loc.sum() * 0.0 + log_scale.sum() * 0.0
    return (torch.exp(-s) * (y - mu).abs() + s).mean()


def l1_loss(loc: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """mean_valid |y - ŷ|."""
    mu, y = _flat(loc, target, valid), target[valid].float()
    if y.numel() == 0:
        return loc.sum() * 0.0
    return (y - mu).abs().mean()


def predictive_variance(log_scale: torch.Tensor, dist: str) -> torch.Tensor:
    """Aleatoric variance implied by the scale: σ² (gaussian) or 2 b² (laplace). Same shape."""
    if dist == "gaussian":
        return torch.exp(2.0 * log_scale)
    if dist == "laplace":
        return 2.0 * torch.exp(2.0 * log_scale)
    raise ConfigError(f"depth distribution {dist!r} has no variance; expected gaussian or laplace")
