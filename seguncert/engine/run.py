"""``fit``: a whole training run, read top to bottom (``trainer.fit`` calls :func:`run_fit`).

Run folder: ``config.yaml`` (resolved config), ``best.*`` (best validation score: mIoU for
segmentation/joint, -AbsRel for depth), ``last.*`` and ``last.state.*`` (resume state, written
after every epoch), ``log.csv`` (one row per epoch) and ``tb/`` (TensorBoard).

Resume (``resume=True``) restores weights, optimiser, scheduler, GradScaler, the loss's learned
parameters and every rank's RNG states, then continues with the next epoch. Since shuffling
and augmentation depend only on (seed, epoch, rank), a run stopped after epoch k and resumed
ends with the same weights as an uninterrupted run (bit-exact on the CPU; on CUDA up to
non-deterministic kernels unless ``train.deterministic``).

Time budget ``train.max_minutes`` (per invocation of fit, imports excluded): checked inside the
epoch after every iteration (stop when one more iteration plus a validation would pass the
budget) and after every epoch (stop when one more iteration plus two validations would). The
validation cost is measured once known (validation + checkpointing), estimated before as a
third of a training step per validation image. After the first epoch the learning-rate
schedule's horizon is set to the iterations predicted to fit the budget, re-estimated after
every epoch (stored for resume), so a budgeted run still decays its learning rate to the end. The cut epoch is then validated and saved, so the run ends
within a few percent of the budget (the estimate's error, plus one iteration at worst). A resume from an epoch cut short continues with the next epoch (exactness holds for
whole epochs: the interrupted run's last state is from the end of an epoch).

DDP (``torchrun``): the model is wrapped in DistributedDataParallel (find_unused_parameters
False); the loss's learned parameters stay outside it and their gradients are averaged by hand
(``all_reduce_grads``). Each rank trains on its DistributedSampler shard; validation uses
disjoint shards and all-reduced metric states; only rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel

from seguncert.engine.amp import make_scaler, resolve_amp_dtype, resolve_device
from seguncert.engine.checkpoint import (
    atomic_write_text,
    check_state_matches,
    load_verified_weights,
    read_sidecar,
    save_checkpoint,
)
from seguncert.engine.distributed import (
    any_rank,
    barrier,
    broadcast_buffers,
    build_loader,
    epoch_seed,
    init_distributed,
    seed_everything,
    set_loader_epoch,
)
from seguncert.engine.optim import build_optimizer, build_scheduler, schedule_horizon
from seguncert.engine.resume import (
    capture_rng_state,
    load_resume_state,
    restore_rng_state,
    save_resume_state,
)
from seguncert.engine.runlog import CsvLog, format_metrics, open_writer, scalar_items, score_of
from seguncert.engine.trainer import evaluate, train_one_epoch
from seguncert.errors import CheckpointError, DataError
from seguncert.models.heads import init_depth_range


def check_data_root(cfg) -> None:
    """A real dataset needs an existing root (relative roots resolve against the cwd)."""
    if cfg.data.dataset == "synthetic":
        return
    if not cfg.data.root:
        raise DataError(f"data.root is not set for dataset {cfg.data.dataset!r}; pass --data-root")
    if not Path(cfg.data.root).is_dir():
        raise DataError(f"data root not found: {cfg.data.root} (set data.root or pass --data-root)")


def run_fit(cfg, out_dir, resume: bool = False, data_root=None) -> dict:
    from seguncert.data.build import build_datasets
    from seguncert.losses.criterion import build_criterion
    from seguncert.models.build import build_model

    t_start = time.monotonic()
    out_dir = Path(out_dir)
    if data_root is not None:
        cfg.data.root = str(data_root)
    device = resolve_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    amp_dtype = resolve_amp_dtype(cfg.train.amp, device)
    rank, world, local_rank = init_distributed(device.type)
    main = rank == 0
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.train.deterministic
    check_data_root(cfg)
    if resume and not (out_dir / "last.json").is_file():
        raise CheckpointError(f"nothing to resume in {out_dir} (no last.json)")
    if main:
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    # Same initial weights on every rank (DDP broadcasts rank 0's anyway); then per-rank
    # streams so dropout masks and loss noise differ between ranks.
    seed_everything(cfg.train.seed)
    train_ds, val_ds, meta = build_datasets(cfg)
    model = build_model(cfg.model, depth_dist=cfg.loss.depth)
    if meta.task != "segmentation":
        init_depth_range(model, meta.min_depth, meta.max_depth)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(cfg, meta).to(device)
    seed_everything(cfg.train.seed + rank)

    seed, bs, workers = cfg.train.seed, cfg.train.batch_size, cfg.data.num_workers
    pin = device.type == "cuda"
    train_loader = build_loader(train_ds, bs, train=True, seed=seed, rank=rank, world_size=world,
                                num_workers=workers, pin_memory=pin)  # fmt: skip
    val_loader = build_loader(val_ds, bs, train=False, seed=seed, rank=rank, world_size=world,
                              num_workers=workers, pin_memory=pin)  # fmt: skip
    if len(train_loader) == 0:
        raise DataError(f"the training split has no batches ({len(train_ds)} samples)")
    optimizer = build_optimizer(cfg.optim, [*model.parameters(), *criterion.parameters()])
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.train.epochs * len(train_loader))
    scaler = make_scaler(device, amp_dtype)

    start_epoch, global_step = 0, 0
    best = {"score": -math.inf, "epoch": None, "metric": None, "metrics": {}}
    rng_states = None
    if resume:
        state = restore_training(out_dir, model, criterion, optimizer, scheduler, scaler)
        start_epoch, global_step, best = state["epoch"] + 1, state["global_step"], state["best"]
        rng_states = state["rng"]

    train_model = model
    if world > 1:
        ids = [local_rank] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)
    writer = open_writer(out_dir / "tb") if main else None
    log = CsvLog(out_dir / "log.csv", keep_until_epoch=start_epoch - 1 if resume else None)
    if rng_states is not None:  # last, after everything that draws random numbers at build time
        if len(rng_states) == world:
            restore_rng_state(rng_states[rank])
        else:  # resumed on another number of processes: reproducible, but not the same run
            seed_everything(epoch_seed(seed, start_epoch, rank))

    budget = cfg.train.max_minutes * 60.0 if cfg.train.max_minutes else None
    reserve = None  # measured seconds of one validation + checkpointing, once known
    n_val = len(val_loader.sampler)
    stopped, epoch, train_stats, metrics = False, start_epoch - 1, {}, {}
    for epoch in range(start_epoch, cfg.train.epochs):
        set_loader_epoch(train_loader, seed, epoch, rank)
        deadline = t_start + budget - (reserve or 0.0) if budget else None
        train_stats = train_one_epoch(
            train_model, criterion, optimizer, scheduler, train_loader, device, scaler, amp_dtype,
            epoch, cfg.optim.grad_clip, cfg.train.channels_last, progress=True, deadline=deadline,
            eval_images=n_val if reserve is None else 0, log_every=cfg.train.log_every,
            writer=writer, global_step=global_step,
        )  # fmt: skip
        global_step += train_stats["iters"]
        stopped = bool(train_stats["stopped_early"])
        if budget and not stopped:
            # Decay the schedule within the budget: remaining time less one validation per
            # val_every epochs (estimated as in train_one_epoch until measured). Re-fitted after
            # every epoch, so the decay follows the machine's actual speed.
            per_iter = train_stats["seconds"] / max(1, train_stats["iters"])
            val_s = reserve if reserve is not None else n_val * per_iter / (3 * bs)
            epoch_s = per_iter * len(train_loader)
            left = t_start + budget - time.monotonic()
            n_vals = 1 + left / max(1e-9, epoch_s * max(1, cfg.train.val_every) + val_s)
            total = schedule_horizon(scheduler).fit_budget(
                global_step, left - n_vals * val_s, per_iter
            )
            if world > 1:  # rank 0's estimate everywhere, or ranks would use different lrs
                t = torch.tensor([total], dtype=torch.int64, device=device)
                dist.broadcast(t, src=0)
                schedule_horizon(scheduler).total = int(t.item())
        if budget and not stopped:  # stop now unless one more iteration + validation still fit
            per_iter = train_stats["seconds"] / max(1, train_stats["iters"])
            val_est = reserve if reserve is not None else n_val * per_iter / (3 * bs)
            late = time.monotonic() + per_iter + 2 * val_est > t_start + budget
            stopped = any_rank(late, device)  # ranks' clocks differ: decide together

        t_val = time.monotonic()
        metrics = {}
        last = epoch == cfg.train.epochs - 1
        if (epoch + 1) % max(1, cfg.train.val_every) == 0 or last or stopped:
            broadcast_buffers(model)  # every rank evaluates with rank 0's BN statistics
            metrics = evaluate(model, val_loader, device, meta, amp_dtype)
            name, score = score_of(metrics, meta.task)
            if score > best["score"]:
                best = {"score": score, "epoch": epoch, "metric": name, "metrics": metrics}
                if main:
                    save_checkpoint(out_dir, "best", model, meta=meta, config=cfg,
                                    metrics=metrics, epoch=epoch)  # fmt: skip
        rng = gather_rng_states(world)
        if main:
            save_checkpoint(out_dir, "last", model, meta=meta, config=cfg, metrics=metrics,
                            epoch=epoch)  # fmt: skip
            save_resume_state(out_dir, {
                "epoch": epoch, "global_step": global_step, "best": best, "world_size": world,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "horizon": schedule_horizon(scheduler).total,
                "scaler": scaler.state_dict(), "criterion": criterion.state_dict(), "rng": rng,
            })  # fmt: skip
            log_epoch(log, writer, epoch, global_step, train_stats, metrics)
            print(
                f"epoch {epoch + 1}/{cfg.train.epochs}: loss {train_stats.get('loss', math.nan):.4f}"
                f", {train_stats['images_per_s']:.1f} img/s"
                + (f", val {format_metrics(metrics)}" if metrics else ""),
                flush=True,
            )
        barrier()
        if metrics:
            reserve = max(reserve or 0.0, time.monotonic() - t_val)
        if stopped:
            break

    if writer is not None:
        writer.close()
    minutes = (time.monotonic() - t_start) / 60.0
    summary = {
        "out_dir": str(out_dir),
        "epochs_completed": epoch + 1,
        "stopped_early": stopped,
        "minutes": minutes,
        "best_epoch": best["epoch"],
        "best_metric": best["metric"],  # its name: miou or abs_rel
        "best_value": best["metrics"].get(best["metric"]) if best["metric"] else None,
        "best_metrics": best["metrics"],
        "last_metrics": metrics,
        "train": train_stats,
    }
    if main:
        best_txt = (
            f"best {best['metric']} {abs(best['score']):.4f} at epoch {best['epoch'] + 1}"
            if best["epoch"] is not None
            else "no validation"
        )
        print(f"done: {epoch + 1} epochs in {minutes:.1f} min{' (time budget)' if stopped else ''}"
              f"; {best_txt}; checkpoints in {out_dir}", flush=True)  # fmt: skip
    return summary


def gather_rng_states(world: int) -> list[dict]:
    """Every rank's RNG state, on every rank (all_gather_object pickles only in memory)."""
    state = capture_rng_state()
    if world == 1:
        return [state]
    states: list = [None] * world
    dist.all_gather_object(states, state)
    return states


