"""The training loop of one epoch, read top to bottom (torchvision references style).

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
from dataclasses import dataclass

import torch

from ..errors import SeguncertError
from ..losses.concrete import concrete_regulariser, learned_rates
from ..runtime.amp import autocast
from ..runtime.distributed import all_reduce_grads, any_rank, get_world_size, is_main
from ..runtime.progress import Progress

NONFINITE_LIMIT_FP16 = 5


@dataclass(kw_only=True)
class StepContext:
    """What a training step works with (:class:`~seguncert.train.setup.Run` extends it)."""

    train_model: torch.nn.Module  # the model, or its DDP wrapper
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None = None
    grad_clip: float | None = None
    channels_last: bool = False
    progress: bool = True
    log_every: int = 10
    log_seconds: float = 30.0
    concrete_n: float = 1.0  # N of the Concrete-dropout regulariser (training observations)


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


def train_step(
    run, batch: dict, nonfinite_run: int, where: str = ""
) -> tuple[torch.Tensor, dict, float, bool]:
    """Forward, loss, backward, clip, optimiser and schedule step on one batch (``run``: a
    :class:`StepContext`). Returns (loss, loss parts, gradient norm, whether the loss was finite)."""
    with autocast(run.device, run.amp_dtype):
        outputs = run.train_model(batch["image"])
    outputs = {k: v.float() for k, v in outputs.items()}  # losses in fp32
    loss, parts = run.criterion(outputs, batch)
    reg = concrete_regulariser(run.train_model, run.concrete_n)
    if reg is not None:
        loss = loss + reg
        rates = {f"p_{k}": v for k, v in learned_rates(run.train_model).items()}
        parts = {**parts, "concrete": float(reg.detach()), "loss": float(loss.detach()), **rates}
    # Every rank takes the same decision, or DDP's collective calls would deadlock.
    finite = not any_rank(not bool(torch.isfinite(loss)), run.device)
    limit = NONFINITE_LIMIT_FP16 if run.scaler.is_enabled() else 1
    if not finite and nonfinite_run + 1 >= limit:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in parts.items())
        raise SeguncertError(
            f"non-finite loss at {where} (loss parts {shown}); lower optim.lr or use train.amp=bf16"
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    all_reduce_grads(run.criterion.parameters())  # learned loss weights live outside DDP
    run.scaler.unscale_(run.optimizer)
    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    if run.grad_clip:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, run.grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if not run.scaler.is_enabled() and not torch.isfinite(grad_norm):
        raise SeguncertError(
            f"non-finite gradient at {where} (loss {loss.item():.4g}); lower optim.lr or set "
            "optim.grad_clip"
        )
    run.scaler.step(run.optimizer)  # skipped by the scaler when fp16 gradients overflowed
    run.scaler.update()
    with warnings.catch_warnings():
        # Iteration-based schedule: step it even when the scaler skipped the optimiser step
        # (torch warns about that order on the first iteration).
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        run.scheduler.step()
    return loss, parts, float(grad_norm), finite


def train_one_epoch(
    run, loader, epoch: int, budget=None, writer=None, global_step: int = 0
) -> dict:
    """One pass over ``loader``. Returns mean loss and loss parts, last lr, images/s, iterations,
    skipped (fp16 overflow) steps, seconds, and ``stopped_early`` when ``budget``
    (:class:`~seguncert.train.budget.TimeBudget`) ended the epoch before its last batch."""
    run.train_model.train()
    run.criterion.train()
    sums: dict[str, float] = defaultdict(float)
    nonfinite_run = skipped = iters = images = 0
    stopped_early = False
    start = time.perf_counter()
    world = get_world_size()
    show = run.progress and is_main()
    progress = Progress(len(loader), f"epoch {epoch + 1}", enabled=show, every_s=run.log_seconds)
    for i, batch in enumerate(loader):
        batch = to_device(batch, run.device, run.channels_last)
        scale_before = run.scaler.get_scale() if run.scaler.is_enabled() else 1.0
        loss, parts, grad_norm, finite = train_step(
            run, batch, nonfinite_run, f"epoch {epoch + 1} iter {i}"
        )
        nonfinite_run = 0 if finite else nonfinite_run + 1
        skipped += int(run.scaler.is_enabled() and run.scaler.get_scale() < scale_before)
        iters += 1
        images += batch["image"].shape[0] * world
        if finite:
            sums["loss"] += loss.item()
            for k, v in parts.items():
                if k != "loss":  # the criterion may repeat the total among its parts
                    sums[k] += float(v)
            sums["finite_iters"] += 1
        lr = run.optimizer.param_groups[0]["lr"]
        progress.update(1, images=batch["image"].shape[0] * world, loss=loss.item(), lr=lr)
        if writer is not None and i % max(1, run.log_every) == 0:
            step = global_step + iters
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/lr", lr, step)
            writer.add_scalar("train/grad_norm", grad_norm, step)
        per_iter = (time.perf_counter() - start) / iters
        if budget is not None and i + 1 < len(loader):
            if any_rank(budget.stop_now(per_iter), run.device):
                stopped_early = True
                break
    progress.close()
    seconds = time.perf_counter() - start
    n = max(1.0, sums.pop("finite_iters", 0.0))
    result = {k: v / n for k, v in sums.items()}
    rate = images / max(seconds, 1e-9)
    lr = run.optimizer.param_groups[0]["lr"]
    result.update(lr=lr, images_per_s=rate, iters=iters, skipped_steps=skipped, seconds=seconds)
    return {**result, "stopped_early": stopped_early}
