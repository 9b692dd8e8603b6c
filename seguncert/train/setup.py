"""Everything a training run is built from, gathered in a :class:`Run`, and the run folder rules.

``setup_run`` goes: device, precision and process group -> data -> model -> loss -> loaders ->
optimiser and schedule. Seeding: the same ``train.seed`` on every rank while the model is built
(identical initial weights), then ``seed + rank``, so dropout masks and loss noise differ
between ranks. ``resume_run`` restores a saved state into it, RNGs last.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import config_yaml
from ..errors import CheckpointError, ConfigError, DataError
from ..io.atomic import atomic_write_text, check_folder_writable
from ..losses.concrete import concrete_layers
from ..runtime import distributed
from ..runtime.amp import make_scaler, resolve_amp_dtype
from ..runtime.device import resolve_device
from ..tasks import get_task
from .loader import build_loader, epoch_seed, seed_everything, set_loader_epoch
from .log import CsvLog, open_writer
from .loop import StepContext
from .optim import build_optimizer, build_scheduler
from .state import restore_rng_state, restore_training

RUN_MARKERS = ("last.json", "best.json")


@dataclass(kw_only=True)
class Run(StepContext):
    """The parts of one training run (what ``fit`` works with)."""

    cfg: object
    out_dir: Path
    rank: int
    world: int
    meta: object
    model: torch.nn.Module
    train_loader: object
    val_loader: object

    @property
    def main(self) -> bool:
        return self.rank == 0

    def set_epoch(self, epoch: int) -> None:
        set_loader_epoch(self.train_loader, self.cfg.train.seed, epoch, self.rank)

    def any_rank(self, flag: bool) -> bool:
        return distributed.any_rank(flag, self.device)

    def saved(self, metrics: dict, epoch: int) -> dict:
        """Keyword arguments of save_checkpoint for this run."""
        return {"meta": self.meta, "config": self.cfg, "metrics": metrics, "epoch": epoch}


def check_run_folder(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train over an existing run unless told to resume it or to start it again."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    found = [n for n in RUN_MARKERS if (out_dir / n).is_file()]
    if resume and "last.json" not in found:
        raise CheckpointError(f"nothing to resume in {out_dir} (no last.json)")
    if found and not resume and not overwrite:
        raise ConfigError(
            f"{out_dir} already holds a training run ({', '.join(found)}); pass --resume to "
            "continue it or --overwrite to replace it"
        )
    check_folder_writable(out_dir, what=f"run folder {out_dir}")


def clear_run(out_dir: Path) -> None:
    """Remove the files a previous run left in ``out_dir`` (only names this package writes);
    a folder that does not exist yet has nothing to clear."""
    if not out_dir.is_dir():
        return
    for p in out_dir.iterdir():
        ours = p.name.split(".")[0] in ("best", "last") and p.suffix in (".json", ".safetensors")
        if ours or p.name in ("log.csv", "config.yaml"):
            p.unlink()
    shutil.rmtree(out_dir / "tb", ignore_errors=True)


def _runtime(cfg) -> tuple[torch.device, torch.dtype | None, int, int, int]:
    device = resolve_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    amp_dtype = resolve_amp_dtype(cfg.train.amp, device)
    rank, world, local_rank = distributed.init_distributed(device.type)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not cfg.train.deterministic
    return device, amp_dtype, rank, world, local_rank


def _check_data_root(cfg) -> None:
    """A real dataset needs an existing root (relative roots resolve against the cwd)."""
    if cfg.data.dataset == "synthetic":
        return
    if not cfg.data.root:
        raise DataError(f"data.root is not set for dataset {cfg.data.dataset!r}; pass --data-root")
    if not Path(cfg.data.root).is_dir():
        raise DataError(f"data root not found: {cfg.data.root} (set data.root or pass --data-root)")


def _model_and_loss(cfg, meta, device):
    from ..losses.criterion import build_criterion
    from ..models.build import build_model
    from ..models.heads import init_depth_range

    model = build_model(cfg.model, depth_dist=cfg.loss.depth)
    if get_task(meta.task).depth:
        init_depth_range(model, meta.min_depth, meta.max_depth)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, build_criterion(cfg, meta).to(device)


def _loaders(cfg, train_ds, val_ds, device, rank: int, world: int):
    kw = {
        "seed": cfg.train.seed,
        "rank": rank,
        "world_size": world,
        "num_workers": cfg.data.num_workers,
        "pin_memory": device.type == "cuda",
    }
    train_loader = build_loader(train_ds, cfg.train.batch_size, train=True, **kw)
    val_loader = build_loader(val_ds, cfg.train.batch_size, train=False, **kw)
    if len(train_ds) < 2:  # BatchNorm needs two values per channel in a training batch
        raise DataError(f"training needs at least 2 images, the training split has {len(train_ds)}")
    return train_loader, val_loader


def setup_run(cfg, out_dir: Path, overwrite: bool = False) -> Run:
    from ..data.build import build_datasets

    device, amp_dtype, rank, world, local_rank = _runtime(cfg)
    _check_data_root(cfg)
    if rank == 0:
        if overwrite:
            clear_run(out_dir)
        atomic_write_text(out_dir / "config.yaml", config_yaml(cfg))
    seed_everything(cfg.train.seed)
    train_ds, val_ds, meta = build_datasets(cfg)
    model, criterion = _model_and_loss(cfg, meta, device)
    seed_everything(cfg.train.seed + rank)
    train_loader, val_loader = _loaders(cfg, train_ds, val_ds, device, rank, world)
    rates = [m.p_logit for m in concrete_layers(model)]
    optimizer = build_optimizer(cfg.optim, [*model.parameters(), *criterion.parameters()], rates)
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.train.epochs * len(train_loader))
    train_model = model
    if world > 1:
        ids = [local_rank] if device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)
    if rank == 0:
        print(
            f"training {cfg.model.arch} ({meta.task}) on {device}: {len(train_ds)} training / "
            f"{len(val_ds)} validation images, {cfg.train.epochs} epochs, run folder {out_dir}",
            flush=True,
        )
    return Run(
        cfg=cfg,
        out_dir=out_dir,
        device=device,
        amp_dtype=amp_dtype,
        rank=rank,
        world=world,
        meta=meta,
        model=model,
        train_model=train_model,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=make_scaler(device, amp_dtype),
        train_loader=train_loader,
        val_loader=val_loader,
        grad_clip=cfg.optim.grad_clip,
        channels_last=cfg.train.channels_last,
        log_every=cfg.train.log_every,
        log_seconds=cfg.train.log_seconds,
        concrete_n=len(train_ds) * cfg.loss.concrete_n_per_image,
    )


def resume_run(run: Run, out_dir: Path) -> tuple[int, int, dict]:
    """Restore the saved state; returns (next epoch, global step, best so far)."""
    state = restore_training(out_dir, run)
    start_epoch = state["epoch"] + 1
    if start_epoch >= run.cfg.train.epochs:
        raise ConfigError(
            f"{out_dir} already finished train.epochs={run.cfg.train.epochs}; pass a larger "
            "train.epochs to train further"
        )
    rng = state["rng"]
    if len(rng) == run.world:  # last, after everything that draws random numbers at build time
        restore_rng_state(rng[run.rank])
    else:  # resumed on another number of processes: reproducible, but not the same run
        seed_everything(epoch_seed(run.cfg.train.seed, start_epoch, run.rank))
    if run.main:
        print(f"resuming {out_dir} at epoch {start_epoch + 1}", flush=True)
    return start_epoch, state["global_step"], state["best"]


def open_logs(run: Run, start_epoch: int):
    """(TensorBoard writer or None, log.csv keeping the rows before ``start_epoch``)."""
    writer = open_writer(run.out_dir / "tb") if run.main else None
    keep = start_epoch - 1 if start_epoch > 0 else None
    return writer, CsvLog(run.out_dir / "log.csv", keep_until_epoch=keep)
