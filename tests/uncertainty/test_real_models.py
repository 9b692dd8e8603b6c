"""MCSampler on the package's own networks (seguncert.models.build)."""

from __future__ import annotations

import torch

from seguncert.config import ModelConfig
from seguncert.models.build import build_model
from seguncert.uncertainty.sampler import MCSampler, naive_mc


def test_segnet_basic_joint_split_equals_full_passes():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="segnet_basic", width=8, task="joint", dropout="central", num_classes=5)
    model = build_model(cfg, "laplace").eval()
    assert 0 < model.split_index < len(model.stages)  # a real prefix to share
    prefix_calls = []
    model.stages[0].register_forward_hook(lambda *a: prefix_calls.append(1))
    x = torch.randn(2, 3, 32, 32)
    fast = MCSampler(model, samples=5, memory_budget_mb=0.5)(x)
    assert len(prefix_calls) == 1
    slow = naive_mc(model, x, samples=5, seed=0)
    assert fast.keys() == slow.keys() and "depth_epistemic_var" in fast
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], atol=1e-5, rtol=1e-5, msg=k)
    assert fast["epistemic"].mean() > 0 and fast["depth_epistemic_var"].mean() > 0


def test_bf16_autocast_accumulates_in_float32(make_model, image):
    model = make_model(hetero=True)
    ref = MCSampler(model, samples=4)(image)
    low = MCSampler(model, samples=4, amp_dtype=torch.bfloat16)(image)
    assert low["probs"].dtype == torch.float32
    torch.testing.assert_close(low["probs"], ref["probs"], atol=0.05, rtol=0)
