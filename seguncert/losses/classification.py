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
    # One noise draw (T, 1, C, H, W) shared by the images of the batch: still independent across
    # samples, classes and pixels, so each image's loss is the same unbiased MC estimate, but
    # drawing it costs B times less (randn was a third of a CPU training step at T=10, B=8).
    eps_shape = (n_samples, 1, *f.shape[1:])
    eps = torch.randn(eps_shape, generator=generator, device=f.device, dtype=f.dtype)
    safe = target.masked_fill(~valid, 0)
    nll = HeteroscedasticNLL.apply(f, log_var.float(), eps, safe)  # (B, H, W)
    if weight is None:
        return nll[valid].mean()
    w = weight.to(nll)[safe] * valid
    return (w * nll).sum() / w.sum()


class HeteroscedasticNLL(torch.autograd.Function):
    """Per-pixel -log (1/T) sum_t softmax(f + sigma * eps_t)_y with a hand-written backward.

    Same value as the autograd composition (addcmul, gather, logsumexp over classes, logsumexp
    over samples) but about half the memory traffic: the T x B x C x H x W tensor is allocated
    once and turned into the per-sample softmax in place, and the backward reuses it in place.
    With w_t = softmax_t(log p_t,y) (the sample's share of the mean likelihood) and
    p_t = softmax(x_t):  d nll / d x_t,c = w_t (p_t,c - [c = y]),
    d/df = sum_t of that, d/dsigma = sum_t sum_c (that * eps_t,c) (over c only when sigma is
    shared by the classes), d/dlog_var = d/dsigma * sigma / 2.

    f (B, C, H, W); log_var (B, 1 or C, H, W); eps (T, 1, C, H, W) or (T, B, C, H, W);
    target (B, H, W) int64 in [0, C) (void already replaced). Returns nll (B, H, W).
    """

    @staticmethod
    def forward(ctx, f, log_var, eps, target):
        t = eps.shape[0]
        sigma = torch.exp(0.5 * log_var)
        x = torch.addcmul(f, sigma, eps)  # (T, B, C, H, W)
        idx = target.unsqueeze(0).unsqueeze(2).expand(t, -1, 1, -1, -1)
        x_y = x.gather(2, idx).squeeze(2)
        m = x.amax(2, keepdim=True)
        x.sub_(m).exp_()
        z = x.sum(2)  # (T, B, H, W), >= 1 since the max term is exp(0)
        log_p = x_y - m.squeeze(2) - z.log()
        x.div_(z.unsqueeze(2))  # x is now the per-sample softmax p_t
        lse = torch.logsumexp(log_p, 0)
        ctx.save_for_backward(x, log_p, lse, sigma, eps, idx)
        ctx.shared_sigma = log_var.shape[1] == 1
        return math.log(t) - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        p, log_p, lse, sigma, eps, idx = ctx.saved_tensors
        coef = torch.exp(log_p - lse).mul_(grad).unsqueeze(2)  # (T, B, 1, H, W)
        d = p.mul_(coef)  # in place: p is not needed again (once_differentiable)
        d.scatter_add_(2, idx, -coef)
        df = d.sum(0)
        d_sigma = d.mul_(eps).sum(0)
        if ctx.shared_sigma:
            d_sigma = d_sigma.sum(1, keepdim=True)
        return df, d_sigma.mul_(sigma).mul_(0.5), None, None
