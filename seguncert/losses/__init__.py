"""seguncert.losses: segmentation, depth and multi-task losses, and the training criterion."""

from .classification import cross_entropy, heteroscedastic_cross_entropy
from .criterion import Criterion, build_criterion
from .multitask import UncertaintyWeighting
from .regression import gaussian_nll, l1_loss, laplace_nll, predictive_variance

__all__ = [
    "Criterion",
    "UncertaintyWeighting",
    "build_criterion",
    "cross_entropy",
    "gaussian_nll",
    "heteroscedastic_cross_entropy",
    "l1_loss",
    "laplace_nll",
    "predictive_variance",
]
