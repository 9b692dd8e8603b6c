"""seguncert.uncertainty: MC-dropout sampling, uncertainty maps, temporal reuse, temperature."""

from .maps import (
    RegressionAccumulator,
    SegmentationAccumulator,
    expected_entropy,
    mutual_information,
    predicted_class_variance,
    predictive_entropy,
    predictive_variance,
    regression_uncertainty,
)
from .sampler import MCSampler, naive_mc
from .temperature import (
    apply_temperature,
    fit_temperature,
    fit_temperature_streaming,
    nll,
)
from .temporal import TemporalMC

__all__ = [
    "MCSampler",
    "RegressionAccumulator",
    "SegmentationAccumulator",
    "TemporalMC",
    "apply_temperature",
    "expected_entropy",
    "fit_temperature",
    "fit_temperature_streaming",
    "mutual_information",
    "naive_mc",
    "nll",
    "predicted_class_variance",
    "predictive_entropy",
    "predictive_variance",
    "regression_uncertainty",
]
