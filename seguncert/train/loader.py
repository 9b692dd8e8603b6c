"""Reproducible data loading for training and validation.

Shuffling depends only on ``(seed, epoch)``: the training sampler is a DistributedSampler (also
for one process) whose permutation is ``seed + epoch``; each epoch reseeds the DataLoader's
generator (worker base seeds) and, without workers, the augmentation pipeline itself from
``(seed, epoch, rank)``. With workers, each worker reseeds its copy of the pipeline from its torch
seed, which derives from that generator. A run resumed after epoch k therefore sees exactly the
batches and augmentations the uninterrupted run would have seen, with or without workers.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from ..runtime.distributed import ShardSampler


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
