"""Concrete dropout's regulariser (Gal, Hron & Kendall 2017), the term that lets p be learned.

Per :class:`~seguncert.models.base.ConcreteDropout` layer with learned rate p and K input
channels, as in the authors' code: (2K/N)·(p log p + (1−p) log(1−p)), the negative entropy of
the Bernoulli rate, scaled by 1/N. The loss it is added to is a per-pixel mean over a batch, so
N counts "observations" in the units of one image: N = training images ×
``loss.concrete_n_per_image`` (default 1000: the pixels of one image are far from independent
observations, and with 1 the regulariser outweighs the data and sends every rate to 0.5). The
authors' weight term (l²/N)·‖W‖²/(1−p) is left to the optimiser's weight decay: with their
l = 1e-4 its gradient in p is about 1e-9 of the entropy term's at this project's weight norms
(docs/method.md, "Concrete dropout").
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.base import ConcreteDropout


def concrete_layers(model: nn.Module) -> list[ConcreteDropout]:
    return [m for m in model.modules() if isinstance(m, ConcreteDropout)]


def concrete_regulariser(model: nn.Module, n: float) -> torch.Tensor | None:
    """Σ_layers (2K/N)·(p log p + (1−p) log(1−p)), a 0-d tensor (≤ 0, in the loss's units), or
    None when the model has no Concrete layer. Layers that have not seen a training input yet
    (K unknown) are skipped. ``n`` > 0: the N above."""
    layers = [m for m in concrete_layers(model) if m.channels > 0]
    if not layers:
        return None
    total = 0.0
    for m in layers:
        p = m.rate()
        neg_entropy = p * torch.log(p) + (1.0 - p) * torch.log1p(-p)
        total = total + (2.0 * m.channels / n) * neg_entropy
    return total


def learned_rates(model: nn.Module) -> dict[str, float]:
    """Every Concrete layer's current rate p by module name (for logs and reports)."""
    return {name: m.p for name, m in model.named_modules() if isinstance(m, ConcreteDropout)}
