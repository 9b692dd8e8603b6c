"""Streaming, mergeable metrics: exact over every valid pixel with constant-size state.

Each metric keeps fixed-size int64/float64 sums (``state``); ``merge`` adds two of them and
``all_reduce`` sums them over a torch.distributed group, so split/multi-GPU evaluation equals
single-process evaluation.
"""

from .base import Binning, StreamingMetric
from .calibration import CalibrationMetrics
from .depth import DepthMetrics, DepthNLL, IntervalCalibration, Sparsification
from .quality import PAvPU, UncertaintyQuality
from .segmentation import ConfusionMatrix

__all__ = [
    "Binning",
    "CalibrationMetrics",
    "ConfusionMatrix",
    "DepthMetrics",
    "DepthNLL",
    "IntervalCalibration",
    "PAvPU",
    "Sparsification",
    "StreamingMetric",
    "UncertaintyQuality",
]
