"""Validation during training: the deterministic network (dropout off) over a whole split.

It picks the ``best`` checkpoint and fills ``log.csv``. The pixels it scores are the ones
``tools/evaluate.py`` scores: labels != 255 for segmentation, the datasets' ``depth_valid``
mask for depth (one definition, :mod:`seguncert.data`), each image cropped back to its
``orig_size`` (evaluation pads to a multiple of 32).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.transforms import image_sizes
from ..metrics.depth import DepthMetrics
from ..metrics.segmentation import ConfusionMatrix
from ..runtime.amp import autocast
from ..tasks import get_task
from .loop import to_device


@torch.inference_mode()
def validate(model: nn.Module, loader, device: torch.device, meta, amp_dtype=None) -> dict:
    """Metrics of ``model`` in eval mode over every valid pixel of ``loader``.

    Segmentation / joint: ``miou``, ``pixel_accuracy``, ``per_class_iou``... (ConfusionMatrix);
    depth / joint: ``abs_rel``, ``rmse``, ``delta1``... (DepthMetrics). Under DDP each rank sees
    a disjoint shard and the metric states are summed with ``all_reduce``.
    """
    model.eval()
    task = get_task(meta.task)
    seg = ConfusionMatrix(len(meta.class_names), meta.ignore_index) if task.segmentation else None
    dep = DepthMetrics(meta.min_depth, meta.max_depth) if task.depth else None
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, amp_dtype):
            outputs = model(batch["image"])
        for b, (h, w) in enumerate(image_sizes(batch)):
            if seg is not None:
                pred = outputs["logits"][b : b + 1, :, :h, :w].float().argmax(1)
                seg.update(pred, batch["label"][b : b + 1, :h, :w])
            if dep is not None:
                pred = outputs["depth_loc"][b : b + 1, 0, :h, :w].float()
                valid = batch["depth_valid"][b : b + 1, :h, :w]
                dep.update(pred, batch["depth"][b : b + 1, :h, :w], valid)
    results: dict = {}
    for metric in (seg, dep):
        if metric is not None:
            metric.all_reduce()
            results.update(metric.compute())
    return results
