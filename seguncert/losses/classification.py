"""Segmentation losses: (class-weighted) cross-entropy and the heteroscedastic (aleatoric)
cross-entropy of Kendall & Gal 2017, eq. 12. Pure functions; class dimension 1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.common import IGNORE_INDEX


def _zero(*tensors: torch.Tensor) -> torch.Tensor:
    """0 that stays in the graph: a batch with no labelled pixel contributes no gradient
    instead of the NaN that a mean over nothing gives."""
    return sum(t.sum() for t in tensors) * 0.0


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels, weighted like ``torch.nn.CrossEntropyLoss``
    (sum_i w_{y_i} l_i / sum_i w_{y_i}).

    logits (B, C, H, W) float; target (B, H, W) int64 with ``ignore_index`` for void;
    weight (C,) or None. Returns a scalar.
    """
    if not (target != ignore_index).any():
        return _zero(logits)
    return F.cross_entropy(
        logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="mean"
    )


def heteroscedastic_cross_entropy(
    logits: torch.Tensor,
    log_var: torch.Tensor,
    target: torch.Tensor,
    n_samples: int = 10,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Aleatoric classification loss, Kendall & Gal 2017 eq. 12.

    Noisy logits x_t = f + sigma * eps_t, eps_t ~ N(0, I) (t = 1..T), sigma = exp(log_var / 2);
    per pixel  l = -log (1/T) sum_t softmax(x_t)_y = -(logsumexp_t log_softmax(x_t)_y - log T),
    i.e. the log of the *averaged* likelihood. Reduced like :func:`cross_entropy`.

    logits (B, C, H, W); log_var (B, 1, H, W) (one variance per pixel, broadcast over classes)
    or (B, C, H, W); target (B, H, W) int64; weight (C,) or None; generator for reproducible
    noise (drawn on the logits' device, shared across the batch). Memory: the T x B x C x H x W
    float32 noisy logits plus the T x C x H x W noise (kept for the sigma gradient).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    valid = target != ignore_index
    if not valid.any():
        return _zero(logits, log_var)
    f = logits.float()
    sigma = torch.exp(0.5 * log_var.float())
    # One noise draw (T, 1, C, H, W) shared by the images of the batch: still independent across
    # samples, classes and pixels, so each image's loss is the same unbiased MC estimate, but
    # drawing it costs B times less (randn was a third of a CPU training step at T=10, B=8).
    eps_shape = (n_samples, 1, *f.shape[1:])
    eps = torch.randn(eps_shape, generator=generator, device=f.device, dtype=f.dtype)
    x = torch.addcmul(f, sigma, eps)  # (T, B, C, H, W) in a single allocation
    safe = target.masked_fill(~valid, 0)
    idx = safe.unsqueeze(0).unsqueeze(2).expand(n_samples, -1, 1, *safe.shape[1:])
    # log softmax of the true class without materialising log_softmax over all C.
    log_p = x.gather(2, idx).squeeze(2) - torch.logsumexp(x, dim=2)  # (T, B, H, W)
    nll = -(torch.logsumexp(log_p, dim=0) - math.log(n_samples))  # (B, H, W)
    if weight is None:
        return nll[valid].mean()
    w = weight.to(nll)[safe] * valid
    return (w * nll).sum() / w.sum()
