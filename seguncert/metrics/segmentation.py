"""Segmentation accuracy from a streaming confusion matrix (IoU, pixel and class accuracy)."""

from __future__ import annotations

import numpy as np
import torch

from ..data.common import IGNORE_INDEX
from ..errors import DataError
from .base import StreamingMetric, check_same_shape


def valid_targets(target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Mask of labelled pixels; any other label outside 0..C-1 is a data error."""
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        v = int(target[bad][0])
        raise DataError(
            f"label value {v} outside 0..{num_classes - 1} (ignore_index is {ignore_index})"
        )
    return valid


class ConfusionMatrix(StreamingMetric):
    """Confusion matrix over every labelled pixel; rows = true class, columns = predicted
    (sklearn's convention).

    ``compute()`` keys:
      per_class_iou      list[C]: TP / (TP + FP + FN); NaN when the class is absent from both
                         prediction and target (then left out of ``miou``)
      miou               mean of the non-NaN per-class IoUs
      pixel_accuracy     global: trace / labelled pixels
      per_class_accuracy list[C]: recall TP / (TP + FN); NaN when the class never occurs
      class_accuracy     mean of the non-NaN per-class accuracies
      support            list[C]: labelled pixels of each true class
      confusion          C x C list of lists (int)
      count              labelled pixels
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        super().__init__({"num_classes": int(num_classes), "ignore_index": int(ignore_index)})
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._add_state("confusion", (self.num_classes, self.num_classes), torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred (B, H, W) int class ids; target (B, H, W) int labels (ignore_index skipped)."""
        check_same_shape(pred=pred, target=target)
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError("pred and target must be integer class ids (argmax the probabilities)")
        self._follow(target)
        c = self.num_classes
        valid = valid_targets(target, c, self.ignore_index)
        p, t = pred[valid].long(), target[valid].long()
        if p.numel() and bool(((p < 0) | (p >= c)).any()):
            raise ValueError(f"predicted class ids outside 0..{c - 1}")
        self.state["confusion"] += torch.bincount(t * c + p, minlength=c * c).view(c, c)

    def compute(self) -> dict:
        cm = self.state["confusion"].cpu().numpy().astype(np.float64)
        tp = np.diag(cm)
        support = cm.sum(axis=1)
        predicted = cm.sum(axis=0)
        total = cm.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            union = support + predicted - tp
            iou = np.where(union > 0, tp / union, np.nan)
            recall = np.where(support > 0, tp / support, np.nan)
        return {
            "per_class_iou": iou.tolist(),
            "miou": _nanmean(iou),
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
            "per_class_accuracy": recall.tolist(),
            "class_accuracy": _nanmean(recall),
            "support": [int(s) for s in support],
            "confusion": self.state["confusion"].cpu().tolist(),
            "count": int(total),
        }


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")
