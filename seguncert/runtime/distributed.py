"""Distributed helpers (torchrun).

``torchrun --nproc_per_node=N tools/train.py ...`` sets RANK / WORLD_SIZE / LOCAL_RANK and the
rendezvous variables; :func:`init_distributed` joins the process group (NCCL on CUDA, gloo on
CPU). A plain ``python tools/train.py`` is world size 1 and never touches torch.distributed.
Reproducible data loading lives in :mod:`seguncert.train.loader`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler


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
