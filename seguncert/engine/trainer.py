"""Training and evaluation loops, written to be read top to bottom (torchvision references style).

``train_one_epoch`` and ``evaluate`` are the loops; ``fit`` (in :mod:`seguncert.engine.run`)
wires datasets, model, loss, optimiser, checkpoints and logs around them.

Numerics: the forward pass runs under one autocast context (fp16 / bf16 / off); the outputs are
cast to fp32 before the loss. Gradients are unscaled before clipping. Under fp16 a non-finite
loss makes the GradScaler skip that step and lower its scale, which is expected a few times
early on; five non-finite losses in a row (one without fp16, where nothing can absorb it) stop
training with a clear message instead of silently producing NaN weights.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict

import torch
from torch import nn
from tqdm import tqdm

from seguncert.engine.amp import autocast
from seguncert.engine.distributed import all_reduce_grads, any_rank, get_world_size, is_main
from seguncert.errors import SeguncertError

NONFINITE_LIMIT_FP16 = 5


def to_device(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    """Move every tensor of a batch to ``device``; the image optionally to channels_last."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if k == "image" and channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loader,
    device: torch.device,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None,
    epoch: int,
    grad_clip: float | None = None,
    channels_last: bool = False,
    progress: bool = True,
    *,
    deadline: float | None = None,
    eval_images: int = 0,
    log_every: int = 10,
    writer=None,
    global_step: int = 0,
) -> dict:
    """One pass over ``loader``. Returns mean loss and loss parts, last lr, images/s, the number
    of iterations and of skipped (fp16 overflow) steps, and ``stopped_early`` when the
    ``deadline`` (a ``time.monotonic()`` value) came mid-epoch: the loop stops before an iteration
    that would end past the deadline minus the time to evaluate ``eval_images`` images
    (estimated at a third of a training step's cost per image)."""
    model.train()
    criterion.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    limit = NONFINITE_LIMIT_FP16 if scaler.is_enabled() else 1
    sums: dict[str, float] = defaultdict(float)
    nonfinite_run = skipped = iters = images = 0
    stopped_early = False
    start = time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch}",
        disable=None if (progress and is_main()) else True,  # None: off when not a TTY
        leave=False,
        dynamic_ncols=True,
    )
    for i, batch in enumerate(bar):
        batch = to_device(batch, device, channels_last)
        with autocast(device, amp_dtype):
            outputs = model(batch["image"])
        outputs = {k: v.float() for k, v in outputs.items()}  # losses in fp32
        loss, parts = criterion(outputs, batch)

        # Every rank takes the same decision, or DDP's collective calls would deadlock.
        finite = not any_rank(not bool(torch.isfinite(loss)), device)
        nonfinite_run = 0 if finite else nonfinite_run + 1
        if nonfinite_run >= limit:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in parts.items())
            raise SeguncertError(
                f"non-finite loss at epoch {epoch} iter {i} (loss parts {shown}); "
                "lower optim.lr or use train.amp=bf16"
            )

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        all_reduce_grads(criterion.parameters())  # learned loss weights live outside DDP
        scaler.unscale_(optimizer)
        if grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm(
                [p.grad for p in params if p.grad is not None]
            )
        if not scaler.is_enabled() and not torch.isfinite(grad_norm):
            raise SeguncertError(
                f"non-finite gradient at epoch {epoch} iter {i} (loss {loss.item():.4g}); "
                "lower optim.lr or set optim.grad_clip"
            )
        scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
        scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
        scaler.update()
        if scaler.is_enabled() and scaler.get_scale() < scale_before:
            skipped += 1
        with warnings.catch_warnings():
            # Iteration-based schedule: step it even when the scaler skipped the optimiser step
            # (torch warns about that order on the first iteration).
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            scheduler.step()

        iters += 1
        images += batch["image"].shape[0] * get_world_size()
        if finite:
            sums["loss"] += loss.item()
            for k, v in parts.items():
                if k != "loss":  # the criterion may repeat the total among its parts
                    sums[k] += float(v)
            sums["finite_iters"] += 1
        lr = optimizer.param_groups[0]["lr"]
        if i % max(1, log_every) == 0:
            rate = images / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
            if writer is not None:
                step = global_step + iters
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/grad_norm", float(grad_norm), step)
        if deadline is not None and i + 1 < len(loader):
            elapsed = time.perf_counter() - start
            per_iter, per_image = elapsed / iters, elapsed / max(1, images // get_world_size())
            need = per_iter + eval_images * per_image / 3
            if any_rank(time.monotonic() + need > deadline, device):
                stopped_early = True
                break
    bar.close()

    seconds = time.perf_counter() - start
    n = max(1.0, sums.pop("finite_iters", 0.0))
    result = {k: v / n for k, v in sums.items()}
    result.update(
        lr=optimizer.param_groups[0]["lr"],
        images_per_s=images / max(seconds, 1e-9),
        iters=iters,
        skipped_steps=skipped,
        seconds=seconds,
        stopped_early=stopped_early,
    )
    return result


def _depth_valid(batch: dict, task: str, meta) -> torch.Tensor:
    """Valid depth pixels: for the depth task the dataset's ``valid``; in the joint task ``valid``
    describes labels, so depth validity is its own mask or the depth range."""
    if "depth_valid" in batch:
        return batch["depth_valid"]
    depth = batch["depth"]
    in_range = (depth >= meta.min_depth) & (depth <= meta.max_depth)
    return batch["valid"] & in_range if task == "depth" else in_range


@torch.inference_mode()
def evaluate(model: nn.Module, loader, device: torch.device, meta, amp_dtype=None) -> dict:
    """Deterministic evaluation (dropout off) over every valid pixel of ``loader``.

    Segmentation / joint: ``miou``, ``pixel_accuracy``, ``per_class_iou``... (ConfusionMatrix);
    depth / joint: ``abs_rel``, ``rmse``, ``delta1``... (DepthMetrics). Predictions are cropped to
    each sample's ``orig_size`` (evaluation pads to a multiple of 32). Under DDP each rank sees
    a disjoint shard and the metric states are summed with ``all_reduce``.
    """
    from seguncert.metrics.depth import DepthMetrics
    from seguncert.metrics.segmentation import ConfusionMatrix

    model.eval()
    task = meta.task
    seg = ConfusionMatrix(len(meta.class_names), meta.ignore_index) if task != "depth" else None
    dep = DepthMetrics(meta.min_depth, meta.max_depth) if task != "segmentation" else None
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(device, amp_dtype):
            outputs = model(batch["image"])
        sizes = batch.get("orig_size")
        if sizes is None:
            sizes = torch.tensor([batch["image"].shape[-2:]] * batch["image"].shape[0])
        valid_depth = _depth_valid(batch, task, meta) if dep is not None else None
        for b, (h, w) in enumerate(sizes.tolist()):
            if seg is not None:
                pred = outputs["logits"][b : b + 1, :, :h, :w].float().argmax(1)
                seg.update(pred, batch["label"][b : b + 1, :h, :w])
            if dep is not None:
                pred = outputs["depth_loc"][b : b + 1, 0, :h, :w].float()
                dep.update(pred, batch["depth"][b : b + 1, :h, :w], valid_depth[b : b + 1, :h, :w])
    results: dict = {}
    for metric in (seg, dep):
        if metric is not None:
            metric.all_reduce()
            results.update(metric.compute())
    return results


def fit(cfg, out_dir, resume: bool = False, data_root=None) -> dict:
    """Train ``cfg`` into ``out_dir`` (``best``/``last`` checkpoints, resume state, ``log.csv``,
    ``tb/``, ``config.yaml``) and return a summary dict. See :mod:`seguncert.engine.run`."""
    from seguncert.engine.run import run_fit

    return run_fit(cfg, out_dir, resume=resume, data_root=data_root)
