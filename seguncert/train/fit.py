"""``fit``: a whole training run, read top to bottom.

Run folder: ``config.yaml`` (resolved config), ``best.*`` (best validation score: mIoU for
segmentation/joint, -AbsRel for depth, see :mod:`seguncert.tasks`), ``last.*`` (weights and
resume state, written after every epoch as one unit), ``log.csv`` (one row per epoch) and
``tb/`` (TensorBoard). A folder that already holds a run is refused unless ``resume`` (continue
it) or ``overwrite`` (start again) says what to do with it.

Resume restores weights, optimiser, scheduler, GradScaler, the loss's learned parameters and
every rank's RNG states (:mod:`seguncert.train.state`) and continues with the epoch after the
last one saved; the result is the uninterrupted run's (see there). ``train.max_minutes`` is a
:class:`~seguncert.train.budget.TimeBudget`.

DDP (``torchrun``): the model is wrapped in DistributedDataParallel; the loss's learned
parameters stay outside it and their gradients are averaged by hand. Each rank trains on its
DistributedSampler shard; validation uses disjoint shards and all-reduced metric states; only
rank 0 writes files.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..io.checkpoint import save_checkpoint
from ..runtime.distributed import barrier, broadcast_buffers
from ..tasks import get_task
from .budget import TimeBudget
from .log import format_metrics, log_epoch
from .loop import train_one_epoch
from .optim import schedule_horizon
from .setup import check_run_folder, open_logs, resume_run, setup_run
from .state import training_state
from .validate import validate


def fit(cfg, out_dir, resume: bool = False, overwrite: bool = False, data_root=None) -> dict:
    """Train ``cfg`` into ``out_dir`` and return a summary dict (see the module docstring)."""
    t_start = time.monotonic()
    out_dir = Path(out_dir)
    if data_root is not None:
        cfg.data.root = str(data_root)
    check_run_folder(out_dir, resume, overwrite)
    run = setup_run(cfg, out_dir, overwrite)
    start_epoch, global_step, best = 0, 0, {"score": -math.inf, "epoch": None, "metrics": {}}
    if resume:
        start_epoch, global_step, best = resume_run(run, out_dir)
    writer, log = open_logs(run, start_epoch if resume else 0)
    n_val = len(run.val_loader.sampler)
    budget = TimeBudget(cfg.train.max_minutes, n_val, cfg.train.batch_size, start=t_start)
    epoch, stats, metrics, stopped = start_epoch - 1, {}, {}, False
    for epoch in range(start_epoch, cfg.train.epochs):
        run.set_epoch(epoch)
        stats = train_one_epoch(run, run.train_loader, epoch, budget, writer, global_step)
        global_step += stats["iters"]
        stopped = bool(stats["stopped_early"]) or after_epoch_budget(
            run, budget, stats, global_step
        )
        t_val = time.monotonic()
        last = epoch == cfg.train.epochs - 1
        metrics = {}
        if (epoch + 1) % cfg.train.val_every == 0 or last or stopped:
            metrics, best = validate_and_keep_best(run, epoch, best)
        save_last(run, epoch, global_step, best, metrics)
        if run.main:
            log_epoch(log, writer, epoch, global_step, stats, metrics)
            print(epoch_line(epoch, cfg.train.epochs, stats, metrics), flush=True)
        barrier()
        if metrics:
            budget.record_validation(time.monotonic() - t_val)
        if stopped:
            break
    if writer is not None:
        writer.close()
    summary = run_summary(out_dir, epoch, stopped, t_start, best, metrics, stats)
    if run.main:
        print(done_line(summary), flush=True)
    return summary


def after_epoch_budget(run, budget: TimeBudget, stats: dict, global_step: int) -> bool:
    """Re-fit the schedule's horizon to the time left; True when the budget says stop now."""
    if not budget.enabled:
        return False
    per_iter = stats["seconds"] / max(1, stats["iters"])
    horizon = schedule_horizon(run.scheduler)
    total = budget.fit_horizon(
        horizon, global_step, per_iter, len(run.train_loader), run.cfg.train.val_every
    )
    if run.world > 1:  # rank 0's estimate everywhere, or ranks would use different lrs
        t = torch.tensor([total], dtype=torch.int64, device=run.device)
        dist.broadcast(t, src=0)
        horizon.total = int(t.item())
    return run.any_rank(budget.stop_after_epoch(per_iter))  # ranks' clocks differ


def validate_and_keep_best(run, epoch: int, best: dict) -> tuple[dict, dict]:
    """Validate (rank 0's BN statistics everywhere); save ``best`` when the score improves."""
    broadcast_buffers(run.model)
    metrics = validate(run.model, run.val_loader, run.device, run.meta, run.amp_dtype)
    task = get_task(run.meta.task)
    score = task.score(metrics)
    if score > best["score"]:
        best = {"score": score, "epoch": epoch, "metric": task.selection_metric, "metrics": metrics}
        if run.main:
            save_checkpoint(run.out_dir, "best", run.model, **run.saved(metrics, epoch))
    return metrics, best


def save_last(run, epoch: int, global_step: int, best: dict, metrics: dict) -> None:
    """``last`` weights with their resume state, as one unit."""
    state = training_state(run, epoch, global_step, best)  # every rank: gathers RNG states
    if run.main:
        kwargs = run.saved(metrics, epoch)
        save_checkpoint(run.out_dir, "last", run.model, resume_state=state, **kwargs)


def epoch_line(epoch: int, epochs: int, stats: dict, metrics: dict) -> str:
    line = f"epoch {epoch + 1}/{epochs}: loss {stats.get('loss', math.nan):.4f}"
    line += f", {stats['images_per_s']:.1f} img/s"
    return line + (f", val {format_metrics(metrics)}" if metrics else "")


def run_summary(out_dir, epoch, stopped, t_start, best, metrics, stats) -> dict:
    return {
        "out_dir": str(out_dir),
        "epochs_completed": epoch + 1,
        "stopped_early": stopped,
        "minutes": (time.monotonic() - t_start) / 60.0,
        "best_epoch": best["epoch"],
        "best_metric": best.get("metric"),  # its name: miou or abs_rel
        "best_value": best["metrics"].get(best.get("metric")) if best.get("metric") else None,
        "best_metrics": best["metrics"],
        "last_metrics": metrics,
        "train": stats,
    }


def done_line(s: dict) -> str:
    if s["best_epoch"] is None:
        best = "no validation"
    else:
        best = f"best {s['best_metric']} {s['best_value']:.4f} at epoch {s['best_epoch'] + 1}"
    budget = " (time budget)" if s["stopped_early"] else ""
    return (
        f"done: {s['epochs_completed']} epochs in {s['minutes']:.1f} min{budget}; {best}; "
        f"checkpoints in {s['out_dir']}"
    )
