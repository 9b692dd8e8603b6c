"""Optimiser and iteration-based learning-rate schedules.

Weight decay applies only to weight matrices and convolution kernels (tensors with 2 or more
dimensions). BatchNorm scales/shifts, biases and the loss's learned log-variances (0-d or 1-d)
are not decayed: decaying a BN scale or a log-variance towards 0 regularises nothing useful
and biases the learned noise level (common practice since Goyal et al. 2017).

Schedules are a ``LambdaLR`` over *iterations* (call ``scheduler.step()`` after every optimiser
step), so their ``state_dict`` is plain numbers and resumes exactly:

- linear warm-up over ``warmup_iters``: factor ``(it + 1) / warmup_iters``;
- then ``poly``: ``(1 - p) ** poly_power``, ``cosine``: ``0.5 * (1 + cos(pi * p))``,
  ``constant``: 1, with ``p = (it - warmup_iters) / (total_iters - warmup_iters)`` in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from seguncert.config import OptimConfig
from seguncert.errors import ConfigError


def param_groups(
    params: Iterable[torch.nn.Parameter],
    weight_decay: float,
    rates: Iterable[torch.nn.Parameter] = (),
    rate_lr: float | None = None,
) -> list[dict]:
    """Two groups: decayed (ndim >= 2) and not decayed (ndim <= 1); frozen params are left out.
    ``rates`` (Concrete dropout's p_logit, one scalar per layer) form a third, undecayed group
    with learning rate ``rate_lr``: at the few thousand steps of a CPU budget the shared rate
    moves a logit by about one unit, too little for p to settle."""
    rate_ids = {id(p) for p in rates}
    decay, no_decay, rate = [], [], []
    for p in params:
        if not p.requires_grad:
            continue
        if id(p) in rate_ids:
            rate.append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if rate:
        groups.append({"params": rate, "weight_decay": 0.0, "lr": rate_lr})
    return groups


def build_optimizer(
    cfg: OptimConfig,
    params: Iterable[torch.nn.Parameter],
    rates: Iterable[torch.nn.Parameter] = (),
) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum ``cfg.momentum``, no Nesterov) over ``params``; ``rates`` (a
    subset of them) at ``cfg.lr * cfg.concrete_lr_scale``."""
    groups = param_groups(params, cfg.weight_decay, rates, cfg.lr * cfg.concrete_lr_scale)
    if not any(g["params"] for g in groups):
        raise ConfigError("no trainable parameters to optimise")
    if cfg.lr <= 0:
        raise ConfigError(f"config key 'optim.lr' must be positive, got {cfg.lr}")
    if cfg.name == "adamw":
        # The fused kernel updates all tensors in one pass: the per-tensor loop costs about a
        # sixth of a small model's CPU training step (docs/benchmarks.md, demo recipe).
        fused = all(
            p.is_floating_point() and p.device.type in ("cpu", "cuda")
            for g in groups
            for p in g["params"]
        )
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False
        )
    raise ConfigError(f"config key 'optim.name' is {cfg.name!r}; expected adamw or sgd")


def lr_factor(it: int, total_iters: int, schedule: str, warmup_iters: int = 0, power: float = 0.9):
    """Multiplier of the base learning rate at iteration ``it`` (0-based)."""
    if warmup_iters > 0 and it < warmup_iters:
        return (it + 1) / warmup_iters
    span = max(1, total_iters - warmup_iters)
    p = min(1.0, max(0.0, (it - warmup_iters) / span))
    if schedule == "poly":
        return (1.0 - p) ** power
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "constant":
        return 1.0
    raise ConfigError(
        f"config key 'optim.schedule' is {schedule!r}; expected poly, cosine or constant"
    )


def build_scheduler(
    cfg: OptimConfig, optimizer: torch.optim.Optimizer, total_iters: int
) -> LambdaLR:
    """Per-iteration LambdaLR implementing warm-up + ``cfg.schedule`` over ``total_iters``."""
    if cfg.warmup_iters < 0:
        raise ConfigError(f"config key 'optim.warmup_iters' must be >= 0, got {cfg.warmup_iters}")
    lr_factor(0, total_iters, cfg.schedule)  # validates the schedule name up front
    schedule, warmup, power = cfg.schedule, cfg.warmup_iters, cfg.poly_power
    horizon = Horizon(total_iters)

    def factor(it: int) -> float:
        return lr_factor(it, horizon.total, schedule, warmup, power)

    factor.horizon = horizon  # on the lambda: LambdaLR.state_dict() would copy an attribute
    return LambdaLR(optimizer, factor)


def schedule_horizon(scheduler: LambdaLR) -> Horizon:
    """The :class:`Horizon` of a scheduler from :func:`build_scheduler`."""
    return scheduler.lr_lambdas[0].horizon


class Horizon:
    """The iteration count a schedule decays over. Under ``train.max_minutes`` fit sets it to
    the iterations that fit the budget (re-estimated after every epoch, never beyond the
    configured epochs), so a time-limited run still ends at a low learning rate instead of
    being cut off mid-schedule at a high one."""

    def __init__(self, total: int):
        self.full = self.total = int(total)

    def fit_budget(self, done_iters: int, seconds_left: float, seconds_per_iter: float) -> int:
        """Set ``total`` to ``done_iters`` plus the iterations that fit, within
        [done_iters + 1, the configured total]. It may grow again when the machine speeds up,
        so a conservative early estimate does not leave the end of the run at lr 0."""
        if seconds_per_iter > 0:
            fits = done_iters + int(max(0.0, seconds_left) / seconds_per_iter)
            self.total = max(done_iters + 1, min(self.full, fits))
        return self.total
