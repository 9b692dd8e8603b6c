"""Optimiser groups and the shapes of the iteration-based schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from seguncert.config import OptimConfig
from seguncert.errors import ConfigError
from seguncert.train.optim import build_optimizer, build_scheduler, schedule_horizon


def lrs(cfg: OptimConfig, total: int) -> list[float]:
    opt = build_optimizer(cfg, [nn.Parameter(torch.zeros(2, 2))])
    sched = build_scheduler(cfg, opt, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_poly_with_warmup():
    cfg = OptimConfig(lr=1.0, schedule="poly", poly_power=2.0, warmup_iters=4)
    v = lrs(cfg, 14)
    assert v[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # after warm-up: (1 - p)^2 with p = (it - 4) / 10
    assert v[4] == pytest.approx(1.0)
    assert v[9] == pytest.approx(0.5**2)
    assert v[13] == pytest.approx(0.1**2)


def test_cosine_with_warmup_and_constant():
    cfg = OptimConfig(lr=2.0, schedule="cosine", warmup_iters=2)
    v = lrs(cfg, 12)
    assert v[:2] == pytest.approx([1.0, 2.0])
    assert v[7] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert v[11] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert all(a >= b for a, b in zip(v[2:], v[3:]))
    assert lrs(OptimConfig(lr=0.1, schedule="constant"), 5) == pytest.approx([0.1] * 5)


def test_scheduler_state_is_plain_numbers_and_resumes():
    cfg = OptimConfig(lr=1.0, schedule="poly", warmup_iters=3)
    opt = build_optimizer(cfg, [nn.Parameter(torch.zeros(3, 3))])
    sched = build_scheduler(cfg, opt, 20)
    for _ in range(7):
        opt.step()
        sched.step()
    sd = sched.state_dict()
    assert all(v is None or isinstance(v, (int, float, bool, list)) for v in sd.values())
    opt2 = build_optimizer(cfg, [nn.Parameter(torch.zeros(3, 3))])
    sched2 = build_scheduler(cfg, opt2, 20)
    sched2.load_state_dict(sd)
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_no_weight_decay_on_bn_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    log_var = nn.Parameter(torch.zeros(()))
    opt = build_optimizer(OptimConfig(weight_decay=0.1), [*model.parameters(), log_var])
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and [p.ndim for p in decay["params"]] == [4]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4
    assert isinstance(opt, torch.optim.AdamW)
    sgd = build_optimizer(OptimConfig(name="sgd", momentum=0.9), model.parameters())
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9 and not sgd.param_groups[0]["nesterov"]


def test_bad_values():
    with pytest.raises(ConfigError, match="optim.lr"):
        build_optimizer(OptimConfig(lr=0.0), [nn.Parameter(torch.zeros(2, 2))])
    opt = build_optimizer(OptimConfig(), [nn.Parameter(torch.zeros(2, 2))])
    with pytest.raises(ConfigError, match="optim.schedule"):
        build_scheduler(OptimConfig(schedule="step"), opt, 10)


def test_horizon_fits_the_schedule_into_a_time_budget():
    cfg = OptimConfig(lr=1.0, schedule="poly", poly_power=1.0, warmup_iters=0)
    opt = build_optimizer(cfg, [nn.Parameter(torch.zeros(2, 2))])
    sched = build_scheduler(cfg, opt, 1000)
    horizon = schedule_horizon(sched)
    for _ in range(10):
        opt.step()
        sched.step()
    # 10 iterations done, 30 s left at 1 s per iteration: the decay must end at iteration 40.
    assert horizon.fit_budget(10, 30.0, 1.0) == 40
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0 - 11 / 40)
    assert horizon.fit_budget(11, -5.0, 1.0) == 12  # out of time: ends after the next step
    assert horizon.fit_budget(11, 50.0, 1.0) == 61  # the machine sped up: the decay stretches
    assert horizon.fit_budget(11, 1e6, 1.0) == 1000  # but never past the configured length
    assert "horizon" not in str(sched.state_dict())  # state stays plain numbers


def test_adamw_is_fused_and_matches_the_reference_update():
    """The fused kernel (one pass over all tensors) must give the per-tensor loop's numbers."""
    torch.manual_seed(0)
    cfg = OptimConfig(lr=0.01, weight_decay=0.1)
    a = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(3))]  # weight + bias group
    b = [nn.Parameter(p.detach().clone()) for p in a]
    fused = build_optimizer(cfg, a)
    assert fused.defaults["fused"] is True
    ref = torch.optim.AdamW(
        [{"params": [b[0]], "weight_decay": 0.1}, {"params": [b[1]], "weight_decay": 0.0}],
        lr=0.01, foreach=False,
    )  # fmt: skip
    for _ in range(5):
        g = [torch.randn_like(p) for p in a]
        for p, q, gi in zip(a, b, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        fused.step(), ref.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
