"""Distributed helpers (torchrun) and reproducible data loading.

``torchrun --nproc_per_node=N tools/train.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK and the
rendezvous variables; :func:`init_distributed` joins the process group (NCCL on CUDA, gloo on
CPU). A plain ``python tools/train.py`` is world size 1 and never touches torch.distributed.

Shuffling depends only on ``(seed, epoch)``: the training sampler is a DistributedSampler (also
for one process) whose permutation is ``seed + epoch``; each epoch reseeds the DataLoader's
generator (worker base seeds) and the albumentations pipeline from ``(seed, epoch, rank)``. A run
resumed after epoch k therefore sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler


def init_distributed(device_type: str | None = None) -> tuple[int, int, int]:
    """Join the torchrun process group when WORLD_SIZE > 1; returns (rank, world_size, local_rank).

    ``device_type`` picks the backend ("cuda" -> nccl, else gloo); default: cuda when available.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        if device_type is None:
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return rank, world, local_rank


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def reduce_dict(values: dict[str, float], average: bool = True) -> dict[str, float]:
    """Sum (or average) a dict of floats over ranks; keys must be the same on every rank."""
    if not is_dist() or not values:
        return dict(values)
    keys = sorted(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    if average:
        t /= get_world_size()
    return dict(zip(keys, t.tolist()))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (keeps ranks in lock-step)."""
    if not is_dist():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_grads(params) -> None:
    """Average the gradients of parameters that live outside the DDP model (the loss's
    learned multi-task log-variances): DDP only averages the gradients of the model it wraps."""
    if not is_dist():
        return
    world = get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank. DDP syncs
    buffers at the start of each forward, so after the last training step each rank holds its
    own statistics; evaluation and checkpoints should all use rank 0's."""
    if not is_dist():
        return
    for b in module.buffers():
        dist.broadcast(b, src)


class ShardSampler(Sampler[int]):
    """Rank r takes indices r, r + W, r + 2W, ... in order: no padding and no duplicates, so
    metrics summed over ranks count every validation pixel exactly once."""

    def __init__(self, dataset: Dataset, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world = len(dataset), rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct, reproducible 63-bit seed per (seed, epoch, rank)."""
    return int(
        np.random.SeedSequence([seed, epoch, rank]).generate_state(2, np.uint32).view(np.uint64)[0]
        >> 1
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def reseed_transform(dataset, seed: int) -> None:
    """Reseed an albumentations pipeline (its own RNG, independent of numpy/torch) if present."""
    for obj in (dataset, getattr(dataset, "dataset", None)):
        transform = getattr(obj, "transform", None)
        if transform is not None and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed % 2**32)


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy / random / the transform of a DataLoader worker from its torch seed (which
    derives from the loader generator, itself reseeded from (seed, epoch, rank) each epoch)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        reseed_transform(info.dataset, seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Training loader: DistributedSampler(shuffle, seed, drop_last) + seeded generator.
    Evaluation loader: :class:`ShardSampler`, in order. Call :func:`set_loader_epoch` per epoch."""
    if train:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
    else:
        sampler = ShardSampler(dataset, rank, world_size)
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(seed, 0, rank))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        # A last batch of 1 breaks BatchNorm in training; evaluation keeps every sample.
        drop_last=train and len(sampler) > batch_size,
        worker_init_fn=worker_init_fn if num_workers > 0 else None,
        generator=generator,
        persistent_workers=False,
    )


def set_loader_epoch(loader: DataLoader, seed: int, epoch: int, rank: int = 0) -> None:
    """Make this epoch's order and augmentations a function of (seed, epoch, rank) only."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    s = epoch_seed(seed, epoch, rank)
    loader.generator.manual_seed(s)
    if loader.num_workers == 0:
        reseed_transform(loader.dataset, s)