def restore_training(out_dir: Path, model, criterion, optimizer, scheduler, scaler) -> dict:
    """Load ``last`` weights (verified) and ``last.state``; returns the decoded state."""
    info = read_sidecar(out_dir / "last.json")
    if json.loads(json.dumps(model.spec)) != info["model_spec"]:
        raise CheckpointError(
            f"cannot resume {out_dir}: the config builds a different model than last.json"
        )
    weights = load_verified_weights(out_dir / info["weights_file"], info["weights_sha256"])
    check_state_matches(model, weights, out_dir / info["weights_file"])
    model.load_state_dict(weights)
    state = load_resume_state(out_dir)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        schedule_horizon(scheduler).total = int(
            state.get("horizon", schedule_horizon(scheduler).total)
        )
        if scaler.is_enabled() and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        criterion.load_state_dict(state["criterion"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot resume from {out_dir}/last.state.json: {e}") from None
    return state


def log_epoch(log: CsvLog, writer, epoch: int, step: int, train: dict, val: dict) -> None:
    row = {"epoch": epoch, "iter": step}
    row.update(scalar_items("train_", {k: v for k, v in train.items() if k != "stopped_early"}))
    row.update(scalar_items("val_", {k: v for k, v in val.items() if not isinstance(v, list)}))
    log.append(row)
    if writer is not None:
        for k, v in scalar_items("val/", val).items():
            writer.add_scalar(k, v, step)
        for k in ("loss", "images_per_s"):
            if k in train:
                writer.add_scalar(f"epoch/{k}", train[k], step)
        writer.flush()
