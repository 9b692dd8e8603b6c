"""The training criterion: picks the task losses from the config and combines them."""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..data.common import DatasetMeta
from ..errors import ConfigError
from ..tasks import get_task
from .classification import cross_entropy, heteroscedastic_cross_entropy
from .multitask import UncertaintyWeighting
from .regression import gaussian_nll, l1_loss, laplace_nll


class Criterion(nn.Module):
    """``criterion(outputs, batch) -> (loss, parts)``.

    Segmentation: heteroscedastic CE (Kendall & Gal eq. 12, ``aleatoric_samples`` draws) when the
    outputs hold ``logit_log_var``, else CE; optional class weights; label 255 ignored.
    Depth: Laplace / Gaussian NLL or L1 on ``batch["depth"]`` over the depth-valid pixels.
    Joint: both, combined by :class:`UncertaintyWeighting`: the CE with a learned s_seg, the
    depth NLL as the likelihood it is (an L1 depth loss gets a learned s_depth); the s_k are this
    module's parameters, so the optimiser must include ``criterion.parameters()``.
    ``parts`` holds plain floats for logging: ``seg``, ``depth``, ``loss`` and, when learned,
    ``log_var_seg`` / ``log_var_depth``.
    """

    def __init__(
        self,
        task: str = "segmentation",
        class_weights: torch.Tensor | None = None,
        aleatoric_samples: int = 10,
        depth: str = "laplace",
        multitask: str = "learned",
        ignore_index: int = 255,
    ):
        super().__init__()
        self.task = get_task(task)
        self.aleatoric_samples = aleatoric_samples
        self.depth = depth
        self.ignore_index = ignore_index
        # Non-persistent: recomputed from the config/meta, not a trained quantity.
        self.register_buffer("class_weights", class_weights, persistent=False)
        # A depth NLL is a likelihood with its own learned scale; plain L1 gets a learned σ_k.
        kinds = {"seg": "classification", "depth": "regression" if depth == "l1" else "likelihood"}
        parts = self.task.loss_parts
        self.weighting = (
            UncertaintyWeighting({k: kinds[k] for k in parts}, multitask)
            if len(parts) > 1
            else None
        )

    def segmentation_loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        logits, label = outputs["logits"], batch["label"]
        _check_size(logits, label, "label")
        if "logit_log_var" in outputs:
            return heteroscedastic_cross_entropy(
                logits,
                outputs["logit_log_var"],
                label,
                n_samples=self.aleatoric_samples,
                weight=self.class_weights,
                ignore_index=self.ignore_index,
            )
        return cross_entropy(logits, label, self.class_weights, self.ignore_index)

    def depth_loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        loc, target = outputs["depth_loc"], batch["depth"]
        _check_size(loc, target, "depth")
        valid = batch["depth_valid"]  # the datasets' one definition (seguncert.data)
        if self.depth == "l1":
            return l1_loss(loc, target, valid)
        if "depth_log_scale" not in outputs:
            raise ConfigError(
                f"loss.depth={self.depth} needs a model with a depth scale output "
                "(built with the same loss.depth), but the model has none"
            )
        nll = gaussian_nll if self.depth == "gaussian" else laplace_nll
        return nll(loc, outputs["depth_log_scale"], target, valid)

    def forward(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        losses = {}
        if self.task.segmentation:
            losses["seg"] = self.segmentation_loss(outputs, batch)
        if self.task.depth:
            losses["depth"] = self.depth_loss(outputs, batch)
        if self.weighting is not None:
            loss = self.weighting(losses)
            parts = {f"log_var_{k}": v for k, v in self.weighting.log_var_dict().items()}
        else:
            (loss,) = losses.values()
            parts = {}
        parts.update({k: float(v.detach()) for k, v in losses.items()})
        parts["loss"] = float(loss.detach())
        return loss, parts


def _check_size(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if tuple(pred.shape[-2:]) != tuple(target.shape[-2:]):
        raise ValueError(
            f"model output size {tuple(pred.shape[-2:])} != {what} size "
            f"{tuple(target.shape[-2:])}; the heads should resize to the input size"
        )


def build_criterion(cfg: Config, meta: DatasetMeta) -> Criterion:
    """Criterion for ``cfg.model.task`` with ``cfg.loss`` settings and the dataset's weights."""
    task = cfg.model.task
    weights = None
    if get_task(task).segmentation and cfg.loss.class_weights != "none":
        if meta.class_weights is None:
            raise ConfigError(
                f"loss.class_weights={cfg.loss.class_weights} but the dataset metadata has no class "
                "weights; set loss.class_weights=none"
            )
        if len(meta.class_weights) != cfg.model.num_classes:
            raise ConfigError(
                f"dataset has {len(meta.class_weights)} class weights but model.num_classes is "
                f"{cfg.model.num_classes}"
            )
        weights = torch.tensor(meta.class_weights, dtype=torch.float32)
    if cfg.loss.aleatoric_samples < 1:
        raise ConfigError(
            f"config key 'loss.aleatoric_samples' must be >= 1, got {cfg.loss.aleatoric_samples}"
        )
    return Criterion(
        task=task,
        class_weights=weights,
        aleatoric_samples=cfg.loss.aleatoric_samples,
        depth=cfg.loss.depth,
        multitask=cfg.loss.multitask,
        ignore_index=meta.ignore_index,
    )
