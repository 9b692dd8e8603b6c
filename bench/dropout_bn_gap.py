"""Dropout before BatchNorm: the dropout-off vs MC-mean gap of a trained checkpoint, with the
training BatchNorm statistics and with statistics re-estimated with dropout off.

Every MC dropout of the placements feeds a convolution and a BatchNorm, so the running
statistics describe activations *with* dropout (Li et al. 2019, "Understanding the disharmony
between dropout and batch normalization"). MC inference runs with dropout on and matches them;
the dropout-off pass (training-time validation, which selects ``best``) does not. This measures
how much that matters: mIoU of the MC mean (T samples) and of the dropout-off network, with the
training statistics and with statistics re-estimated with dropout off on N training frames, and
the share of pixels where each agrees with the MC mean's argmax.

    .venv/bin/python bench/dropout_bn_gap.py --checkpoint runs/camvid_cpu40 --threads 2 --json
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from _common import DEFAULT_CAMVID, add_common_args, doc_parser, emit_summary, setup
from torch import nn

from seguncert.data.camvid import CamVidDataset
from seguncert.data.transforms import build_eval_transform
from seguncert.errors import run_cli
from seguncert.io.checkpoint import load_checkpoint
from seguncert.metrics.segmentation import ConfusionMatrix
from seguncert.models.base import has_active_dropout
from seguncert.uncertainty.sampler import MCSampler


def _batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    }


def downstream_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorms after the first active MC dropout (the ones whose statistics
    dropout changes); empty for a model without active dropout."""
    if not has_active_dropout(model) or not hasattr(model, "stages"):
        return []
    first = model.split_index
    names = []
    for i, stage in enumerate(model.stages):
        if i >= first:
            names += [f"stages.{i}.{n}" for n in _batchnorms(stage)]
    return names


@torch.no_grad()
def dropout_off_statistics(
    model: nn.Module, images: Iterable[torch.Tensor], device: torch.device | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Running (mean, var) of every downstream BatchNorm re-estimated over ``images`` (batches
    (B, 3, H, W)) with dropout off: cumulative averages (momentum None) of the batch statistics,
    everything else in eval mode. The model's own buffers are left as they were."""
    names = set(downstream_batchnorms(model))
    if not names:
        return {}
    bns = {n: m for n, m in _batchnorms(model).items() if n in names}
    saved = {
        n: (
            m.running_mean.clone(),
            m.running_var.clone(),
            m.num_batches_tracked.clone(),
            m.momentum,
        )
        for n, m in bns.items()
    }
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        for m in bns.values():
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for x in images:
            model(x.to(device) if device is not None else x)
        return {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns.items()}
    finally:
        for n, m in bns.items():
            mean, var, count, momentum = saved[n]
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
            m.momentum = momentum
        for m, flag in training.items():
            m.training = flag


@contextlib.contextmanager
def use_statistics(model: nn.Module, stats: dict) -> Iterator[nn.Module]:
    """Run with ``stats`` (from :func:`dropout_off_statistics`) in the BatchNorms, restoring the
    model's own statistics on exit."""
    bns = _batchnorms(model)
    saved = {n: (bns[n].running_mean.clone(), bns[n].running_var.clone()) for n in stats}
    try:
        for n, (mean, var) in stats.items():
            bns[n].running_mean.copy_(mean)
            bns[n].running_var.copy_(var)
        yield model
    finally:
        for n, (mean, var) in saved.items():
            bns[n].running_mean.copy_(mean)
            bns[n].running_var.copy_(var)


def parse_args(argv=None):
    p = doc_parser(__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", default=str(DEFAULT_CAMVID))
    p.add_argument("--size", type=int, nargs=2, default=(180, 240), metavar=("H", "W"))
    p.add_argument("--samples", type=int, default=20, help="MC samples (default 20)")
    p.add_argument("--bn-frames", type=int, default=64, help="training frames for BN (64)")
    add_common_args(p, repeats=1)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup(args)
    model, info = load_checkpoint(args.checkpoint)
    tf = build_eval_transform(info["meta"]["mean"], info["meta"]["std"])
    size = tuple(args.size)
    val = CamVidDataset(args.data_root, "val", size=size, transform=tf)
    train = CamVidDataset(args.data_root, "train", size=size, transform=tf)
    n = min(args.bn_frames, len(train))
    frames = [
        torch.stack([train[i]["image"] for i in range(k, min(k + 8, n))]) for k in range(0, n, 8)
    ]
    stats = dropout_off_statistics(model, frames)
    sampler = MCSampler(model, samples=args.samples, seed=args.seed)
    modes = ("mc", "off_training_stats", "off_reestimated")
    cms, agree, total = (
        {k: ConfusionMatrix(len(info["class_names"])) for k in modes},
        dict.fromkeys(modes, 0),
        0,
    )
    with torch.inference_mode():
        for i in range(len(val) if not args.quick else 8):
            s = val[i]
            h, w = s["orig_size"].tolist()
            x, y = s["image"][None], s["label"][None, :h, :w]
            preds = {"mc": sampler(x)["pred"][:, :h, :w]}
            preds["off_training_stats"] = model.eval()(x)["logits"][:, :, :h, :w].argmax(1)
            with use_statistics(model, stats):
                preds["off_reestimated"] = model.eval()(x)["logits"][:, :, :h, :w].argmax(1)
            valid = y != 255
            for k, p in preds.items():
                cms[k].update(p, y)
                agree[k] += int(((p == preds["mc"]) & valid).sum())
            total += int(valid.sum())
    res = {k: {"miou": cms[k].compute()["miou"], "agree_with_mc": agree[k] / total} for k in modes}
    for k, r in res.items():
        print(
            f"{k:<20} mIoU {100 * r['miou']:.2f}%  agreement with the MC mean {100 * r['agree_with_mc']:.2f}%"
        )
    emit_summary(
        {"bench": "dropout_bn_gap", "checkpoint": args.checkpoint, "bn_frames": n, **res}, args.json
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
