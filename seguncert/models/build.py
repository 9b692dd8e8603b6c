"""Build a model from ``cfg.model`` and rebuild it from the JSON spec stored in checkpoints."""

from __future__ import annotations

import dataclasses

from ..config import CHOICES, ModelConfig
from ..errors import CheckpointError, ConfigError
from ..tasks import get_task
from .base import StagedModel
from .segnet import SegNetBasic, SegNetVGG
from .unet import BayesianUNet

ARCHS = {"unet": BayesianUNet, "segnet_basic": SegNetBasic, "segnet": SegNetVGG}
TASKS = CHOICES["model.task"]
DEPTH_DISTS = CHOICES["loss.depth"]

SPEC_KEYS = (
    "arch",
    "task",
    "encoder",
    "encoder_weights",
    "num_classes",
    "dropout",
    "dropout_p",
    "heteroscedastic",
    "decoder_channels",
    "width",
    "depth_dist",
    "concrete_dropout",
)
# Keys a spec may lack: encoder_weights is never stored as set; specs written before Concrete
# dropout existed have no concrete_dropout (plain MC dropout).
OPTIONAL_KEYS = ("encoder_weights", "concrete_dropout")


def build_model(model_cfg: ModelConfig, depth_dist: str = "laplace") -> StagedModel:
    """The staged network described by ``model_cfg`` (``depth_dist`` = cfg.loss.depth decides
    the depth head's scale output); its ``spec`` rebuilds it (:func:`model_from_spec`)."""
    m = model_cfg
    if m.arch not in ARCHS:
        raise ConfigError(
            f"config key 'model.arch' is {m.arch!r}; expected one of {', '.join(ARCHS)}"
        )
    if m.task not in TASKS:
        raise ConfigError(
            f"config key 'model.task' is {m.task!r}; expected one of {', '.join(TASKS)}"
        )
    if depth_dist not in DEPTH_DISTS:
        raise ConfigError(
            f"config key 'loss.depth' is {depth_dist!r}; expected one of {', '.join(DEPTH_DISTS)}"
        )
    if get_task(m.task).segmentation and m.num_classes < 2:
        raise ConfigError(f"config key 'model.num_classes' must be >= 2, got {m.num_classes!r}")
    if m.concrete_dropout and (m.dropout == "none" or m.dropout_p <= 0):
        raise ConfigError(
            "config key 'model.concrete_dropout' needs dropout layers to learn: set model.dropout "
            f"to a placement other than 'none' and model.dropout_p > 0 (got {m.dropout!r}, "
            f"{m.dropout_p!r})"
        )
    common = dict(
        task=m.task,
        num_classes=m.num_classes,
        dropout=m.dropout,
        dropout_p=m.dropout_p,
        heteroscedastic=m.heteroscedastic,
        depth_dist=depth_dist,
        concrete_dropout=m.concrete_dropout,
    )
    if m.arch == "unet":
        model = BayesianUNet(
            encoder=m.encoder,
            encoder_weights=m.encoder_weights,
            decoder_channels=m.decoder_channels,
            **common,
        )
    elif m.arch == "segnet_basic":
        if m.encoder_weights is not None:
            raise ConfigError(
                "config key 'model.encoder_weights' must be null for arch segnet_basic "
                "(it has no pretrained encoder)"
            )
        model = SegNetBasic(width=m.width, **common)
    else:
        model = SegNetVGG(encoder_weights=m.encoder_weights, **common)
    return model


def model_from_spec(spec: dict, **overrides) -> StagedModel:
    """Rebuild the architecture saved as ``model.spec``. ``overrides`` replace spec fields
    (e.g. ``dropout="classifier"`` to sample a trained model with another placement; every
    preset has the same state_dict keys)."""
    if not isinstance(spec, dict):
        raise CheckpointError(f"model spec must be a mapping, got {type(spec).__name__}")
    missing = [k for k in SPEC_KEYS if k not in spec and k not in OPTIONAL_KEYS]
    if missing:
        raise CheckpointError(f"model spec lacks key(s) {', '.join(missing)}")
    merged = {**spec, **overrides}
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ModelConfig(**{k: merged[k] for k in SPEC_KEYS if k in fields and k in merged})
    cfg.encoder_weights = None
    return build_model(cfg, depth_dist=merged["depth_dist"])
