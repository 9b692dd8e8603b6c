"""seguncert.models: staged Bayesian networks (SegNet, U-Net) with MC dropout and
heteroscedastic heads."""

from .base import MCDropout, StagedModel, mc_dropout_mode, repeat_state
from .build import build_model, model_from_spec
from .heads import RegressionHead, SegmentationHead
from .segnet import SegNetBasic, SegNetVGG
from .unet import BayesianUNet

__all__ = [
    "BayesianUNet",
    "MCDropout",
    "RegressionHead",
    "SegNetBasic",
    "SegNetVGG",
    "SegmentationHead",
    "StagedModel",
    "build_model",
    "mc_dropout_mode",
    "model_from_spec",
    "repeat_state",
]
